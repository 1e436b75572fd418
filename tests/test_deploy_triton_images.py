"""`ffx deploy triton --image-input`: a preprocessing model (Triton Python backend with ffx's own
decoder and preprocessing, copied verbatim) and an ensemble in front of the model. Every config
parses strictly against Triton's ModelConfig; the preprocessing model runs in a real tritonserver
(the one NVIDIA PyTriton ships: Python backend only, so the ensemble and the ONNX model cannot
load there) on loopback, and its output equals ffx's preprocessing of the same files exactly."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffx.cli import cli
from ffx.images import find_images, load_image
from ffx.metadata import Preprocess, read_onnx_metadata
from ffx.runtime.deploy.serving import free_loopback_ports
from helpers import FASHION, fashion_onnx

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="needs tritonclient[grpc] (pip install 'ffx[serve]')")
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (pip install 'ffx[serve]')")
from google.protobuf import text_format  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

NAME = "fashion"
STARTUP_SECONDS = 120


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    from click.testing import CliRunner

    repo = tmp_path_factory.mktemp("image-input") / "repo"
    result = CliRunner().invoke(cli, ["deploy", "triton", str(fashion_onnx(tmp_path_factory)), "-o", str(repo),
                                      "--name", NAME, "--image-input", "--max-batch", "8"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return repo


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())  # rejects unknown fields


def test_three_models_with_strictly_valid_configs(repository):
    assert sorted(p.name for p in repository.iterdir()) == [NAME, f"{NAME}_image", f"{NAME}_preprocess"]
    model, preprocess, ensemble = (_parse(repository / n / "config.pbtxt") for n in (NAME, f"{NAME}_preprocess", f"{NAME}_image"))
    assert preprocess.backend == "python" and preprocess.max_batch_size == model.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in preprocess.input] == [("IMAGE", model_config_pb2.TYPE_STRING, [1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in preprocess.output] == \
        [(i.name, i.data_type, list(i.dims)) for i in model.input]
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 8
    assert [(o.name, list(o.dims), o.label_filename) for o in ensemble.output] == [("logits", [10], "labels.txt")]
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [f"{NAME}_preprocess", NAME]
    assert dict(steps[0].output_map)["images"] == dict(steps[1].input_map)["images"]
    assert dict(steps[1].output_map) == {"logits": "logits"}
    assert (repository / f"{NAME}_image" / "labels.txt").read_text() == (repository / NAME / "labels.txt").read_text()
    readme = (repository / f"{NAME}_image" / "README.txt").read_text()
    assert f'client.infer("{NAME}_image"' in readme and "numpy and Pillow" in readme


def test_the_preprocessing_is_ffxs_own_source_byte_for_byte(repository):
    version = repository / f"{NAME}_preprocess" / "1"
    copied = sorted(str(p.relative_to(version)) for p in (version / "ffx").rglob("*.py"))
    assert "ffx/images.py" in copied and "ffx/__init__.py" in copied
    for relative in copied:
        module = relative.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        assert (version / relative).read_bytes() == Path(importlib.util.find_spec(module).origin).read_bytes(), relative
    settings = json.loads((version / "preprocess.json").read_text())
    assert settings["preprocess"] == read_onnx_metadata(fashion_onnx_path(repository))["preprocess"]


def fashion_onnx_path(repository):
    return repository / NAME / "1" / "model.onnx"


def test_the_preprocessing_model_imports_numpy_and_pillow_only(repository):
    """The copied modules and model.py import nothing but the standard library, numpy, Pillow and
    each other (and Triton's own triton_python_backend_utils)."""
    import ast

    version = repository / f"{NAME}_preprocess" / "1"
    for path in version.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in ("numpy", "PIL", "ffx", "triton_python_backend_utils"), \
                    (path.name, name)


def test_existing_folders_are_never_overwritten(repository, tmp_path_factory, cli_runner):
    (repository.parent / "other").mkdir(exist_ok=True)
    result = cli_runner.invoke(cli, ["deploy", "triton", str(fashion_onnx(tmp_path_factory)), "-o", str(repository),
                                     "--name", "x", "--image-input"])
    assert result.exit_code == 0
    result = cli_runner.invoke(cli, ["deploy", "triton", str(fashion_onnx(tmp_path_factory)), "-o", str(repository),
                                     "--name", "x", "--image-input"])
    assert result.exit_code == 2 and "x already exists" in result.stderr.replace("/x:", " x")
    shutil.rmtree(repository / "x_image")
    result = cli_runner.invoke(cli, ["deploy", "triton", str(fashion_onnx(tmp_path_factory)), "-o", str(repository),
                                     "--name", "x", "--image-input"])
    assert result.exit_code == 2 and not (repository / "x_image").exists()
    for leftover in ("x", "x_preprocess"):
        shutil.rmtree(repository / leftover)
    assert not [p for p in repository.iterdir() if p.name.startswith(".")]


# -- a real tritonserver: PyTriton's binary, Python backend, loopback only --------------------------

def _triton_dist():
    pytest.importorskip("pytriton.triton", reason="needs NVIDIA PyTriton (pip install 'ffx[serve]')")
    from pytriton.utils.distribution import get_libs_path, get_root_module_path, get_stub_path

    return get_root_module_path() / "tritonserver", get_libs_path(), get_stub_path(f"{sys.version_info[0]}.{sys.version_info[1]}")


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    """tritonserver on 127.0.0.1 with the preprocessing model loaded (explicit control: the ONNX
    model and the ensemble would fail here, as this build has no onnxruntime backend)."""
    dist, libs, stub = _triton_dist()
    work = tmp_path_factory.mktemp("tritonserver")
    # As PyTriton does: the server's folder without stubs, then the stub for this Python.
    shutil.copytree(dist, work / "tritonserver", ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy(stub, work / "tritonserver" / "backends" / "python" / "triton_python_backend_stub")
    env = dict(os.environ)
    libpython = sysconfig.get_config_var("LIBDIR")
    env["LD_LIBRARY_PATH"] = ":".join(filter(None, [libpython, str(libs), env.get("LD_LIBRARY_PATH")]))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    http, grpc, metrics = free_loopback_ports(3)
    log = work / "log.txt"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(work / "tritonserver" / "bin" / "tritonserver"), f"--model-repository={repository}",
             f"--backend-directory={work / 'tritonserver' / 'backends'}", "--model-control-mode=explicit",
             f"--load-model={NAME}_preprocess", "--http-address=127.0.0.1", f"--http-port={http}",
             "--grpc-address=127.0.0.1", f"--grpc-port={grpc}", "--metrics-address=127.0.0.1",
             f"--metrics-port={metrics}", "--log-verbose=0"],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"tritonserver exited ({process.returncode}): {log.read_text()[-3000:]}")
            try:
                if client.is_model_ready(f"{NAME}_preprocess"):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the preprocessing model was not ready in time: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _preprocess(client, files):
    data = np.array([[f.read_bytes()] for f in files], dtype=object)
    request = httpclient.InferInput("IMAGE", list(data.shape), "BYTES")
    request.set_data_from_numpy(data)
    return client.infer(f"{NAME}_preprocess", [request]).as_numpy("images")


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Fixture PNGs, plus photos of other sizes and formats (JPEG, RGBA PNG, grayscale) so that
    decoding, the RGB conversion, the resize and the crop all do something."""
    files = find_images(FASHION / "val")[::200][:5]  # with the 3 below: the max batch of 8
    folder = tmp_path_factory.mktemp("odd-images")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (61, 45, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "wide.jpg", quality=90)
    Image.fromarray(np.dstack([pixels, pixels[..., :1]])).save(folder / "alpha.png")
    Image.fromarray(pixels[..., 0]).resize((90, 31)).save(folder / "gray.png")
    return files + sorted(folder.iterdir())


def test_the_served_preprocessing_equals_ffx_predicts_feed(server, repository, image_files):
    preprocess = Preprocess.from_dict(read_onnx_metadata(fashion_onnx_path(repository))["preprocess"])
    expected = np.stack([load_image(path, preprocess) for path in image_files])  # what `ffx predict` feeds the model
    served = _preprocess(server, image_files)
    assert served.dtype == np.float32 and served.shape == expected.shape == (len(image_files), 3, 28, 28)
    assert np.array_equal(served, expected)
    one_by_one = np.concatenate([_preprocess(server, [path]) for path in image_files[:3]])
    assert np.array_equal(one_by_one, expected[:3])


def test_an_unreadable_image_is_an_error_and_the_server_keeps_serving(server, image_files, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(InferenceServerException, match="image 0"):
        _preprocess(server, [broken])
    assert _preprocess(server, image_files[:1]).shape == (1, 3, 28, 28)
