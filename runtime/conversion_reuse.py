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
from ffx.errors import FfxError

MAX_MANIFEST_BYTES = 64 << 20  # a manifest lists at most a few thousand images


def conversion_mismatch(path, source_path, precision, data, options):
    """None when `path` is what converting `source_path` to `precision` ("int8", "fp8" or "fp16") on
    `data` (a folder, or None for FP16 without images) with `options` (CalibrationOptions) would
    write now; else why not, in a few words ("it was made from another ONNX")."""
    from ffx.calib.model_io import load_source_model
    from ffx.calib.selection import choose_calibration_images
    from ffx.metadata import onnx_metadata
    from ffx.runtime.onnx_model import calibration_manifest_path, load_onnx

    path = Path(path)
    try:
        metadata = onnx_metadata(load_onnx(path), path) or {}
    except FfxError:
        return "it is not a readable ONNX model"
    calibration = metadata.get("calibration")
    if metadata.get("precision") != precision or not isinstance(calibration, dict):
        return f"it is not an ffx {precision} conversion"
    manifest_path = calibration_manifest_path(path, metadata)
    if manifest_path is None or manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        return "its manifest is missing"
    manifest_data = manifest_path.read_bytes()
    if sha256_bytes(manifest_data) != calibration.get("manifest_sha256"):
        return f"{manifest_path.name} is not the manifest it was written with"
    try:
        manifest = json.loads(manifest_data)
        recorded_input = manifest["input"]["sha256"]
    except (ValueError, TypeError, KeyError):
        return f"{manifest_path.name} is not a calibration manifest"
    source_sha256 = sha256_file(source_path)
    if recorded_input != source_sha256 or calibration.get("input_sha256") != source_sha256:
        return f"it was made from another ONNX than {Path(source_path).name}"
    if manifest.get("ffx_version") != __version__:
        return f"it was made by ffx {manifest.get('ffx_version')}, this is {__version__}"
    source = load_source_model(source_path)
    if manifest.get("params") != _expected_params(source, precision, data, options):
        return "it was made with other calibration settings"
    images = (choose_calibration_images(data, options.num_images, options.seed, source.info.get("class_names"), None)
              if data is not None else None)
    if manifest.get("image_list_sha256") != (images.list_sha256 if images else None):
        return "it was calibrated on other images"
    return None


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
