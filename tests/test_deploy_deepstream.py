"""`ffx deploy deepstream`: the nvinfer config's net-scale-factor and offsets, applied the way
nvinfer applies them (y = net-scale-factor * (pixel - offset)), reproduce the model's own
preprocessing on real images; per-channel std is refused unless forced, with its cost measured."""

import configparser
import json

import numpy as np
import onnx
import onnxruntime
import pytest

from ffx.cli import cli
from ffx.images import find_images, load_rgb, normalize_pixels, resize_and_crop
from ffx.metadata import IMAGENET_MEAN, IMAGENET_STD, Preprocess, onnx_metadata, read_onnx_metadata, set_onnx_metadata
from helpers import FASHION, FASHION_CLASSES, _session_dir, fashion_folded_onnx, fashion_onnx, needs_rtx


def _deploy(cli_runner, *args):
    return cli_runner.invoke(cli, ["deploy", "deepstream", *map(str, args)], catch_exceptions=False)


def _read_config(path):
    parser = configparser.ConfigParser()
    parser.read_string(path.read_text())
    return parser["property"]


def _nvinfer_input(pixels, config):
    """DeepStream's documented transform, written independently of ffx: y = net-scale-factor * (x - mean)."""
    scale = float(config["net-scale-factor"])
    offsets = np.array([float(v) for v in config["offsets"].split(";")])
    assert config["model-color-format"] == "0"  # RGB
    y = scale * (pixels.astype(np.float64) - offsets)
    return np.moveaxis(y, -1, -3).astype(np.float32)


def _real_pixels(preprocess, count=48):
    return np.stack([resize_and_crop(load_rgb(p), preprocess) for p in find_images(FASHION / "val")[::20][:count]])


def _logits(model, images):
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


