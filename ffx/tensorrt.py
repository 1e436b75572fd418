"""The one place ffx imports TensorRT: picking a backend and building a serialized engine.

Two backends share one code path: full TensorRT 10.x / 11.x (`tensorrt`, GPU machines and Jetson)
and TensorRT-RTX (`tensorrt_rtx_bindings`), whose builder compiles ahead of time on a CPU-only
machine. Precision lives in the ONNX graph (float16 tensors, Q/DQ pairs), so the network is
always strongly typed and no weak-typing API removed in TensorRT 11 (BuilderFlag.FP16/INT8,
calibrators, dynamic ranges) is ever touched. Every version-dependent attribute is looked up
with getattr so one file serves 10.x, 11.x and RTX.
"""

import contextlib
import dataclasses
import importlib
import re
import sys
import time
import warnings
from pathlib import Path

from ffx.errors import BackendUnavailable, FfxError

BACKENDS = ("tensorrt", "tensorrt-rtx")
MIN_TENSORRT_MAJOR = 10

# CLI spelling -> HardwareCompatibilityLevel member (full TensorRT only).
HARDWARE_COMPATIBILITY = {
    "none": "NONE",
    "ampere-plus": "AMPERE_PLUS",
    "same-compute-capability": "SAME_COMPUTE_CAPABILITY",
}

_INSTALL_HINT = {
    "tensorrt": (
        "install TensorRT 10 or newer (`pip install tensorrt` on a CUDA machine; JetPack ships it on "
        "Jetson)"
    ),
    "tensorrt-rtx": (
        "install TensorRT-RTX (`pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings`, or "
        "`pip install 'ffx[tensorrt-rtx]'`); it builds engines for RTX GPUs ahead of time, even without a GPU"
    ),
}


@dataclasses.dataclass(frozen=True)
class Backend:
    """An importable TensorRT flavour: its name in ffx, the Python module and its version."""

    name: str  # "tensorrt" or "tensorrt-rtx"
    module: object
    version: str

    @property
    def major(self):
        return int(self.version.split(".")[0])

    def __str__(self):
        label = "TensorRT-RTX" if self.name == "tensorrt-rtx" else "TensorRT"
        return f"{label} {self.version}"


def _import_backend(name):
    """The Backend for `name`, or a string saying why it cannot be used."""
    module_name = "tensorrt" if name == "tensorrt" else "tensorrt_rtx_bindings"
    if module_name in sys.modules and sys.modules[module_name] is None:
        return f"{module_name} is blocked in this interpreter"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(module_name)
    except ImportError as e:
        if getattr(e, "name", None) == module_name:
            return f"Python module `{module_name}` is not installed"
        return f"`import {module_name}` failed ({e})"
    except Exception as e:  # broken installs raise OSError (missing .so) and friends
        return f"`import {module_name}` failed ({type(e).__name__}: {e})"
    version = str(getattr(module, "__version__", "0"))
    backend = Backend(name, module, version)
    if name == "tensorrt" and backend.major < MIN_TENSORRT_MAJOR:
        return f"TensorRT {version} is installed but ffx needs {MIN_TENSORRT_MAJOR}.x or newer (strongly typed networks)"
    return backend


def available_backend(preferred="auto"):
    """The TensorRT flavour to use: `tensorrt`, `tensorrt-rtx`, or `auto` (full TensorRT first,
    then TensorRT-RTX). Raises BackendUnavailable with what to install."""
    if preferred not in ("auto", *BACKENDS):
        raise FfxError(f"unknown backend {preferred!r}; choose auto, tensorrt or tensorrt-rtx")
    names = BACKENDS if preferred == "auto" else (preferred,)
    reasons = []
    for name in names:
        found = _import_backend(name)
        if isinstance(found, Backend):
            return found
        reasons.append(found)
    if preferred == "auto":
        raise BackendUnavailable(
            "no TensorRT backend found (" + "; ".join(reasons) + "): "
            + _INSTALL_HINT["tensorrt"] + ", or " + _INSTALL_HINT["tensorrt-rtx"]
        )
    raise BackendUnavailable(f"backend {preferred} is unavailable ({reasons[0]}): {_INSTALL_HINT[preferred]}")


