"""ffx.tensorrt against the real TensorRT-RTX builder (CPU ahead-of-time), on small hand-made graphs
in FP32, FP16 and Q/DQ INT8 and on graphs TensorRT rejects."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ffx.errors import BackendUnavailable, FfxError
from ffx.tensorrt import available_backend, build_serialized_engine
from helpers import needs_rtx

pytestmark = needs_rtx


def _linear_model(path, precision="fp32", features=8, classes=4, batch="batch"):
    """images [batch, features] -> logits [batch, classes]: one MatMul + Add, in the given precision."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((features, classes)).astype(np.float32)
    bias = rng.standard_normal(classes).astype(np.float32)
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, features])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])
    if precision == "fp32":
        inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
        nodes = [helper.make_node("MatMul", ["images", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["logits"])]
    elif precision == "fp16":
        inits = [numpy_helper.from_array(weight.astype(np.float16), "w"), numpy_helper.from_array(bias.astype(np.float16), "b")]
        nodes = [
            helper.make_node("Cast", ["images"], ["x16"], to=TensorProto.FLOAT16),
            helper.make_node("MatMul", ["x16", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["y16"]),
            helper.make_node("Cast", ["y16"], ["logits"], to=TensorProto.FLOAT),
        ]
    elif precision == "int8":
        w_scale = np.abs(weight).max(axis=0) / 127.0
        w_q = np.clip(np.round(weight / w_scale), -127, 127).astype(np.int8)
        inits = [
            numpy_helper.from_array(w_q, "w_q"),
            numpy_helper.from_array(w_scale.astype(np.float32), "w_scale"),
            numpy_helper.from_array(np.zeros(classes, np.int8), "w_zero"),
            numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
            numpy_helper.from_array(bias, "b"),
        ]
        nodes = [
            helper.make_node("QuantizeLinear", ["images", "x_scale", "x_zero"], ["x_q"], name="x_q"),
            helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"], name="x_dq"),
            helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="w_dq", axis=1),
            helper.make_node("MatMul", ["x_dq", "w"], ["mm"], name="matmul"),
            helper.make_node("Add", ["mm", "b"], ["logits"], name="bias_add"),
        ]
    else:
        raise ValueError(precision)
    model = helper.make_model(helper.make_graph(nodes, "linear", [images], [logits], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_rtx_builds_every_precision_on_the_cpu(tmp_path, precision):
    path = _linear_model(tmp_path / f"linear.{precision}.onnx", precision)
    engine, build = build_serialized_engine(path, backend="tensorrt-rtx", min_batch=1, opt_batch=2, max_batch=4, progress=False)
    assert isinstance(engine, bytes) and len(engine) > 1000
    assert build.backend == "tensorrt-rtx"
    import tensorrt_rtx_bindings

    assert build.backend_version == tensorrt_rtx_bindings.__version__
    assert build.input_name == "images" and build.output_names == ["logits"]
    assert build.profile == {"min": [1, 8], "opt": [2, 8], "max": [4, 8]}
    assert build.input_dtype == "float32"
    assert build.strongly_typed


def test_auto_picks_an_installed_backend():
    backend = available_backend("auto")
    assert backend.name in ("tensorrt", "tensorrt-rtx")
    assert available_backend("tensorrt-rtx").name == "tensorrt-rtx"


def test_missing_backend_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable, match="pip install tensorrt"):
        available_backend("tensorrt")
    with pytest.raises(FfxError, match="unknown backend"):
        available_backend("tensorflow")


def test_parse_error_names_the_failing_node(tmp_path):
    # A DequantizeLinear with an int32 input (onnxruntime's default bias quantization): TensorRT refuses it.
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 4])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])
    inits = [numpy_helper.from_array(np.arange(4, dtype=np.int32), "bias_q"),
             numpy_helper.from_array(np.array(0.1, np.float32), "scale")]
    nodes = [helper.make_node("DequantizeLinear", ["bias_q", "scale"], ["bias"], name="bias_dq"),
             helper.make_node("Add", ["images", "bias"], ["logits"], name="add")]
    model = helper.make_model(helper.make_graph(nodes, "g", [images], [logits], inits), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(FfxError, match=r"node 'bias_dq' \(DequantizeLinear\).*Int32") as caught:
        build_serialized_engine(tmp_path / "bad.onnx", backend="tensorrt-rtx", progress=False)
    assert "\n" not in str(caught.value)


def test_not_onnx_and_missing_files(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"definitely not protobuf")
    with pytest.raises(FfxError, match="cannot parse|empty graph"):
        build_serialized_engine(tmp_path / "junk.onnx", backend="tensorrt-rtx", progress=False)
    with pytest.raises(FfxError, match="no such file"):
        build_serialized_engine(tmp_path / "missing.onnx", backend="tensorrt-rtx", progress=False)


def test_bad_profiles_are_refused(tmp_path):
    path = _linear_model(tmp_path / "linear.onnx")
    with pytest.raises(FfxError, match="min <= opt <= max"):
        build_serialized_engine(path, backend="tensorrt-rtx", min_batch=4, max_batch=2, progress=False)
    fixed = _linear_model(tmp_path / "fixed.onnx", batch=2)
    with pytest.raises(FfxError, match="fixed at 2"):
        build_serialized_engine(fixed, backend="tensorrt-rtx", max_batch=8, progress=False)
    _, build = build_serialized_engine(fixed, backend="tensorrt-rtx", progress=False)
    assert build.profile["max"] == [2, 8]


def test_rtx_specific_options_are_reported_not_silently_dropped(tmp_path):
    path = _linear_model(tmp_path / "linear.onnx")
    cache = tmp_path / "timing.cache"
    _, build = build_serialized_engine(
        path, backend="tensorrt-rtx", max_batch=2, timing_cache=cache, hardware_compatibility="ampere-plus",
        optimization_level=1, compute_capabilities=["SM86", "8.9"], workspace=64 << 20, progress=False,
    )
    assert any("timing cache" in note for note in build.notes)
    assert any("hardware-compatibility" in note for note in build.notes)
    assert not cache.exists()
    assert build.optimization_level == 1
    assert build.compute_capabilities == ["8.6", "8.9"]
    assert build.workspace_bytes == 64 << 20
    with pytest.raises(FfxError, match="unknown compute capability"):
        build_serialized_engine(path, backend="tensorrt-rtx", compute_capabilities=["SM99"], progress=False)
    with pytest.raises(FfxError, match="0..5"):
        build_serialized_engine(path, backend="tensorrt-rtx", optimization_level=9, progress=False)
