"""Helpers shared by the tests: small real models and image folders, made once per test session,
the fixture's paths, skip markers, and a Python with some imports blocked.

`mini_model(tmp_path_factory)`: a random-weight feed-forward-only ViT for 28x28 inputs (patch 4,
two blocks, 10 Fashion-MNIST classes) saved as a DeiT-style checkpoint with ffx metadata, and its
ONNX export (a few seconds). tests/conftest.py wraps the common ones as session fixtures;
tests/test_runtime_models.py checks that the helpers produce what they promise.
"""

import functools
import io
import os
import shutil
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FASHION = REPO / "tests" / "fixtures" / "fashion"
FASHION_CHECKPOINT = FASHION / "model.pth"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_PREPROCESS = {"input_size": [3, 28, 28], "resize": 28, "interpolation": "bilinear",
                      "mean": [0.286] * 3, "std": [0.353] * 3}

needs_fashion_model = pytest.mark.skipif(not FASHION_CHECKPOINT.is_file(), reason=f"{FASHION_CHECKPOINT} not present")


def _tensorrt_rtx_missing():
    try:
        import tensorrt_rtx_bindings  # noqa: F401
    except Exception as e:  # ImportError, or OSError from a broken install
        return f"needs TensorRT-RTX ({type(e).__name__}: {e}); pip install '.[tensorrt-rtx]' in ffx's folder"
    return None


# The one way a test says it needs TensorRT-RTX: `@needs_rtx`, or `pytestmark = needs_rtx` for a module.
TENSORRT_RTX_MISSING = _tensorrt_rtx_missing()
needs_rtx = pytest.mark.skipif(TENSORRT_RTX_MISSING is not None, reason=TENSORRT_RTX_MISSING or "")


@functools.lru_cache(maxsize=1)
def needs_gpu_reason():
    """None when engines can run here, else why not (a skip reason)."""
    from ffx.errors import BackendUnavailable
    from ffx.runtime.backends.cuda import open_cuda
    from ffx.tensorrt import available_backend

    try:
        backend = available_backend("auto")
        cuda = open_cuda("auto")
        cuda.close()
    except BackendUnavailable as e:
        detail = str(e).split(" (", 1)[0]
        return f"needs a CUDA GPU and TensorRT ({detail})"
    del backend
    return None


def _session_dir(tmp_path_factory, name):
    return tmp_path_factory.getbasetemp() / name


def mini_model(tmp_path_factory):
    """SimpleNamespace(checkpoint, onnx, folder) of the random-weight 28x28 model."""
    folder = _session_dir(tmp_path_factory, "mini-model")
    checkpoint, onnx_path = folder / "mini.pth", folder / "mini.onnx"
    if not onnx_path.is_file():
        import torch

        from ffx.export.checkpoint import resolve_model
        from ffx.export.configs import FFConfig
        from ffx.export.model import FFVisionTransformer
        from ffx.export.onnx_export import export_onnx

        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        config = FFConfig(patch_size=4, embed_dim=32, depth=2, num_classes=10, img_size=28, pos_grid=7)
        network = FFVisionTransformer(config)
        torch.save({"model": network.state_dict(), "epoch": 0,
                    "ffx": {"preprocess": FASHION_PREPROCESS, "class_names": FASHION_CLASSES}}, checkpoint)
        export_onnx(resolve_model(None, str(checkpoint)), onnx_path, source_path=checkpoint)
    return SimpleNamespace(checkpoint=checkpoint, onnx=onnx_path, folder=folder)


def fashion_onnx(tmp_path_factory):
    """The trained fixture exported to ONNX (skips the calling test when the fixture is absent)."""
    if not FASHION_CHECKPOINT.is_file():
        pytest.skip(f"{FASHION_CHECKPOINT} not present")
    folder = _session_dir(tmp_path_factory, "fashion-model")
    onnx_path = folder / "fashion.onnx"
    if not onnx_path.is_file():
        from ffx.export.checkpoint import resolve_model
        from ffx.export.onnx_export import export_onnx

        folder.mkdir(parents=True, exist_ok=True)
        export_onnx(resolve_model(None, str(FASHION_CHECKPOINT)), onnx_path, source_path=FASHION_CHECKPOINT)
    return onnx_path


