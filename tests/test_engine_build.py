"""`ffx build-engine` with the real TensorRT-RTX builder (CPU ahead-of-time): engines, sidecars,
options, errors. INT8 and FP16 via in-process calibration are tested when ffx.calib provides them."""

import dataclasses
import json
import shutil

import pytest

from ffx.errors import InvalidOption

from ffx.cli import cli
from ffx.compute_capability import rtx_plan_targets
from ffx.runtime.engines.sidecar import SIDECAR_VERSION, read_sidecar, sidecar_path
from helpers import FASHION, fashion_onnx, labelled_images, needs_rtx, qdq_model

pytestmark = needs_rtx


def _build(cli_runner, *args):
    return cli_runner.invoke(cli, ["build-engine", *map(str, args)], catch_exceptions=False)


def test_fp32_engine_and_sidecar(cli_runner, mini, tmp_path):
    engine = tmp_path / "mini.engine"
    result = _build(cli_runner, mini.onnx, "-o", engine, "--backend", "tensorrt-rtx", "--max-batch", "4", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["backend"] == "tensorrt-rtx" and report["precision"] == "fp32"
    assert engine.is_file() and sidecar_path(engine).is_file()
    # A plain plan file: no header of ours in front of TensorRT's bytes.
    assert engine.stat().st_size == report["engine_bytes"]

    sidecar = read_sidecar(engine)
    import tensorrt_rtx_bindings

    from ffx import __version__
    from ffx.artifacts import sha256_file

    assert sidecar.backend_version == tensorrt_rtx_bindings.__version__
    assert sidecar.onnx.sha256 == sha256_file(mini.onnx)
    assert sidecar.engine.sha256 == sha256_file(engine)
    assert dataclasses.asdict(sidecar.profile) == {"input": "images", "min": [1, 3, 28, 28], "opt": [4, 3, 28, 28],
                                                   "max": [4, 3, 28, 28]}
    assert sidecar.ffx_version == __version__
    assert sidecar.gpu is None  # built ahead of time, no GPU here
    # TensorRT-RTX 1.7's default: Ampere and newer, as the plan's own header says (sm80, forward compatible).
    assert sidecar.target_compute_capabilities == ["8.0", "8.6", "8.9", "12.0", "12.1"]
    assert sidecar.target_compute_capabilities == list(rtx_plan_targets(engine.read_bytes()))
    assert sidecar.builder.tf32 is True
    assert sidecar.calibration_manifest is None
    assert sidecar.build_seconds > 0
    # The model's metadata travels, so later stages need no flags.
    assert sidecar.metadata["num_classes"] == 10
    assert sidecar.metadata["preprocess"]["input_size"] == [3, 28, 28]
    assert sidecar.metadata["class_names"][0] == "T-shirt/top"
    # The file is exactly what the record writes, with its format version.
    on_disk = json.loads(sidecar_path(engine).read_text())
    assert on_disk == sidecar.to_dict() and on_disk["sidecar_version"] == SIDECAR_VERSION


def test_qdq_model_builds_as_int8_without_calibration(cli_runner, mini, tmp_path, tmp_path_factory):
    qdq = qdq_model(tmp_path_factory)
    engine = tmp_path / "mini.int8.engine"
    result = _build(cli_runner, qdq, "-o", engine, "--int8", "--backend", "tensorrt-rtx", "--max-batch", "2")
    assert result.exit_code == 0, result.output
    assert "int8" in result.stdout
    assert read_sidecar(engine).precision == "int8"
    assert not (tmp_path / "mini.int8.int8.onnx").exists()  # nothing was calibrated


def test_options_reach_the_builder(cli_runner, mini, tmp_path):
    engine = tmp_path / "opts.plan"
    result = _build(cli_runner, mini.onnx, "-o", engine, "--backend", "tensorrt-rtx", "--min-batch", "2",
                    "--opt-batch", "3", "--max-batch", "5", "--workspace", "256M", "--builder-optimization-level", "1",
                    "--compute-capability", "8.6", "--timing-cache", tmp_path / "timing.cache",
                    "--hardware-compatibility", "ampere-plus")
    assert result.exit_code == 0, result.output
    sidecar = read_sidecar(engine)
    assert [sidecar.profile.min[0], sidecar.profile.opt[0], sidecar.profile.max[0]] == [2, 3, 5]
    assert sidecar.builder.workspace_bytes == 256 << 20
    assert sidecar.builder.optimization_level == 1
    assert sidecar.target_compute_capabilities == ["8.6"]
    assert "compute capability 8.6" in result.stdout
    # TensorRT-RTX has no timing cache and is portable by default: said, not silently dropped.
    assert "timing cache" in result.stderr and "hardware compatibility" in result.stderr
    assert len(sidecar.notes) == 2


@pytest.mark.parametrize("args, message", [
    (["missing.onnx", "-o", "x.engine"], "no such file"),
    (["{onnx}", "-o", "x.onnx"], "should end in"),
    (["{onnx}", "-o", "x.engine", "--int8"], "--calib-data"),
    (["{onnx}", "-o", "x.engine", "--int8", "--fp16"], "choose one"),
    (["{onnx}", "-o", "x.engine", "--min-batch", "8", "--max-batch", "2"], "--min-batch: batch profile must satisfy 1 <= min <= opt <= max"),
    (["{onnx}", "-o", "x.engine", "--max-batch", "0"], "--max-batch: must be a positive whole number"),
    # An engine built beyond the batch the exported graph declares (the build accepted 10^8 before).
    (["{onnx}", "-o", "x.engine", "--max-batch", "100000000"], "--max-batch: batches go up to 65,536"),
    (["{onnx}", "-o", "x.engine", "--builder-optimization-level", "7"], "--builder-optimization-level: builder optimization level must be 0..5"),
    (["{onnx}", "-o", "x.engine", "--workspace", "lots"], "--workspace: 'lots'"),
    (["{onnx}", "-o", "x.engine", "--compute-capability", "none"], "--compute-capability: 'none' is not a target"),
    (["{onnx}", "-o", "x.engine", "--compute-capability", "SM999"], "--compute-capability:"),
    (["{onnx}", "-o", "x.engine", "--compute-capability", "9.0"], "does not run on H100/H200"),
    (["{onnx}", "-o", "x.engine", "--compute-capability", "current"], "--compute-capability: target 'current' means this machine's GPU"),
    (["{onnx}", "-o", "x.engine", "--backend", "tensorrt-rtx", "--version-compatible"], "--version-compatible: TensorRT-RTX cannot build version-compatible"),
    # refused before calibration starts: no x.int8.onnx is left behind
    (["{onnx}", "-o", "x.engine", "--backend", "tensorrt-rtx", "--version-compatible", "--int8", "--calib-data", "."],
     "--version-compatible: TensorRT-RTX cannot build version-compatible"),
    (["{onnx}", "-o", "x.engine", "--backend", "tensorrt"], "pip install tensorrt"),
])
def test_bad_input_exits_2_with_one_line(cli_runner, mini, tmp_path, monkeypatch, args, message):
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # full TensorRT is never installed here; make sure
    result = cli_runner.invoke(cli, ["build-engine", *[a.format(onnx=mini.onnx) for a in args]])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # one line
    assert "Traceback" not in result.output
    assert not list(tmp_path.glob("x.*"))  # nothing half-written


def test_parse_failure_leaves_no_files(cli_runner, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])  # a classifier's, so parsing is reached
    node = helper.make_node("NoSuchOperator", ["images"], ["logits"], name="mystery", domain="")
    model = helper.make_model(helper.make_graph([node], "g", [images], [logits]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "bad.onnx")
    result = cli_runner.invoke(cli, ["build-engine", str(tmp_path / "bad.onnx"), "-o", str(tmp_path / "bad.engine")])
    assert result.exit_code == 2
    assert "mystery" in result.stderr and "NoSuchOperator" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_int8_calibrates_an_fp32_model_on_the_fly(cli_runner, mini, tmp_path, tmp_path_factory):
    images = labelled_images(tmp_path_factory)
    engine = tmp_path / "mini.engine"
    result = _build(cli_runner, mini.onnx, "-o", engine, "--int8", "--calib-data", images, "--calib-images", "20",
                    "--calib-method", "percentile", "--calib-percentile", "99.9", "--calib-keep-fp", "head",
                    "--backend", "tensorrt-rtx", "--max-batch", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["precision"] == "int8"
    assert report["calibrated_onnx"].endswith("mini.int8.onnx")
    sidecar = read_sidecar(engine)
    assert sidecar.precision == "int8"
    assert sidecar.calibration_manifest is not None and len(sidecar.calibration_manifest.sha256) == 64
    # calibrate's options reached it: the manifest records them.
    params = json.loads((tmp_path / sidecar.calibration_manifest.file).read_text())["params"]
    assert (params["method"], params["percentile"], params["keep_fp"], params["num_images"]) == ("percentile", 99.9, ["head"], 20)
    assert cli_runner.invoke(cli, ["build-engine", str(mini.onnx), "-o", str(tmp_path / "x.engine"),
                                   "--calib-method", "max"]).exit_code == 2


def test_fp16_converts_an_fp32_model_on_the_fly(cli_runner, mini, tmp_path):
    engine = tmp_path / "mini.engine"
    result = _build(cli_runner, mini.onnx, "-o", engine, "--fp16", "--backend", "tensorrt-rtx", "--max-batch", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["precision"] == "fp16"
    assert read_sidecar(engine).precision == "fp16"
    assert (tmp_path / "mini.fp16.onnx").is_file()


@pytest.mark.slow
def test_fashion_fixture_fp16_and_int8_engines(cli_runner, tmp_path, tmp_path_factory):
    onnx_path = fashion_onnx(tmp_path_factory)
    local = tmp_path / "fashion.onnx"
    shutil.copy(onnx_path, local)
    for flags in (["--fp16"], ["--int8", "--calib-data", FASHION / "train", "--calib-images", "200"]):
        engine = tmp_path / f"fashion.{flags[0][2:]}.engine"
        result = _build(cli_runner, local, "-o", engine, *flags, "--backend", "tensorrt-rtx", "--max-batch", "8")
        assert result.exit_code == 0, result.output
        assert read_sidecar(engine).precision == flags[0][2:]


@pytest.mark.parametrize("text", ["inf", "-1G", "0", "abc", ""])
def test_workspace_sizes_that_make_no_sense_are_refused(text):
    from ffx.commands.build_engine import parse_size

    with pytest.raises(InvalidOption, match="positive size"):
        parse_size(text)
    assert parse_size("512M") == 512 << 20 and parse_size("2") == 2 << 20


def test_no_tf32_reaches_the_sidecar(cli_runner, mini, tmp_path):
    engine = tmp_path / "exact.engine"
    result = _build(cli_runner, mini.onnx, "-o", engine, "--backend", "tensorrt-rtx", "--max-batch", "2", "--no-tf32")
    assert result.exit_code == 0, result.output
    assert read_sidecar(engine).builder.tf32 is False and "TF32 off" in result.stdout


def test_turing_target_replaces_the_default_and_fp32_fails_there_in_one_line(cli_runner, mini, tmp_path):
    # --compute-capability replaces the default targets: a Turing-only build, where TensorRT-RTX
    # has no FP32 GEMM. The real builder says so; ffx passes it on as one line, no file written.
    result = cli_runner.invoke(cli, ["build-engine", str(mini.onnx), "-o", str(tmp_path / "turing.engine"),
                                     "--backend", "tensorrt-rtx", "--max-batch", "2", "--compute-capability", "SM75"])
    assert result.exit_code == 2
    assert "Turing" in result.stderr and "FP32 GEMM is not supported" in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == [result.stderr.splitlines()[-1]]
    assert not (tmp_path / "turing.engine").exists()


def test_help_states_the_target_semantics(cli_runner):
    text = " ".join(cli_runner.invoke(cli, ["build-engine", "--help"]).output.split())
    assert "REPLACES the default (8.0, 8.6, 8.9, 12.0, 12.1)" in text
    assert "8.0 (A100)" in text and "not on H100/H200" in text
    assert "--no-tf32" in text and "--backend tensorrt" in text
