"""`ffx verify`: the paired comparison's statistics, the gate's exit codes, and the real thing on
the trained Fashion-MNIST fixture (INT8 passes, a scrambled head fails)."""

import json

import numpy as np
import pytest

from ffx.cli import cli
from ffx.errors import FfxError
from ffx.runtime.tasks.verify import compare_predictions, paired_difference_ci
from helpers import FASHION, FASHION_CHECKPOINT, fashion_onnx, needs_fashion_model, runners_that_warn

JSON_KEYS = ("reference", "candidate", "top1_drop", "agreement", "passed")


def _verify(cli_runner, *args):
    return cli_runner.invoke(cli, ["verify", *map(str, args)])


# -- statistics ---------------------------------------------------------------------------------


def _logits_for(predictions, classes=10):
    logits = np.zeros((len(predictions), classes), np.float32)
    logits[np.arange(len(predictions)), predictions] = 5.0
    return logits


def test_paired_counts_drop_and_lost_classes():
    labels = np.array([0] * 50 + [1] * 50)
    reference = labels.copy()
    candidate = labels.copy()
    candidate[:4] = 1  # four class-0 images the candidate gets wrong
    candidate[60] = 0  # ... and one class-1 image
    result = compare_predictions(_logits_for(reference), _logits_for(candidate), labels, ["zero", "one"] + [""] * 8)
    assert result.reference_top1 == 100.0 and result.candidate_top1 == 95.0
    assert result.top1_drop == pytest.approx(5.0)
    assert result.discordant == {"candidate_only": 0, "reference_only": 5}
    assert result.agreement == 95.0
    low, high = result.top1_drop_ci95
    assert 0 < low < 5.0 < high < 11
    assert [row["name"] for row in result.classes_lost] == ["zero", "one"]
    assert result.classes_lost[0]["lost"] == 4 and result.classes_lost[0]["candidate_top1"] == 92.0


def test_identical_models_have_a_tight_but_honest_interval():
    labels = np.arange(1000) % 10
    logits = np.random.default_rng(0).standard_normal((1000, 10))
    result = compare_predictions(logits, logits, labels)
    assert result.top1_drop == 0 and result.agreement == 100 and result.max_abs_error == 0
    assert result.logit_cosine_min == pytest.approx(1.0)
    low, high = result.top1_drop_ci95
    assert low < 0 < high and high - low < 0.5  # never a zero-width interval


def test_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    n, covered, trials = 400, 0, 400
    for _ in range(trials):
        reference_right = rng.random(n) < 0.8
        flip = rng.random(n) < 0.06  # candidate differs on ~6% of images, more often for the worse
        candidate_right = np.where(flip, rng.random(n) < 0.3, reference_right)
        true_drop = 100 * (0.8 * 0.06 * 0.7 - 0.2 * 0.06 * 0.3)  # E[ref right, cand wrong] - E[ref wrong, cand right]
        low, high = paired_difference_ci(int(np.sum(reference_right & ~candidate_right)),
                                         int(np.sum(candidate_right & ~reference_right)), n)
        covered += low <= true_drop <= high
    assert 0.90 <= covered / trials <= 0.99


def test_top5_with_fewer_than_five_classes_and_shape_errors():
    labels = np.array([0, 1, 2])
    logits = np.eye(3)
    result = compare_predictions(logits, logits, labels)
    assert result.topk == 3 and result.reference_top5 == 100
    with pytest.raises(FfxError, match="output shape"):
        compare_predictions(logits, np.eye(4)[:3], labels)
    with pytest.raises(FfxError, match="labels run to"):
        compare_predictions(logits, logits, np.array([0, 1, 7]))


# -- the command --------------------------------------------------------------------------------


