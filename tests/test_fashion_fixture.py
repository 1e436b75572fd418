"""The Fashion-MNIST fixture: the committed checkpoint, the PNG folders and the script that makes them.

Real torch, real PNG files. Tests that read the full data set need Debian's
`dataset-fashion-mnist` and are skipped without it.
"""

import argparse
import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ffx.export.configs import FFConfig
from ffx.export.model import FFVisionTransformer
from scripts import fashion_mnist_to_folders as converter

REPO = Path(__file__).resolve().parents[1]
CONVERTER = REPO / "scripts" / "fashion_mnist_to_folders.py"
FIXTURE = REPO / "tests" / "fixtures" / "fashion"
DEBIAN_IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_debian_data = pytest.mark.skipif(
    not DEBIAN_IDX_DIR.is_dir(),
    reason=f"{DEBIAN_IDX_DIR} is absent (apt-get install dataset-fashion-mnist)",
)

EXPECTED_FOLDERS = [
    "0_t-shirt_top", "1_trouser", "2_pullover", "3_dress", "4_coat",
    "5_sandal", "6_shirt", "7_sneaker", "8_bag", "9_ankle_boot",
]


def run_converter(*args):
    return subprocess.run([sys.executable, str(CONVERTER), *map(str, args)], capture_output=True, text=True)


def write_idx(path, array, gzipped):
    """An unsigned-byte idx file: 0, 0, type 0x08, ndim, big-endian dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gzipped:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def read_png_folder(split_dir):
    """{png path: (uint8 RGB array, class index)} with class index = position of the sorted folder."""
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir())
    return {
        png: (np.asarray(Image.open(png).convert("RGB")), label)
        for label, folder in enumerate(folders)
        for png in sorted(folder.glob("*.png"))
    }


@pytest.fixture(scope="module")
def checkpoint():
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(FIXTURE / "model.pth", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model(checkpoint):
    args = checkpoint["args"]
    config = FFConfig(
        patch_size=args.patch_size, embed_dim=args.embed_dim, depth=args.depth, num_classes=args.nb_classes,
        img_size=args.input_size, in_chans=3, pos_grid=args.input_size // args.patch_size,
    )
    network = FFVisionTransformer(config)
    network.load_state_dict(checkpoint["model"], strict=True)
    return network.eval()


def test_checkpoint_has_release_layout_and_ffx_metadata(checkpoint):
    assert isinstance(checkpoint["args"], argparse.Namespace)
    assert checkpoint["args"].model == "ff_custom" and checkpoint["args"].nb_classes == 10
    assert isinstance(checkpoint["epoch"], int)
    assert all(t.dtype == torch.float32 for t in checkpoint["model"].values())
    preprocess = checkpoint["ffx"]["preprocess"]
    assert preprocess["input_size"] == [3, 28, 28] and preprocess["resize"] == 28
    assert preprocess["mean"] == [0.2860] * 3 and preprocess["std"] == [0.3530] * 3
    assert checkpoint["ffx"]["class_names"][0] == "T-shirt/top" and len(checkpoint["ffx"]["class_names"]) == 10


def test_checkpoint_loads_strictly(model):
    assert model.config.num_tokens == 50  # 7x7 patches + cls


@pytest.mark.parametrize("split", ["train", "val"])
def test_committed_folders_have_100_images_per_class(split):
    folders = sorted(p for p in (FIXTURE / split).iterdir() if p.is_dir())
    assert [p.name for p in folders] == EXPECTED_FOLDERS  # sorted order is the label order
    assert [len(list(p.glob("*.png"))) for p in folders] == [100] * 10


@pytest.mark.parametrize("gzipped", [True, False])
def test_converter_writes_rgb_pngs_equal_to_idx_bytes(tmp_path, gzipped):
    rng = np.random.default_rng(0)
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    splits = {}
    for prefix, count in (("train", 12), ("t10k", 8)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = np.arange(count, dtype=np.uint8) % 10
        write_idx(idx_dir / f"{prefix}-images-idx3-ubyte", images, gzipped)
        write_idx(idx_dir / f"{prefix}-labels-idx1-ubyte", labels, gzipped)
        splits[prefix] = (images, labels)

    result = run_converter(idx_dir, tmp_path / "out")
    assert result.returncode == 0, result.stderr

    for split, prefix in (("train", "train"), ("val", "t10k")):
        images, labels = splits[prefix]
        for index in range(len(images)):
            png = tmp_path / "out" / split / EXPECTED_FOLDERS[labels[index]] / f"{prefix}-{index:05d}.png"
            with Image.open(png) as image:
                assert image.mode == "RGB"
                pixels = np.asarray(image)
            assert (pixels == images[index][:, :, None]).all()


def test_converter_per_class_takes_the_first_images_of_each_class(tmp_path):
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    labels = np.array([3, 1, 3, 3, 1, 0], dtype=np.uint8)
    write_idx(idx_dir / "t10k-images-idx3-ubyte", np.zeros((6, 28, 28), np.uint8), gzipped=False)
    write_idx(idx_dir / "t10k-labels-idx1-ubyte", labels, gzipped=False)
    result = run_converter(idx_dir, tmp_path / "out", "--per-class", 2, "--splits", "val")
    assert result.returncode == 0, result.stderr
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == [
        "val/0_t-shirt_top/t10k-00005.png",
        "val/1_trouser/t10k-00001.png", "val/1_trouser/t10k-00004.png",
        "val/3_dress/t10k-00000.png", "val/3_dress/t10k-00002.png",
    ]


def test_converter_reports_a_missing_idx_folder_without_traceback(tmp_path):
    result = run_converter(tmp_path / "nowhere", tmp_path / "out")
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    result = run_converter(tmp_path, tmp_path / "out")  # folder exists, idx files do not
    assert result.returncode == 2
    assert "train-images-idx3-ubyte" in result.stderr and "Traceback" not in result.stderr


@needs_debian_data
def test_committed_val_pngs_are_the_first_100_test_images_of_each_class():
    images, labels = converter.load_split(DEBIAN_IDX_DIR, "val")
    expected = converter.select_indices(labels, per_class=100)
    committed = read_png_folder(FIXTURE / "val")
    assert sorted(int(png.stem.split("-")[1]) for png in committed) == expected.tolist()
    for png, (pixels, label) in committed.items():
        index = int(png.stem.split("-")[1])
        assert label == labels[index]
        assert (pixels == images[index][:, :, None]).all()


@pytest.mark.slow
def test_pytorch_top1_on_committed_val_pngs(model, checkpoint):
    preprocess = checkpoint["ffx"]["preprocess"]
    committed = read_png_folder(FIXTURE / "val")
    pixels = np.stack([p for p, _ in committed.values()])  # (N, 28, 28, 3) uint8
    labels = torch.tensor([label for _, label in committed.values()])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(preprocess["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(preprocess["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        predictions = model((x - mean) / std).argmax(1)
    accuracy = (predictions == labels).float().mean().item()
    assert accuracy >= 0.85, f"top-1 {accuracy:.2%} on {len(labels)} committed val images"
