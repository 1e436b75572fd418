"""bench/int8_noise.py's graph surgery and budget on the trained fixture (real calibration, real
onnxruntime): the partly-float graphs are the ones they claim to be, and the budget adds up."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ffx.calib import CalibrationOptions, calibrate_int8
from ffx.calib.sensitivity import run_model
from helpers import FASHION, fashion_onnx, needs_fashion_model


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    from bench.fidelity import decode_images
    from ffx.metadata import Preprocess, read_onnx_metadata

    fp32 = fashion_onnx(tmp_path_factory)
    out = tmp_path_factory.mktemp("noise") / "m.int8.onnx"
    calibrate_int8(fp32, FASHION / "train", out, CalibrationOptions(num_images=100, workers=0, use_cache=False),
                   tensorrt_check=False)
    info = read_onnx_metadata(fp32)
    images, _, _ = decode_images(FASHION / "val", Preprocess.from_dict(info["preprocess"]), info["class_names"],
                                 per_class=30)
    weights = {init.name: numpy_helper.to_array(init) for init in onnx.load(fp32).graph.initializer}
    return onnx.load(out), weights, images, run_model(fp32.read_bytes(), images)


@pytest.mark.slow
@needs_fashion_model
def test_partly_float_graphs_are_what_they_claim(calibrated):
    from bench.int8_noise import activation_quantizers, partly_float, weight_dequantizers

    model, weights, images, reference = calibrated
    activations, quantized_weights = list(activation_quantizers(model)), list(weight_dequantizers(model))
    assert len(activations) == 18 and len(quantized_weights) == 18
    nothing = partly_float(model, weights, [], [])
    assert not {node.op_type for node in nothing.graph.node} & {"QuantizeLinear", "DequantizeLinear"}
    np.testing.assert_allclose(run_model(nothing, images), reference, rtol=0, atol=1e-4)
    everything = partly_float(model, weights, activations, quantized_weights)
    np.testing.assert_array_equal(run_model(everything, images), run_model(model, images))
    one = partly_float(model, weights, activations[:1], [])
    assert [node.input[0] for node in one.graph.node if node.op_type == "QuantizeLinear"] == activations[:1]


@pytest.mark.slow
@needs_fashion_model
def test_the_budget_adds_up(calibrated):
    from bench.int8_noise import budget

    model, weights, images, reference = calibrated
    result = budget(model, weights, images, reference)
    assert len(result["tensors"]) == 36 and sum(row["share"] for row in result["tensors"]) == pytest.approx(1, abs=1e-3)
    # Independent rounding errors add: the sum of the tensors' powers predicts the whole graph's.
    assert abs(result["predicted_all_int8_snr_db"] - result["all_int8"]["snr_db"]) < 2.0, result
    # Each part alone is closer to FP32 than the whole graph.
    assert min(result["activations_only"]["snr_db"], result["weights_only"]["snr_db"]) > result["all_int8"]["snr_db"]


def test_the_speed_bar_search_takes_the_best_subset_not_the_greedy_one():
    from bench.int8_noise import most_error_under_bar

    # Bar 0.9: float layers may cost at most 11.1% of the all-INT8 time. Greedy by share per cost
    # takes c (0.5 for 10%) and then nothing fits; a + b (0.3 + 0.3 for 11%) removes more.
    shares = {"a": 0.3, "b": 0.3, "c": 0.5, "d": 0.05}
    costs = {"a": 0.055, "b": 0.055, "c": 0.10, "d": 0.5}
    keep, share, ratio = most_error_under_bar(shares, costs, bar=0.9)
    assert keep == ["a", "b"] and share == pytest.approx(0.6) and ratio == pytest.approx(1 / 1.11)
    # A layer that is faster in float (a negative cost) is never counted as a speed-up.
    keep, _, ratio = most_error_under_bar({"a": 0.1}, {"a": -0.02}, bar=0.9)
    assert keep == ["a"] and ratio == pytest.approx(1.0)
