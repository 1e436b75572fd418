"""Whether a calibrated (INT8, FP8) or converted (FP16) graph on disk is what converting an FP32 ONNX
would write now, so that `ffx build-engine` can reuse it instead of calibrating again.

Known from the hashes the conversion recorded: the graph's metadata names its manifest and that
manifest's sha256 and the input ONNX's sha256; the manifest holds the parameters, the chosen
images' fingerprint (`image_list_sha256`, a hash of their content hashes) and ffx's version. All of
them must equal what this run would use. Calibration is deterministic given those, so the file
is the one it would write.
"""

import json
from pathlib import Path

from ffx import __version__
from ffx.artifacts import sha256_bytes, sha256_file
from ffx.calibration_manifest import CalibrationManifest
from ffx.errors import FfxError
from ffx.reporting import silenced

MAX_MANIFEST_BYTES = 64 << 20  # a manifest lists at most a few thousand images


def conversion_mismatch(path, source_path, precision, data, options):
    """None when `path` is what converting `source_path` to `precision` ("int8", "fp8" or "fp16") on
    `data` (a folder, or None for FP16 without images) with `options` (CalibrationOptions) would
    write now; else why not, in a few words ("it was made from another ONNX")."""
    from ffx.calib.model_io import load_source_model
    from ffx.calib.selection import choose_calibration_images
    from ffx.metadata import ModelMetadata, onnx_metadata
    from ffx.calibration_manifest import calibration_manifest_path
    from ffx.runtime.engines.onnx_model import load_onnx

    path = Path(path)
    try:
        metadata = ModelMetadata.unchecked(onnx_metadata(load_onnx(path), path))
    except FfxError:
        return "it is not a readable ONNX model"
    calibration = metadata.calibration
    if metadata.precision != precision or calibration is None:
        return f"it is not an ffx {precision} conversion"
    manifest_path = calibration_manifest_path(path, metadata)
    if manifest_path is None or manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        return "its manifest is missing"
    manifest_data = manifest_path.read_bytes()
    if sha256_bytes(manifest_data) != calibration.manifest_sha256:
        return f"{manifest_path.name} is not the manifest it was written with"
    manifest = _parse_manifest(manifest_data)
    if manifest is None or manifest.input is None or manifest.input.sha256 is None:
        return f"{manifest_path.name} is not a calibration manifest"
    source_sha256 = sha256_file(source_path)
    if manifest.input.sha256 != source_sha256 or calibration.input_sha256 != source_sha256:
        return f"it was made from another ONNX than {Path(source_path).name}"
    if manifest.ffx_version != __version__:
        return f"it was made by ffx {manifest.ffx_version}, this is {__version__}"
    source = load_source_model(source_path)
    if manifest.params != _expected_params(source, precision, data, options):
        return "it was made with other calibration settings"
    with silenced():  # a check whether to reuse a file: it says nothing about the images
        images = (choose_calibration_images(data, options.num_images, options.seed, source.metadata.class_names)
                  if data is not None else None)
    if manifest.image_list_sha256 != (images.list_sha256 if images else None):
        return "it was calibrated on other images"
    return None


def _parse_manifest(data):
    """The CalibrationManifest in `data` (the file's bytes), or None when they are no JSON object."""
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    return CalibrationManifest.from_dict(parsed) if isinstance(parsed, dict) else None


def _expected_params(source, precision, data, options):
    if precision == "fp16":
        from ffx.calib.fp16 import fp16_params

        return fp16_params(options, data is not None)
    from ffx.calib.precisions import qdq_recipe
    from ffx.calib.qdq import keep_fp_selection, qdq_params, quantization_plan

    if options.smooth_gelu:  # the smoothed tensors are only known after collecting statistics
        return None
    recipe = qdq_recipe(precision)
    _, kept = quantization_plan(source, keep_fp_selection(recipe, source, options))
    return qdq_params(recipe, source, options, [layer.name for layer in kept], default_keep_fp=options.keep_fp is None)