@pytest.mark.parametrize("variant", ["folded [0, 1]", "folded [0, 255]", "unfolded, same std in every channel"])
def test_config_reproduces_the_model_preprocessing(cli_runner, tmp_path_factory, tmp_path, variant):
    model = {"folded [0, 1]": lambda: fashion_folded_onnx(tmp_path_factory, 1),
             "folded [0, 255]": lambda: fashion_folded_onnx(tmp_path_factory, 255),
             "unfolded, same std in every channel": lambda: fashion_onnx(tmp_path_factory)}[variant]()
    result = _deploy(cli_runner, model, "-o", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["exact"] is True and report["approximation"] is None
    config = _read_config(tmp_path / f"config_infer_{model.name.split('.')[0]}.txt")
    preprocess = Preprocess.from_dict(read_onnx_metadata(model)["preprocess"])
    pixels = _real_pixels(preprocess)
    expected = normalize_pixels(pixels, preprocess)
    np.testing.assert_allclose(_nvinfer_input(pixels, config), expected, rtol=1e-6, atol=1e-5)
    reference, deployed = _logits(model, expected), _logits(model, _nvinfer_input(pixels, config))
    np.testing.assert_allclose(deployed, reference, atol=1e-4)
    assert (deployed.argmax(1) == reference.argmax(1)).all()
    # The rest of the classifier config.
    assert (config["network-type"], config["network-mode"], config["infer-dims"]) == ("1", "0", "3;28;28")
    assert config["onnx-file"] == model.name and config["output-blob-names"] == "logits"
    assert (tmp_path / config["onnx-file"]).read_bytes() == model.read_bytes()
    assert (tmp_path / "labels.txt").read_text().strip().split(";") == FASHION_CLASSES


@pytest.fixture(scope="module")
def imagenet_normalized_onnx(tmp_path_factory):
    """The fixture model relabelled as taking ImageNet normalization (per-channel std): the case
    nvinfer's single scale cannot express."""
    path = _session_dir(tmp_path_factory, "fashion-model") / "fashion.imagenet-norm.onnx"
    if not path.is_file():
        model = onnx.load(str(fashion_onnx(tmp_path_factory)))
        info = onnx_metadata(model)
        info["preprocess"].update(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
        set_onnx_metadata(model, info)
        onnx.save(model, str(path))
    return path


def test_per_channel_std_is_refused_and_folding_fixes_it(cli_runner, imagenet_normalized_onnx, tmp_path):
    refused = _deploy(cli_runner, imagenet_normalized_onnx, "-o", tmp_path / "ds")
    assert refused.exit_code == 2
    assert refused.output.startswith("Error: ") and "--fold-normalization" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "ds").exists()

    folded = tmp_path / "folded.onnx"
    assert cli_runner.invoke(cli, ["export", "--from-onnx", str(imagenet_normalized_onnx), "--fold-normalization",
                                   "-o", str(folded)]).exit_code == 0
    result = _deploy(cli_runner, folded, "-o", tmp_path / "ds", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["exact"] is True
    config = _read_config(tmp_path / "ds" / "config_infer_folded.txt")
    pixels = _real_pixels(Preprocess.from_dict(read_onnx_metadata(folded)["preprocess"]))
    original = Preprocess.from_dict(read_onnx_metadata(imagenet_normalized_onnx)["preprocess"])
    # Folded + nvinfer's scaling == the original model with its per-channel normalization.
    np.testing.assert_allclose(_logits(folded, _nvinfer_input(pixels, config)),
                               _logits(imagenet_normalized_onnx, normalize_pixels(pixels, original)), atol=1e-4)


def test_forced_approximation_states_its_measured_cost(cli_runner, imagenet_normalized_onnx, tmp_path):
    assert _deploy(cli_runner, imagenet_normalized_onnx, "-o", tmp_path, "--approximate-normalization").exit_code == 2
    result = _deploy(cli_runner, imagenet_normalized_onnx, "-o", tmp_path, "--approximate-normalization",
                     "--data", FASHION / "val", "--num-images", "200", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    cost = report["approximation"]
    assert report["exact"] is False and cost["images"] == 200
    assert cost["top1_drop"] == pytest.approx(cost["exact_top1"] - cost["approximate_top1"])
    assert 0 <= cost["agreement"] <= 100
    text = (tmp_path / "config_infer_fashion.txt").read_text()
    assert "APPROXIMATE" in text and f"{cost['exact_top1']:.2f}%" in text
    # The written scale is the mean std: check it against the definition.
    config = _read_config(tmp_path / "config_infer_fashion.txt")
    assert float(config["net-scale-factor"]) == pytest.approx(1 / (255 * np.mean(IMAGENET_STD)), rel=1e-12)


@needs_rtx
def test_engine_config_names_engine_onnx_and_profile_batch(cli_runner, tmp_path_factory, tmp_path):
    folded = fashion_folded_onnx(tmp_path_factory)
    engine = tmp_path / "engine" / "fashion.folded1.engine"
    built = cli_runner.invoke(cli, ["build-engine", str(folded), "-o", str(engine), "--backend", "tensorrt-rtx",
                                    "--max-batch", "8"], catch_exceptions=False)
    assert built.exit_code == 0, built.output
    result = _deploy(cli_runner, engine, "-o", tmp_path / "ds", "--json")
    assert result.exit_code == 0, result.output
    config = _read_config(tmp_path / "ds" / "config_infer_fashion.txt")
    assert config["model-engine-file"] == engine.name and config["batch-size"] == "8"
    assert float(config["net-scale-factor"]) == pytest.approx(1 / 255, rel=1e-15)
    assert (tmp_path / "ds" / engine.name).read_bytes() == engine.read_bytes()
    assert any("TensorRT-RTX" in w for w in json.loads(result.stdout)["warnings"])
    # A second run into the same folder is idempotent; a different file there is never replaced.
    assert _deploy(cli_runner, engine, "-o", tmp_path / "ds").exit_code == 0
    (tmp_path / "ds" / "labels.txt").write_text("mine\n")
    clash = _deploy(cli_runner, engine, "-o", tmp_path / "ds")
    assert clash.exit_code == 2 and "labels.txt" in clash.output
    assert (tmp_path / "ds" / "labels.txt").read_text() == "mine\n"
