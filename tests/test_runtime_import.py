"""The runtime works on a machine with neither torch nor TensorRT (a Jetson before TensorRT is set
up, a CI box): checked in subprocesses where importing them fails."""

import json
import subprocess
import sys

from helpers import labelled_images, mini_model, python_with_blocked_imports

BLOCKED = ("torch", "tensorrt", "tensorrt_rtx_bindings", "pycuda", "cuda")

IMPORT_EVERYTHING = """
import importlib, sys
for name in ["ffx.runtime", "ffx.runtime.backends.runner", "ffx.runtime.backends.onnxrt", "ffx.runtime.backends.engine", "ffx.runtime.backends.cuda",
             "ffx.runtime.engines.sidecar", "ffx.runtime.engines.engine_file", "ffx.runtime.tasks.verify", "ffx.runtime.tasks.bench",
             "ffx.runtime.tasks.predict", "ffx.runtime.tasks.inspection", "ffx.runtime.engines.onnx_model", "ffx.runtime.backends.pytorch",
             "ffx.commands.build_engine", "ffx.commands.verify", "ffx.commands.bench",
             "ffx.commands.predict", "ffx.commands.inspect", "ffx.tensorrt"]:
    importlib.import_module(name)
for blocked in ("torch", "tensorrt", "tensorrt_rtx_bindings"):
    assert sys.modules.get(blocked) is None, blocked
    try:
        __import__(blocked)
    except ImportError:
        pass
    else:
        raise AssertionError(f"{blocked} is importable: the block did not work")
print("imported")
"""


def _run(args, env, **kwargs):
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120, **kwargs)


def _ffx(args, env):
    """`ffx ARGS` in a fresh interpreter with `env`."""
    code = "import sys; from ffx.cli import main; sys.argv = ['ffx', *sys.argv[1:]]; main()"
    return _run(["-c", code, *map(str, args)], env)


def test_import_ffx_runtime_without_torch_and_tensorrt(tmp_path):
    result = _run(["-c", IMPORT_EVERYTHING], python_with_blocked_imports(tmp_path, *BLOCKED))
    assert result.returncode == 0, result.stderr
    assert "imported" in result.stdout


def test_onnx_models_run_predict_and_bench_without_torch(tmp_path, tmp_path_factory):
    mini = mini_model(tmp_path_factory)
    images = labelled_images(tmp_path_factory)
    env = python_with_blocked_imports(tmp_path, *BLOCKED)
    one_image = str(next(images.glob("*/*.png")))

    predicted = _ffx(["predict", mini.onnx, one_image, "--topk", "2", "--json"], env)
    assert predicted.returncode == 0, predicted.stderr
    assert len(json.loads(predicted.stdout)[0]["top"]) == 2

    benched = _ffx(["bench", mini.onnx, "--iterations", "5", "--warmup", "1", "--json"], env)
    assert benched.returncode == 0, benched.stderr
    assert json.loads(benched.stdout)[0]["backend"] == "onnxruntime"


def test_checkpoints_and_engines_say_what_is_missing(tmp_path, tmp_path_factory):
    mini = mini_model(tmp_path_factory)
    env = python_with_blocked_imports(tmp_path, *BLOCKED)
    result = _ffx(["bench", mini.checkpoint], env)
    assert result.returncode == 2
    assert "needs torch" in result.stderr and "Traceback" not in result.stderr
    # ...and how to get torch's CPU build (PyPI's default is the multi-GB CUDA one), then ffx's extra
    # from its own folder (`ffx` on PyPI is an unrelated package).
    assert "download.pytorch.org/whl/cpu" in result.stderr and "pip install '.[export]'" in result.stderr

    fake_engine = tmp_path / "model.engine"
    fake_engine.write_bytes(b"\0" * 64)
    result = _ffx(["bench", fake_engine], env)
    assert result.returncode == 2
    assert "TensorRT" in result.stderr and "Traceback" not in result.stderr


def test_install_hints_name_what_to_run_in_ffx_folder(tmp_path, tmp_path_factory):
    """Serving without PyTriton, and an engine with neither CUDA library: the hint is `pip install
    '.[extra]'` in ffx's folder, never `pip install ffx...` or a bare `pip install cuda-python`."""
    mini = mini_model(tmp_path_factory)
    env = python_with_blocked_imports(tmp_path, "pytriton", "pycuda", "cuda")
    served = _ffx(["serve", mini.onnx], env)
    assert served.returncode == 2 and served.stderr.strip().splitlines() == [
        "Error: serving needs NVIDIA PyTriton: `pip install '.[serve]'` in ffx's folder"], served.stderr

    from ffx.errors import BackendUnavailable
    from ffx.runtime.backends.cuda import open_cuda

    engine = _run(["-c", "from ffx.runtime.backends.cuda import open_cuda\nopen_cuda()"], env)
    assert "neither library is installed: `pip install '.[cuda12]'` in ffx's folder" in engine.stderr, engine.stderr
    try:  # here, with whatever is installed: a CUDA library without a GPU names the GPU, not an install
        open_cuda().close()
    except BackendUnavailable as e:
        assert "pip install cuda-python" not in str(e)
        if "neither library is installed" not in str(e):
            assert str(e).startswith("running a TensorRT engine needs a CUDA GPU and its driver, and none is usable")
