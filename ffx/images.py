"""Images in, network input out: the one preprocessing implementation every stage uses.

The transform is DeiT/timm evaluation: RGB, resize the shorter side to `resize` with the
configured interpolation, center crop to the network input, scale to [0, 1], normalize. Its
parameters always come from the model's `ffx` metadata (`ffx.metadata.Preprocess`).
"""

import contextlib
import hashlib
import io
import os
import stat
import types
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from ffx.errors import FfxError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# The formats photo data sets come in. Pillow picks a decoder by a file's content, not its name, and
# some formats it knows hand the bytes to another program (EPS/PostScript to Ghostscript): ffx opens
# only these, whatever a file is called. JPEG includes MPO (camera multi-picture JPEG); PPM is
# Netpbm's PBM/PGM/PPM.
RASTER_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")
# Bounds read from an image's header, before a pixel is decoded or resized. No photo data set comes
# near them; a few hundred bytes of PNG can declare 3,000,000 x 1 pixels, which the shorter-side
# resize would turn into billions. The pixel bound is Pillow's own decompression-bomb limit (ffx
# reports it itself, so Pillow's warning below it is silenced); it also bounds the resized image.
MAX_IMAGE_SIDE = 32768
MAX_IMAGE_PIXELS = 178_956_970
MAX_ASPECT_RATIO = 50
MAX_IMAGE_BYTES = 256 << 20  # a file read whole (to hash it) is at most this long
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_PIL_INTERPOLATION = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
}


class UnreadableImage(Exception):
    """An image file that cannot be decoded (empty, truncated, not an image)."""


def is_image_file(path):
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def find_images(folder):
    """All image files under `folder`, recursively, sorted; stray files are ignored. The walk keeps
    its own list of folders to visit (a tree thousands of levels deep is no recursion), does not
    enter symlinked folders (so no loops, as pathlib's rglob) and passes over what it cannot read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FfxError(f"{folder}: not a directory")
    found, pending = [], [folder]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as listing:
                entries = list(listing)
        except OSError:  # unreadable, or a path past PATH_MAX
            continue
        for entry in entries:
            path = current / entry.name
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                elif entry.is_file() and is_image_file(path):  # a symlinked file counts; a FIFO or device does not
                    found.append(path)
    return sorted(found)


def load_rgb(path):
    """Decode `path` to an 8-bit RGB PIL image, converting the awkward modes the way PIL's
    `convert("RGB")` (and so torchvision's reference pipeline) does. Only RASTER_FORMATS are
    opened, only regular files, and only within the MAX_IMAGE_* bounds; anything else raises
    UnreadableImage."""
    with open_regular_file(path) as file:
        return _decode(file, path)


def decode_rgb(data, name="<bytes>"):
    """Like `load_rgb`, for the bytes of an image file already read (`name` is for messages)."""
    if not data:
        raise UnreadableImage(f"{name}: empty file")
    if len(data) > MAX_IMAGE_BYTES:
        raise UnreadableImage(f"{name}: {len(data):,} bytes, more than the {MAX_IMAGE_BYTES:,} ffx reads of an image")
    return _decode(io.BytesIO(data), name)


def _decode(source, name):
    """The one place ffx decodes an image file (a path or a file object)."""
    try:
        with Image.open(source, formats=RASTER_FORMATS) as img:
            problem = _size_problem(*img.size)
            if problem:
                raise UnreadableImage(f"{name}: {problem}")
            return _to_rgb(img)
    except UnreadableImage:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, struct.error, ... on broken files
        raise UnreadableImage(f"{name}: {_reason(e)}") from None


def _size_problem(width, height):
    """Why an image of `width` x `height` pixels (from its header) is not decoded, or None."""
    size = f"{width:,} x {height:,} pixels"
    if max(width, height) > MAX_IMAGE_SIDE:
        return f"{size}, a side longer than {MAX_IMAGE_SIDE:,} pixels (the most ffx decodes)"
    if width * height > MAX_IMAGE_PIXELS:
        return f"{size}, more than {MAX_IMAGE_PIXELS:,} pixels (the most ffx decodes)"
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        return f"{size}, an aspect ratio beyond {MAX_ASPECT_RATIO}:1 (the most ffx decodes)"
    return None


def _to_rgb(img):
    """8-bit RGB exactly as torchvision's `pil_loader` (the DeiT/timm evaluation loader) makes it:
    a plain `convert("RGB")`. That drops alpha and saturates 16-bit values above 255, which is
    odd but is what the reference accuracy was computed with; matching it is the point."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    img.load()
    return img.convert("RGB")


def _reason(error):
    if isinstance(error, UnidentifiedImageError):  # its message names a file object, not useful
        return f"not an image in a format ffx reads ({', '.join(RASTER_FORMATS)})"
    text = str(error).strip() or type(error).__name__
    if len(text) > 120:
        text = text[:117] + "..."
    return text


def preprocess_image(img, preprocess, name=None):
    """PIL RGB image -> float32 array (C, H, W), normalized, ready for the network."""
    return normalize_pixels(resize_and_crop(img, preprocess, name), preprocess)


def resize_and_crop(img, preprocess, name=None):
    """PIL RGB image -> uint8 array (H, W, 3): shorter side resized, center crop (no normalization,
    so worker processes hand back a quarter of the bytes). UnreadableImage (naming `name`) when the
    resized image would exceed MAX_IMAGE_PIXELS."""
    _, height, width = preprocess.input_size
    interpolation = _PIL_INTERPOLATION.get(preprocess.interpolation)
    if interpolation is None:
        raise FfxError(f"unsupported interpolation {preprocess.interpolation!r}")
    w, h = img.size
    # Resize the shorter side to `resize`, keeping the aspect ratio (torchvision's int truncation).
    if w <= h:
        new_w, new_h = preprocess.resize, int(preprocess.resize * h / w)
    else:
        new_w, new_h = int(preprocess.resize * w / h), preprocess.resize
    if new_w * new_h > MAX_IMAGE_PIXELS:  # checked before the resize allocates it
        raise UnreadableImage(f"{f'{name}: ' if name else ''}{w:,} x {h:,} pixels would resize to {new_w:,} x {new_h:,}, more than "
                              f"{MAX_IMAGE_PIXELS:,} pixels (the most ffx decodes)")
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), interpolation)
    top = int(round((new_h - height) / 2.0))
    left = int(round((new_w - width) / 2.0))
    if top < 0 or left < 0:
        raise FfxError(f"resize {preprocess.resize} is smaller than the crop {height}x{width}")
    return np.asarray(img.crop((left, top, left + width, top + height)), dtype=np.uint8)