def make_logger(backend, verbose=False):
    """A TensorRT ILogger that keeps every message, so a failed build can say why in one line;
    it prints them too when `verbose`."""
    trt = backend.module
    label = str(backend).split()[0]

    class RecordingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages = []  # (severity name, text)

        def log(self, severity, msg):
            name = str(severity).rsplit(".", 1)[-1]
            self.messages.append((name, msg))
            if verbose:
                print(f"[{label}] [{name}] {msg}", file=sys.stderr)

        def errors(self):
            return [msg for name, msg in self.messages if name in ("ERROR", "INTERNAL_ERROR")]

    return RecordingLogger()


def _progress_monitor(trt, enabled):
    """An IProgressMonitor driving a tqdm bar over the top-level build phase, or None where the
    TensorRT version has no IProgressMonitor (or progress is off). `enabled=None`: on a TTY only."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None or enabled is False:
        return None
    from tqdm import tqdm

    class TqdmProgressMonitor(base):
        def __init__(self):
            base.__init__(self)
            self.bar = None
            self.active = []

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None and self.bar is None:
                self.bar = tqdm(total=num_steps, desc="build engine", unit="phase", leave=False,
                                disable=None if enabled is None else False, file=sys.stderr)
            self.active.append(phase_name)
            if self.bar is not None:
                self.bar.set_postfix_str(phase_name[:40], refresh=True)

        def step_complete(self, phase_name, step):
            if self.bar is not None and len(self.active) == 1:
                self.bar.n = step + 1
                self.bar.refresh()
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            if self.active and self.active[-1] == phase_name:
                self.active.pop()
            if not self.active:
                self.close()

        def close(self):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TqdmProgressMonitor()


@dataclasses.dataclass
class EngineBuild:
    """What `build_serialized_engine` did, for the sidecar."""

    backend: str
    backend_version: str
    input_name: str
    input_shape: list  # as parsed, -1 for the dynamic batch
    input_dtype: str
    output_names: list
    profile: dict  # {"min": [..], "opt": [..], "max": [..]} of the input
    strongly_typed: bool
    build_seconds: float
    workspace_bytes: int | None
    optimization_level: int | None
    hardware_compatibility: str | None
    version_compatible: bool
    compute_capabilities: list  # RTX AOT targets, [] = the backend's default
    timing_cache: dict | None  # {"path", "loaded_bytes", "saved_bytes"} or None
    notes: list  # things the user should know (ignored options, ...)


def parse_onnx(backend, onnx_path, logger=None):
    """(builder, network, parser, logger) with `onnx_path` parsed into a strongly typed network.
    Raises FfxError naming the first node TensorRT's parser rejects."""
    trt = backend.module
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FfxError(f"{onnx_path}: no such file")
    logger = logger or make_logger(backend)
    try:
        builder = trt.Builder(logger)
    except (TypeError, RuntimeError) as e:  # pybind11 factory returned nullptr: no CUDA device/driver
        raise BackendUnavailable(
            f"{backend} could not create a builder ({e}); full TensorRT needs a CUDA GPU and driver to build. "
            "Use --backend tensorrt-rtx to build ahead of time on a CPU"
        ) from None
    if builder is None:
        raise BackendUnavailable(f"{backend} could not create a builder (no CUDA GPU or driver?)")
    network = builder.create_network(_network_flags(backend))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise FfxError(f"{onnx_path}: {backend} cannot parse the model: {_parser_errors(parser, logger)}")
    return builder, network, parser, logger


def _network_flags(backend):
    """Strongly typed everywhere: explicit on TensorRT 10.x, the default (flag deprecated) on 11
    and TensorRT-RTX. EXPLICIT_BATCH is the default since 10 and gone in 11, so it is never set."""
    flags = 0
    flag_enum = getattr(backend.module, "NetworkDefinitionCreationFlag", None)
    strongly_typed = getattr(flag_enum, "STRONGLY_TYPED", None)
    if backend.name == "tensorrt" and backend.major == 10:
        if strongly_typed is None:
            raise BackendUnavailable(f"{backend} has no strongly typed networks; upgrade to TensorRT 10.1 or newer")
        flags |= 1 << int(strongly_typed)
    return flags


def _parser_errors(parser, logger):
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    if not errors:
        logged = logger.errors()
        return logged[-1] if logged else "the parser reported no details"
    first = errors[0]
    node_name = _call(first, "node_name") or ""
    node_op = _call(first, "node_operator") or ""
    node_index = _call(first, "node")
    where = f"node {node_name!r}" if node_name else (f"node #{node_index}" if node_index not in (None, -1) else "the graph")
    if node_op:
        where += f" ({node_op})"
    text = f"{where}: {_one_line(_call(first, 'desc') or str(first))}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return text


