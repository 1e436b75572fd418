"""The calibration manifest: the JSON file `ffx calibrate` (INT8, FP8) and the FP16 conversion write
beside the graph they make (`model.int8.onnx` -> `model.int8.json`), and that `ffx verify`,
`ffx build-engine` (reusing a graph) and `ffx inspect` read back.

It records what the graph was made from and how: ffx's version, the precision, the input ONNX
(file name and sha256), the parameters, the preprocessing, the data folder and every chosen image
(path relative to `data.path`, sha256), how many were used or skipped, and what the precision
adds (Q/DQ: `layers` and, after a search, `keep_fp_search`; FP8 after `--int8-layers auto` without
a target: `int8_choice`; FP16: `fp32_tensors`, `fp32_nodes`).

`CalibrationManifest.to_bytes` writes exactly what ffx has always written (sorted keys, indent 2);
`from_dict` reads any JSON object, tolerating what older or other writers left out (absent fields
are None), as the readers always have: each reader decides what it needs (`input` for finding the
source ONNX, `images` for the overlap check).
"""

import dataclasses
import json
from pathlib import Path

from ffx.json_input import InvalidJson, read_json_file


@dataclasses.dataclass(frozen=True)
class ManifestInput:
    """The ONNX a graph was made from: its file name (beside the graph) and sha256, as recorded."""

    file: object = None
    sha256: object = None

    def to_dict(self):
        return {"file": self.file, "sha256": self.sha256}


@dataclasses.dataclass(frozen=True)
class CalibrationManifest:
    ffx_version: object
    precision: object  # "int8", "fp8", "fp16"
    output: object  # the graph's file name
    input: ManifestInput | None  # None when the file records none (not an ffx manifest)
    params: object  # what reusing the graph compares: the method and its settings
    preprocess: object  # the Preprocess dict the images went through
    data: object  # {"path", "layout", ...}; None for FP16 without images
    image_list_sha256: object
    images: object  # [{"path", "sha256"}], paths relative to data.path
    images_used: object
    skipped: object
    # What a precision adds; None: absent from the file (and not written).
    layers: object = None  # Q/DQ
    keep_fp_search: object = None  # Q/DQ after a --target-agreement search
    int8_choice: object = None  # FP8 after --int8-layers auto without a target
    fp32_tensors: object = None  # FP16
    fp32_nodes: object = None  # FP16

    _ALWAYS = ("ffx_version", "precision", "output", "input", "params", "preprocess", "data", "image_list_sha256",
               "images", "images_used", "skipped")
    _OPTIONAL = ("layers", "keep_fp_search", "int8_choice", "fp32_tensors", "fp32_nodes")

    def to_dict(self):
        """The JSON object: the fields every manifest has, then those of its precision."""
        d = {name: getattr(self, name) for name in self._ALWAYS}
        d["input"] = self.input.to_dict() if self.input is not None else None
        d.update({name: getattr(self, name) for name in self._OPTIONAL if getattr(self, name) is not None})
        return d

    def to_bytes(self):
        """The file's bytes, as ffx has always written them."""
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_dict(cls, d):
        """The manifest a parsed JSON object holds; absent fields are None. Not validated beyond
        `input`, which is kept only when it is an object: readers check what they use."""
        recorded = d.get("input")
        source = ManifestInput(recorded.get("file"), recorded.get("sha256")) if isinstance(recorded, dict) else None
        names = [field.name for field in dataclasses.fields(cls) if field.name != "input"]
        return cls(input=source, **{name: d.get(name) for name in names})

    @classmethod
    def read(cls, path):
        """The manifest at `path`, or None when it cannot be read or is not a JSON object."""
        try:
            data = read_json_file(path)
        except (OSError, InvalidJson):
            return None
        return cls.from_dict(data) if isinstance(data, dict) else None

    def image_files(self, manifest_path):
        """[(absolute path, sha256 or None)] of the images it lists (paths relative to `data.path`,
        itself relative to the manifest's folder); entries without a usable path are left out."""
        base = Path(manifest_path).parent
        if isinstance(self.data, dict) and isinstance(self.data.get("path"), str):
            base = base / self.data["path"]
        images = []
        for entry in self.images if isinstance(self.images, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                resolved = _resolve(base, entry["path"])
                if resolved is not None:
                    images.append((resolved, entry.get("sha256") if isinstance(entry.get("sha256"), str) else None))
        return images


def _resolve(base, path):
    """`path` (relative to `base`) made absolute, or None for a path no file can have (a NUL
    byte) or that loops through symlinks: a manifest is someone else's text."""
    try:
        path = Path(path)
        return str((path if path.is_absolute() else base / path).resolve())
    except (OSError, RuntimeError, ValueError):
        return None


def calibration_manifest_path(onnx_path, metadata=None):
    """The calibration manifest of a calibrated ONNX: the file its ModelMetadata `metadata` names
    (`ffx calibrate` writes `calibration.manifest`), else `model.int8.onnx` -> `model.int8.json`;
    None if neither exists."""
    onnx_path = Path(onnx_path)
    named = metadata.calibration.manifest if metadata is not None and metadata.calibration else None
    # A bare file name beside the model: metadata must not point ffx at other folders.
    beside = isinstance(named, str) and named != "" and Path(named).name == named
    candidates = ([onnx_path.parent / named] if beside else []) + [onnx_path.with_suffix(".json")]
    return next((candidate for candidate in candidates if candidate.is_file()), None)
