"""The typed records that pass between stages: ModelMetadata (ffx/metadata.py) and
CalibrationManifest (ffx/calibration_manifest.py). What ffx writes from them is byte for byte
what it wrote from dicts, and what older or other writers left out still reads."""

import dataclasses
import json

import onnx
import pytest

from ffx.calibration_manifest import CalibrationManifest, ManifestInput
from ffx.errors import FfxError
from ffx.metadata import ModelMetadata, Preprocess, onnx_metadata, validate_metadata


def _mini_metadata(mini):
    return onnx_metadata(onnx.load(str(mini.onnx)))


def test_model_metadata_gives_back_the_object_it_read_key_for_key(mini):
    info = _mini_metadata(mini)
    metadata = ModelMetadata.from_dict(info, mini.onnx)
    assert metadata.to_dict() == info and list(metadata.to_dict()) == list(info)
    assert metadata.preprocess == Preprocess.from_dict(info["preprocess"])
    assert (metadata.num_classes, metadata.class_names, metadata.arch) == (10, info["class_names"], info["arch"])
    assert metadata.source_sha256 == info["source_sha256"] and metadata.precision == info["precision"] == "fp32"
    assert metadata.has_preprocess and metadata.depth == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        metadata.num_classes = 3
    copy = metadata.to_dict()
    copy["preprocess"]["resize"] = 1  # a copy: the record itself is not changed
    assert metadata.to_dict() == info


@pytest.mark.parametrize("edit", [
    lambda d: d.__setitem__("num_classes", "ten"),
    lambda d: d.__setitem__("class_names", ["a", "b"]),
    lambda d: d.__setitem__("format_version", 99),
    lambda d: d["preprocess"].pop("mean"),
    lambda d: d.__setitem__("calibration", [1]),
])
def test_model_metadata_refuses_what_validate_metadata_refuses_with_its_message(mini, edit):
    info = _mini_metadata(mini)
    edit(info)
    with pytest.raises(FfxError) as expected:
        validate_metadata(info, "x.onnx")
    with pytest.raises(FfxError) as got:
        ModelMetadata.from_dict(info, "x.onnx")
    assert str(got.value) == str(expected.value)


def test_unchecked_metadata_holds_what_the_file_says():
    metadata = ModelMetadata.unchecked({"precision": 3, "calibration": {"manifest": "m.json", "input_sha256": "ab"},
                                        "preprocess": {"resize": 1}})
    assert metadata.precision == 3 and metadata.preprocess is None and metadata.has_preprocess
    assert (metadata.calibration.manifest, metadata.calibration.input_sha256, metadata.calibration.method) == (
        "m.json", "ab", None)
    empty = ModelMetadata.unchecked(None)
    assert empty == ModelMetadata() and empty.to_dict() == {} and not empty.has_preprocess



def test_calibrated_metadata_is_the_source_object_with_precision_and_calibration_set(mini):
    info = _mini_metadata(mini)
    calibration = {"method": "entropy", "manifest": "m.int8.json", "input_sha256": "ab"}
    calibrated = ModelMetadata.from_dict(info, mini.onnx).calibrated("int8", calibration)
    assert calibrated.to_dict() == {**info, "precision": "int8", "calibration": calibration}
    assert calibrated.precision == "int8" and calibrated.calibration.manifest == "m.int8.json"
    assert ModelMetadata.from_dict(info, mini.onnx).to_dict() == info  # the source record is unchanged


def test_source_model_carries_the_metadata_validated_once_when_loaded(mini):
    from ffx.calib.model_io import load_source_model

    source = load_source_model(mini.onnx)
    assert isinstance(source.metadata, ModelMetadata) and source.metadata is source.metadata
    assert source.metadata.to_dict() == _mini_metadata(mini) and source.input_name == source.metadata.input_name
    assert source.preprocess == source.metadata.preprocess


def test_network_layers_reads_the_depth_from_typed_metadata(mini):
    from ffx.calib.layers import network_layers

    model, info = onnx.load(str(mini.onnx)), _mini_metadata(mini)
    typed = network_layers(model, ModelMetadata.from_dict(info, mini.onnx))
    assert [layer.name for layer in typed][:2] == ["patch_embed", "blocks.0.mlp1.fc1"] and typed[-1].name == "head"
    unnamed = network_layers(model, ModelMetadata.unchecked({}))  # no depth: named by node
    assert [layer.node for layer in unnamed] == [layer.name for layer in unnamed] == [layer.node for layer in typed]

def _manifest_dict(**extra):
    return {"ffx_version": "0.1", "precision": "int8", "output": "m.int8.onnx",
            "input": {"file": "m.onnx", "sha256": "0" * 64}, "params": {"method": "entropy"},
            "preprocess": {"resize": 32}, "data": {"path": "imgs"}, "image_list_sha256": "1" * 64,
            "images": [{"path": "a/1.png", "sha256": "2" * 64}], "images_used": 1, "skipped": [], **extra}


@pytest.mark.parametrize("extra", [{"layers": []}, {"layers": [{"name": "fc"}], "keep_fp_search": {"target": 0.99}},
                                   {"fp32_tensors": [], "fp32_nodes": ["n"]}])
def test_manifest_writes_what_the_dict_wrote(extra):
    data = _manifest_dict(**extra)
    manifest = CalibrationManifest.from_dict(data)
    assert manifest.to_dict() == data and list(manifest.to_dict()) == list(data)
    assert manifest.to_bytes() == (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    assert manifest.input == ManifestInput("m.onnx", "0" * 64)


def test_manifest_of_an_older_or_other_writer_still_reads(tmp_path):
    manifest = CalibrationManifest.from_dict({"images": [{"path": "x.png"}, {"path": 3}], "data": {"path": "d"}})
    assert manifest.input is None and manifest.layers is None and manifest.params is None
    assert manifest.image_files(tmp_path / "m.json") == [(str((tmp_path / "d" / "x.png").resolve()), None)]
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "bad.json").write_text("{not json")
    assert CalibrationManifest.read(tmp_path / "list.json") is None
    assert CalibrationManifest.read(tmp_path / "bad.json") is None
    assert CalibrationManifest.read(tmp_path / "missing.json") is None


@pytest.mark.slow
def test_the_manifests_ffx_writes_read_back_byte_for_byte(mini, images, tmp_path):
    from ffx.calib import CalibrationOptions, calibrate_int8, convert_fp16

    int8 = calibrate_int8(mini.onnx, images, tmp_path / "m.int8.onnx", CalibrationOptions(num_images=10, use_cache=False),
                          tensorrt_check=False)
    fp16 = convert_fp16(mini.onnx, tmp_path / "m.fp16.onnx", tensorrt_check=False)
    for path in (int8.manifest, fp16.manifest):
        manifest = CalibrationManifest.read(path)
        assert manifest.to_bytes() == open(path, "rb").read()
        assert manifest.input.sha256 == int8.input_sha256
    metadata = ModelMetadata.from_dict(onnx_metadata(onnx.load(int8.output)))
    assert metadata.precision == "int8" and metadata.calibration.manifest == "m.int8.json"
