#!/usr/bin/env python3
"""Convert Fashion-MNIST idx files into ImageNet-style folders of RGB PNGs.

    python scripts/fashion_mnist_to_folders.py /usr/share/datasets/fashion-mnist OUT [--per-class 100]

writes OUT/train/<class>/train-NNNNN.png (from the 60,000 training images) and
OUT/val/<class>/t10k-NNNNN.png (from the 10,000 test images); NNNNN is the image's index in its idx
file. The class folders are named `<index>_<name>` (`0_t-shirt_top` ... `9_ankle_boot`) so that
sorting them, as ImageFolder-style loaders do, gives back the Fashion-MNIST label order.

The idx files may be gzipped or not (Debian's `dataset-fashion-mnist` ships them gzipped in
/usr/share/datasets/fashion-mnist). Needs only numpy and Pillow. The train script imports
`load_split` and the class names from here.
"""

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# Label order 0..9 as published with the data set.
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CLASS_FOLDERS = [
    f"{index}_{name.lower().replace('/', '_').replace(' ', '_')}" for index, name in enumerate(CLASS_NAMES)
]

# Folder split name -> file prefix of its idx files.
SPLIT_PREFIXES = {"train": "train", "val": "t10k"}

# idx header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions.
IDX_UBYTE = 0x08


class IdxError(Exception):
    """A missing or malformed idx file; reported to the user without a traceback."""


def find_idx_file(idx_dir, stem):
    """`stem` (e.g. 'train-images-idx3-ubyte') in `idx_dir`, gzipped or not."""
    for candidate in (Path(idx_dir) / f"{stem}.gz", Path(idx_dir) / stem):
        if candidate.is_file():
            return candidate
    raise IdxError(f"{idx_dir}: neither {stem}.gz nor {stem} found")


def read_idx(path):
    """The unsigned-byte array stored in one idx file (its shape comes from the header)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise IdxError(f"{path}: cannot read ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE:
        raise IdxError(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    header_size = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) != header_size + int(np.prod(shape)):
        raise IdxError(f"{path}: size does not match its header shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def load_split(idx_dir, split):
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of split 'train' or 'val' (the t10k files)."""
    prefix = SPLIT_PREFIXES[split]
    images = read_idx(find_idx_file(idx_dir, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find_idx_file(idx_dir, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise IdxError(f"{idx_dir}: {prefix} images {images.shape} and labels {labels.shape} do not match")
    if labels.max(initial=0) >= len(CLASS_NAMES):
        raise IdxError(f"{idx_dir}: {prefix} labels go beyond the {len(CLASS_NAMES)} classes")
    return images, labels


def select_indices(labels, per_class):
    """Indices of the images to write, in file order: all, or the first `per_class` of each class."""
    if per_class is None:
        return np.arange(len(labels))
    chosen = [np.flatnonzero(labels == c)[:per_class] for c in range(len(CLASS_NAMES))]
    return np.sort(np.concatenate(chosen))


def write_split(images, labels, out_dir, split, per_class=None):
    """Write the selected images of one split as RGB PNGs; returns how many were written."""
    prefix = SPLIT_PREFIXES[split]
    split_dir = Path(out_dir) / split
    for folder in CLASS_FOLDERS:
        (split_dir / folder).mkdir(parents=True, exist_ok=True)
    indices = select_indices(labels, per_class)
    for index in indices:
        # Gray replicated into three channels: the network (like any ImageNet model) takes RGB.
        image = Image.fromarray(images[index], mode="L").convert("RGB")
        image.save(split_dir / CLASS_FOLDERS[labels[index]] / f"{prefix}-{index:05d}.png", optimize=True)
    return len(indices)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("idx_dir", type=Path, help="folder with the (gzipped) Fashion-MNIST idx files")
    parser.add_argument("out_dir", type=Path, help="output folder; train/ and val/ are created in it")
    parser.add_argument("--per-class", type=int, default=None, metavar="N",
                        help="write only the first N images of each class (default: all)")
    parser.add_argument("--splits", default="train,val",
                        help="comma-separated splits to write: train, val (default: both)")
    args = parser.parse_args(argv)
    args.splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    unknown = [s for s in args.splits if s not in SPLIT_PREFIXES]
    if unknown or not args.splits:
        parser.error(f"--splits: expected a comma-separated subset of train,val, got {unknown or 'nothing'}")
    if args.per_class is not None and args.per_class <= 0:
        parser.error("--per-class must be positive")
    if not args.idx_dir.is_dir():
        parser.error(f"idx folder {args.idx_dir} does not exist (Debian: apt-get install dataset-fashion-mnist)")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        for split in args.splits:
            images, labels = load_split(args.idx_dir, split)
            count = write_split(images, labels, args.out_dir, split, args.per_class)
            print(f"{split}: {count} images -> {args.out_dir / split}")
    except IdxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
