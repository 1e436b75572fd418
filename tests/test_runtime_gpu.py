"""Engines running on a GPU: the TensorRT / TensorRT-RTX runner against ONNX Runtime, CUDA graphs,
both CUDA libraries, the sidecar check before deserializing.

Every test here needs a CUDA GPU, TensorRT (or TensorRT-RTX) and pycuda or cuda-python; elsewhere
they are skipped with that reason. scripts/run_gpu_tests.sh runs them on a GPU machine with
FFX_REQUIRE_GPU=1, which turns those skips into failures.
"""

import json
import os

import numpy as np
import pytest

from ffx.cli import cli
from ffx.errors import FfxError
from ffx.reporting import collect_warnings
from helpers import FASHION, fashion_onnx, labelled_images, needs_gpu_reason, qdq_model


def _require_gpu():
    reason = needs_gpu_reason()
    if reason:
        if os.environ.get("FFX_REQUIRE_GPU"):
            pytest.fail(f"FFX_REQUIRE_GPU is set but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def cuda_python_gpu():
    """A CUDA GPU with cuda-python (no TensorRT needed): for the CUDA graph code on its own."""
    from ffx.errors import BackendUnavailable
    from ffx.runtime.backends.cuda import open_cuda

    try:
        open_cuda("cuda-python").close()
    except BackendUnavailable as e:
        reason = f"needs a CUDA GPU and cuda-python ({str(e).split(' (', 1)[0]})"
        if os.environ.get("FFX_REQUIRE_GPU"):
            pytest.fail(f"FFX_REQUIRE_GPU is set but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def gpu():
    _require_gpu()
    from ffx.runtime.backends.cuda import current_gpu

    return current_gpu()


def _build(cli_runner, onnx_path, engine, *flags):
    result = cli_runner.invoke(cli, ["build-engine", str(onnx_path), "-o", str(engine), "--max-batch", "8", *flags])
    assert result.exit_code == 0, result.output
    return engine


def _reference(onnx_path, images):
    from ffx.runtime.backends.onnxrt import OnnxRuntimeRunner

    with OnnxRuntimeRunner(onnx_path) as runner:
        return runner.infer(images)


def _batch(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 28, 28), dtype=np.float32)


def test_fp32_engine_matches_onnxruntime(gpu, cli_runner, mini, tmp_path):
    from ffx.runtime import open_runner

    engine = _build(cli_runner, mini.onnx, tmp_path / "mini.engine")
    images = _batch(11)  # more than the profile's max batch: the runner splits it
    with open_runner(engine) as runner:
        assert runner.max_batch == 8 and runner.precision == "fp32"
        logits = runner.infer(images)
        again = runner.infer(images[:1])
    np.testing.assert_allclose(logits, _reference(mini.onnx, images), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(again, logits[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("library", ["pycuda", "cuda-python"])
def test_each_cuda_library(gpu, cli_runner, mini, tmp_path, library):
    from ffx.runtime.backends.engine import EngineRunner

    _open_library_or_skip(library)
    engine = _build(cli_runner, mini.onnx, tmp_path / "mini.engine")
    images = _batch(3)
    with EngineRunner(engine, cuda_library=library) as runner:
        logits = runner.infer(images)
    np.testing.assert_allclose(logits, _reference(mini.onnx, images), rtol=1e-3, atol=1e-3)


def test_cuda_library_roundtrip(gpu):
    from ffx.runtime.backends.cuda import open_cuda

    cuda = open_cuda()
    try:
        host = cuda.pinned_empty((4, 5), np.float32)
        host[...] = np.arange(20, dtype=np.float32).reshape(4, 5)
        back = cuda.pinned_empty((4, 5), np.float32)
        device = cuda.device_alloc(host.nbytes)
        stream = cuda.create_stream()
        cuda.copy_to_device(device.ptr, host, stream)
        cuda.copy_to_host(back, device.ptr, stream)
        cuda.synchronize(stream)
        np.testing.assert_array_equal(back, host)
        device.free()
        info = cuda.gpu_info()
        assert info.name and "." in info.compute_capability
    finally:
        cuda.close()


def _open_library_or_skip(library):
    from ffx.errors import BackendUnavailable
    from ffx.runtime.backends.cuda import open_cuda

    try:
        open_cuda(library).close()
    except BackendUnavailable as e:
        pytest.skip(f"{library} is not installed: {e}")


@pytest.mark.parametrize("library", ["pycuda", "cuda-python"])
def test_cuda_graph_replays_batch_a_then_b_then_a(gpu, cli_runner, mini, tmp_path, library):
    """One graph per input shape, a plain enqueue after each shape change: batches 4, 4, 2, 2, 4, 4
    (capture 4, capture 2, replay 4) give the plain run's logits. Full TensorRT captures through
    cuda-python only; with pycuda it refuses in one sentence. TensorRT-RTX captures itself."""
    from ffx.runtime.backends.engine import EngineRunner

    _open_library_or_skip(library)
    engine = _build(cli_runner, mini.onnx, tmp_path / "mini.engine")
    images = _batch(4)
    with EngineRunner(engine, cuda_library=library) as plain:
        expected = plain.infer(images)
        backend = plain.backend
    if library == "pycuda" and backend == "tensorrt":
        with pytest.raises(FfxError, match="CUDA graphs need cuda-python"):
            EngineRunner(engine, cuda_graph=True, cuda_library=library)
        return
    with collect_warnings() as warnings, EngineRunner(engine, cuda_graph=True, cuda_library=library) as graphed:
        for count in (4, 4, 2, 2, 4, 4, 2):
            np.testing.assert_allclose(graphed.infer(images[:count]), expected[:count], rtol=1e-4, atol=1e-4)
        if graphed.own_graphs:
            assert sorted(graphed.graphs) == [2, 4]
    assert not [message for message in warnings if "capture failed" in message], warnings
    assert graphed.graphs == {} and graphed.stream is None and graphed.context is None  # released on close


def test_cuda_python_graph_capture_and_failed_capture(cuda_python_gpu):
    """The cuda-python graph path on its own (needs no TensorRT): a captured copy replays with
    the host data of launch time; a capture whose enqueue fails or raises is ended, its error
    cleared, and the stream keeps working."""
    from ffx.runtime.backends.cuda import open_cuda

    cuda = open_cuda("cuda-python", graphs=True)
    stream = cuda.create_stream()
    device = cuda.device_alloc(4 * 5 * 4)
    try:
        host = cuda.pinned_empty((4, 5), np.float32)
        back = cuda.pinned_empty((4, 5), np.float32)

        def enqueue():
            cuda.copy_to_device(device.ptr, host, stream)
            return True

        graph = cuda.capture_graph(stream, enqueue)
        assert graph is not None
        host[...] = 7.0
        cuda.launch_graph(graph, stream)
        cuda.copy_to_host(back, device.ptr, stream)
        cuda.synchronize(stream)
        np.testing.assert_array_equal(back, host)
        cuda.destroy_graph(graph)

        assert cuda.capture_graph(stream, lambda: False) is None
        with pytest.raises(ZeroDivisionError):
            cuda.capture_graph(stream, lambda: 1 / 0)
        host[...] = 3.0  # the stream is out of capture mode and error-free: plain copies work
        cuda.copy_to_device(device.ptr, host, stream)
        cuda.copy_to_host(back, device.ptr, stream)
        cuda.synchronize(stream)
        np.testing.assert_array_equal(back, host)
    finally:
        device.free()
        cuda.destroy_stream(stream)
        cuda.close()


def test_int8_and_fp16_engines_track_fp32(gpu, cli_runner, mini, tmp_path, tmp_path_factory):
    from ffx.runtime import open_runner

    images = _batch(8)
    fp32 = _reference(mini.onnx, images)
    qdq = qdq_model(tmp_path_factory)
    with open_runner(_build(cli_runner, qdq, tmp_path / "int8.engine", "--int8")) as runner:
        int8 = runner.infer(images)
    np.testing.assert_allclose(int8, _reference(qdq, images), rtol=0.05, atol=0.05)
    engine = _build(cli_runner, mini.onnx, tmp_path / "fp16.engine", "--fp16")  # a failed build fails the test
    with open_runner(engine) as runner:
        fp16 = runner.infer(images)
    cosine = np.sum(fp16 * fp32, 1) / (np.linalg.norm(fp16, axis=1) * np.linalg.norm(fp32, axis=1))
    assert cosine.min() > 0.999


def test_sidecar_mismatch_is_one_sentence_before_loading(gpu, cli_runner, mini, tmp_path):
    from ffx.runtime import open_runner
    from ffx.runtime.engines.sidecar import sidecar_path

    engine = _build(cli_runner, mini.onnx, tmp_path / "mini.engine")
    path = sidecar_path(engine)
    sidecar = json.loads(path.read_text())
    sidecar["backend_version"] = "9.9.9"
    path.write_text(json.dumps(sidecar))
    with pytest.raises(FfxError, match=r"built by .* 9\.9\.9 .*rebuild it here"):
        open_runner(engine).activate()


def test_bench_and_inspect_an_engine(gpu, cli_runner, mini, tmp_path):
    engine = _build(cli_runner, mini.onnx, tmp_path / "mini.engine")
    result = cli_runner.invoke(cli, ["bench", str(engine), str(mini.onnx), "--batch", "1,8", "--iterations", "20",
                                     "--cuda-graph", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {row["backend"] for row in rows} >= {"onnxruntime"} and len(rows) == 4
    engine_rows = [row for row in rows if row["target"] == str(engine)]
    assert all(row["compute_ms"] > 0 and row["h2d_ms"] > 0 for row in engine_rows)
    info = json.loads(cli_runner.invoke(cli, ["inspect", str(engine), "--json"]).stdout)
    assert info["loadable_here"] is True and info["layers"] is not None


def test_verify_engine_against_checkpoint(gpu, cli_runner, mini, tmp_path, tmp_path_factory):
    images = labelled_images(tmp_path_factory)
    engine = _build(cli_runner, mini.onnx, tmp_path / "mini.engine")
    result = cli_runner.invoke(cli, ["verify", str(engine), "--reference", str(mini.checkpoint), "--data", str(images),
                                     "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["agreement"] >= 95


def test_fixture_int8_engine_passes_verify(gpu, cli_runner, tmp_path, tmp_path_factory):
    from helpers import FASHION_CHECKPOINT

    onnx_path = fashion_onnx(tmp_path_factory)
    engine = tmp_path / "fashion.int8.engine"
    result = cli_runner.invoke(cli, ["build-engine", str(onnx_path), "-o", str(engine), "--int8",
                                     "--calib-data", str(FASHION / "train"), "--calib-images", "300"])
    assert result.exit_code == 0, result.output
    result = cli_runner.invoke(cli, ["verify", str(engine), "--reference", str(FASHION_CHECKPOINT),
                                     "--data", str(FASHION / "val"), "--json"])
    assert result.exit_code == 0, result.output