def ff_tiny_random_export(tmp_path_factory):
    """`ffx export --arch ff_tiny -o tiny.onnx` (random weights, 224x224, ImageNet's classes), run through
    the CLI: SimpleNamespace(onnx, result) with the CliRunner's result. tests/conftest.py makes it once per
    session: the export tests check what the command said and wrote, the calibration tests build it."""
    from click.testing import CliRunner

    from ffx.cli import cli

    onnx_path = _session_dir(tmp_path_factory, "ff-tiny-random") / "tiny.onnx"
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    result = CliRunner().invoke(cli, ["export", "--arch", "ff_tiny", "-o", str(onnx_path)])
    assert "Traceback" not in result.output
    return SimpleNamespace(onnx=onnx_path, result=result)


def fashion_folded_onnx(tmp_path_factory, input_scale=1):
    """The fixture's ONNX with its normalization folded (RGB in [0, input_scale]), made once per session."""
    from ffx.export.normalization import fold_onnx_file

    source = fashion_onnx(tmp_path_factory)
    path = _session_dir(tmp_path_factory, "fashion-model") / f"fashion.folded{input_scale}.onnx"
    if not path.is_file():
        fold_onnx_file(source, path, input_scale=input_scale)
    return path


def labelled_images(tmp_path_factory, per_class=3):
    """A small class-folder data set of real PNGs: the fixture's images when present, else
    synthetic gray 28x28 images."""
    folder = _session_dir(tmp_path_factory, f"labelled-{per_class}")
    if folder.is_dir():
        return folder
    rng = np.random.default_rng(0)
    for index, name in enumerate(FASHION_CLASSES):
        target = folder / f"{index}_{name.lower().replace('/', '_').replace(' ', '_')}"
        target.mkdir(parents=True)
        source = FASHION / "val" / target.name
        existing = sorted(source.glob("*.png"))[:per_class] if source.is_dir() else []
        for i in range(per_class):
            if i < len(existing):
                shutil.copy(existing[i], target / existing[i].name)
            else:
                pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
                Image.fromarray(pixels, "L").convert("RGB").save(target / f"synthetic-{i}.png")
    return folder


def blocked_imports_env(*modules):
    """Environment for a subprocess in which importing `modules` fails (sitecustomize sets
    sys.modules[name] = None, which makes `import name` raise ImportError)."""
    return {"FFX_TEST_BLOCK_IMPORTS": ",".join(modules)}


SITECUSTOMIZE = """
import os, sys
for name in filter(None, os.environ.get("FFX_TEST_BLOCK_IMPORTS", "").split(",")):
    sys.modules[name] = None
"""


def python_with_blocked_imports(tmp_path, *modules):
    """(env) for subprocess.run: a sitecustomize on PYTHONPATH blocks `modules` before any code runs."""
    site = tmp_path / "blocked-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    env.update(blocked_imports_env(*modules))
    return env


