"""`ffx predict`: class names from the metadata, folders, unreadable files, the same answer from
the checkpoint and its ONNX export."""

import json

import pytest

from ffx.cli import cli
from helpers import FASHION_CLASSES


def test_topk_with_class_names_and_probabilities(cli_runner, mini, images):
    files = sorted(images.glob("*/*.png"))[:3]
    result = cli_runner.invoke(cli, ["predict", str(mini.onnx), *map(str, files), "--topk", "3", "--json"])
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)
    assert [p["image"] for p in predictions] == [str(f) for f in files]
    for prediction in predictions:
        top = prediction["top"]
        assert len(top) == 3
        assert all(row["name"] == FASHION_CLASSES[row["class"]] for row in top)
        assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
        assert 0 < sum(row["probability"] for row in top) <= 1.0 + 1e-6


def test_checkpoint_and_onnx_agree_on_a_folder(cli_runner, mini, images):
    answers = []
    for model in (mini.checkpoint, mini.onnx):
        result = cli_runner.invoke(cli, ["predict", str(model), str(images), "--topk", "1", "--json"])
        assert result.exit_code == 0, result.output
        answers.append([(p["image"], p["top"][0]["class"]) for p in json.loads(result.stdout)])
    assert answers[0] == answers[1] and len(answers[0]) == 30


def test_human_output_and_unreadable_files(cli_runner, mini, images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    good = next(images.glob("*/*.png"))
    result = cli_runner.invoke(cli, ["predict", str(mini.onnx), str(good), str(broken), "--topk", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{good}: ") and "%" in result.stdout
    assert "broken.png" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("case", ["missing image", "only broken", "missing model"])
def test_bad_input_exits_2(cli_runner, mini, tmp_path, case):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    args = {
        "missing image": [str(mini.onnx), str(tmp_path / "nope.png")],
        "only broken": [str(mini.onnx), str(broken)],
        "missing model": [str(tmp_path / "nope.onnx"), str(broken)],
    }[case]
    result = cli_runner.invoke(cli, ["predict", *args])
    assert result.exit_code == 2, result.output
    assert "Error: " in result.stderr and "Traceback" not in result.output
