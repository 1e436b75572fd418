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
                             options.replace(keep_fp=("blocks.0.mlp1.fc2", "head")), tensorrt_check=False)
    kept = [layer for layer in variants.layers if layer.name in ("blocks.0.mlp1.fc2", "head")]
    expected = run_model(Path(written.output).read_bytes(), held_out.images)
    np.testing.assert_allclose(run_model(variants.with_float(kept), held_out.images), expected, rtol=0, atol=1e-5)
    variant_ops = sorted(node.op_type for node in variants.with_float(kept).graph.node)
    assert variant_ops == sorted(node.op_type for node in onnx.load(written.output).graph.node)


@needs_fashion_model
def test_held_out_images_are_never_calibration_images(fashion, folder):
    from ffx.calib.selection import choose_calibration_images

    source = load_source_model(fashion)
    calibration = choose_calibration_images(FASHION / "train", 300, 0, source.metadata.class_names)
    held_out = held_out_set(source, calibration, 5000, 0)
    assert len(held_out) == 700  # the 1000 train images minus the 300 calibration images
    assert held_out.labels is not None and held_out.reference_logits.shape == (700, 10)
    source_set = held_out_set(source, calibration, 50, 0, held_out_data=FASHION / "val")
    assert len(source_set) == 50 and "val" in source_set.source


def _sensitivity(cli_runner, fashion, folder, *extra):
    return cli_runner.invoke(cli, [
        "sensitivity", str(fashion), "--data", str(FASHION / "train"), "--held-out", str(FASHION / "val"),
        "--held-out-images", "100", "--calib-images", "100", "--workers", "0", "--cache-dir", str(folder / "cache"), *extra])


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
        "--target-agreement", "99.5", "--max-top1-drop", "0.5", "--point-estimate", "--no-tensorrt-check",
        "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    search = manifest["keep_fp_search"]
    assert search["target"] == {"agreement": 99.5, "max_top1_drop": 0.5, "point_estimate": True}
    assert search["judged_on"] == "point estimate" and search["images_needed"] == 765  # 1.96^2 x 0.995 / 0.005
    assert search["ranked_by"] == "error in FP32's top-1 margin on the closest calls"
    assert search["measured"]["agreement"] >= 99.5 and search["top1_drop"] <= 0.5
    assert search["top1_drop"] == pytest.approx(search["fp32_top1"] - search["measured"]["top1"], abs=1e-3)
    assert manifest["params"]["keep_fp"] == search["keep_fp"] and search["held_out_images"] == 200
    assert search["steps"][0]["keep_fp"] == []  # the all-INT8 graph is measured first
    low, high = search["agreement_ci95"]
    assert low <= search["measured"]["agreement"] <= high and high - low > 0.5  # 200 images resolve little
    drop_low, drop_high = search["top1_drop_ci95"]
    assert drop_low <= search["top1_drop"] <= drop_high
    # The summary says what the verdict rests on, and that 200 images cannot carry it on the bound.
    assert "target met at the point estimate on 200 held-out images (too few to show it on the 95% bound: " \
           "that takes at least 765)" in result.output
    assert "95% interval" in result.output and "note: the held-out images come from --data" not in result.output
    assert result.output.count("300 or more give steadier ranges") == 1  # the search and the calibration warn once
    # The measured figure is the written graph's: re-measure it on the same held-out images.
    from ffx.calib.selection import choose_calibration_images

    source = load_source_model(fashion)
    calibration = choose_calibration_images(FASHION / "train", 100, 0, source.metadata.class_names)
    held_out = held_out_set(source, calibration, 200, 0, held_out_data=FASHION / "val")
    assert held_out.fidelity(out.read_bytes()).agreement == search["measured"]["agreement"]


@needs_fashion_model
def test_too_few_held_out_images_stop_before_the_search(fashion, folder, cli_runner):
    out, cache = folder / "unresolved.onnx", folder / "unresolved-cache"
    args = ["calibrate", str(fashion), "--data", str(FASHION / "train"), "--held-out", str(FASHION / "val"),
            "--num-images", "100", "--workers", "0", "--cache-dir", str(cache), "--target-agreement", "99.9",
            "-o", str(out)]
    result = cli_runner.invoke(cli, args + ["--held-out-images", "300"])
    assert result.exit_code == 2, result.output
    assert "300 held-out images" in result.output and "cannot resolve top-1 agreement with FP32 >= 99.9%" in result.output
    assert "the 95% lower bound is 98.74%" in result.output and "at least 3,838 images" in result.output
    assert "--point-estimate" in result.output and "Traceback" not in result.output
    # Said before anything was computed: no statistics, no held-out logits, no output.
    assert not cache.exists() and not out.exists() and "search: judging" not in result.output
    # More images than there are: an error, not a quiet shrink.
    result = cli_runner.invoke(cli, args + ["--held-out-images", "5000"])
    assert result.exit_code == 2 and "--held-out-images: 5,000 held-out images asked for, but" in result.output
    assert "has only 1,000" in result.output and not cache.exists()
    # The default takes all there are, and says so (1,000 still cannot resolve 99.9%).
    result = cli_runner.invoke(cli, args)
    assert result.exit_code == 2 and "measuring on all 1,000 held-out images" in result.output
    assert "1,000 held-out images" in result.output and "99.62%" in result.output and not cache.exists()