def _one_line(description):
    """The informative line of a parser error (TensorRT's are multi-line, with source locations)."""
    lines = [line.strip() for line in description.splitlines() if line.strip() and "catchCudaError" not in line]
    if not lines:
        return description.strip()
    line = lines[1] if len(lines) > 1 and lines[0].startswith("Invalid Node") else lines[0]
    return re.sub(r"\s*In \w+ at [^)]*", "", line).strip()


def _call(obj, name):
    method = getattr(obj, name, None)
    if method is None:
        return None
    with contextlib.suppress(Exception):
        return method() if callable(method) else method
    return None


def build_serialized_engine(
    onnx_path,
    backend="auto",
    min_batch=1,
    opt_batch=None,
    max_batch=None,
    workspace=None,
    timing_cache=None,
    optimization_level=None,
    hardware_compatibility=None,
    version_compatible=False,
    compute_capabilities=None,
    progress=None,
    verbose=False,
):
    """Parse `onnx_path` and build a TensorRT plan: returns (engine bytes, EngineBuild).

    `backend`: "auto", "tensorrt", "tensorrt-rtx" or a Backend. The batch profile defaults to
    min_batch..max(opt, 32) with opt = max_batch when only that is given. `workspace` is in bytes.
    `timing_cache` is a file path, read when present and rewritten after the build (full
    TensorRT; TensorRT-RTX has none). `progress`: True, False, or None for a bar on TTYs only.
    """
    from ffx.artifacts import write_bytes_atomic

    backend = backend if isinstance(backend, Backend) else available_backend(backend)
    trt = backend.module
    started = time.perf_counter()
    notes = []
    builder, network, parser, logger = parse_onnx(backend, onnx_path, make_logger(backend, verbose))

    if network.num_inputs == 0 or network.num_outputs == 0:
        raise FfxError(f"{onnx_path}: {backend} parsed an empty graph; is this an ONNX model?")
    if network.num_inputs != 1:
        raise FfxError(f"{onnx_path}: expected one input, found {network.num_inputs}")
    network_input = network.get_input(0)
    input_shape = list(network_input.shape)
    output_names = [network.get_output(i).name for i in range(network.num_outputs)]
    profile_shapes = _profile_shapes(onnx_path, input_shape, min_batch, opt_batch, max_batch)

    config = builder.create_builder_config()
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if optimization_level is not None:
        if not 0 <= int(optimization_level) <= 5:
            raise FfxError(f"builder optimization level must be 0..5, got {optimization_level}")
        config.builder_optimization_level = int(optimization_level)
    if hardware_compatibility not in (None, "none"):
        if backend.name == "tensorrt-rtx":
            notes.append("TensorRT-RTX engines are portable across Ampere and newer by default; --hardware-compatibility ignored")
        else:
            _set_hardware_compatibility(trt, config, hardware_compatibility)
    if version_compatible:
        flag = getattr(trt.BuilderFlag, "VERSION_COMPATIBLE", None)
        if flag is None:
            raise FfxError(f"{backend} cannot build version-compatible engines")
        config.set_flag(flag)
    if compute_capabilities:
        _set_compute_capabilities(backend, config, compute_capabilities)
    verbosity = getattr(getattr(trt, "ProfilingVerbosity", None), "DETAILED", None)
    if verbosity is not None:  # layer names, tactics and formats for `ffx inspect --layers`
        config.profiling_verbosity = verbosity

    if profile_shapes is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(network_input.name, profile_shapes["min"], profile_shapes["opt"], profile_shapes["max"])
        config.add_optimization_profile(profile)

    cache_info = None
    cache_object = None
    if timing_cache is not None:
        if backend.name == "tensorrt-rtx":
            notes.append("TensorRT-RTX has no builder timing cache; --timing-cache ignored")
        else:
            cache_path = Path(timing_cache)
            loaded = cache_path.read_bytes() if cache_path.is_file() else b""
            cache_object = config.create_timing_cache(loaded)
            config.set_timing_cache(cache_object, False)
            cache_info = {"path": str(cache_path), "loaded_bytes": len(loaded), "saved_bytes": 0}

    monitor = _progress_monitor(trt, progress)
    if monitor is not None:
        config.progress_monitor = monitor
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if monitor is not None:
            monitor.close()
    if serialized is None:
        errors = logger.errors()
        reason = errors[-1] if errors else "no error was logged; rerun with --verbose"
        raise FfxError(f"{onnx_path}: {backend} failed to build an engine: {reason}")
    engine_bytes = bytes(memoryview(serialized))

    if cache_object is not None:
        updated = bytes(memoryview(config.get_timing_cache().serialize()))
        write_bytes_atomic(cache_info["path"], updated)
        cache_info["saved_bytes"] = len(updated)

    level = getattr(config, "hardware_compatibility_level", None) if backend.name == "tensorrt" else None
    build = EngineBuild(
        backend=backend.name,
        backend_version=backend.version,
        input_name=network_input.name,
        input_shape=input_shape,
        input_dtype=_dtype_name(network_input.dtype),
        output_names=output_names,
        profile=profile_shapes or {"min": input_shape, "opt": input_shape, "max": input_shape},
        strongly_typed=True,
        build_seconds=round(time.perf_counter() - started, 3),
        workspace_bytes=int(workspace) if workspace is not None else None,
        optimization_level=int(config.builder_optimization_level),
        hardware_compatibility=str(level).rsplit(".", 1)[-1].lower() if level is not None else None,
        version_compatible=bool(version_compatible),
        compute_capabilities=[_capability_label(c) for c in compute_capabilities or []],
        timing_cache=cache_info,
        notes=notes,
    )
    return engine_bytes, build