def normalize_pixels(pixels, preprocess):
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W): /255, minus mean, over std. One image or a
    batch give bit-identical values. A network with the normalization folded in gets the pixels
    scaled to [0, input_scale] only."""
    if getattr(preprocess, "normalization_folded", False):
        array = np.asarray(pixels, dtype=np.float32)
        if preprocess.input_scale != 255.0:
            array = array / np.float32(255.0 / preprocess.input_scale)
        return np.ascontiguousarray(np.moveaxis(array, -1, -3))
    array = np.asarray(pixels, dtype=np.float32) / 255.0
    array = (array - np.asarray(preprocess.mean, np.float32)) / np.asarray(preprocess.std, np.float32)
    return np.ascontiguousarray(np.moveaxis(array, -1, -3))


def load_image(path, preprocess):
    """Decode and preprocess one file; raises UnreadableImage for a broken file."""
    return preprocess_image(load_rgb(path), preprocess, path)


def load_image_with_sha256(path, preprocess):
    """(network input, sha256 of the file's bytes): the file is read once for both.
    Raises UnreadableImage for a missing or broken file."""
    pixels, digest = load_pixels_with_sha256(path, preprocess)
    return normalize_pixels(pixels, preprocess), digest


def load_pixels_with_sha256(path, preprocess):
    """(uint8 (H, W, 3) resized and cropped, sha256 of the file's bytes)."""
    data = read_image_file(path)
    return resize_and_crop(decode_rgb(data, path), preprocess, path), hashlib.sha256(data).hexdigest()


def _check_regular_file(path):
    """UnreadableImage unless `path` is a regular file: reading a FIFO waits for a writer forever,
    a device (/dev/zero) never ends."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise UnreadableImage(f"{path}: {e.strerror or _reason(e)}") from None
    if not stat.S_ISREG(mode):
        raise UnreadableImage(f"{path}: not a regular file")


def open_regular_file(path):
    """`path` opened for reading in binary mode; UnreadableImage unless it is a regular file. Checked
    again on the open file, so a path swapped for a FIFO after the check cannot block a read."""
    _check_regular_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise UnreadableImage(f"{path}: {e.strerror or _reason(e)}") from None
    file = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        file.close()
        raise UnreadableImage(f"{path}: not a regular file")
    return file


def read_image_file(path):
    """The bytes of the regular file `path` (UnreadableImage otherwise), at most MAX_IMAGE_BYTES + 1."""
    with open_regular_file(path) as file:
        try:
            return file.read(MAX_IMAGE_BYTES + 1)  # one byte more tells a file that is too long (decode_rgb)
        except OSError as e:
            raise UnreadableImage(f"{path}: {e.strerror or _reason(e)}") from None


def decode_files(paths, preprocess_fields):
    """For each path, (uint8 pixels resized and cropped, sha256) or the reason it is unreadable.
    The entry point of decoding worker processes: `preprocess_fields` is `Preprocess.to_dict()`,
    so a worker imports only this module (numpy, PIL), not ffx.metadata and onnx."""
    preprocess = types.SimpleNamespace(**preprocess_fields)
    results = []
    for path in paths:
        try:
            results.append(load_pixels_with_sha256(path, preprocess))
        except UnreadableImage as e:
            message = str(e)
            results.append(message[len(str(path)) + 2:] if message.startswith(f"{path}: ") else message)
    return results