def test_the_numbers_behind_the_verdicts():
    from ffx.calib.mixed_precision import Counts, Target
    from ffx.fidelity import disagreements_allowed, images_to_resolve_agreement, images_to_resolve_drop, wilson_interval

    assert images_to_resolve_agreement(99.9) == 3838  # 1.96^2 x 0.999 / 0.001
    assert wilson_interval(3838, 3838)[0] >= 0.999 > wilson_interval(3837, 3837)[0]
    assert images_to_resolve_agreement(100) is None and images_to_resolve_drop(0) is None
    assert [disagreements_allowed(99.9, n) for n in (300, 3838, 8000, 10_000)] == [-1, 0, 2, 3]
    assert wilson_interval(9997, 10_000)[0] >= 0.999 > wilson_interval(9996, 10_000)[0]
    needed = images_to_resolve_drop(0.5)
    from ffx.fidelity import paired_difference_ci

    assert paired_difference_ci(0, 0, needed)[1] <= 0.5 < paired_difference_ci(0, 0, needed - 1)[1]

    bound, point = Target(agreement=99.9), Target(agreement=99.9, point_estimate=True)
    measured = Counts(images=10_000, disagreeing=4)  # 99.96%: 95% lower bound 99.897%
    assert point.met_by(measured) and not bound.met_by(measured)
    assert bound.met_by(Counts(images=10_000, disagreeing=3))
    assert bound.images_needed() == 3838 and point.images_needed() == 1
    assert bound.out_of_reach(Counts(images=500, disagreeing=4), 10_000)
    assert not bound.out_of_reach(Counts(images=500, disagreeing=3), 10_000)
    drop = Target(max_top1_drop=0.5)
    labelled = Counts(images=1000, disagreeing=3, reference_only=3, candidate_only=1, labelled=True)
    assert labelled.top1_drop == pytest.approx(0.2) and drop.met_by(labelled) == (labelled.top1_drop_ci95[1] <= 0.5)


def test_the_cheapest_float_sets_are_the_knapsack_optimum():
    import itertools
    from types import SimpleNamespace

    from ffx.calib.mixed_precision import float_set_frontier

    rng = np.random.default_rng(3)
    layers = [SimpleNamespace(name=f"l{i}") for i in range(9)]
    errors = {layer.name: float(rng.exponential()) for layer in layers}
    shares = rng.dirichlet(np.ones(len(layers)))
    cost = {layer.name: float(share) for layer, share in zip(layers, shares)}
    frontier = float_set_frontier(layers, errors, cost)
    assert [point[0] for point in frontier] == sorted(point[0] for point in frontier)
    assert [point[1] for point in frontier] == sorted(point[1] for point in frontier)
    for spent, removed, chosen in frontier:
        assert removed == pytest.approx(sum(errors[layer.name] for layer in chosen))
        # No subset at most as costly (at the knapsack's 0.01% resolution) removes more.
        best = max(sum(errors[l.name] for l in subset) for size in range(len(layers) + 1)
                   for subset in itertools.combinations(layers, size)
                   if sum(cost[l.name] for l in subset) <= spent + 1e-4)
        assert removed >= best - 1e-9


def test_the_flip_prediction_counts_what_gaussian_errors_flip():
    from ffx.calib.mixed_precision import FlipModel, poisson_at_most

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(20_000, 10)) * 3
    errors = rng.normal(size=reference.shape) * 0.1
    model = FlipModel(reference, errors)
    for scale in (1.0, 0.5):
        noisy = reference + scale * rng.normal(size=reference.shape) * 0.1
        flipped = int(np.sum(noisy.argmax(1) != reference.argmax(1)))
        assert abs(model.expected(scale) - flipped) < 4 * np.sqrt(flipped) + 3, (scale, model.expected(scale), flipped)
    assert model.expected(0.5) < model.expected(1.0) and model.expected(0) == 0
    assert poisson_at_most(3, 1.5) == pytest.approx(0.9344, abs=1e-4) and poisson_at_most(-1, 1) == 0


