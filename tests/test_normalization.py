"""`ffx export --fold-normalization`: mean/std folded into the patch embedding, checked against
PyTorch plus normalization, and every stage that feeds the model (predict, verify, calibrate)
giving it scaled RGB instead of normalized RGB."""

import json

import numpy as np
import onnx
import onnxruntime
import pytest

from ffx.cli import cli
from ffx.images import normalize_pixels
from ffx.metadata import Preprocess, read_onnx_metadata
from helpers import FASHION, fashion_folded_onnx, fashion_onnx, python_with_blocked_imports


def _logits(path, images):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def _real_pixels(count=16):
    from ffx.images import find_images, load_rgb, resize_and_crop

    preprocess = Preprocess(input_size=(3, 28, 28), resize=28, interpolation="bilinear")
    return np.stack([resize_and_crop(load_rgb(p), preprocess) for p in find_images(FASHION / "val")[::61][:count]])


@pytest.mark.slow
def test_export_folds_normalization_with_parity(cli_runner, mini, tmp_path):
    folded = tmp_path / "mini.folded.onnx"
    result = cli_runner.invoke(cli, ["export", "--checkpoint", str(mini.checkpoint), "--fold-normalization",
                                     "-o", str(folded), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["max_abs_diff"] < 1e-4
    info = read_onnx_metadata(folded)
    assert info["preprocess"]["normalization_folded"] is True and info["preprocess"]["input_scale"] == 1.0
    assert info["preprocess"]["mean"] == [0.286] * 3  # what was folded stays on record
    # The folded graph on [0, 1] pixels == the original graph on normalized pixels.
    pixels = np.random.default_rng(1).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    original = Preprocess.from_dict(read_onnx_metadata(mini.onnx)["preprocess"])
    folded_preprocess = Preprocess.from_dict(info["preprocess"])
    np.testing.assert_array_equal(normalize_pixels(pixels, folded_preprocess),
                                  np.moveaxis(pixels.astype(np.float32) / 255.0, -1, -3))
    np.testing.assert_allclose(_logits(folded, normalize_pixels(pixels, folded_preprocess)),
                               _logits(mini.onnx, normalize_pixels(pixels, original)), atol=1e-4, rtol=1e-4)
    # No extra node: the fold changed the convolution's constants only.
    assert [n.op_type for n in onnx.load(str(folded)).graph.node] == [n.op_type for n in onnx.load(str(mini.onnx)).graph.node]


def test_existing_onnx_folds_to_0_255_and_predicts_the_same(tmp_path_factory):
    original = fashion_onnx(tmp_path_factory)
    folded = fashion_folded_onnx(tmp_path_factory, input_scale=255)
    assert read_onnx_metadata(folded)["preprocess"]["input_scale"] == 255.0
    pixels = _real_pixels()
    expected = _logits(original, normalize_pixels(pixels, Preprocess.from_dict(read_onnx_metadata(original)["preprocess"])))
    scaled = normalize_pixels(pixels, Preprocess.from_dict(read_onnx_metadata(folded)["preprocess"]))
    np.testing.assert_array_equal(scaled, np.moveaxis(pixels, -1, -3).astype(np.float32))  # raw 0-255 values
    actual = _logits(folded, scaled)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)
    assert (actual.argmax(1) == expected.argmax(1)).all()


@pytest.mark.slow
def test_predict_and_verify_feed_a_folded_model_scaled_pixels(cli_runner, tmp_path_factory):
    original, folded = fashion_onnx(tmp_path_factory), fashion_folded_onnx(tmp_path_factory)
    folder = str(FASHION / "val" / "3_dress")
    outputs = [cli_runner.invoke(cli, ["predict", str(model), folder, "--json"], catch_exceptions=False)
               for model in (original, folded)]
    assert all(r.exit_code == 0 for r in outputs), outputs[1].output
    top1 = [[p["top"][0]["class"] for p in json.loads(r.stdout)] for r in outputs]
    assert top1[0] == top1[1] and len(top1[0]) >= 50
    # verify: the folded candidate gets scaled RGB, the PyTorch reference normalized RGB.
    result = cli_runner.invoke(cli, ["verify", str(folded), "--reference", str(FASHION / "model.pth"), "--data",
                                     str(FASHION / "val"), "--limit", "100", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["agreement"] == 100.0 and report["max_abs_error"] < 1e-4


@pytest.mark.slow
def test_calibrate_keeps_the_fold_and_feeds_scaled_pixels(cli_runner, tmp_path_factory, tmp_path):
    folded = fashion_folded_onnx(tmp_path_factory)
    output = tmp_path / "folded.int8.onnx"
    result = cli_runner.invoke(cli, ["calibrate", str(folded), "--data", str(FASHION / "train"),
                                     "--num-images", "64", "-o", str(output), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    info = read_onnx_metadata(output)
    assert info["preprocess"]["normalization_folded"] is True and info["precision"] == "int8"
    pixels = _real_pixels()
    scaled = normalize_pixels(pixels, Preprocess.from_dict(info["preprocess"]))
    assert (_logits(output, scaled).argmax(1) == _logits(folded, scaled).argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("args, message", [
    (["--input-scale", "255"], "--input-scale needs --fold-normalization"),
    (["--from-onnx", "{folded}", "--fold-normalization"], "already folded"),
    (["--from-onnx", "{folded}"], "--from-onnx needs --fold-normalization"),
])
def test_fold_mistakes_exit_2_with_one_line(cli_runner, tmp_path_factory, tmp_path, args, message):
    folded = str(fashion_folded_onnx(tmp_path_factory))
    args = [a.replace("{folded}", folded) for a in args]
    result = cli_runner.invoke(cli, ["export", *args, "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "x.onnx").exists()


def test_folding_an_existing_onnx_imports_no_torch(tmp_path_factory, tmp_path):
    """In a Python where importing torch fails; tests/test_install.py runs the same fold in a venv
    that has no torch at all."""
    import subprocess
    import sys

    folded = tmp_path / "folded.onnx"
    code = "import sys; from ffx.cli import main; sys.argv = ['ffx', *sys.argv[1:]]; main()"
    result = subprocess.run([sys.executable, "-c", code, "export", "--from-onnx", str(fashion_onnx(tmp_path_factory)),
                             "--fold-normalization", "-o", str(folded)],
                            env=python_with_blocked_imports(tmp_path, "torch"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert folded.read_bytes() == fashion_folded_onnx(tmp_path_factory).read_bytes()
