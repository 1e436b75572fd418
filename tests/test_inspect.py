"""`ffx inspect` on ONNX models (FP32 and Q/DQ), engines built by TensorRT-RTX, and checkpoints."""

import json

import pytest

from ffx.cli import cli
from helpers import needs_rtx, qdq_model


def _inspect(cli_runner, *args):
    return cli_runner.invoke(cli, ["inspect", *map(str, args)])


def test_onnx_inputs_opset_ops_and_metadata(cli_runner, mini):
    result = _inspect(cli_runner, mini.onnx, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["kind"] == "onnx" and info["precision"] == "fp32"
    assert info["inputs"] == [{"name": "images", "shape": ["batch", 3, 28, 28], "dtype": "float32"}]
    assert info["opset"] == {"ai.onnx": 17}  # export's default: the lowest with a fused LayerNormalization
    assert info["ops"]["LayerNormalization"] == 5 and info["qdq_nodes"] == 0
    assert info["metadata"]["num_classes"] == 10

    text = _inspect(cli_runner, mini.onnx).stdout
    assert "input  images [batch x 3 x 28 x 28] float32" in text and "opset ai.onnx 17" in text
    assert "LayerNormalization 5" in text and "Q/DQ nodes: 0" in text and "classes: 10" in text


def test_qdq_onnx_shows_what_is_quantized(cli_runner, tmp_path_factory):
    result = _inspect(cli_runner, qdq_model(tmp_path_factory), "--json")
    info = json.loads(result.stdout)
    # onnxruntime's quantizer: a Q/DQ pair on each of the 10 layer inputs, a DequantizeLinear per weight.
    assert info["precision"] == "int8" and info["qdq_nodes"] == 30
    assert info["ops"]["QuantizeLinear"] == 10 and info["ops"]["DequantizeLinear"] == 20
    # The `Shape` reading the batch size sees the dequantized image too (ffx calibrate undoes that; this
    # graph comes straight from onnxruntime.quantization).
    assert info["quantized_inputs_of"] == {"Conv": 1, "MatMul": 8, "Gemm": 1, "Shape": 1}


@needs_rtx
def test_engine_sidecar_without_a_gpu(cli_runner, mini, tmp_path):
    import tensorrt_rtx_bindings

    engine = tmp_path / "mini.engine"
    assert cli_runner.invoke(cli, ["build-engine", str(mini.onnx), "-o", str(engine), "--max-batch", "2",
                                   "--backend", "tensorrt-rtx"]).exit_code == 0
    result = _inspect(cli_runner, engine, "--json", "--no-load")
    info = json.loads(result.stdout)
    assert info["kind"] == "engine" and info["sidecar"]["backend"] == "tensorrt-rtx"
    assert info["sidecar_matches_engine"] is True
    assert info["compatibility"].startswith(f"TensorRT-RTX {tensorrt_rtx_bindings.__version__} matches the engine")

    # The targets, from the sidecar and from the plan's own header, agree.
    assert info["engine_targets"] == info["sidecar"]["target_compute_capabilities"] == ["8.0", "8.6", "8.9", "12.0", "12.1"]

    text = _inspect(cli_runner, engine).stdout
    assert (f"built by TensorRT-RTX {tensorrt_rtx_bindings.__version__} ahead of time for compute capability "
            "8.0, 8.6, 8.9, 12.0, 12.1") in text
    assert "WARNING" not in text
    assert "profile images: min [1, 3, 28, 28] opt [2, 3, 28, 28] max [2, 3, 28, 28]" in text
    assert "\nlayers: " in text

    # A sidecar from another build is caught.
    engine.write_bytes(engine.read_bytes()[:-1] + b"\0")
    assert json.loads(_inspect(cli_runner, engine, "--json", "--no-load").stdout)["sidecar_matches_engine"] is False


@needs_rtx
def test_the_precision_guide_defaults_to_the_gpus_the_engine_is_for(cli_runner, mini, tmp_path):
    """An engine's TensorRT-RTX targets; for a full TensorRT engine, the GPU that built it."""
    engine = tmp_path / "mini.engine"
    assert cli_runner.invoke(cli, ["build-engine", str(mini.onnx), "-o", str(engine), "--max-batch", "2",
                                   "--backend", "tensorrt-rtx"]).exit_code == 0
    info = json.loads(_inspect(cli_runner, engine, "--json", "--no-load").stdout)
    assert [row["compute_capability"] for row in info["precision_guide"]] == ["8.0", "8.6", "8.9", "12.0", "12.1"]
    assert all(row["model_precision_runs_here"] is None for row in info["precision_guide"])  # an FP32 engine
    sidecar_file = tmp_path / "mini.engine.json"
    sidecar = json.loads(sidecar_file.read_text())
    sidecar.update(backend="tensorrt", backend_version="10.3.0", target_compute_capabilities=[], precision="fp16",
                   gpu={"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})
    sidecar_file.write_text(json.dumps(sidecar))
    info = json.loads(_inspect(cli_runner, engine, "--json", "--no-load").stdout)
    assert [(row["compute_capability"], row["model_precision_runs_here"]) for row in info["precision_guide"]] == [
        ("9.0", True)]
    assert "this FP16 model runs there" in _inspect(cli_runner, engine, "--no-load").stdout


def test_checkpoint(cli_runner, mini):
    import torch

    info = json.loads(_inspect(cli_runner, mini.checkpoint, "--json").stdout)
    state = torch.load(mini.checkpoint, weights_only=False)["model"]
    assert info["kind"] == "checkpoint" and info["weights"] == "model"
    assert info["config"] == {"depth": 2, "embed_dim": 32, "img_size": 28, "in_chans": 3, "mlp_ratio": 4.0,
                              "num_classes": 10, "patch_size": 4, "pos_grid": 7}
    assert info["parameters"] == sum(tensor.numel() for tensor in state.values())


@pytest.mark.parametrize("name", ["missing.onnx", "notes.txt"])
def test_bad_input_exits_2(cli_runner, tmp_path, name):
    (tmp_path / "notes.txt").write_text("hi")
    result = _inspect(cli_runner, tmp_path / name)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("Error: ") and str(tmp_path / name) in result.stderr


@needs_rtx
def test_sidecar_given_directly_describes_its_engine(cli_runner, mini, tmp_path):
    engine = tmp_path / "mini.engine"
    assert cli_runner.invoke(cli, ["build-engine", str(mini.onnx), "--backend", "tensorrt-rtx", "-o", str(engine)]).exit_code == 0
    result = cli_runner.invoke(cli, ["inspect", str(engine) + ".json"])
    assert result.exit_code == 0, result.stderr
    assert "TensorRT plan" in result.stdout and "built by TensorRT-RTX" in result.stdout
    assert "not loaded" in result.stdout  # the sidecar alone never loads the engine
    # A sidecar copied off the build machine, without its engine, still says how it was built.
    alone = tmp_path / "copied"
    alone.mkdir()
    (alone / "mini.engine.json").write_bytes((tmp_path / "mini.engine.json").read_bytes())
    result = cli_runner.invoke(cli, ["inspect", str(alone / "mini.engine.json")])
    assert result.exit_code == 0, result.output
    assert "not here" in result.stdout and "built by TensorRT-RTX" in result.stdout
    assert "a sidecar given alone" in result.stdout and "--no-load" not in result.stdout
    missing = cli_runner.invoke(cli, ["inspect", str(alone / "other.engine.json")])
    assert missing.exit_code == 2 and "no such file" in missing.stderr


@needs_rtx
def test_targets_come_from_the_engine_itself(cli_runner, mini, tmp_path):
    """An 8.6-only build: the plan's header lists sm86 alone; a sidecar that says otherwise is
    called out, and an engine without its sidecar still shows what it runs on."""
    engine = tmp_path / "ampere.engine"
    assert cli_runner.invoke(cli, ["build-engine", str(mini.onnx), "--backend", "tensorrt-rtx", "--fp16", "--max-batch", "2",
                                   "--compute-capability", "8.6", "-o", str(engine)]).exit_code == 0
    info = json.loads(_inspect(cli_runner, engine, "--json", "--no-load").stdout)
    assert info["engine_targets"] == info["sidecar"]["target_compute_capabilities"] == ["8.6"]
    sidecar = json.loads((tmp_path / "ampere.engine.json").read_text())
    sidecar["target_compute_capabilities"] = ["8.9"]
    (tmp_path / "ampere.engine.json").write_text(json.dumps(sidecar))
    text = _inspect(cli_runner, engine, "--no-load").stdout
    assert "WARNING: the engine itself lists compute capability 8.6, the sidecar 8.9" in text
    (tmp_path / "ampere.engine.json").unlink()
    text = _inspect(cli_runner, engine, "--no-load").stdout
    assert "no sidecar" in text and "a TensorRT-RTX plan: its header lists compute capability 8.6" in text
