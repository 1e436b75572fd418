"""`ffx build-engine CHECKPOINT`: export, calibrate and build in one command (TensorRT-RTX on the
CPU), every intermediate beside the engine with its record, reused when its inputs are the same;
and `ffx verify ENGINE` finding the FP32 ONNX behind it through those records."""

import json

import pytest

from ffx.artifacts import sha256_file
from ffx.cli import cli
from helpers import needs_rtx

pytestmark = needs_rtx


def _build(cli_runner, checkpoint, engine, images, *extra):
    result = cli_runner.invoke(cli, ["build-engine", str(checkpoint), "--int8", "--calib-data", str(images),
                                     "--calib-images", "20", "--max-batch", "4", "-o", str(engine), "--json", *extra])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def built(mini, images, tmp_path_factory):
    from click.testing import CliRunner

    folder = tmp_path_factory.mktemp("from_checkpoint")
    report = _build(CliRunner(), mini.checkpoint, folder / "f.engine", images)
    return folder, report


def test_every_file_is_written_with_its_record(built, mini):
    folder, report = built
    assert sorted(p.name for p in folder.iterdir()) == [
        "f.engine", "f.engine.json", "f.int8.json", "f.int8.onnx", "f.json", "f.onnx"]
    record = json.loads((folder / "f.json").read_text())
    assert record["format"] == "ffx-export-record" and record["checkpoint"]["sha256"] == sha256_file(mini.checkpoint)
    assert record["onnx"] == {"file": "f.onnx", "sha256": sha256_file(folder / "f.onnx")}
    assert record["weights"] == "model" and record["opset"] == 17 and record["parity"]["max_abs_diff"] < 1e-3
    manifest = json.loads((folder / "f.int8.json").read_text())
    assert manifest["input"] == {"file": "f.onnx", "sha256": record["onnx"]["sha256"]}
    sidecar = json.loads((folder / "f.engine.json").read_text())
    assert sidecar["onnx"]["file"] == "f.int8.onnx" and sidecar["precision"] == "int8"
    assert sidecar["calibration_manifest"]["file"] == "f.int8.json"
    assert report["export"]["reused"] is False and report["calibration_reused"] is False


def test_a_second_run_reuses_the_export_and_the_calibration(built, images, cli_runner):
    folder, _ = built
    before = {name: (folder / name).read_bytes() for name in ("f.onnx", "f.json", "f.int8.onnx", "f.int8.json")}

    report = _build(cli_runner, _checkpoint(folder), folder / "f.engine", images)
    assert report["export"]["reused"] is True and report["calibration_reused"] is True
    assert report["calibrated_onnx"] == str(folder / "f.int8.onnx")
    assert {name: (folder / name).read_bytes() for name in before} == before


def _checkpoint(folder):
    return json.loads((folder / "f.json").read_text())["checkpoint"]["file"]


def test_other_settings_or_a_changed_manifest_are_not_reused(built, images):
    from ffx.calib import CalibrationOptions
    from ffx.runtime.engines.conversion_reuse import conversion_mismatch

    folder, _ = built
    onnx, qdq = folder / "f.onnx", folder / "f.int8.onnx"
    same = CalibrationOptions(num_images=20)
    assert conversion_mismatch(qdq, onnx, "int8", images, same) is None
    assert "settings" in conversion_mismatch(qdq, onnx, "int8", images, CalibrationOptions(num_images=20, seed=1))
    assert "settings" in conversion_mismatch(qdq, onnx, "int8", images, CalibrationOptions(num_images=20, method="max"))
    assert "images" in conversion_mismatch(qdq, onnx, "int8", images / "3_dress", same)
    assert "not an ffx fp16" in conversion_mismatch(qdq, onnx, "fp16", None, same)
    assert "another ONNX" in conversion_mismatch(qdq, qdq, "int8", images, same)


def test_a_users_file_at_an_intermediate_name_is_kept(mini, images, tmp_path, cli_runner):
    mine = tmp_path / "f.onnx"
    mine.write_bytes(b"my own model")
    report = _build(cli_runner, mini.checkpoint, tmp_path / "f.engine", images)
    assert mine.read_bytes() == b"my own model" and not (tmp_path / "f.json").exists()
    assert report["export"]["onnx"] == str(tmp_path / "f.engine.fp32.onnx") and report["export"]["reused"] is False
    assert any("kept the existing f.onnx" in note for note in report["notes"])
    record = json.loads((tmp_path / "f.engine.fp32.json").read_text())
    assert record["onnx"]["file"] == "f.engine.fp32.onnx"
    manifest = json.loads((tmp_path / "f.int8.json").read_text())
    assert manifest["input"]["file"] == "f.engine.fp32.onnx"


def test_an_export_changed_since_is_exported_again(built, mini, images, tmp_path, cli_runner):
    import shutil

    folder, _ = built
    for name in ("f.onnx", "f.json"):
        shutil.copy(folder / name, tmp_path / name)
    with open(tmp_path / "f.onnx", "ab") as f:
        f.write(b"\0")  # no longer the recorded sha256: a file of someone else's now
    report = _build(cli_runner, mini.checkpoint, tmp_path / "f.engine", images)
    assert report["export"]["onnx"] == str(tmp_path / "f.engine.fp32.onnx")


def test_verify_finds_the_reference_through_the_records(built, cli_runner):
    folder, _ = built
    result = cli_runner.invoke(cli, ["verify", str(folder / "f.engine")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {folder / 'f.engine'} cannot run here")
    assert f"reference {folder / 'f.onnx'}: f.engine was built from f.int8.onnx; f.int8.onnx was calibrated from f.onnx" in lines[0]
    assert "CUDA GPU" in lines[0]


def test_verify_of_the_calibrated_onnx_runs_against_its_source(built, images, cli_runner):
    folder, _ = built
    result = cli_runner.invoke(cli, ["verify", str(folder / "f.int8.onnx"), "--data", str(images), "--json"])
    assert result.exit_code in (0, 1), result.stderr
    report = json.loads(result.stdout)
    assert report["reference"]["path"] == str(folder / "f.onnx")
    assert f"reference: {folder / 'f.onnx'}" in result.stderr


def test_a_broken_chain_is_one_line(built, tmp_path, cli_runner):
    import shutil

    folder, _ = built
    for name in ("f.engine", "f.engine.json", "f.int8.onnx", "f.int8.json", "f.onnx"):
        shutil.copy(folder / name, tmp_path / name)
    with open(tmp_path / "f.onnx", "ab") as f:
        f.write(b"\0")
    result = cli_runner.invoke(cli, ["verify", str(tmp_path / "f.engine")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'f.onnx'} is not the file f.int8.json names (sha256 differs); give --reference"]
    (tmp_path / "f.int8.onnx").unlink()
    result = cli_runner.invoke(cli, ["verify", str(tmp_path / "f.engine")])
    assert result.exit_code == 2 and "named by f.engine's sidecar but not there" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--int8", "-o", "f.engine"], "--calib-data: an INT8 engine from mini.pth needs calibration images"),
    (["--int8", "--calib-data", "missing", "-o", "f.engine"], "missing: no such directory"),
    (["-o", "f.txt"], "f.txt: an engine file should end in"),
])
def test_mistakes_are_refused_before_the_export(mini, tmp_path, cli_runner, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = cli_runner.invoke(cli, ["build-engine", str(mini.checkpoint), *args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []
