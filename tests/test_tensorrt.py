"""ffx.tensorrt against the real TensorRT-RTX builder (CPU ahead-of-time), on small hand-made graphs
in FP32, FP16 and Q/DQ INT8 and on graphs TensorRT rejects."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ffx.errors import BackendUnavailable, FfxError, InvalidOption
from ffx.compute_capability import rtx_plan_targets
from ffx.tensorrt import BuildOptions, available_backend, build_serialized_engine
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
    engine, build = build_serialized_engine(path, BuildOptions(min_batch=1, opt_batch=2, max_batch=4), backend="tensorrt-rtx",
                                            progress=False)
    assert isinstance(engine, bytes) and len(engine) > 1000
    assert build.backend == "tensorrt-rtx"
    import tensorrt_rtx_bindings

    assert build.backend_version == tensorrt_rtx_bindings.__version__
    assert build.input_name == "images" and build.output_names == ["logits"]
    assert build.profile == {"min": [1, 8], "opt": [2, 8], "max": [4, 8]}
    assert build.input_dtype == "float32"
    assert build.compute_capabilities == ["8.0", "8.6", "8.9", "12.0", "12.1"]  # TensorRT-RTX's default targets
    assert build.tf32 is True  # TensorRT's default: FP32 layers may run in TF32


@pytest.mark.parametrize("targets", [("8.6",), ("8.0", "12.1"), ("8.9", "12.0")])
def test_rtx_records_the_targets_its_plan_lists(tmp_path, targets):
    path = _linear_model(tmp_path / "linear.onnx", "fp16")
    engine, build = build_serialized_engine(path, BuildOptions(max_batch=2, compute_capabilities=targets),
                                            backend="tensorrt-rtx", progress=False)
    assert build.compute_capabilities == list(targets) == list(rtx_plan_targets(engine))
    assert f"accelerators={{{''.join('sm' + t.replace('.', '') + ' ' for t in targets)}}}".encode() in engine
    assert not any("engine records" in note for note in build.notes)


def test_rtx_plan_targets_reads_the_header():
    header = b"header {\n  hardware_forward_compatibility=%s\n  accelerators={%s}\n}"
    assert rtx_plan_targets(header % (b"1", b"sm80 ")) == ("8.0", "8.6", "8.9", "12.0", "12.1")  # a default build
    assert rtx_plan_targets(header % (b"1", b"sm89 ")) == ("8.9", "12.0", "12.1")
    assert rtx_plan_targets(header % (b"0", b"sm75 ")) == ("7.5",)
    assert rtx_plan_targets(header % (b"0", b"sm120 sm86 ")) == ("8.6", "12.0")
    assert rtx_plan_targets(b"\x00" * 100) is None and rtx_plan_targets(header % (b"0", b"")) is None


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
    with pytest.raises(InvalidOption, match="min <= opt <= max") as caught:
        BuildOptions(min_batch=4, max_batch=2)
    assert caught.value.option == "min_batch"
    with pytest.raises(InvalidOption, match="positive whole number"):
        BuildOptions(max_batch=0)
    fixed = _linear_model(tmp_path / "fixed.onnx", batch=2)
    with pytest.raises(FfxError, match="fixed at 2"):
        build_serialized_engine(fixed, BuildOptions(max_batch=8), backend="tensorrt-rtx", progress=False)
    _, build = build_serialized_engine(fixed, backend="tensorrt-rtx", progress=False)
    assert build.profile["max"] == [2, 8]


def test_rtx_specific_options_are_reported_not_silently_dropped(tmp_path):
    path = _linear_model(tmp_path / "linear.onnx")
    cache = tmp_path / "timing.cache"
    options = BuildOptions(max_batch=2, timing_cache=cache, hardware_compatibility="ampere-plus", optimization_level=1,
                           compute_capabilities=("SM86", "8.9"), workspace_bytes=64 << 20)
    _, build = build_serialized_engine(path, options, backend="tensorrt-rtx", progress=False)
    assert any("timing cache" in note for note in build.notes)
    assert any("hardware compatibility" in note for note in build.notes)
    assert not any("--" in note for note in build.notes)  # library notes name no CLI flags
    assert not cache.exists()
    assert build.optimization_level == 1
    assert build.compute_capabilities == ["8.6", "8.9"]
    assert build.options.workspace_bytes == 64 << 20
    with pytest.raises(InvalidOption, match="0..5"):
        BuildOptions(optimization_level=9)


def test_no_tf32_clears_the_builder_flag(tmp_path):
    path = _linear_model(tmp_path / "linear.onnx")
    _, build = build_serialized_engine(path, BuildOptions(max_batch=2, tf32=False), backend="tensorrt-rtx", progress=False)
    assert build.tf32 is False


@pytest.mark.parametrize("given, expected", [
    (("SM75",), ("7.5",)), (("8.6", "sm_89", "120"), ("8.6", "8.9", "12.0")), (("current",), ("current",)),
    (("8.9", "8.9"), ("8.9",)),
])
def test_compute_capabilities_are_normalized(given, expected):
    assert BuildOptions(compute_capabilities=given).compute_capabilities == expected


@pytest.mark.parametrize("given, message", [
    (("none",), "not a target"),
    (("SM99",), "does not run on this GPU"),
    (("9.0",), r"H100/H200.*--backend tensorrt"),
    (("10.0",), r"B200.*--backend tensorrt"),
    (("8.7",), r"Jetson Orin.*--backend tensorrt"),
    (("banana",), "not a compute capability"),
    (("current", "8.6"), "cannot be combined"),
])
def test_unknown_and_unsupported_targets_are_refused(given, message):
    with pytest.raises(InvalidOption, match=message) as caught:
        BuildOptions(compute_capabilities=given)
    assert caught.value.option == "compute_capabilities"


def test_current_target_is_recorded_as_the_real_capability():
    options = BuildOptions(compute_capabilities=("current",))
    assert options.with_current_gpu("8.9").compute_capabilities == ("8.9",)
    with pytest.raises(InvalidOption, match="none is visible"):
        options.with_current_gpu(None)
    with pytest.raises(InvalidOption, match="H100"):  # the building GPU is one TensorRT-RTX does not run on
        options.with_current_gpu("9.0")


def test_turing_target_replaces_the_default_and_says_so(tmp_path):
    path = _linear_model(tmp_path / "linear.fp16.onnx", "fp16")
    _, build = build_serialized_engine(path, BuildOptions(max_batch=2, compute_capabilities=("7.5",)),
                                       backend="tensorrt-rtx", progress=False)
    assert build.compute_capabilities == ["7.5"]
    assert any("Turing" in note for note in build.notes)


def test_version_compatible_is_refused_by_tensorrt_rtx(tmp_path):
    path = _linear_model(tmp_path / "linear.onnx")
    with pytest.raises(InvalidOption, match="version-compatible") as caught:
        build_serialized_engine(path, BuildOptions(version_compatible=True), backend="tensorrt-rtx", progress=False)
    assert caught.value.option == "version_compatible"


def test_io_types_numpy_lacks_are_refused_before_building(tmp_path):
    images = helper.make_tensor_value_info("images", TensorProto.BFLOAT16, ["batch", 4])
    logits = helper.make_tensor_value_info("logits", TensorProto.BFLOAT16, ["batch", 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["images"], ["logits"])], "g", [images], [logits]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "bf16.onnx")
    with pytest.raises(FfxError, match="'images' is bfloat16, which numpy has no type for"):
        build_serialized_engine(tmp_path / "bf16.onnx", backend="tensorrt-rtx", progress=False)


@pytest.mark.parametrize("member, name", [("BF16", "bfloat16"), ("FP8", "float8"), ("INT4", "int4")])
def test_numpy_dtype_names_the_tensor(member, name):
    import tensorrt_rtx_bindings as trt_rtx

    from ffx.tensorrt import numpy_dtype

    assert numpy_dtype(trt_rtx, trt_rtx.DataType.HALF, "x", "m.engine") == np.float16
    with pytest.raises(FfxError, match=f"m.engine: tensor 'logits' is {name}"):
        numpy_dtype(trt_rtx, getattr(trt_rtx.DataType, member), "logits", "m.engine")


@pytest.mark.slow
def test_builds_after_failed_ones_in_one_process_do_not_hang():
    # TensorRT-RTX 1.7 calls our logger under its own lock; a garbage collection there freed an old
    # Builder whose destructor waited on that lock. Run in this order (conformance first), these two
    # files hung forever before ffx.tensorrt.build collected outside TensorRT's calls.
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                           str(tests / "test_tensorrt_conformance.py"), str(tests / "test_tensorrt.py")],
                          capture_output=True, text=True, timeout=300, cwd=tests.parent)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
