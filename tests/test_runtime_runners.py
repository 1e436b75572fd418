"""The runner interface (ONNX Runtime and PyTorch for real, engines up to the point a GPU is
needed) and the sidecar compatibility check, which is pure logic and runs everywhere."""

import numpy as np
import pytest

from ffx.errors import BackendUnavailable, FfxError
from ffx.runtime import open_runner, runner_kind
from ffx.runtime.backends.cuda import GpuInfo
from ffx.runtime.engines.sidecar import EngineSidecar, compatibility_problem, describe_build
from helpers import needs_gpu_reason, needs_rtx, sidecar_dict


def _images(n):
    return np.random.default_rng(0).standard_normal((n, 3, 28, 28), dtype=np.float32)


def test_checkpoint_and_onnx_runners_agree(mini):
    images = _images(5)
    with open_runner(mini.checkpoint) as reference, open_runner(mini.onnx) as candidate:
        assert (reference.backend, candidate.backend) == ("pytorch", "onnxruntime")
        assert reference.input_shape == candidate.input_shape == (3, 28, 28)
        assert reference.preprocess == candidate.preprocess
        assert reference.class_names == candidate.class_names
        np.testing.assert_allclose(candidate.infer(images), reference.infer(images), rtol=1e-4, atol=1e-5)
        assert candidate.infer(images[:0]).shape == (0, 10)


def test_runner_contract_errors(mini):
    runner = open_runner(mini.onnx)
    with pytest.raises(RuntimeError, match="activate"):
        runner.infer(_images(1))
    with runner:
        with pytest.raises(FfxError, match=r"shape \[N, 3, 28, 28\]"):
            runner.infer(np.zeros((1, 3, 32, 32), np.float32))
    assert not runner.active


def test_fixed_batch_graph_is_padded_and_split(mini, tmp_path):
    import onnx

    model = onnx.load(str(mini.onnx))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 4
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, str(fixed))
    images = _images(6)
    with open_runner(fixed) as runner, open_runner(mini.onnx) as dynamic:
        assert runner.fixed_batch == 4
        np.testing.assert_allclose(runner.infer(images), dynamic.infer(images), rtol=1e-5, atol=1e-6)


def test_factory_picks_by_file_type(mini, tmp_path):
    assert runner_kind("a.engine") == runner_kind("b.plan") == "engine"
    assert runner_kind("a.onnx") == "onnx"
    assert runner_kind("a.pth") == runner_kind("a.safetensors") == "checkpoint"
    with pytest.raises(FfxError, match="unknown model type"):
        runner_kind("model.h5")
    with pytest.raises(FfxError, match="no such file"):
        open_runner(tmp_path / "absent.onnx")
    with pytest.raises(FfxError, match="not a readable ONNX"):
        (tmp_path / "junk.onnx").write_bytes(b"\x00\x01garbage")
        open_runner(tmp_path / "junk.onnx")


def test_onnx_without_ffx_metadata_runs_but_asks_for_preprocessing(mini, tmp_path):
    import onnx

    model = onnx.load(str(mini.onnx))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with open_runner(bare) as runner:
        assert runner.infer(_images(2)).shape == (2, 10)
        with pytest.raises(FfxError, match="no preprocessing metadata"):
            runner.preprocess


def test_missing_gpu_provider_is_backend_unavailable(mini):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        open_runner(mini.onnx, provider="cuda").activate()


@needs_rtx
def test_engine_without_gpu_says_so(mini, tmp_path):
    if needs_gpu_reason() is None:
        pytest.skip("a GPU is present: tests/test_runtime_gpu.py covers engines")
    from ffx.runtime.engines.engine_file import write_engine
    from ffx.tensorrt import BuildOptions

    engine = tmp_path / "mini.engine"
    write_engine(mini.onnx, engine, BuildOptions(max_batch=2), backend="tensorrt-rtx", progress=False)
    runner = open_runner(engine)
    # Everything the sidecar knows is there before any GPU is touched.
    assert (runner.backend, runner.precision, runner.max_batch, runner.input_shape) == ("tensorrt-rtx", "fp32", 2, (3, 28, 28))
    assert runner.class_names[0] == "T-shirt/top"
    with pytest.raises(BackendUnavailable, match="CUDA GPU"):
        runner.activate()
    assert not runner.active


def test_an_engine_without_a_sidecar_warns_through_the_reporter_when_made(tmp_path):
    from ffx.reporting import collect_warnings

    engine = tmp_path / "bare.engine"
    engine.write_bytes(b"a plan whose sidecar was lost")
    with collect_warnings() as warnings:
        runner = open_runner(engine)
    assert warnings == ["bare.engine has no sidecar: its TensorRT version and GPU cannot be checked before loading"]
    assert runner.backend == "tensorrt" and not runner.active


