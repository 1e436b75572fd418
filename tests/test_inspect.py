"""`ffx inspect` on ONNX models (FP32 and Q/DQ), engines built by TensorRT-RTX, and checkpoints."""

import json

import pytest

from ffx.cli import cli
from helpers import qdq_model


def _inspect(cli_runner, *args):
    return cli_runner.invoke(cli, ["inspect", *map(str, args)])


def test_onnx_inputs_opset_ops_and_metadata(cli_runner, mini):
    result = _inspect(cli_runner, mini.onnx, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["kind"] == "onnx" and info["precision"] == "fp32"
    assert info["inputs"] == [{"name": "images", "shape": ["batch", 3, 28, 28], "dtype": "float32"}]
    assert info["opset"]["ai.onnx"] >= 17
    assert info["ops"]["LayerNormalization"] == 5 and info["qdq_nodes"] == 0
    assert info["metadata"]["num_classes"] == 10

    text = _inspect(cli_runner, mini.onnx).stdout
    assert "input  images ['batch', 3, 28, 28] float32" in text
    assert "LayerNormalization 5" in text and "Q/DQ nodes: 0" in text and "classes: 10" in text


def test_qdq_onnx_shows_what_is_quantized(cli_runner, tmp_path_factory):
    result = _inspect(cli_runner, qdq_model(tmp_path_factory), "--json")
    info = json.loads(result.stdout)
    assert info["precision"] == "int8" and info["qdq_nodes"] > 0
    assert info["quantized_inputs_of"]["MatMul"] == 8
    assert "LayerNormalization" not in info["quantized_inputs_of"]


def test_engine_sidecar_without_a_gpu(cli_runner, mini, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings")
    engine = tmp_path / "mini.engine"
    assert cli_runner.invoke(cli, ["build-engine", str(mini.onnx), "-o", str(engine), "--max-batch", "2",
                                   "--backend", "tensorrt-rtx"]).exit_code == 0
    result = _inspect(cli_runner, engine, "--json", "--no-load")
    info = json.loads(result.stdout)
    assert info["kind"] == "engine" and info["sidecar"]["backend"] == "tensorrt-rtx"
    assert info["sidecar_matches_engine"] is True
    assert "matches the engine" in info["compatibility"] or "compatible" in info["compatibility"]

    text = _inspect(cli_runner, engine).stdout
    assert "built by TensorRT-RTX" in text and "profile images" in text and "layers:" in text

    # A sidecar from another build is caught.
    engine.write_bytes(engine.read_bytes()[:-1] + b"\0")
    assert json.loads(_inspect(cli_runner, engine, "--json", "--no-load").stdout)["sidecar_matches_engine"] is False


def test_checkpoint(cli_runner, mini):
    info = json.loads(_inspect(cli_runner, mini.checkpoint, "--json").stdout)
    assert info["kind"] == "checkpoint" and info["config"]["img_size"] == 28 and info["parameters"] > 0


@pytest.mark.parametrize("name", ["missing.onnx", "notes.txt"])
def test_bad_input_exits_2(cli_runner, tmp_path, name):
    (tmp_path / "notes.txt").write_text("hi")
    result = _inspect(cli_runner, tmp_path / name)
    assert result.exit_code == 2 and "Error: " in result.stderr