def test_onnx_export_passes_against_its_checkpoint(cli_runner, mini, images):
    result = _verify(cli_runner, mini.onnx, "--reference", mini.checkpoint, "--data", images, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in JSON_KEYS:
        assert key in report
    for side in ("reference", "candidate"):
        assert {"top1", "top5", "backend", "precision", "path"} <= set(report[side])
    assert report["reference"]["backend"] == "pytorch" and report["candidate"]["backend"] == "onnxruntime"
    assert report["top1_drop"] == 0 and report["agreement"] == 100 and report["passed"] is True
    assert report["images"] == 30 and report["max_abs_error"] < 1e-4
    assert report["calibration_overlap"] is None  # a plain export has no calibration images


def test_json_output_keeps_progress_lines_on_stderr(cli_runner, mini, images, monkeypatch):
    """--json is for the script reading stdout; a CI log (stderr, not a terminal) still shows the
    run is alive, as without --json."""
    import ffx.progress

    monkeypatch.setattr(ffx.progress, "DELAY", 0.0)  # the first line without waiting 2 s on a fast machine
    result = _verify(cli_runner, mini.onnx, "--reference", mini.checkpoint, "--data", images, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 30
    assert "verify: 30/30 img (100%)" in result.stderr, result.stderr


def test_human_report_and_limit(cli_runner, mini, images):
    result = _verify(cli_runner, mini.onnx, "--reference", mini.checkpoint, "--data", images, "--limit", "12")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("12 images")
    assert "PASSED" in result.stdout and "95% CI" in result.stdout and "agreement" in result.stdout


def test_gate_failure_exits_1_and_still_reports(cli_runner, mini, images):
    # No drop allowed, gated on the interval: 30 images cannot show that even an identical model
    # loses nothing. (A negative limit, which demanded that the candidate beat the reference, is
    # refused: exit 2.)
    result = _verify(cli_runner, mini.onnx, "--reference", mini.checkpoint, "--data", images,
                     "--max-top1-drop", "0", "--strict", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["passed"] is False
    assert "upper bound of the top-1 drop" in result.stderr and "Traceback" not in result.output
    negative = _verify(cli_runner, mini.onnx, "--reference", mini.checkpoint, "--data", images, "--max-top1-drop", "-1")
    assert negative.exit_code == 2 and "0<=x<=100" in negative.stderr


def test_strict_gate_uses_the_interval(cli_runner, mini, images):
    # 30 images: even identical models cannot rule out a 0.5-point drop, so --strict fails.
    result = _verify(cli_runner, mini.onnx, "--reference", mini.checkpoint, "--data", images, "--strict", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["top1_drop"] == 0 and report["gate"] == "95% upper bound"
    assert "upper bound" in result.stderr
    loose = _verify(cli_runner, mini.onnx, "--reference", mini.checkpoint, "--data", images, "--strict",
                    "--max-top1-drop", "10")
    assert loose.exit_code == 0 and "upper 95% bound" in loose.stdout


@pytest.mark.parametrize("case", ["missing candidate", "missing reference", "missing data", "unlabelled data",
                                  "not a model", "directory as model"])
def test_bad_input_exits_2(cli_runner, mini, images, tmp_path, case):
    candidate, reference, data = mini.onnx, mini.checkpoint, images
    if case == "missing candidate":
        candidate = tmp_path / "nope.engine"
    elif case == "missing reference":
        reference = tmp_path / "nope.pth"
    elif case == "missing data":
        data = tmp_path / "nowhere"
    elif case == "unlabelled data":
        data = tmp_path / "flat"
        data.mkdir()
        (data / "one.png").write_bytes(next(images.glob("*/*.png")).read_bytes())
    elif case == "not a model":
        candidate = tmp_path / "notes.txt"
        candidate.write_text("hello")
    elif case == "directory as model":
        candidate = tmp_path
    result = _verify(cli_runner, candidate, "--reference", reference, "--data", data)
    assert result.exit_code == 2, result.output
    assert "Error: " in result.stderr and "Traceback" not in result.output


@pytest.mark.slow
def test_warns_when_verifying_on_calibration_images(cli_runner, mini, images, tmp_path):
    from ffx.calib import CalibrationOptions, calibrate_int8

    quantized = tmp_path / "mini.int8.onnx"
    calibrate_int8(str(mini.onnx), str(images), str(quantized), CalibrationOptions(num_images=10),
                   tensorrt_check=False)
    result = _verify(cli_runner, quantized, "--reference", mini.onnx, "--data", images, "--max-top1-drop", "100", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["calibration_overlap"] == 10
    assert report["candidate"]["precision"] == "int8"
    assert "were also calibration images" in result.stderr


def test_an_unreadable_image_is_one_warning_in_the_report_and_on_stderr(cli_runner, mini, images, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(images, data)
    broken = next(data.iterdir()) / "broken.png"
    broken.write_bytes(b"not a png")
    result = _verify(cli_runner, mini.onnx, "--reference", mini.checkpoint, "--data", data, "--json")
    assert result.exit_code == 0, result.output
    skipped = [w for w in json.loads(result.stdout)["warnings"] if w.startswith("skipped 1 unreadable image: broken.png")]
    assert len(skipped) == 1 and result.stderr.count("Warning: skipped 1 unreadable image: broken.png") == 1


def test_each_runners_own_warnings_are_reported_after_the_run_candidates_first(cli_runner, mini, images, tmp_path,
                                                                               monkeypatch):
    """What a runner warns of while it is made or runs (an engine without a sidecar, a CUDA graph
    capture that failed: runners_that_warn says the same on the CPU) comes after the run's own
    warnings (an unreadable image) and before the judge's, the candidate's before the reference's,
    once each."""
    import shutil

    import ffx.runtime.tasks.verify as verify_task

    data = tmp_path / "data"
    shutil.copytree(images, data)
    (next(data.iterdir()) / "broken.png").write_bytes(b"not a png")
    reference = tmp_path / "reference.onnx"
    shutil.copyfile(mini.onnx, reference)
    runners_that_warn(monkeypatch, verify_task)
    result = _verify(cli_runner, mini.onnx, "--reference", reference, "--data", data, "--batch-size", "4", "--json")
    assert result.exit_code == 0, result.output
    warnings = json.loads(result.stdout)["warnings"]
    assert warnings[0].startswith("skipped 1 unreadable image: broken.png")
    assert warnings[1:5] == ["mini.onnx: made", "mini.onnx: first call", "reference.onnx: made",
                             "reference.onnx: first call"]
    assert len(warnings) == 6 and warnings[5].startswith("only 30 images: ")  # the judge's, after the run
    assert [line for line in result.stderr.splitlines() if line.startswith("Warning: ")] == [
        f"Warning: {message}" for message in warnings]


@pytest.mark.slow
def test_warns_when_the_candidate_was_made_from_other_weights(cli_runner, mini, images, tmp_path):
    """A candidate converted from another checkpoint than the reference is two networks compared,
    whatever the gate says: the lineage both carry (the checkpoint's sha256) says so."""
    import torch

    checkpoint = torch.load(mini.checkpoint, weights_only=True)
    checkpoint["model"]["head.bias"] = checkpoint["model"]["head.bias"] + 0.01
    other = tmp_path / "retrained.pth"
    torch.save(checkpoint, other)
    same = _verify(cli_runner, mini.onnx, "--reference", mini.checkpoint, "--data", images, "--max-top1-drop", "100")
    assert same.exit_code == 0 and "different checkpoint" not in same.stderr
    for reference in (other, mini.onnx):  # a checkpoint is hashed; an ONNX carries the hash of its own
        result = _verify(cli_runner, mini.onnx if reference == other else _reexport(other, tmp_path), "--reference",
                         reference, "--data", images, "--max-top1-drop", "100")
        assert result.exit_code == 0, result.output
        assert "made from a different checkpoint" in result.stderr, result.stderr


@pytest.mark.slow
def test_an_ema_export_is_verified_against_the_checkpoints_ema_weights(cli_runner, mini, images, tmp_path):
    """`ffx export --ema` then `ffx verify model.onnx --reference model.pth`: the reference runs the
    weights the candidate came from (it ran `model`, and the lineage warning said so)."""
    import torch

    checkpoint = torch.load(mini.checkpoint, weights_only=True)
    checkpoint["model_ema"] = {k: v + 0.02 * torch.randn_like(v) for k, v in checkpoint["model"].items()}
    trained = tmp_path / "trained.pth"
    torch.save(checkpoint, trained)
    exported = tmp_path / "ema.onnx"
    assert cli_runner.invoke(cli, ["export", "--checkpoint", str(trained), "--ema", "-o", str(exported)]).exit_code == 0
    result = _verify(cli_runner, exported, "--reference", trained, "--data", images, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["max_abs_error"] < 1e-4 and "running its model_ema weights" in result.stderr
    assert "different" not in result.stderr and "weights, the reference" not in result.stderr


def _reexport(checkpoint, folder):
    from ffx.export.checkpoint import resolve_model
    from ffx.export.onnx_export import export_onnx

    path = folder / "retrained.onnx"
    export_onnx(resolve_model(None, str(checkpoint)), path, source_path=checkpoint)
    return path


# -- the trained fixture ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scrambled_checkpoint(tmp_path_factory):
    if not FASHION_CHECKPOINT.is_file():
        pytest.skip(f"{FASHION_CHECKPOINT} not present")
    import torch

    from ffx.export.checkpoint import load_checkpoint

    loaded = load_checkpoint(FASHION_CHECKPOINT)
    state = dict(loaded.state_dict)
    permutation = torch.roll(torch.arange(state["head.weight"].shape[0]), 1)  # every class answers for its neighbour
    state["head.weight"] = state["head.weight"][permutation].clone()
    state["head.bias"] = state["head.bias"][permutation].clone()
    path = tmp_path_factory.mktemp("scrambled") / "scrambled.pth"
    torch.save({"model": state, "ffx": loaded.extras}, path)
    return path


@pytest.mark.slow
@needs_fashion_model
def test_fixture_int8_passes_against_its_checkpoint(cli_runner, tmp_path, tmp_path_factory):
    from ffx.calib import CalibrationOptions, calibrate_int8

    onnx_path = fashion_onnx(tmp_path_factory)
    quantized = tmp_path / "fashion.int8.onnx"
    calibrate_int8(str(onnx_path), str(FASHION / "train"), str(quantized), CalibrationOptions(num_images=300),
                   tensorrt_check=False)
    result = _verify(cli_runner, quantized, "--reference", FASHION_CHECKPOINT, "--data", FASHION / "val", "--threads", "1",
                     "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["images"] == 1000
    assert report["reference"]["top1"] > 70  # a trained model, not noise
    assert report["calibration_overlap"] == 0  # calibrated on train, verified on val


@pytest.mark.slow
@needs_fashion_model
def test_fixture_with_a_scrambled_head_fails(cli_runner, scrambled_checkpoint):
    result = _verify(cli_runner, scrambled_checkpoint, "--reference", FASHION_CHECKPOINT, "--data", FASHION / "val",
                     "--limit", "300", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["passed"] is False and report["top1_drop"] > 50
    assert report["agreement"] < 20


@pytest.mark.slow
def test_verify_without_reference_reads_the_candidate_once(mini, images, tmp_path, monkeypatch):
    """The candidate ONNX is opened once (ffx.runtime.backends.runner.open_model) for following its records
    to the FP32 source, its runner and its calibration manifest; each was a parse of its own."""
    import shutil

    import onnx

    from ffx.calib import CalibrationOptions, calibrate_int8
    from ffx.runtime.tasks.verify import verify

    source = tmp_path / "mini.onnx"  # the manifest names its source beside the graph
    shutil.copyfile(mini.onnx, source)
    quantized = tmp_path / "mini.int8.onnx"
    calibrate_int8(str(source), str(images), str(quantized), CalibrationOptions(num_images=10),
                   tensorrt_check=False)
    loaded = []
    real_load = onnx.load

    def counting_load(f, *args, **kwargs):
        loaded.append(str(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(onnx, "load", counting_load)
    report = verify(quantized, None, images, max_top1_drop=100, progress=False)
    assert loaded.count(str(quantized)) == 1, loaded
    assert report.calibration_overlap == 10  # the manifest, found through the opened file
    assert report.warnings[0].startswith(f"reference: {source}")