def test_an_engine_without_a_sidecar_is_not_warned_of_where_no_run_reports_it(cli_runner, mini, images, tmp_path):
    """The runner's warning is shown beside a run's results (verify, bench); predict and inspect
    never showed it, and an engine that cannot run here is skipped or refused without it."""
    if needs_gpu_reason() is None:
        pytest.skip("a GPU is present: this engine would be loaded")
    from ffx.cli import cli

    engine = tmp_path / "bare.engine"
    engine.write_bytes(b"a plan whose sidecar was lost")
    image = next(next(images.iterdir()).iterdir())
    runs = {
        "predict": (["predict", engine, image], 2),
        "inspect": (["inspect", engine], 0),
        "bench": (["bench", engine, mini.onnx, "--iterations", "5", "--warmup", "0"], 0),
        "verify": (["verify", engine, "--reference", mini.onnx, "--data", images], 2),
    }
    results = {name: cli_runner.invoke(cli, [str(arg) for arg in args]) for name, (args, _) in runs.items()}
    for name, result in results.items():
        assert result.exit_code == runs[name][1], (name, result.output)
        assert "no sidecar" not in result.stderr and "Traceback" not in result.output, (name, result.output)
    assert "Warning: bare.engine skipped: " in results["bench"].stderr


def test_short_chunks_are_padded_up_to_the_minimum_batch(mini):
    # An engine built with --min-batch 4 (or a fixed batch) must not abort on the last short
    # chunk of verify/bench data: Runner.infer pads it. Checked on the real ONNX Runtime runner
    # given the same limits, against unpadded results.
    images = _images(6)
    with open_runner(mini.onnx) as reference:
        expected = reference.infer(images)
    runner = open_runner(mini.onnx)
    runner.min_batch, runner.max_batch = 4, 4
    seen = []
    real_infer = runner._infer
    runner._infer = lambda chunk: seen.append(len(chunk)) or real_infer(chunk)
    with runner:
        np.testing.assert_allclose(runner.infer(images), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(runner.infer(images[:1]), expected[:1], rtol=1e-5, atol=1e-6)
    assert seen == [4, 4, 4]  # 6 images -> 4 + (2 padded to 4); 1 image -> padded to 4


def test_runner_base_declares_what_callers_read(mini):
    runner = open_runner(mini.onnx)
    assert runner.phase_timing is False and runner.last_phases_ms is None
    assert runner.supports_phase_timing is False and runner.min_batch == 1


# -- sidecars: the record, its validation, and what it says about a GPU (pure logic) -----------------

ORIN = GpuInfo("Orin", "8.7", 0, "pycuda")
T4 = GpuInfo("Tesla T4", "7.5", 0, "cuda-python")
A100 = GpuInfo("NVIDIA A100-SXM4-80GB", "8.0", 0, "cuda-python")
RTX3090 = GpuInfo("NVIDIA GeForce RTX 3090", "8.6", 0, "cuda-python")
RTX4090 = GpuInfo("NVIDIA GeForce RTX 4090", "8.9", 0, "cuda-python")
H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0", 0, "cuda-python")
H200 = GpuInfo("NVIDIA H200", "9.0", 0, "cuda-python")
RTX5090 = GpuInfo("NVIDIA GeForce RTX 5090", "12.0", 0, "cuda-python")
GB10 = GpuInfo("NVIDIA GB10", "12.1", 0, "cuda-python")


def _trt_sidecar(**changes):
    return EngineSidecar.from_dict(sidecar_dict(**changes))


def _rtx_sidecar(targets=("8.0", "8.6", "8.9", "12.0", "12.1")):
    return _trt_sidecar(backend="tensorrt-rtx", backend_version="1.7.1.116", gpu=None,
                        target_compute_capabilities=list(targets), hardware_compatibility=None)


def test_sidecar_round_trips_through_its_dict():
    sidecar = _trt_sidecar()
    assert sidecar.to_dict() == sidecar_dict()
    assert EngineSidecar.from_dict(sidecar.to_dict()) == sidecar


@pytest.mark.parametrize("change, field, problem", [
    ({"backend_version": 10}, "backend_version", "must be a string"),
    ({"version_compatible": "yes"}, "version_compatible", "must be true or false"),
    ({"backend": "tensorflow"}, "backend", "must be one of tensorrt, tensorrt-rtx"),
    ({"precision": "fp64"}, "precision", "must be one of"),
    ({"gpu": {"name": "Orin", "compute_capability": "CURREN.T"}}, "gpu.compute_capability", "must be a compute capability"),
    ({"engine": {"file": "m.engine", "sha256": "xyz", "bytes": 10}}, "engine.sha256", "64 hexadecimal digits"),
    ({"engine": {"file": "m.engine", "sha256": "a" * 64, "bytes": -1}}, "engine.bytes", "a whole number >= 1"),
    ({"engine": {"file": "m.engine", "sha256": "a" * 64}}, "engine.bytes", "is missing"),
    ({"profile": {"input": "images", "min": [1, 3], "opt": [0, 3], "max": [4, 3]}}, "profile.opt", "positive sizes"),
    ({"profile": {"input": "images", "min": [8, 3], "opt": [4, 3], "max": [16, 3]}}, "profile", "min <= opt <= max"),
    ({"builder": {"optimization_level": 9, "workspace_bytes": None, "timing_cache": None, "strongly_typed": True,
                  "tf32": True}}, "builder.optimization_level", "0..5"),
    ({"builder": {"optimization_level": 3, "workspace_bytes": None, "timing_cache": None, "strongly_typed": True}},
     "builder.tf32", "is missing"),
    ({"build_seconds": True}, "build_seconds", "a number of seconds"),
    ({"target_compute_capabilities": ["8.6"]}, "target_compute_capabilities", "must be empty for full TensorRT"),
    ({"backend": "tensorrt-rtx", "target_compute_capabilities": ["9.0"]}, "target_compute_capabilities",
     "lists 9.0, which TensorRT-RTX does not run on"),
])
def test_every_sidecar_field_is_validated(tmp_path, change, field, problem):
    import json

    from ffx.runtime.engines.sidecar import read_sidecar, sidecar_path

    engine = tmp_path / "model.engine"
    sidecar_path(engine).write_text(json.dumps(sidecar_dict(**change)))
    with pytest.raises(FfxError, match="field") as caught:
        read_sidecar(engine)
    message = str(caught.value)
    assert message.startswith(f"{sidecar_path(engine)}: field '{field}' ") and problem in message, message


def test_missing_fields_and_newer_formats_are_named(tmp_path):
    data = sidecar_dict()
    del data["precision"]
    with pytest.raises(FfxError, match="field 'precision' is missing"):
        EngineSidecar.from_dict(data, source="x.engine.json")
    with pytest.raises(FfxError, match="x.engine.json: sidecar version 3 is newer"):
        EngineSidecar.from_dict(sidecar_dict(sidecar_version=3), source="x.engine.json")


def test_version_1_sidecars_still_read():
    data = sidecar_dict(sidecar_version=1, backend="tensorrt-rtx", backend_version="1.7.1.116", gpu=None,
                         target_compute_capabilities=[], hardware_compatibility=None)
    del data["builder"]["tf32"]
    sidecar = EngineSidecar.from_dict(data)
    assert sidecar.builder.tf32 is None
    assert sidecar.targets == ["8.0", "8.6", "8.9", "12.0", "12.1"]  # [] meant TensorRT-RTX's default


def test_same_machine_is_compatible():
    assert compatibility_problem(_trt_sidecar(), "tensorrt", "10.3.0", ORIN) is None


def test_other_tensorrt_version_is_one_actionable_sentence():
    problem = compatibility_problem(_trt_sidecar(), "tensorrt", "10.7.0", ORIN)
    assert "TensorRT 10.3.0" in problem and "10.7.0" in problem
    assert "ffx build-engine model.int8.onnx" in problem
    assert problem.count(". ") == 0  # one sentence


@pytest.mark.parametrize("runtime_version, loads", [
    ("10.3.0", True), ("10.7.0", True), ("10.3.1", True),  # same or newer, same major
    ("10.2.0", False), ("10.3.0.26", True), ("11.0.0", False), ("9.3.0", False),
])
def test_version_compatible_engines_load_on_the_same_or_a_newer_minor(runtime_version, loads):
    problem = compatibility_problem(_trt_sidecar(version_compatible=True), "tensorrt", runtime_version, ORIN)
    assert (problem is None) == loads, problem


def test_other_gpu_architecture():
    problem = compatibility_problem(_trt_sidecar(), "tensorrt", "10.3.0", RTX4090)
    assert "Orin (compute capability 8.7)" in problem and "RTX 4090" in problem and "8.9" in problem
    assert compatibility_problem(_trt_sidecar(hardware_compatibility="ampere_plus"), "tensorrt", "10.3.0", RTX4090) is None
    assert "older than Ampere" in compatibility_problem(_trt_sidecar(hardware_compatibility="ampere_plus"), "tensorrt", "10.3.0", T4)


def test_wrong_backend_family():
    problem = compatibility_problem(_rtx_sidecar(), "tensorrt", "10.3.0", ORIN)
    assert "only TensorRT-RTX can load it" in problem


@pytest.mark.parametrize("gpu, loads", [(A100, True), (RTX3090, True), (RTX4090, True), (RTX5090, True), (GB10, True),
                                        (T4, False)])
def test_rtx_default_engine_on_each_supported_gpu(gpu, loads):
    sidecar = _rtx_sidecar()
    assert "ahead of time for compute capability 8.0, 8.6, 8.9, 12.0, 12.1" in describe_build(sidecar)
    problem = compatibility_problem(sidecar, "tensorrt-rtx", "1.7.1.116", gpu)
    assert (problem is None) == loads, problem
    if not loads:  # Turing needs a Turing-only engine
        assert gpu.name in problem and "rebuild it here" in problem


def test_rtx_engine_for_some_targets_is_refused_on_the_others():
    ada_blackwell = _rtx_sidecar(targets=["8.9", "12.0"])
    assert compatibility_problem(ada_blackwell, "tensorrt-rtx", "1.7.1.116", RTX5090) is None
    problem = compatibility_problem(ada_blackwell, "tensorrt-rtx", "1.7.1.116", A100)  # membership, not "8.9 and later"
    assert A100.name in problem and "8.0" in problem and "rebuild it here" in problem


@pytest.mark.parametrize("gpu, name", [(H100, "H100"), (H200, "H200"), (ORIN, "Orin")])
def test_rtx_engine_on_a_gpu_tensorrt_rtx_does_not_support(gpu, name):
    problem = compatibility_problem(_rtx_sidecar(), "tensorrt-rtx", "1.7.1.116", gpu)
    assert f"TensorRT-RTX does not run on {gpu.name}" in problem and name in problem
    assert "`--backend tensorrt`" in problem and problem.count(". ") == 0


def test_turing_engine_runs_on_turing_only():
    turing = _rtx_sidecar(targets=["7.5"])
    assert compatibility_problem(turing, "tensorrt-rtx", "1.7.1.116", T4) is None
    assert "RTX 4090" in compatibility_problem(turing, "tensorrt-rtx", "1.7.1.116", RTX4090)


def test_no_gpu_visible_checks_versions_only():
    assert compatibility_problem(_trt_sidecar(), "tensorrt", "10.3.0", None) is None
    assert compatibility_problem(_trt_sidecar(), "tensorrt", "10.4.0", None) is not None


def _saturating_qdq_model(path, rng):
    """An image-shaped Q/DQ MatMul whose int8 products are near 127 x 127: onnxruntime's fused int8
    kernels on x86 CPUs without VNNI add such products in pairs in 16 bits, which saturate."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = rng.integers(100, 128, size=(192, 10), dtype=np.int8) * rng.choice(np.array([-1, 1], np.int8), (192, 10))
    nodes = [
        helper.make_node("Reshape", ["images", "flat_shape"], ["flat"]),
        helper.make_node("QuantizeLinear", ["flat", "x_scale", "x_zero"], ["flat_q"]),
        helper.make_node("DequantizeLinear", ["flat_q", "x_scale", "x_zero"], ["flat_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], axis=1),
        helper.make_node("MatMul", ["flat_dq", "w_dq"], ["logits"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([-1, 192], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array(0.01, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(np.full(10, 0.001, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(10, np.int8), "w_zero"),
    ]
    graph = helper.make_graph(nodes, "saturating", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return weight


def test_qdq_graphs_run_with_tensorrts_arithmetic_for_accuracy(tmp_path):
    """verify/predict (the default runner) and calibration's sessions give the exact int8 result
    (int32 sums, as TensorRT computes), whatever this CPU's int8 kernels do; bench's runner runs
    onnxruntime's fused kernels. Without VNNI those differ (see ffx.onnx_file.exact_quantized_arithmetic)."""
    from ffx.calib.model_io import cpu_session

    rng = np.random.default_rng(0)
    weight = _saturating_qdq_model(tmp_path / "q.onnx", rng)
    images = (rng.choice(np.array([-1, 1]), (4, 3, 8, 8)) * rng.uniform(1.0, 1.27, (4, 3, 8, 8))).astype(np.float32)
    quantized = np.clip(np.rint(images.reshape(4, 192) / 0.01), -128, 127).astype(np.int64)
    exact = (quantized @ weight.astype(np.int64)) * np.float32(0.01) * np.float32(0.001)
    with open_runner(tmp_path / "q.onnx") as runner:
        np.testing.assert_allclose(runner.infer(images), exact, rtol=1e-5)
    session = cpu_session((tmp_path / "q.onnx").read_bytes())
    np.testing.assert_allclose(session.run(None, {"images": images})[0], exact, rtol=1e-5)
    with open_runner(tmp_path / "q.onnx", int8_kernels=True) as fused:  # runs; exact only on CPUs with VNNI
        assert fused.infer(images).shape == (4, 10)
