"""The JSON sidecar beside every engine, and the check that an engine can load here.

The engine itself stays a plain TensorRT plan (trtexec and any TensorRT program load it); what
it was built from and for lives in `ENGINE.json` beside it: backend and version, GPU or
TensorRT-RTX targets, precision, ONNX and calibration hashes, the batch profile, builder
settings and the model's ffx metadata. Engines only load on the TensorRT version and GPU
architecture that built them (unless built hardware- or version-compatible), so the runner
compares the sidecar with this machine first and explains a mismatch in one sentence instead of
letting deserialization fail with a C++ error.

`EngineSidecar.from_dict` validates every field (type, presence, range) and names the file and
field of the first problem, so readers index fields directly and never guess.
"""

import dataclasses
from pathlib import Path

from ffx.compute_capability import (
    RTX_DEFAULT_TARGETS,
    RTX_SUPPORTED,
    capability_label,
    parse_compute_capability,
    rtx_unsupported_reason,
)
from ffx.errors import FfxError
from ffx.json_input import InvalidJson, read_json_file
from ffx.metadata import ModelMetadata, validate_metadata

SIDECAR_FORMAT = "ffx-engine-sidecar"
# 2: builder.tf32 added; RTX sidecars list their targets explicitly. Version 1 is still read.
SIDECAR_VERSION = 2
READABLE_VERSIONS = (1, 2)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
BACKEND_NAMES = ("tensorrt", "tensorrt-rtx")
HARDWARE_COMPATIBILITY_LEVELS = ("none", "ampere_plus", "same_compute_capability")
PRECISIONS = ("fp32", "fp16", "int8", "fp8")


def sidecar_path(engine_path):
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


# -- the record -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FileRecord:
    """A file the engine depends on: its path (relative to the engine when possible) and hash."""

    file: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class EngineFileRecord:
    file: str
    sha256: str
    bytes: int


@dataclasses.dataclass(frozen=True)
class GpuRecord:
    name: str
    compute_capability: str  # "8.9"


@dataclasses.dataclass(frozen=True)
class ProfileRecord:
    """The input's optimization profile (full shapes, batch first)."""

    input: str
    min: list
    opt: list
    max: list


@dataclasses.dataclass(frozen=True)
class BuilderRecord:
    optimization_level: int | None
    workspace_bytes: int | None
    timing_cache: dict | None  # {"path", "loaded_bytes", "saved_bytes"}
    strongly_typed: bool
    tf32: bool | None  # whether FP32 layers could use TF32; None in version-1 sidecars (not recorded)


@dataclasses.dataclass(frozen=True)
class EngineSidecar:
    engine: EngineFileRecord
    backend: str  # "tensorrt" or "tensorrt-rtx"
    backend_version: str
    gpu: GpuRecord | None  # the building GPU; None for a TensorRT-RTX build without one
    target_compute_capabilities: list  # TensorRT-RTX: where the engine runs; [] for full TensorRT
    hardware_compatibility: str | None  # full TensorRT's level ("none", "ampere_plus", ...)
    version_compatible: bool
    precision: str
    onnx: FileRecord
    calibration_manifest: FileRecord | None
    profile: ProfileRecord
    input_dtype: str
    outputs: list
    build_seconds: float
    builder: BuilderRecord
    built_at: str
    built_on: dict  # {"machine", "system"}
    ffx_version: str
    metadata: dict  # the model's ffx metadata, precision included
    notes: list

    def to_dict(self):
        return {"format": SIDECAR_FORMAT, "sidecar_version": SIDECAR_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data, source="sidecar"):
        """Validate `data` (parsed JSON) and build the record; FfxError naming `source` and the field."""
        return _SidecarReader(source).read(data)

    @property
    def model_metadata(self):
        """`metadata` (validated when the sidecar was read) as a ModelMetadata."""
        return ModelMetadata.unchecked(self.metadata)

    @property
    def targets(self):
        """Compute capabilities a TensorRT-RTX engine runs on (version-1 sidecars: [] = the default)."""
        return list(self.target_compute_capabilities or RTX_DEFAULT_TARGETS)