def qdq_model(tmp_path_factory):
    """The mini model with Q/DQ on the inputs of MatMul/Gemm/Conv (weights per channel, biases
    in float), made with onnxruntime.quantization on random inputs: a graph TensorRT builds as
    INT8 without ffx's calibrator."""
    mini = mini_model(tmp_path_factory)
    output = mini.folder / "mini.qdq.onnx"
    if not output.is_file():
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        class RandomImages(CalibrationDataReader):
            def __init__(self):
                rng = np.random.default_rng(0)
                self.batches = iter([{"images": rng.standard_normal((2, 3, 28, 28), dtype=np.float32)} for _ in range(4)])

            def get_next(self):
                return next(self.batches, None)

        quantize_static(
            str(mini.onnx), str(output), RandomImages(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm", "Conv"],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                           "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm", "Conv"]},
        )
    return output


def fashion_fp8_onnx(tmp_path_factory):
    """The trained fixture calibrated to FP8 E4M3 Q/DQ by ffx (128 of its train images), made once per
    session: the real FP8 graph the runtime, deploy and serve tests run (skips without the fixture)."""
    source = fashion_onnx(tmp_path_factory)
    path = _session_dir(tmp_path_factory, "fashion-model") / "fashion.fp8.onnx"
    if not path.is_file():
        from ffx.calib import CalibrationOptions, calibrate_fp8

        calibrate_fp8(source, FASHION / "train", path, CalibrationOptions(precision="fp8", num_images=128, workers=0,
                                                                          use_cache=False),
                      tensorrt_check=False)
    return path


def tritonserver_runs():
    """Whether the tritonserver binary PyTriton ships is installed and executes on this machine."""
    try:
        from pytriton.utils.distribution import get_root_module_path
    except ImportError:
        return False
    binary = get_root_module_path() / "tritonserver" / "bin" / "tritonserver"
    try:
        return subprocess.run([str(binary), "--help"], capture_output=True, timeout=60).returncode in (0, 1)
    except OSError:
        return False


def stop_with_sigterm(process, timeout=60):
    """SIGTERM a server process still running and wait for it (killed after `timeout` seconds):
    the shutdown every serve test ends with, and then checks."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sidecar_dict(**changes):
    """A complete, valid sidecar as `ffx build-engine` writes it (full TensorRT on an Orin)."""
    data = {
        "format": "ffx-engine-sidecar", "sidecar_version": 2,
        "engine": {"file": "model.engine", "sha256": "a" * 64, "bytes": 1000},
        "backend": "tensorrt", "backend_version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7"},
        "target_compute_capabilities": [], "hardware_compatibility": "none", "version_compatible": False,
        "precision": "int8", "onnx": {"file": "model.int8.onnx", "sha256": "b" * 64}, "calibration_manifest": None,
        "profile": {"input": "images", "min": [1, 3, 28, 28], "opt": [8, 3, 28, 28], "max": [32, 3, 28, 28]},
        "input_dtype": "float32", "outputs": ["logits"], "build_seconds": 1.5,
        "builder": {"optimization_level": 3, "workspace_bytes": None, "timing_cache": None, "strongly_typed": True,
                    "tf32": True},
        "built_at": "2026-11-21T18:00:00+00:00", "built_on": {"machine": "aarch64", "system": "Linux"},
        "ffx_version": "0.1.0", "metadata": {"num_classes": 10}, "notes": [],
    }
    data.update(changes)
    return data


# -- image files ---------------------------------------------------------------------------------


def photo(width=60, height=45, seed=0):
    """A smooth RGB image (gradients plus noise), more like a photo than pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def write_awkward_images(folder):
    """Files in every mode the reference pipeline converts to RGB; returns {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(photo())
    paths = {}

    def save(name, image, **kwargs):
        paths[name] = folder / name
        image.save(paths[name], **kwargs)

    save("rgb.JPG", rgb, quality=90)  # upper-case extension
    save("gray.png", rgb.convert("L"))
    save("cmyk.jpg", rgb.convert("CMYK"))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, rgb.width, dtype=np.uint8), (rgb.height, 1))))
    save("rgba.png", rgba)
    save("palette.gif", rgb.convert("P", palette=Image.ADAPTIVE, colors=32))
    palette_transparent = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    save("palette_transparent.png", palette_transparent, transparency=0)
    sixteen = (np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16)
    save("gray16.png", Image.fromarray(sixteen))  # mode I;16
    save("bilevel.bmp", rgb.convert("1"))
    save("tiny.webp", rgb.resize((7, 5)))
    return paths


def write_broken_images(folder):
    """Files with image extensions that cannot be decoded; returns {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(photo(seed=3)).save(buffer, "JPEG", quality=90)
    good_jpeg = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(photo(seed=4)).save(buffer, "PNG")
    contents = {
        "empty.jpg": b"",
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "truncated.png": buffer.getvalue()[:300],
        "text.png": b"this is not an image\n" * 10,
        "html.jpeg": b"<html><body>404 Not Found</body></html>",
    }
    paths = {}
    for name, data in contents.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


def runners_that_warn(monkeypatch, module):
    """Make `module`'s open_runner (verify's, bench's) give ONNX Runtime runners that say, through
    ffx.reporting, what an EngineRunner says on a GPU: one warning when made (an engine without a
    sidecar), one on its first call (a CUDA graph capture that failed). They are the real
    OnnxRuntimeRunner otherwise: real sessions, real logits; only the two warnings are added."""
    from ffx.reporting import warn
    from ffx.runtime.backends.onnxrt import OnnxRuntimeRunner

    class WarningRunner(OnnxRuntimeRunner):
        def __init__(self, path, **kwargs):
            super().__init__(path, **kwargs)
            self.called = False
            warn(f"{self.path.name}: made")

        def _infer(self, images):
            if not self.called:
                self.called = True
                warn(f"{self.path.name}: first call")
            return super()._infer(images)

    def open_runner(path, provider="cpu", threads=None, int8_kernels=False, **ignored):
        return WarningRunner(path, provider=provider, threads=threads, int8_kernels=int8_kernels)

    monkeypatch.setattr(module, "open_runner", open_runner)