def _profile_shapes(onnx_path, input_shape, min_batch, opt_batch, max_batch):
    """min/opt/max input shapes for a dynamic batch; None when the batch is fixed in the graph."""
    if any(d < 0 for d in input_shape[1:]):
        raise FfxError(f"{onnx_path}: only the batch dimension may be dynamic, input shape is {input_shape}")
    if input_shape[0] >= 0:
        fixed = input_shape[0]
        for given in (opt_batch, max_batch):
            if given is not None and given != fixed:
                raise FfxError(f"{onnx_path}: the batch is fixed at {fixed} in the graph; re-export with a dynamic batch")
        return None
    min_batch = int(min_batch or 1)
    if max_batch is None:
        max_batch = max(32, min_batch, opt_batch or 0)
    if opt_batch is None:
        opt_batch = min(max_batch, max(min_batch, 8))
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise FfxError(f"batch profile must satisfy 1 <= min <= opt <= max, got {min_batch}, {opt_batch}, {max_batch}")
    rest = list(input_shape[1:])
    return {"min": [min_batch, *rest], "opt": [opt_batch, *rest], "max": [max_batch, *rest]}


def _set_hardware_compatibility(trt, config, level):
    if level not in HARDWARE_COMPATIBILITY:
        raise FfxError(f"unknown hardware compatibility {level!r}; choose {', '.join(HARDWARE_COMPATIBILITY)}")
    enum = getattr(trt, "HardwareCompatibilityLevel", None)
    member = getattr(enum, HARDWARE_COMPATIBILITY[level], None)
    if member is None:
        raise FfxError(f"this TensorRT has no hardware compatibility level {level}")
    config.hardware_compatibility_level = member


def _capability_label(capability):
    """"SM86", "sm86", "8.6" -> "8.6"."""
    text = str(capability).upper().replace("SM", "").replace("_", "")
    return text if "." in text else f"{text[:-1]}.{text[-1:]}"


def _set_compute_capabilities(backend, config, capabilities):
    """TensorRT-RTX AOT targets, e.g. ["SM75"] for Turing (not built by default)."""
    enum = getattr(backend.module, "ComputeCapability", None)
    if enum is None or not hasattr(config, "set_compute_capability"):
        raise FfxError(f"{backend} does not take target compute capabilities; they apply to TensorRT-RTX")
    members = []
    for capability in capabilities:
        key = "SM" + _capability_label(capability).replace(".", "")
        member = getattr(enum, key, None) or getattr(enum, str(capability).upper(), None)
        if member is None:
            known = [m for m in enum.__members__ if m.startswith("SM")]
            raise FfxError(f"unknown compute capability {capability!r}; {backend} knows {', '.join(known)}")
        members.append(member)
    config.num_compute_capabilities = len(members)
    for index, member in enumerate(members):
        config.set_compute_capability(member, index)


_DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32", "INT64": "int64"}


def _dtype_name(dtype):
    name = str(dtype).rsplit(".", 1)[-1]
    return _DTYPE_NAMES.get(name, name.lower())
