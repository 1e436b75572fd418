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