def read_sidecar(engine_path, required=False):
    """The EngineSidecar of `engine_path`, or None when absent (FfxError if `required`)."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        if required:
            raise missing_sidecar(engine_path)
        return None
    try:
        data = read_json_file(path)
    except OSError as e:
        raise FfxError(f"{path}: cannot read it ({e.strerror or e})") from None
    except InvalidJson as e:
        raise FfxError(f"{path}: {e}") from None
    return EngineSidecar.from_dict(data, source=str(path))


def missing_sidecar(engine_path):
    """The error for an engine whose reader needs its sidecar and finds none."""
    return FfxError(f"{engine_path}: no sidecar {sidecar_path(engine_path).name}; rebuild the engine with "
                    "`ffx build-engine`")


class _SidecarReader:
    """Field-by-field validation with messages like "x.engine.json: field 'profile.min' must be ..."."""

    def __init__(self, source):
        self.source = source

    def fail(self, field, problem):
        raise FfxError(f"{self.source}: field {field!r} {problem}; rebuild the engine with `ffx build-engine`")

    def get(self, data, field, prefix=""):
        name = f"{prefix}{field}"
        if field not in data:
            self.fail(name, "is missing")
        return data[field], name

    def typed(self, data, field, types, prefix="", optional=False, check=None, describe=None):
        value, name = self.get(data, field, prefix)
        if value is None and optional:
            return None
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            self.fail(name, f"must be {describe or ' or '.join(t.__name__ for t in types)}"
                      f"{' or null' if optional else ''}, got {value!r}")
        if check is not None and not check(value):
            self.fail(name, f"must be {describe}, got {value!r}")
        return value

    def text(self, data, field, prefix="", optional=False, choices=None):
        describe = f"one of {', '.join(choices)}" if choices else "a string"
        check = (lambda v: v in choices) if choices else None
        return self.typed(data, field, (str,), prefix, optional, check, describe)

    def count(self, data, field, prefix="", optional=False, minimum=0):
        return self.typed(data, field, (int,), prefix, optional, lambda v: v >= minimum,
                          f"a whole number >= {minimum}")

    def mapping(self, data, field, prefix="", optional=False):
        return self.typed(data, field, (dict,), prefix, optional, describe="an object")

    def shape(self, data, field, prefix):
        return self.typed(data, field, (list,), prefix, check=lambda v: bool(v) and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v), describe="a list of positive sizes")

    def strings(self, data, field, prefix=""):
        return self.typed(data, field, (list,), prefix, check=lambda v: all(isinstance(s, str) for s in v),
                          describe="a list of strings")

    def capability(self, value, name):
        try:
            parse_compute_capability(value)
        except FfxError:
            self.fail(name, f"must be a compute capability such as 8.6, got {value!r}")
        return capability_label(value)

    def file_record(self, data, field, optional=False):
        entry = self.mapping(data, field, optional=optional)
        if entry is None:
            return None
        prefix = f"{field}."
        return FileRecord(self.text(entry, "file", prefix), self.sha256(entry, prefix))

    def sha256(self, entry, prefix):
        return self.typed(entry, "sha256", (str,), prefix, check=lambda v: len(v) == 64 and all(
            c in "0123456789abcdef" for c in v), describe="64 hexadecimal digits")

    def read(self, data):
        if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
            raise FfxError(f"{self.source}: not an ffx engine sidecar")
        version = self.count(data, "sidecar_version")
        if version not in READABLE_VERSIONS:
            raise FfxError(f"{self.source}: sidecar version {version} is newer than this ffx reads "
                           f"({', '.join(map(str, READABLE_VERSIONS))}); upgrade ffx or rebuild the engine")
        engine = self.mapping(data, "engine")
        backend = self.text(data, "backend", choices=BACKEND_NAMES)
        gpu = self.mapping(data, "gpu", optional=True)
        targets = self.strings(data, "target_compute_capabilities")
        profile = self.mapping(data, "profile")
        builder = self.mapping(data, "builder")
        level = self.text(data, "hardware_compatibility", optional=True, choices=HARDWARE_COMPATIBILITY_LEVELS)
        sidecar = EngineSidecar(
            engine=EngineFileRecord(self.text(engine, "file", "engine."), self.sha256(engine, "engine."),
                                    self.count(engine, "bytes", "engine.", minimum=1)),
            backend=backend,
            backend_version=self.text(data, "backend_version"),
            gpu=None if gpu is None else GpuRecord(
                self.text(gpu, "name", "gpu."),
                self.capability(self.text(gpu, "compute_capability", "gpu."), "gpu.compute_capability")),
            target_compute_capabilities=[self.capability(t, "target_compute_capabilities") for t in targets],
            hardware_compatibility=level,
            version_compatible=self.typed(data, "version_compatible", (bool,), describe="true or false"),
            precision=self.text(data, "precision", choices=PRECISIONS),
            onnx=self.file_record(data, "onnx"),
            calibration_manifest=self.file_record(data, "calibration_manifest", optional=True),
            profile=self._profile(profile),
            input_dtype=self.text(data, "input_dtype"),
            outputs=self.strings(data, "outputs"),
            build_seconds=self.typed(data, "build_seconds", (int, float), check=lambda v: v >= 0,
                                     describe="a number of seconds >= 0"),
            builder=BuilderRecord(
                optimization_level=self.typed(builder, "optimization_level", (int,), "builder.", optional=True,
                                              check=lambda v: 0 <= v <= 5, describe="0..5"),
                workspace_bytes=self.count(builder, "workspace_bytes", "builder.", optional=True, minimum=1),
                timing_cache=self.mapping(builder, "timing_cache", "builder.", optional=True),
                strongly_typed=self.typed(builder, "strongly_typed", (bool,), "builder.", describe="true or false"),
                tf32=(self.typed(builder, "tf32", (bool,), "builder.", optional=version == 1, describe="true or false")
                      if version > 1 or "tf32" in builder else None),
            ),
            built_at=self.text(data, "built_at"),
            built_on=self.mapping(data, "built_on"),
            ffx_version=self.text(data, "ffx_version"),
            metadata=validate_metadata(self.mapping(data, "metadata"), f"{self.source} (its metadata)"),
            notes=self.strings(data, "notes"),
        )
        if backend == "tensorrt-rtx":
            for target in sidecar.target_compute_capabilities:
                if target not in RTX_SUPPORTED:
                    self.fail("target_compute_capabilities", f"lists {target}, which TensorRT-RTX does not run on")
        elif targets:
            self.fail("target_compute_capabilities", "must be empty for full TensorRT (it builds for its own GPU)")
        return sidecar

    def _profile(self, profile):
        shapes = [self.shape(profile, key, "profile.") for key in ("min", "opt", "max")]
        if len({len(s) for s in shapes}) != 1 or any(s[1:] != shapes[0][1:] for s in shapes):
            self.fail("profile", f"must give min, opt and max shapes that differ only in the batch, got {shapes}")
        if not shapes[0][0] <= shapes[1][0] <= shapes[2][0]:
            self.fail("profile", f"must satisfy min <= opt <= max batch, got {[s[0] for s in shapes]}")
        return ProfileRecord(self.text(profile, "input", "profile."), *shapes)


# -- what it says about this machine ----------------------------------------------------------

def describe_build(sidecar):
    """'TensorRT 10.3.0 on Orin (compute capability 8.7)' or 'TensorRT-RTX 1.7.1 ahead of time for
    compute capability 8.0, 8.6, 8.9, 12.0, 12.1'."""
    from ffx.tensorrt import backend_label

    text = f"{backend_label(sidecar.backend)} {sidecar.backend_version}"
    if sidecar.backend == "tensorrt-rtx":
        return text + f" ahead of time for compute capability {', '.join(sidecar.targets)}"
    if sidecar.gpu:
        text += f" on {sidecar.gpu.name} (compute capability {sidecar.gpu.compute_capability})"
    return text


