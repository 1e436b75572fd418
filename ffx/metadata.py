"""The `ffx` metadata every artefact carries, so that no stage needs flags an earlier stage knew.

An ONNX model holds one `metadata_props` entry with key ``ffx`` whose value is a JSON object:
``arch``, ``config``, ``num_classes``, ``preprocess`` (see `Preprocess`), ``class_names`` (when
known), ``source_sha256``, ``ffx_version`` and, after calibration, ``precision`` and
``calibration``. Engines carry the same object inside their JSON sidecar.
"""

import dataclasses
import functools
import json
from pathlib import Path

import onnx

from ffx.errors import FfxError

METADATA_KEY = "ffx"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Evaluation transform, like timm's pretrained_cfg: resize shorter side, center crop, normalize."""

    input_size: tuple = (3, 224, 224)  # (C, H, W) of the network input
    resize: int = 256  # shorter side before the center crop
    interpolation: str = "bicubic"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    # True when mean/std are folded into the network's first layer: the network then takes RGB
    # scaled to [0, input_scale] (1.0 or 255.0) and mean/std only record what was folded.
    normalization_folded: bool = False
    input_scale: float = 1.0

    def to_dict(self):
        d = {
            "input_size": list(self.input_size),
            "resize": self.resize,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        if self.normalization_folded:  # absent otherwise: unfolded models keep their old metadata
            d["normalization_folded"] = True
            d["input_scale"] = self.input_scale
        return d

    def folded(self, input_scale=1.0):
        """The same transform for a network with mean/std folded in, taking [0, input_scale] RGB."""
        return dataclasses.replace(self, normalization_folded=True, input_scale=float(input_scale))

    def same_pixels(self, other):
        """Whether both transforms resize and crop alike (and so differ at most in normalization)."""
        return (self.input_size, self.resize, self.interpolation) == (other.input_size, other.resize, other.interpolation)

    @classmethod
    def from_dict(cls, d):
        try:
            return cls(
                input_size=tuple(int(v) for v in d["input_size"]),
                resize=int(d["resize"]),
                interpolation=str(d["interpolation"]),
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                normalization_folded=bool(d.get("normalization_folded", False)),
                input_scale=float(d.get("input_scale", 1.0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FfxError(f"preprocessing metadata is incomplete or malformed ({e!r}): {d}") from None


@functools.cache
def _imagenet_rows():
    """(WordNet id, name) of the 1000 ImageNet-1k classes in training index order."""
    path = Path(__file__).with_name("data") / "imagenet1k_classes.tsv"
    return tuple(tuple(line.split("\t")) for line in path.read_text().splitlines() if not line.startswith("#"))


def imagenet_class_names():
    """The 1000 ImageNet-1k class names in training index order."""
    return [name for _wnid, name in _imagenet_rows()]


def imagenet_wnids():
    return [wnid for wnid, _name in _imagenet_rows()]


def set_onnx_metadata(model, info):
    """Store `info` (a JSON-able dict) as the model's single ``ffx`` metadata entry."""
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(info, sort_keys=True)


def onnx_metadata(model):
    """The ``ffx`` metadata dict of an `onnx.ModelProto`, or None when absent."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError:
                raise FfxError("the model's ffx metadata is not valid JSON") from None
    return None


def read_onnx_metadata(path):
    """Read the ``ffx`` metadata of an ONNX file; FfxError when the file is not an ffx model."""
    path = Path(path)
    if not path.is_file():
        raise FfxError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, ValueError, ... for non-ONNX files
        raise FfxError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    info = onnx_metadata(model)
    if info is None:
        raise FfxError(f"{path}: has no ffx metadata; export it with `ffx export` first")
    return info
