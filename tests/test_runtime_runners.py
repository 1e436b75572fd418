"""The runner interface (ONNX Runtime and PyTorch for real, engines up to the point a GPU is
needed) and the sidecar compatibility check, which is pure logic and runs everywhere."""

import numpy as np
import pytest

from ffx.errors import BackendUnavailable, FfxError
from ffx.runtime import open_runner, runner_kind
from ffx.runtime.cuda import GpuInfo
from ffx.runtime.sidecar import compatibility_problem, describe_build
from helpers import needs_rtx


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
    from test_runtime_gpu import needs_gpu_reason

    if needs_gpu_reason() is None:
        pytest.skip("a GPU is present: tests/test_runtime_gpu.py covers engines")
    from ffx.runtime.build import build_engine

    engine = tmp_path / "mini.engine"
    build_engine(mini.onnx, engine, backend="tensorrt-rtx", max_batch=2, progress=False)
    runner = open_runner(engine)
    # Everything the sidecar knows is there before any GPU is touched.
    assert (runner.backend, runner.precision, runner.max_batch, runner.input_shape) == ("tensorrt-rtx", "fp32", 2, (3, 28, 28))
    assert runner.class_names[0] == "T-shirt/top"
    with pytest.raises(BackendUnavailable, match="CUDA GPU"):
        runner.activate()
    assert not runner.active


# -- sidecar compatibility (pure logic) -----------------------------------------------------------

ORIN = GpuInfo("Orin", "8.7", 0, "pycuda")
RTX4090 = GpuInfo("NVIDIA GeForce RTX 4090", "8.9", 0, "cuda-python")
T4 = GpuInfo("Tesla T4", "7.5", 0, "cuda-python")
BLACKWELL = GpuInfo("NVIDIA RTX PRO 6000", "12.0", 0, "cuda-python")


def _trt_sidecar(**changes):
    sidecar = {"backend": "tensorrt", "backend_version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7"},
               "hardware_compatibility": None, "version_compatible": False, "onnx": {"file": "model.int8.onnx"}}
    sidecar.update(changes)
    return sidecar


def test_same_machine_is_compatible():
    assert compatibility_problem(_trt_sidecar(), "tensorrt", "10.3.0", ORIN) is None


def test_other_tensorrt_version_is_one_actionable_sentence():
    problem = compatibility_problem(_trt_sidecar(), "tensorrt", "10.7.0", ORIN)
    assert "TensorRT 10.3.0" in problem and "10.7.0" in problem
    assert "ffx build-engine model.int8.onnx" in problem
    assert problem.count(". ") == 0  # one sentence
    # ... unless the engine was built version-compatible (same major).
    assert compatibility_problem(_trt_sidecar(version_compatible=True), "tensorrt", "10.7.0", ORIN) is None
    assert compatibility_problem(_trt_sidecar(version_compatible=True), "tensorrt", "11.0.0", ORIN) is not None


def test_other_gpu_architecture():
    problem = compatibility_problem(_trt_sidecar(), "tensorrt", "10.3.0", RTX4090)
    assert "Orin (compute capability 8.7)" in problem and "RTX 4090" in problem and "8.9" in problem
    assert compatibility_problem(_trt_sidecar(hardware_compatibility="ampere_plus"), "tensorrt", "10.3.0", RTX4090) is None
    assert "older than Ampere" in compatibility_problem(_trt_sidecar(hardware_compatibility="ampere_plus"), "tensorrt", "10.3.0", T4)


def test_wrong_backend_family():
    problem = compatibility_problem({"backend": "tensorrt-rtx", "backend_version": "1.7.1.116"}, "tensorrt", "10.3.0", ORIN)
    assert "only TensorRT-RTX can load it" in problem


def test_rtx_targets():
    sidecar = {"backend": "tensorrt-rtx", "backend_version": "1.7.1.116", "gpu": None, "target_compute_capabilities": []}
    assert "ahead of time for compute capability 8.0, 8.6, 8.9, 12.0" in describe_build(sidecar)
    assert compatibility_problem(sidecar, "tensorrt-rtx", "1.7.1.116", RTX4090) is None
    assert compatibility_problem(sidecar, "tensorrt-rtx", "1.7.1.116", BLACKWELL) is None
    assert "7.5" in compatibility_problem(sidecar, "tensorrt-rtx", "1.7.1.116", T4)
    turing = dict(sidecar, target_compute_capabilities=["SM75"])
    assert compatibility_problem(turing, "tensorrt-rtx", "1.7.1.116", T4) is None
    assert compatibility_problem(turing, "tensorrt-rtx", "1.7.1.116", RTX4090) is not None


def test_no_gpu_visible_checks_versions_only():
    assert compatibility_problem(_trt_sidecar(), "tensorrt", "10.3.0", None) is None
    assert compatibility_problem(_trt_sidecar(), "tensorrt", "10.4.0", None) is not None
