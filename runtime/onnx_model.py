"""What an ONNX file is, read from the graph itself: precision, Q/DQ count, op histogram, and
the calibration manifest that came with a Q/DQ model."""

import collections
import json
from pathlib import Path

import onnx

from ffx.errors import FfxError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def load_onnx(path):
    """The ModelProto of `path` without its external weights (enough to inspect the graph)."""
    path = Path(path)
    if not path.is_file():
        raise FfxError(f"{path}: no such file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # DecodeError, ValueError, ... for files that are not ONNX
        raise FfxError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None


def op_histogram(model):
    return dict(collections.Counter(node.op_type for node in model.graph.node).most_common())


def graph_precision(model):
    """"int8" when the graph has Q/DQ pairs, "fp16" when its weights or casts are float16, else "fp32"."""
    ops = {node.op_type for node in model.graph.node}
    if ops & set(QDQ_OPS):
        return "int8"
    float16 = onnx.TensorProto.FLOAT16
    if any(init.data_type == float16 for init in model.graph.initializer):
        return "fp16"
    for node in model.graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == float16 for a in node.attribute):
            return "fp16"
    return "fp32"



def calibration_manifest_path(onnx_path, metadata=None):
    """The calibration manifest of a calibrated ONNX (`model.int8.onnx` -> `model.int8.json`, or
    the file its metadata names), or None."""
    onnx_path = Path(onnx_path)
    candidates = []
    calibration = (metadata or {}).get("calibration")
    if isinstance(calibration, dict):
        for key in ("manifest", "manifest_file", "manifest_path"):
            if isinstance(calibration.get(key), str):
                candidates.append(onnx_path.parent / calibration[key])
    candidates.append(onnx_path.with_suffix(".json"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def read_calibration_images(manifest_path):
    """[(path or None, sha256 or None)] of the images a calibration manifest lists; [] when it
    lists none in a form ffx understands."""
    try:
        manifest = json.loads(Path(manifest_path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return []
    base = Path(manifest_path).parent
    data = manifest.get("data") if isinstance(manifest, dict) else None
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        base = base / data["path"]  # calibration lists paths relative to its data folder
    entries = []
    for key in ("images", "calibration_images", "files"):
        value = manifest.get(key) if isinstance(manifest, dict) else None
        if isinstance(value, dict):  # {"items": [...]} style
            value = value.get("items") or value.get("files") or value.get("images")
        if isinstance(value, list):
            entries = value
            break
    images = []
    for entry in entries:
        if isinstance(entry, str):
            images.append((_resolve(base, entry), None))
        elif isinstance(entry, dict):
            path = entry.get("path") or entry.get("file")
            digest = entry.get("sha256") or entry.get("hash") or entry.get("content_sha256")
            images.append((_resolve(base, path) if path else None, digest))
    return images


def _resolve(base, path):
    path = Path(path)
    return str((path if path.is_absolute() else base / path).resolve())
