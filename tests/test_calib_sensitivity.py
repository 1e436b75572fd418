"""ffx sensitivity, ffx compare and calibrate --target-agreement on the trained Fashion-MNIST
fixture (real export, real images, real onnxruntime), and a network built to be unreachable."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from ffx.calib import CalibrationOptions, calibrate_int8
from ffx.calib.model_io import load_source_model
from ffx.calib.sensitivity import held_out_set, prepare, run_model
from ffx.cli import cli
from ffx.errors import InvalidOption
from helpers import FASHION, TENSORRT_RTX_MISSING, fashion_onnx, needs_fashion_model
from test_calib import _export, _photos, _small_checkpoint

# Small counts keep the module fast; the statistics are cached in the module's folder.
OPTIONS = dict(num_images=100, workers=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("sensitivity")


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    return fashion_onnx(tmp_path_factory)


def _options(folder):
    return CalibrationOptions(cache_dir=str(folder / "cache"), **OPTIONS)


@pytest.mark.slow
@needs_fashion_model
def test_a_float_variant_is_the_graph_calibrate_writes(fashion, folder):
    options = _options(folder)
    _, variants, held_out, _ = prepare(fashion, FASHION / "train", options, 64, FASHION / "val")
    written = calibrate_int8(fashion, FASHION / "train", folder / "kept.onnx",
                             options.replace(keep_fp=("blocks.0.mlp1.fc2", "head")), tensorrt_check=False, warn=None)
    kept = [layer for layer in variants.layers if layer.name in ("blocks.0.mlp1.fc2", "head")]
    expected = run_model(Path(written.output).read_bytes(), held_out.images)
    np.testing.assert_allclose(run_model(variants.with_float(kept), held_out.images), expected, rtol=0, atol=1e-5)
    variant_ops = sorted(node.op_type for node in variants.with_float(kept).graph.node)
    assert variant_ops == sorted(node.op_type for node in onnx.load(written.output).graph.node)


@needs_fashion_model
def test_held_out_images_are_never_calibration_images(fashion, folder):
    from ffx.calib.selection import choose_calibration_images

    source = load_source_model(fashion)
    calibration = choose_calibration_images(FASHION / "train", 300, 0, source.info["class_names"], None)
    held_out = held_out_set(source, calibration, 5000, 0, warn=None)
    assert len(held_out) == 700  # the 1000 train images minus the 300 calibration images
    assert held_out.labels is not None and held_out.reference_logits.shape == (700, 10)
    source_set = held_out_set(source, calibration, 50, 0, held_out_data=FASHION / "val", warn=None)
    assert len(source_set) == 50 and "val" in source_set.source


def _sensitivity(cli_runner, fashion, folder, *extra):
    return cli_runner.invoke(cli, [
        "sensitivity", str(fashion), "--data", str(FASHION / "train"), "--held-out", str(FASHION / "val"),
        "--num-images", "100", "--calib-images", "100", "--workers", "0", "--cache-dir", str(folder / "cache"), *extra])


@pytest.mark.slow
@needs_fashion_model
def test_sensitivity_ranks_every_layer(fashion, folder, cli_runner):
    plot = folder / "sensitivity.png"
    result = _sensitivity(cli_runner, fashion, folder, "--plot", str(plot), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = {row["name"] for row in report["layers"]}
    assert names == {"patch_embed", "head"} | {f"blocks.{b}.{l}" for b in range(4)
                                               for l in ("mlp1.fc1", "mlp1.fc2", "mlp2.fc1", "mlp2.fc2")}
    shares = {row["name"]: row["flops_share"] for row in report["layers"]}
    assert sum(shares.values()) == pytest.approx(1.0)
    # Feature MLP: 50 tokens x 96 x 384 multiply-adds per Linear; token MLP: 96 x 50 x 200.
    assert shares["blocks.0.mlp1.fc1"] / shares["blocks.2.mlp2.fc2"] == pytest.approx((50 * 96 * 384) / (96 * 50 * 200))
    snr = [row["quantized_alone"]["snr_db"] for row in report["layers"]]
    assert snr == sorted(snr) and report["held_out_images"] == 100
    # One layer in INT8 is closer to FP32 than all of them; all but one in float likewise.
    assert all(row["quantized_alone"]["snr_db"] > report["all_int8"]["snr_db"] for row in report["layers"])
    assert max(row["float_alone"]["snr_db"] for row in report["layers"]) > report["all_int8"]["snr_db"]
    # The layers' rounding errors add: their shares sum to 1 and their sum predicts the whole graph.
    assert sum(row["error_share"] for row in report["layers"]) == pytest.approx(1, abs=1e-3)
    assert abs(report["predicted_snr_db"] - report["all_int8"]["snr_db"]) < 2.0, report["predicted_snr_db"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = _sensitivity(cli_runner, fashion, folder)
    assert table.exit_code == 0 and "statistics cache: hit" in table.output
    assert f"the sum predicts {report['predicted_snr_db']:.1f} dB" in table.output
    # Block 0's fc2 input has the outlier channels that --smooth-gelu evens out.
    assert report["layers"][0]["name"] == "blocks.0.mlp1.fc2" and "try --smooth-gelu" in table.output
    first = next(line for line in table.stdout.splitlines() if line.split()[:1] == ["1"])
    assert first.split()[1] == report["layers"][0]["name"]


@pytest.mark.slow
@needs_fashion_model
def test_target_agreement_writes_the_search_into_the_manifest(fashion, folder, cli_runner):
    out = folder / "target.onnx"
    result = cli_runner.invoke(cli, [
        "calibrate", str(fashion), "--data", str(FASHION / "train"), "--held-out", str(FASHION / "val"),
        "--held-out-images", "200", "--num-images", "100", "--workers", "0", "--cache-dir", str(folder / "cache"),
        "--target-agreement", "99.5", "--max-top1-drop", "0.5", "--no-tensorrt-check", "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    search = manifest["keep_fp_search"]
    assert search["target"] == {"agreement": 99.5, "max_top1_drop": 0.5}
    assert search["measured"]["agreement"] >= 99.5 and search["fp32_top1"] - search["measured"]["top1"] <= 0.5
    assert manifest["params"]["keep_fp"] == search["keep_fp"] and search["held_out_images"] == 200
    assert search["steps"][0]["keep_fp"] == []  # the all-INT8 graph is measured first
    low, high = search["agreement_ci95"]
    assert low <= search["measured"]["agreement"] <= high and high - low > 0.5  # 200 images resolve little
    if search["keep_fp"]:
        assert search["measured"]["snr_db"] >= search["snr_floor_db"]
    assert "95% interval" in result.output and "note: the held-out images come from --data" not in result.output
    assert result.output.count("300 or more give steadier ranges") == 1  # the search and the calibration warn once
    # The measured figure is the written graph's: re-measure it on the same held-out images.
    from ffx.calib.selection import choose_calibration_images

    source = load_source_model(fashion)
    calibration = choose_calibration_images(FASHION / "train", 100, 0, source.info["class_names"], None)
    held_out = held_out_set(source, calibration, 200, 0, held_out_data=FASHION / "val", warn=None)
    assert held_out.fidelity(out.read_bytes()).agreement == search["measured"]["agreement"]


def test_agreement_interval_is_wilsons():
    from ffx.calib.mixed_precision import agreement_interval

    low, high = agreement_interval(99.9, 10_000)
    assert 99.81 < low < 99.82 and 99.94 < high < 99.95
    assert agreement_interval(100.0, 1000)[0] == pytest.approx(99.6174, abs=1e-3)  # 0 of 1000 wrong: not 100% sure
    assert agreement_interval(0.0, 50)[0] == 0.0


def _tied_head(state):
    """Two classes whose head rows differ by far less than int8 rounding, and lead every image:
    quantizing the head flips their order at random, so no float set without the head helps."""
    import torch

    state["head.weight"][1] = state["head.weight"][0] + 1e-6 * torch.randn_like(state["head.weight"][0])
    state["head.bias"][:] = torch.tensor([20.0, 20.0, 0.0])


@pytest.mark.slow
def test_an_unreachable_target_exits_1_and_writes_nothing(folder, cli_runner):
    model = _export(_small_checkpoint(folder / "tied.pth", edit=_tied_head), folder / "tied.onnx")
    photos = _photos(folder / "photos", per_class=16)
    out = folder / "tied.int8.onnx"
    result = cli_runner.invoke(cli, ["calibrate", str(model), "--data", str(photos), "--num-images", "12",
                                     "--workers", "0", "--no-cache", "--target-agreement", "99.9", "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert "cannot be reached on 36 held-out images" in result.output and "but head in float" in result.output
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_target_flags_are_checked(folder, cli_runner):
    args = ["calibrate", str(folder / "absent.onnx"), "--data", str(folder)]
    for extra in (["--target-agreement", "99", "--keep-fp", "head"], ["--held-out", str(folder)],
                  ["--fp16", "--target-agreement", "99"], ["--target-agreement", "101"]):
        result = cli_runner.invoke(cli, args + extra)
        assert result.exit_code == 2 and "Traceback" not in result.output, (extra, result.output)


@pytest.mark.slow
@needs_fashion_model
def test_compare_shows_the_error_block_by_block(fashion, folder, cli_runner):
    from ffx.calib import convert_fp16

    int8 = calibrate_int8(fashion, FASHION / "train", folder / "plain.onnx", _options(folder), tensorrt_check=False,
                          warn=None)
    fp16 = convert_fp16(fashion, folder / "plain.fp16.onnx", options=_options(folder), tensorrt_check=False, warn=None)
    reports = {}
    for name, candidate in (("int8", int8.output), ("fp16", fp16.output)):
        result = cli_runner.invoke(cli, ["compare", str(fashion), candidate, "--data", str(FASHION / "val"),
                                         "--num-images", "40", "--json"])
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(result.stdout)
    points = [row["point"] for row in reports["int8"]["points"]]
    assert points == ["embedding"] + [f"blocks.{b}.mlp{m}" for b in range(4) for m in (1, 2)] + ["logits"]
    assert reports["int8"]["images"] == 40
    for int8_row, fp16_row in zip(reports["int8"]["points"], reports["fp16"]["points"]):
        assert 0 < fp16_row["relative_error"] < int8_row["relative_error"] < 0.1
    # INT8 error grows from the embedding to the last block.
    assert reports["int8"]["points"][-2]["relative_error"] > 2 * reports["int8"]["points"][0]["relative_error"]

    other = _export(_small_checkpoint(folder / "other.pth"), folder / "other.onnx")
    result = cli_runner.invoke(cli, ["compare", str(fashion), str(other), "--data", str(FASHION / "val")])
    assert result.exit_code == 2 and "Error:" in result.output and "Traceback" not in result.output


def test_calibration_options_are_validated_once():
    assert CalibrationOptions().method == "entropy" and CalibrationOptions().num_images == 512
    for bad in ({"method": "kl"}, {"percentile": 0}, {"num_images": 0}, {"workers": -1}, {"seed": -5}, {"gelu_range": "x"},
                {"bias_correction": "token"}):
        with pytest.raises(InvalidOption) as caught:
            CalibrationOptions(**bad)
        assert caught.value.option == next(iter(bad)) and "--" not in str(caught.value)
    options = CalibrationOptions(keep_fp=["head"])
    assert options.keep_fp == ("head",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.method = "max"
    assert CalibrationOptions(use_cache=False).statistics_cache is None
    assert CalibrationOptions(cache_dir="c").statistics_cache == Path("c")


@pytest.mark.slow
@needs_fashion_model
def test_outlier_options_raise_the_logit_snr_and_keep_the_placement(fashion, folder):
    from ffx.calib.sensitivity import fidelity_of

    plain_options = _options(folder)
    both = plain_options.replace(gelu_range="output", bias_correction="position")
    plain = calibrate_int8(fashion, FASHION / "train", folder / "o.plain.onnx", plain_options, tensorrt_check=False,
                           warn=None)
    treated = calibrate_int8(fashion, FASHION / "train", folder / "o.both.onnx", both, warn=None,
                             tensorrt_check=TENSORRT_RTX_MISSING is None, tensorrt_backend="tensorrt-rtx")
    if TENSORRT_RTX_MISSING is None:
        assert treated.tensorrt["status"] == "built", treated.tensorrt
    manifest = json.loads(Path(treated.manifest).read_text())
    assert manifest["params"]["gelu_range"] == "output" and manifest["params"]["bias_correction"] == "position"
    assert "gelu_range" not in json.loads(Path(plain.manifest).read_text())["params"]
    model = onnx.load(treated.output)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QuantizeLinear") == 18 and ops == [node.op_type for node in onnx.load(plain.output).graph.node]
    biases = {init.name: tuple(init.dims) for init in model.graph.initializer}
    fc1_add = next(node for node in model.graph.node if node.op_type == "Add" and node.input[0] == "val_14")
    assert biases[fc1_add.input[1]] == (50, 384)  # one bias per token and channel

    _, variants, held_out, _ = prepare(fashion, FASHION / "train", both, 200, FASHION / "val")
    scored = {name: fidelity_of(run_model(Path(report.output).read_bytes(), held_out.images), held_out.reference_logits)
              for name, report in (("plain", plain), ("both", treated))}
    assert scored["both"].snr_db > scored["plain"].snr_db + 1.0, scored
    kept = [layer for layer in variants.layers if layer.name == "blocks.0.mlp1.fc1"]
    written = calibrate_int8(fashion, FASHION / "train", folder / "o.kept.onnx", both.replace(keep_fp=("blocks.0.mlp1.fc1",)),
                             tensorrt_check=False, warn=None)
    np.testing.assert_allclose(run_model(variants.with_float(kept), held_out.images),
                               run_model(Path(written.output).read_bytes(), held_out.images), rtol=0, atol=1e-5)


@pytest.mark.slow
@needs_fashion_model
def test_smooth_gelu_evens_out_the_outlier_channels_exactly(fashion, folder, cli_runner):
    from ffx.calib.layers import network_layers
    from ffx.calib.selection import choose_calibration_images
    from ffx.calib.sensitivity import fidelity_of
    from ffx.calib.smoothing import SMOOTHING_SPREAD, smooth_post_gelu

    source = load_source_model(fashion)
    calibration = choose_calibration_images(FASHION / "train", 100, 0, source.info["class_names"], None)
    smoothed_source, smoothed = smooth_post_gelu(source, network_layers(source.model, source.info), calibration.items)
    # Block 0's feature-MLP GELU has the outlier channels; the token MLPs' GELUs do not.
    assert "blocks.0.mlp1.fc2" in [tensor.layer for tensor in smoothed]
    assert all(tensor.spread >= SMOOTHING_SPREAD and tensor.layer.endswith("mlp1.fc2") for tensor in smoothed)
    assert smoothed_source.sha256 == source.sha256 and smoothed_source.model_sha256 != source.sha256
    held_out = held_out_set(source, calibration, 200, 0, held_out_data=FASHION / "val", warn=None)
    np.testing.assert_allclose(run_model(smoothed_source.model, held_out.images), held_out.reference_logits,
                               rtol=0, atol=1e-4)  # the same function in FP32

    def calibrate(name, *flags):
        out = folder / name
        result = cli_runner.invoke(cli, [
            "calibrate", str(fashion), "--data", str(FASHION / "train"), "--num-images", "100", "--workers", "0",
            "--cache-dir", str(folder / "cache"), *flags, "-o", str(out)]
            + ([] if TENSORRT_RTX_MISSING is None else ["--no-tensorrt-check"]))
        assert result.exit_code == 0, result.output
        return out, json.loads(out.with_suffix(".json").read_text()), result.output

    plain, plain_manifest, _ = calibrate("s.plain.onnx")
    out, manifest, printed = calibrate("s.smooth.onnx", "--smooth-gelu")
    if TENSORRT_RTX_MISSING is None:
        assert "TensorRT-RTX" in printed and "parsed and built" in printed, printed
    assert "smooth_gelu" not in plain_manifest["params"]
    assert [t["layer"] for t in manifest["params"]["smooth_gelu"]["tensors"]] == [t.layer for t in smoothed]
    model = onnx.load(out)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QuantizeLinear") == 18 and len(ops) == len(onnx.load(plain).graph.node) + 2 * len(smoothed)
    producer = {output: node for node in model.graph.node for output in node.output}
    quantize = next(node for node in model.graph.node if node.op_type == "QuantizeLinear"
                    and node.input[0] == f"{smoothed[0].tensor}/smoothed")
    assert producer[quantize.input[0]].op_type == "Mul" and producer[producer[quantize.input[0]].input[0]].op_type == "Add"
    scored = {name: fidelity_of(run_model(path.read_bytes(), held_out.images), held_out.reference_logits)
              for name, path in (("plain", plain), ("smoothed", out))}
    assert scored["smoothed"].snr_db > scored["plain"].snr_db + 2.0, scored
    # A layer kept in float is not rounded, so its input is left as it is.
    kept, kept_manifest, _ = calibrate("s.kept.onnx", "--smooth-gelu", "--keep-fp", "blocks.0.mlp1.fc2")
    assert "blocks.0.mlp1.fc2" not in [t["layer"] for t in kept_manifest["params"]["smooth_gelu"]["tensors"]]
    assert len(onnx.load(kept).graph.node) == len(ops) - 3 - 2  # its Q, DQ and weight DQ, and the Add and Mul
    fc2 = next(layer for layer in network_layers(source.model, source.info) if layer.name == "blocks.0.mlp1.fc2")
    written = {init.name: init for init in onnx.load(kept).graph.initializer}
    original = {init.name: init for init in source.model.graph.initializer}
    assert written[fc2.weight] == original[fc2.weight]  # the source's own weight, not the smoothed one
    assert not [name for name in written if name.startswith(f"{fc2.activation}/")]