def compatibility_problem(sidecar, backend_name, backend_version, gpu):
    """None when the engine `sidecar` describes should load with the installed backend on `gpu`
    (a runtime.backends.cuda.GpuInfo or None), else one sentence saying why not and what to do."""
    from ffx.tensorrt import backend_label

    built = describe_build(sidecar)
    rebuild = f"rebuild it here with `ffx build-engine {sidecar.onnx.file} -o ENGINE`"
    if sidecar.backend != backend_name:
        return (f"the engine was built by {built} and only {backend_label(sidecar.backend)} can load it, "
                f"but this machine runs {backend_label(backend_name)}; {rebuild}")
    problem = _version_problem(sidecar, str(backend_version))
    if problem:
        return f"the engine was built by {built} but this machine has version {backend_version} ({problem}); {rebuild}"
    if gpu is None:
        return None
    here = capability_label(gpu.compute_capability)
    if sidecar.backend == "tensorrt-rtx":
        if here in sidecar.targets:
            return None
        if here not in RTX_SUPPORTED:
            return f"{rtx_unsupported_reason(here, gpu.name)}; the engine was built by {built}"
        return f"the engine was built by {built} but this GPU, {gpu.name}, has compute capability {here}; {rebuild}"
    if not sidecar.gpu:
        return None
    if sidecar.hardware_compatibility == "ampere_plus":
        if parse_compute_capability(here) < (8, 0):
            return f"the engine was built Ampere-plus compatible by {built} but {gpu.name} ({here}) is older than Ampere; {rebuild}"
        return None
    if here != sidecar.gpu.compute_capability:
        return (f"the engine was built by {built} but this GPU, {gpu.name}, has compute capability "
                f"{here}; engines are tied to the architecture that built them; {rebuild}")
    return None


def _version_problem(sidecar, runtime_version):
    """Why a runtime of `runtime_version` cannot load the engine, or None. A version-compatible
    engine loads on the same or a newer runtime of the same major version; any other engine
    only on the exact version that built it."""
    built = sidecar.backend_version
    if runtime_version == built:
        return None
    if not sidecar.version_compatible:
        return "engines load only on the version that built them"
    built_parts, runtime_parts = _version_tuple(built), _version_tuple(runtime_version)
    if built_parts[:1] != runtime_parts[:1]:
        return "a version-compatible engine loads only on the same major version"
    if runtime_parts < built_parts:
        return "a version-compatible engine loads only on the same or a newer version"
    return None


def _version_tuple(version):
    parts = []
    for piece in str(version).split("."):
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
