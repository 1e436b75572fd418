"""The `ffx` metadata every artefact carries, so that no stage needs flags an earlier stage knew.

An ONNX model holds one `metadata_props` entry with key ``ffx`` whose value is a JSON object:
``arch``, ``config``, ``num_classes``, ``preprocess`` (see `Preprocess`), ``class_names`` (when
known), ``source_sha256``, ``ffx_version`` and, after calibration, ``precision`` and
``calibration``. Engines carry the same object inside their JSON sidecar.
"""

import copy
import dataclasses
import functools
import json
import math
from pathlib import Path

from ffx.errors import FfxError
from ffx.json_input import InvalidJson, parse_json

METADATA_KEY = "ffx"
# Version of the metadata layout below; a reader refuses a newer one instead of misreading it.
METADATA_FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")
# Bounds on what metadata may ask for, checked before anything is allocated: the largest
# network input side and resize target ffx accepts (a 4096 x 4096 float32 image is 192 MiB).
MAX_INPUT_SIDE = 4096
MAX_RESIZE = 8192
# A model with its normalization folded in takes RGB in [0, 1] or [0, 255].
INPUT_SCALES = (1.0, 255.0)
MAX_CLASSES = 1_000_000
MAX_DEPTH = 256  # transformer blocks (the largest published configuration has 24)
# The largest batch an exported graph declares (its torch.export batch Dim) and so the largest an
# engine profile, Triton's max_batch_size or `ffx serve` may ask of it.
MAX_BATCH = 65536


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
    def from_dict(cls, d, source="model"):
        """The validated transform of a metadata dict; FfxError naming `source` and the field."""

        def bad(field, problem):
            return FfxError(f"{source}: ffx metadata field preprocess.{field} {problem}")

        if not isinstance(d, dict):
            raise FfxError(f"{source}: ffx metadata field preprocess must be an object, found {_kind(d)}")
        missing = [name for name in ("input_size", "resize", "interpolation", "mean", "std") if name not in d]
        if missing:
            raise bad(missing[0], "is missing")
        size = d["input_size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 3 and all(_is_int(v) for v in size)):
            raise bad("input_size", f"must be [C, H, W] integers, found {_short(size)}")
        channels, height, width = size
        if channels != 3:
            raise bad("input_size", f"has {channels} channels; ffx feeds RGB images (3)")
        if not (1 <= height <= MAX_INPUT_SIDE and 1 <= width <= MAX_INPUT_SIDE):
            raise bad("input_size", f"{height}x{width} is outside 1..{MAX_INPUT_SIDE} pixels")
        resize = d["resize"]
        if not _is_int(resize) or not max(height, width) <= resize <= MAX_RESIZE:
            raise bad("resize", f"must be an integer from {max(height, width)} (the crop) to {MAX_RESIZE}, found {_short(resize)}")
        if d["interpolation"] not in INTERPOLATIONS:
            raise bad("interpolation", f"{_short(d['interpolation'])} is not one of {', '.join(INTERPOLATIONS)}")
        mean = _finite_floats(d["mean"], 3, lambda problem: bad("mean", problem))
        std = _finite_floats(d["std"], 3, lambda problem: bad("std", problem))
        if min(std) <= 0:
            raise bad("std", f"must be positive, found {list(std)}")
        folded = d.get("normalization_folded", False)
        if not isinstance(folded, bool):
            raise bad("normalization_folded", f"must be true or false, found {_short(folded)}")
        input_scale = d.get("input_scale", 1.0)
        if input_scale not in INPUT_SCALES or isinstance(input_scale, bool):
            raise bad("input_scale", f"must be one of {', '.join(f'{v:g}' for v in INPUT_SCALES)}, found {_short(input_scale)}")
        return cls(input_size=(3, int(height), int(width)), resize=int(resize), interpolation=d["interpolation"],
                   mean=mean, std=std, normalization_folded=folded, input_scale=float(input_scale))


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value):
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _short(value, limit=40):
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _finite_floats(values, count, bad):
    if not (isinstance(values, (list, tuple)) and len(values) == count):
        raise bad(f"must be a list of {count} numbers (one per channel), found {_short(values)}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise bad(f"must hold finite numbers, found {_short(values)}")
    return tuple(float(v) for v in values)


def validate_metadata(info, source="model"):
    """`info` when it is well-formed ffx metadata; FfxError naming `source` and the first bad field.

    Optional fields may be absent (models from other tools carry only what they know); those
    present must have the right type and range, and class names must be one string per class."""
    if not isinstance(info, dict):
        raise FfxError(f"{source}: ffx metadata must be a JSON object, found {_kind(info)}")
    version = info.get("format_version", METADATA_FORMAT_VERSION)
    if not _is_int(version) or version < 1:
        raise FfxError(f"{source}: ffx metadata field format_version must be a positive integer, found {_short(version)}")
    if version > METADATA_FORMAT_VERSION:
        raise FfxError(f"{source}: ffx metadata format_version {version} is newer than this ffx reads "
                       f"({METADATA_FORMAT_VERSION}); upgrade ffx")
    num_classes = info.get("num_classes")
    if num_classes is not None and not (_is_int(num_classes) and 1 <= num_classes <= MAX_CLASSES):
        raise FfxError(f"{source}: ffx metadata field num_classes must be an integer from 1 to {MAX_CLASSES}, "
                       f"found {_short(num_classes)}")
    names = info.get("class_names")
    if names is not None:
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise FfxError(f"{source}: ffx metadata field class_names must be a list of strings, found {_short(names)}")
        if num_classes is not None and len(names) != num_classes:
            raise FfxError(f"{source}: ffx metadata field class_names lists {len(names)} names for {num_classes} classes")
    for field in ("input_name", "output_name", "arch", "precision", "source_sha256", "weights", "source_file",
                  "ffx_version"):
        if info.get(field) is not None and not isinstance(info[field], str):
            raise FfxError(f"{source}: ffx metadata field {field} must be a string, found {_short(info[field])}")
    if info.get("preprocess_recorded") is not None and not isinstance(info["preprocess_recorded"], bool):
        raise FfxError(f"{source}: ffx metadata field preprocess_recorded must be true or false, "
                       f"found {_short(info['preprocess_recorded'])}")
    for field in ("config", "calibration", "exporter"):
        if info.get(field) is not None and not isinstance(info[field], dict):
            raise FfxError(f"{source}: ffx metadata field {field} must be an object, found {_kind(info[field])}")
    depth = (info.get("config") or {}).get("depth")
    if depth is not None and not (_is_int(depth) and 1 <= depth <= MAX_DEPTH):
        raise FfxError(f"{source}: ffx metadata field config.depth must be an integer from 1 to {MAX_DEPTH}, "
                       f"found {_short(depth)}")
    if info.get("preprocess") is not None:
        Preprocess.from_dict(info["preprocess"], source)
    return info


@dataclasses.dataclass(frozen=True)
class CalibrationEntry:
    """The ``calibration`` object of a calibrated model's metadata, as `ffx calibrate` recorded it:
    the manifest written beside the model (a bare file name), its sha256 and the input ONNX's.
    Values are as recorded (None when absent): readers compare them with what they expect."""

    method: object = None
    manifest: object = None
    manifest_sha256: object = None
    input_sha256: object = None
    image_list_sha256: object = None
    images_used: object = None

    @classmethod
    def from_dict(cls, d):
        return cls(**{field.name: d.get(field.name) for field in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """The ``ffx`` metadata of a model (see the module's docstring), as typed fields.

    `from_dict` validates (`validate_metadata`); `unchecked` takes the object as it is, for the
    readers that never required valid metadata (finding a manifest, a source, a reusable graph):
    its fields then hold what the file says, whatever its type, and `preprocess` only a valid one.
    Absent optional fields are None. `to_dict` gives back the JSON object exactly as read, so a
    file written from it is byte for byte the one it came from."""

    format_version: object = METADATA_FORMAT_VERSION
    arch: str | None = None
    config: dict | None = None
    num_classes: int | None = None
    class_names: list | None = None
    preprocess: Preprocess | None = None
    preprocess_recorded: bool | None = None  # False: the ImageNet default was assumed at export
    input_name: str | None = None
    output_name: str | None = None
    precision: str | None = None  # None: as exported (fp32)
    source_sha256: str | None = None
    weights: str | None = None  # which weights of the checkpoint ("model", "model_ema", ...)
    source_file: str | None = None
    ffx_version: str | None = None
    calibration: CalibrationEntry | None = None
    exporter: dict | None = None
    data: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)  # the JSON object

    @classmethod
    def from_dict(cls, info, source="model"):
        """The validated metadata of `info` (a parsed JSON object); FfxError naming `source` and the field."""
        validate_metadata(info, source)
        return cls.unchecked(info)

    @classmethod
    def unchecked(cls, info):
        """The metadata `info` holds, not validated (None or {}: no metadata)."""
        info = info or {}
        try:
            preprocess = Preprocess.from_dict(info["preprocess"]) if info.get("preprocess") is not None else None
        except FfxError:
            preprocess = None
        calibration = info.get("calibration")
        simple = ("arch", "config", "num_classes", "class_names", "preprocess_recorded", "input_name",
                  "output_name", "precision", "source_sha256", "weights", "source_file", "ffx_version", "exporter")
        return cls(**{name: info.get(name) for name in simple}, preprocess=preprocess,
                   format_version=info.get("format_version", METADATA_FORMAT_VERSION),
                   calibration=CalibrationEntry.from_dict(calibration) if isinstance(calibration, dict) else None,
                   data=dict(info))

    def to_dict(self):
        """The JSON object, key for key as read (a copy)."""
        return copy.deepcopy(self.data)

    def calibrated(self, precision, calibration):
        """The metadata of this model converted to `precision`: the same object with ``precision``
        and ``calibration`` (a JSON object, see CalibrationEntry) set."""
        return ModelMetadata.unchecked({**self.to_dict(), "precision": precision, "calibration": calibration})

    @property
    def has_preprocess(self):
        """Whether the metadata has a ``preprocess`` entry at all (`checked_preprocess` reads it)."""
        return "preprocess" in self.data

    def checked_preprocess(self, source="model"):
        """The ``preprocess`` entry as a Preprocess; FfxError naming `source` when it is not one."""
        return Preprocess.from_dict(self.data.get("preprocess"), source)

    @property
    def recorded_preprocess(self):
        """The ``preprocess`` entry as recorded (a JSON object or None), for files that copy it."""
        return copy.deepcopy(self.data.get("preprocess"))

    @property
    def depth(self):
        """The transformer blocks its config records, or None."""
        return (self.config or {}).get("depth")


def metadata_problem(info, source="model"):
    """The one-line reason `info` is invalid, or None (for `ffx inspect`, which shows it anyway)."""
    try:
        validate_metadata(info, source)
    except FfxError as e:
        return str(e)
    return None


def describe_metadata(metadata, source, error=None):
    """Readable lines for `ffx inspect` on the ffx metadata dict `metadata` as read (valid or not):
    what is invalid is flagged, never a reason to stop; `error`: why it could not be read at all."""
    if error:
        return [f"ffx metadata: INVALID: {escape_text(error)}"]
    if not metadata:
        return ["ffx metadata: none (not exported by ffx)"]
    shown = {k: v for k, v in metadata.items() if k not in ("class_names", "config", "preprocess", "calibration")}
    lines = ["ffx metadata: " + ", ".join(f"{k} {_text(v)}" for k, v in sorted(shown.items()) if v is not None)]
    problem = metadata_problem(metadata, source)
    if problem:
        lines.append(f"INVALID: {escape_text(problem)}")
    p = metadata.get("preprocess")
    if isinstance(p, dict):
        lines.append(f"preprocess: resize {_text(p.get('resize'))} {_text(p.get('interpolation'))}, "
                     f"crop {_text(p.get('input_size'))}, mean {_text(p.get('mean'))}, std {_text(p.get('std'))}"
                     + (f" (folded into the model: it takes RGB in [0, {_text(p.get('input_scale', 1.0))}])"
                        if p.get("normalization_folded") else ""))
    names = metadata.get("class_names")
    if isinstance(names, list) and names:
        shown_names = ", ".join(_text(n) for n in names[:5])
        lines.append(f"classes: {len(names)} ({shown_names}{', ...' if len(names) > 5 else ''})")
    calibration = metadata.get("calibration")
    if isinstance(calibration, dict):
        lines.append("calibration: " + ", ".join(f"{k} {_text(v)}" for k, v in sorted(calibration.items())
                                                 if not isinstance(v, (dict, list))))
    return lines


def _text(value, limit=80):
    """A metadata value as plain text: lists and objects joined, control characters escaped, long ones cut."""
    if isinstance(value, dict):
        text = "(" + ", ".join(f"{k} {v}" for k, v in sorted(value.items())) + ")"
    elif isinstance(value, (list, tuple)):
        text = " x ".join(map(str, value)) if all(isinstance(v, int) for v in value) else ", ".join(
            f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    else:
        text = str(value)
    text = escape_text(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def escape_text(text):
    """`text` with control characters (terminal escapes, newlines) shown as escapes, for printing
    names that come from files."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


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


def onnx_metadata(model, source="the model"):
    """The ``ffx`` metadata dict of an `onnx.ModelProto` (not yet validated), or None when absent."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                info = parse_json(prop.value)
            except InvalidJson as e:
                raise FfxError(f"{source}: its ffx metadata is {'not valid JSON' if e.syntax else e}") from None
            if not isinstance(info, dict):
                raise FfxError(f"{source}: ffx metadata must be a JSON object, found {_kind(info)}")
            return info
    return None


def read_onnx_metadata(path):
    """Read the ``ffx`` metadata of an ONNX file; FfxError when the file is not an ffx model."""
    from ffx.onnx_file import load_onnx

    path = Path(path)
    info = onnx_metadata(load_onnx(path), path)
    if info is None:
        raise FfxError(f"{path}: has no ffx metadata; export it with `ffx export` first")
    return validate_metadata(info, path)


def lineage_mismatch(candidate, reference):
    """Why the model with ffx metadata `candidate` (a ModelMetadata) was not made from the weights
    behind `reference` (the checkpoint's sha256 and the weights entry every ffx artefact carries
    on), or None when they match or either does not say."""
    made_from, source = candidate.source_sha256, reference.source_sha256
    if not made_from or not source:
        return None
    if made_from != source:
        return f"made from a different checkpoint (sha256 {made_from[:12]}…, the reference's {source[:12]}…)"
    weights, reference_weights = candidate.weights, reference.weights
    if weights and reference_weights and weights != reference_weights:
        return f"made from the checkpoint's {weights!r} weights, the reference from its {reference_weights!r}"
    return None
