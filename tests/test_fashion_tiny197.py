"""The deep Fashion-MNIST fixture: ff_tiny's blocks (dim 192, depth 12, 197 tokens), trained here.

Exported through the CLI with no flags but the checkpoint, as a user would, then scored against
the checkpoint itself on the committed val/ PNGs (held-out test-split images) with `ffx verify`.
"""

import argparse
import json
from pathlib import Path

import pytest
import torch

from ffx.cli import cli

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fashion_tiny197"
CHECKPOINT = FIXTURE / "model.pth"


@pytest.fixture(scope="module")
def checkpoint():
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(CHECKPOINT, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from click.testing import CliRunner

    onnx_path = tmp_path_factory.mktemp("tiny197") / "tiny197.onnx"
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(CHECKPOINT), "-o", str(onnx_path)])
    assert result.exit_code == 0, result.output
    return onnx_path


def test_checkpoint_has_ff_tiny_blocks_in_release_layout(checkpoint):
    state = checkpoint["model"]
    assert isinstance(checkpoint["args"], argparse.Namespace) and checkpoint["args"].nb_classes == 10
    assert all(t.dtype == torch.float32 for t in state.values())
    assert state["patch_embed.proj.weight"].shape == (192, 3, 2, 2)  # dim 192, patch 2
    assert len({key.split(".")[1] for key in state if key.startswith("blocks.")}) == 12
    assert state["blocks.0.norm2.weight"].shape == (197,)  # 14x14 patches + cls
    assert state["blocks.0.mlp1.fc1.weight"].shape == (768, 192)  # MLP ratio 4 over features
    assert state["blocks.0.mlp2.fc1.weight"].shape == (788, 197)  # and over tokens
    assert checkpoint["ffx"]["preprocess"]["input_size"] == [3, 28, 28]
    assert len(checkpoint["ffx"]["class_names"]) == 10


@pytest.mark.slow
def test_export_needs_no_flags_and_matches_the_checkpoint_on_val_images(exported):
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, [
        "verify", str(exported), "--reference", str(CHECKPOINT), "--data", str(FIXTURE / "val"), "--json",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 300
    assert report["agreement"] == 100.0
    assert report["max_abs_error"] < 1e-3, report["max_abs_error"]
    # The checkpoint's accuracy on the full test set is in the fixture README; 300 images are a sample.
    assert report["candidate"]["top1"] >= 85.0, report["candidate"]
