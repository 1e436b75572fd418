"""ffx.images: decoding awkward and broken files, and the DeiT evaluation transform, on real files
written with PIL at test time."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from ffx.errors import FfxError
from ffx.images import (
    UnreadableImage,
    decode_rgb,
    find_images,
    load_image,
    load_image_with_sha256,
    load_rgb,
    preprocess_image,
)
from ffx.metadata import Preprocess
from helpers import photo, write_awkward_images, write_broken_images

SMALL = Preprocess(input_size=(3, 32, 32), resize=36)


def test_every_awkward_mode_becomes_8_bit_rgb(tmp_path):
    for name, path in write_awkward_images(tmp_path).items():
        image = load_rgb(path)
        assert image.mode == "RGB", name
        array = preprocess_image(image, SMALL)
        assert array.shape == (3, 32, 32) and array.dtype == np.float32, name
        assert np.all(np.isfinite(array)), name


def test_awkward_modes_convert_exactly_as_the_reference_loader(tmp_path):
    """torchvision's pil_loader is `Image.open(f).convert("RGB")`: ffx must give the same pixels,
    even where that is odd (alpha dropped, 16-bit saturated), or accuracy would not be comparable."""
    for name, path in write_awkward_images(tmp_path).items():
        with Image.open(path) as img:
            reference = np.asarray(img.convert("RGB"))
        np.testing.assert_array_equal(np.asarray(load_rgb(path)), reference, err_msg=name)


def test_broken_files_raise_unreadable_image_naming_the_file(tmp_path):
    for name, path in write_broken_images(tmp_path).items():
        with pytest.raises(UnreadableImage, match=name):
            load_image(path, SMALL)
    with pytest.raises(UnreadableImage, match="missing.png"):
        load_image_with_sha256(tmp_path / "missing.png", SMALL)


def test_decode_rgb_and_hash_match_the_file(tmp_path):
    path = write_awkward_images(tmp_path)["rgb.JPG"]
    array, digest = load_image_with_sha256(path, SMALL)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    np.testing.assert_array_equal(array, load_image(path, SMALL))
    assert decode_rgb(path.read_bytes()).size == load_rgb(path).size


def test_preprocess_is_resize_shorter_side_center_crop_normalize():
    # A 60x45 image: shorter side 45 -> 36, so 48x36 (torchvision truncates), crop 32x32 at (8, 2).
    image = Image.fromarray(photo(60, 45))
    expected = image.resize((48, 36), Image.BICUBIC).crop((8, 2, 40, 34))
    expected = (np.asarray(expected, np.float32) / 255.0 - np.array(SMALL.mean, np.float32)) / np.array(SMALL.std, np.float32)
    np.testing.assert_allclose(preprocess_image(image, SMALL), expected.transpose(2, 0, 1), atol=1e-6)


def test_find_images_ignores_stray_files_and_matches_extensions_case_insensitively(tmp_path):
    write_awkward_images(tmp_path / "a")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "a" / "notes.txt").write_text("hello")
    (tmp_path / "a" / "._rgb.JPG").write_bytes(b"AppleDouble")
    found = find_images(tmp_path)
    assert {p.name for p in found} == set(write_awkward_images(tmp_path / "b")) and len(found) == 9
    with pytest.raises(FfxError):
        find_images(tmp_path / "nope")


def test_only_photo_formats_are_opened_whatever_the_file_is_called(tmp_path):
    """Pillow identifies files by content: PostScript named .png would go to Ghostscript, a Targa
    or an icon to decoders no photo needs. Only RASTER_FORMATS open."""
    import hostile_corpus

    (tmp_path / "ps.png").write_bytes(hostile_corpus.POSTSCRIPT)
    Image.fromarray(photo()).save(tmp_path / "targa.png", format="TGA")
    Image.fromarray(photo()).save(tmp_path / "icon.jpg", format="ICO")
    for name in ("ps.png", "targa.png", "icon.jpg"):
        with pytest.raises(UnreadableImage, match=f"{name}: not an image in a format ffx reads"):
            load_rgb(tmp_path / name)
        with pytest.raises(UnreadableImage, match="not an image in a format ffx reads"):
            decode_rgb((tmp_path / name).read_bytes(), name)
    for name, image in (("rgb.webp", Image.fromarray(photo())), ("gray.pgm", Image.fromarray(photo()).convert("L")),
                        ("multi.tiff", Image.fromarray(photo()))):
        image.save(tmp_path / name)
        assert load_rgb(tmp_path / name).size == (60, 45)


@pytest.mark.parametrize("width, height, problem", [
    (3_000_000, 1, "a side longer than 32,768"),
    (1, 40_000, "a side longer than 32,768"),
    (20_000, 20_000, "exceeds limit of 178956970 pixels"),  # Pillow's own bomb check comes first
    (14_000, 13_000, "exceeds limit of 178956970 pixels"),
    (28 * 60, 28, "an aspect ratio beyond 50:1"),
])
def test_sizes_are_bounded_from_the_header_before_decoding(tmp_path, width, height, problem):
    import hostile_corpus

    path = hostile_corpus._png(tmp_path / "big.png", width, height)
    assert path.stat().st_size < 100_000
    with pytest.raises(UnreadableImage, match=problem):
        load_rgb(path)
    with pytest.raises(UnreadableImage, match=problem):
        load_image_with_sha256(path, SMALL)


def test_the_pixel_bound_holds_when_a_program_lifts_pillows(tmp_path, monkeypatch):
    import hostile_corpus

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # what a program embedding ffx may do
    with pytest.raises(UnreadableImage, match="14,000 x 13,000 pixels, more than 178,956,970 pixels"):
        load_rgb(hostile_corpus._png(tmp_path / "big.png", 14_000, 13_000))


def test_the_resized_image_is_bounded_before_resizing():
    """A 50:1 image within every bound, resized so its shorter side is 8192 (metadata allows it):
    409,600 x 8192 pixels would be allocated; refused first."""
    image = Image.new("RGB", (1000, 20))
    huge = Preprocess(input_size=(3, 4096, 4096), resize=8192)
    with pytest.raises(UnreadableImage, match="strip.png: 1,000 x 20 pixels would resize to 409,600 x 8,192"):
        preprocess_image(image, huge, "strip.png")


def test_a_file_longer_than_the_bound_is_not_read_whole(tmp_path, monkeypatch):
    import ffx.images

    path = tmp_path / "long.png"
    Image.fromarray(photo(600, 450)).save(path)
    monkeypatch.setattr(ffx.images, "MAX_IMAGE_BYTES", path.stat().st_size - 1)
    for attempt in (lambda: load_image_with_sha256(path, SMALL), lambda: decode_rgb(path.read_bytes(), "long.png")):
        with pytest.raises(UnreadableImage, match="long.png"):
            attempt()