def test_layers_are_ranked_by_their_error_in_the_top_1_margin():
    from ffx.calib.mixed_precision import margin_error_power

    reference = np.array([[5.0, 4.9, -3.0, 0.0], [1.0, 2.0, 0.0, 1.9]])  # contenders: 0 and 1; 1 and 3
    off_contention = reference.copy()
    off_contention[:, 2] += 10.0  # a large error, on a class not in contention
    off_contention[0, 3] -= 7.0
    assert margin_error_power(reference, off_contention) == 0
    common = reference + 0.5  # the same error on every logit moves no margin
    assert margin_error_power(reference, common) == pytest.approx(0)
    moved = reference.copy()
    moved[0, 0] -= 0.3  # image 0's margin shrinks by 0.3
    moved[1, 3] += 0.2  # image 1's runner-up (class 3) gains 0.2
    assert margin_error_power(reference, moved) == pytest.approx(0.3 ** 2 + 0.2 ** 2)


def _tied_classes(state):
    """Classes 0 and 1 lead every image and tie exactly but for float rounding: their head rows
    differ by 100 / gamma of the final LayerNorm, so their logits differ by 100 times the sum of its
    normalized output (0, but for rounding) once the biases make up for beta. Which of the two wins
    is decided by rounding, so any layer in INT8 (not only the head) flips about half the images:
    no float set but everything helps."""
    gamma, beta = state["norm.weight"], state["norm.bias"]
    direction = 100.0 / gamma
    state["head.weight"][1] = state["head.weight"][0] + direction
    state["head.bias"][:] = 0.0
    state["head.bias"][0] = 20.0
    state["head.bias"][1] = 20.0 - float(direction @ beta)


@pytest.mark.slow
def test_an_unreachable_target_exits_1_and_writes_nothing(folder, cli_runner):
    model = _export(_small_checkpoint(folder / "tied.pth", edit=_tied_classes), folder / "tied.onnx")
    photos = _photos(folder / "photos", per_class=16)
    out = folder / "tied.int8.onnx"
    result = cli_runner.invoke(cli, ["calibrate", str(model), "--data", str(photos), "--num-images", "12",
                                     "--workers", "0", "--no-cache", "--target-agreement", "99.9", "--point-estimate",
                                     "-o", str(out)])
    assert result.exit_code == 1, result.output
    # The last resort measured: every layer in float but the cheapest (the head).
    assert "cannot be reached on 36 held-out images: with every layer but head in float, " in result.output
    assert "at most 0 of 36 may" in result.output
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_target_flags_are_checked(folder, cli_runner):
    args = ["calibrate", str(folder / "absent.onnx"), "--data", str(folder)]
    for extra in (["--target-agreement", "99", "--keep-fp", "head"], ["--held-out", str(folder)],
                  ["--fp16", "--target-agreement", "99"], ["--target-agreement", "101"], ["--point-estimate"],
                  ["--held-out-images", "100"]):
        result = cli_runner.invoke(cli, args + extra)
        assert result.exit_code == 2 and "Traceback" not in result.output, (extra, result.output)


@pytest.mark.slow
@needs_fashion_model
def test_compare_shows_the_error_block_by_block(fashion, folder, cli_runner):
    from ffx.calib import convert_fp16

    int8 = calibrate_int8(fashion, FASHION / "train", folder / "plain.onnx", _options(folder), tensorrt_check=False)
    fp16 = convert_fp16(fashion, folder / "plain.fp16.onnx", options=_options(folder), tensorrt_check=False)
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
    plain = calibrate_int8(fashion, FASHION / "train", folder / "o.plain.onnx", plain_options, tensorrt_check=False)
    treated = calibrate_int8(fashion, FASHION / "train", folder / "o.both.onnx", both,
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
                             tensorrt_check=False)
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
    calibration = choose_calibration_images(FASHION / "train", 100, 0, source.metadata.class_names)
    smoothed_source, smoothed = smooth_post_gelu(source, network_layers(source.model, source.metadata), calibration.items)
    # Block 0's feature-MLP GELU has the outlier channels; the token MLPs' GELUs do not.
    assert "blocks.0.mlp1.fc2" in [tensor.layer for tensor in smoothed]
    assert all(tensor.spread >= SMOOTHING_SPREAD and tensor.layer.endswith("mlp1.fc2") for tensor in smoothed)
    assert smoothed_source.sha256 == source.sha256 and smoothed_source.model_sha256 != source.sha256
    held_out = held_out_set(source, calibration, 200, 0, held_out_data=FASHION / "val")
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
    fc2 = next(layer for layer in network_layers(source.model, source.metadata) if layer.name == "blocks.0.mlp1.fc2")
    written = {init.name: init for init in onnx.load(kept).graph.initializer}
    original = {init.name: init for init in source.model.graph.initializer}
    assert written[fc2.weight] == original[fc2.weight]  # the source's own weight, not the smoothed one
    assert not [name for name in written if name.startswith(f"{fc2.activation}/")]
