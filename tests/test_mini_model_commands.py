"""ffx compare, ffx sensitivity (with the outlier options and its plot) and calibrate's
--target-agreement search on the session's random-weight mini model: a few seconds each, so that
`make test-fast` runs them. Their thorough tests, on the trained fixture, are slow
(tests/test_calib_sensitivity.py)."""

import json

import pytest

from ffx.cli import cli

# The mini model's quantizable layers as --keep-fp names them (tests/helpers.py: two blocks).
MINI_LAYERS = ["patch_embed", "head",
               *(f"blocks.{block}.{mlp}.{fc}" for block in (0, 1) for mlp in ("mlp1", "mlp2") for fc in ("fc1", "fc2"))]
# The 30 labelled images: 12 calibrate, the other 18 are held out.
CALIBRATION = ["--workers", "0", "--no-cache"]


def _ffx(cli_runner, *args):
    result = cli_runner.invoke(cli, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


def test_compare_follows_the_error_block_by_block(cli_runner, mini, qdq, images):
    report = json.loads(_ffx(cli_runner, "compare", mini.onnx, qdq, "--data", images, "--num-images", "10",
                             "--json").stdout)
    assert [row["point"] for row in report["points"]] == [
        "embedding", "blocks.0.mlp1", "blocks.0.mlp2", "blocks.1.mlp1", "blocks.1.mlp2", "logits"]
    assert report["images"] == 10
    assert all(0 < row["relative_error"] < 0.5 for row in report["points"])


def test_sensitivity_with_the_outlier_options_ranks_every_layer_and_plots(cli_runner, mini, images, tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (pip install -e '.[bench]')")
    plot = tmp_path / "ranking.png"
    report = json.loads(_ffx(cli_runner, "sensitivity", mini.onnx, "--data", images, "--held-out-images", "10",
                             "--calib-images", "12", *CALIBRATION, "--smooth-gelu", "--bias-correction", "channel",
                             "--gelu-range", "output", "--plot", plot, "--json").stdout)
    assert sorted(layer["name"] for layer in report["layers"]) == sorted(MINI_LAYERS)
    snr = [layer["quantized_alone"]["snr_db"] for layer in report["layers"]]
    assert snr == sorted(snr)  # most harmful first
    assert (report["calibration_images"], report["held_out_images"]) == (12, 10)
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_target_agreement_keeps_layers_in_float_until_the_target_holds(cli_runner, mini, images, tmp_path):
    output = tmp_path / "mini.int8.onnx"
    report = json.loads(_ffx(cli_runner, "calibrate", mini.onnx, "--data", images, "--num-images", "12", *CALIBRATION,
                             "--no-tensorrt-check", "--target-agreement", "99", "--point-estimate", "-o", output, "--json").stdout)
    search = json.loads(output.with_suffix(".json").read_text())["keep_fp_search"]
    assert search["steps"][0]["keep_fp"] == [] and not search["steps"][0]["met"]  # all INT8 misses it
    assert search["measured"]["agreement"] >= 99
    assert sorted(search["keep_fp"]) == sorted(report["kept_fp_layers"]) != []
    assert sorted(report["kept_fp_layers"] + report["quantized_layers"]) == sorted(MINI_LAYERS)


def test_fp8_target_search_with_int8_layers_none_stays_fp8(cli_runner, mini, images, tmp_path):
    output = tmp_path / "mini.fp8.onnx"
    result = _ffx(cli_runner, "calibrate", mini.onnx, "--fp8", "--data", images, "--num-images", "12", *CALIBRATION,
                  "--no-tensorrt-check", "--target-agreement", "99", "--point-estimate", "--int8-layers", "none",
                  "-o", output)
    manifest = json.loads(output.with_suffix(".json").read_text())
    assert "choosing FP8 or INT8" not in result.stderr and "int8_layers" not in manifest["keep_fp_search"]
    assert {layer["precision"] for layer in manifest["layers"]} <= {"fp8", "fp32"}
    # After a set meets the target, FP8's search measures cheaper ones and keeps the cheapest that meets it
    steps = manifest["keep_fp_search"]["steps"]
    met = [step for step in steps if step["met"]]
    assert len(met) >= 2 and steps.index(met[1]) > steps.index(met[0]) and met[-1]["float_flops_share"] < met[0]["float_flops_share"]
    assert manifest["keep_fp_search"]["float_flops_share"] == min(step["float_flops_share"] for step in met)
    assert "trying a cheaper set" in result.stderr


def test_sensitivity_takes_its_old_num_images_flag_with_a_warning(cli_runner, mini, images):
    """--num-images counted held-out images on sensitivity but calibration images on calibrate; the
    old spelling still works for scripts, says what it now is, and cannot contradict the new one."""
    result = cli_runner.invoke(cli, ["sensitivity", str(mini.onnx), "--data", str(images), "--num-images", "10",
                                     "--calib-images", "12", *CALIBRATION, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["held_out_images"] == 10
    assert "Warning: --num-images on `ffx sensitivity` counts held-out images: it is now --held-out-images" in result.stderr
    clash = cli_runner.invoke(cli, ["sensitivity", str(mini.onnx), "--data", str(images), "--num-images", "10",
                                    "--held-out-images", "20", *CALIBRATION])
    assert clash.exit_code == 2 and "--num-images is the old name of --held-out-images" in clash.stderr
    assert "--num-images" not in cli_runner.invoke(cli, ["sensitivity", "--help"]).output
