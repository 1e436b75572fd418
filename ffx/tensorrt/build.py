"""Building a serialized engine: `parse_onnx` (network from the ONNX file), `configure_builder` (a
builder config from a validated `BuildOptions`), `build_plan` (the serialized engine);
`build_serialized_engine` runs them in order.

Precision lives in the ONNX graph (float16 tensors, Q/DQ pairs), so the network is always strongly
typed and no weak-typing API removed in TensorRT 11 (BuilderFlag.FP16/INT8, calibrators, dynamic
ranges) is ever touched.
"""

import contextlib
import dataclasses
import gc
import re
import time
from pathlib import Path

from ffx.compute_capability import RTX_DEFAULT_TARGETS, TURING, rtx_plan_targets
from ffx.errors import BackendUnavailable, FfxError, InvalidOption
from ffx.tensorrt.backend import Backend, _enum_name, available_backend, dtype_name, make_logger, numpy_dtype
from ffx.tensorrt.options import HARDWARE_COMPATIBILITY, BuildOptions


def _progress_monitor(trt, enabled):
    """An IProgressMonitor reporting the top-level build phase through ffx.progress (a bar on a
    terminal, lines in a log), or None where the TensorRT version has no IProgressMonitor (or
    progress is off)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None or enabled is False:
        return None
    from ffx.progress import Progress

    class BuildProgressMonitor(base):
        def __init__(self):
            base.__init__(self)
            self.bar = None
            self.active = []

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None and self.bar is None:
                self.bar = Progress(num_steps, "build engine", unit="phases", enabled=enabled)
            self.active.append(phase_name)
            if self.bar is not None:
                self.bar.note(phase_name)

        def step_complete(self, phase_name, step):
            if self.bar is not None and len(self.active) == 1:
                self.bar.set_done(step + 1)
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

    return BuildProgressMonitor()


@contextlib.contextmanager
def _no_collection_inside_tensorrt():
    """TensorRT calls ffx's Python logger while it holds a lock of its own. A garbage collection
    run there can free an earlier Builder (one kept in a cycle, e.g. by a failed build's
    traceback), whose destructor waits for that same lock: the process hangs (seen with
    TensorRT-RTX 1.7, gdb on a second build in one process). So collect first, outside TensorRT,
    and not during the call."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- step 1: parse ----------------------------------------------------------------------------

@dataclasses.dataclass
class ParsedNetwork:
    """An ONNX file parsed into a strongly typed TensorRT network, and what the build needs of it."""

    backend: Backend
    onnx_path: Path
    builder: object
    network: object
    parser: object  # kept alive: the network refers to weights the parser owns
    logger: object
    input_name: str
    input_shape: list  # as parsed, -1 for a dynamic batch
    input_dtype: str
    output_names: list


def parse_onnx(backend, onnx_path, verbose=False):
    """ParsedNetwork of `onnx_path`. Raises FfxError naming the first node TensorRT's parser
    rejects, or when the graph is not one image input -> logits with types numpy can hold."""
    trt = backend.module
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FfxError(f"{onnx_path}: no such file")
    logger = make_logger(backend, verbose)
    try:
        with _no_collection_inside_tensorrt():
            builder = trt.Builder(logger)
    except (TypeError, RuntimeError) as e:  # pybind11 factory returned nullptr: no CUDA device/driver
        raise BackendUnavailable(
            f"{backend} could not create a builder ({e}); full TensorRT needs a CUDA GPU and driver to build; "
            "TensorRT-RTX builds ahead of time on a CPU"
        ) from None
    if builder is None:
        raise BackendUnavailable(f"{backend} could not create a builder (no CUDA GPU or driver?)")
    network = builder.create_network(_network_flags(backend))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise FfxError(f"{onnx_path}: {backend} cannot parse the model: {_parser_errors(parser, logger)}")
    if network.num_inputs == 0 or network.num_outputs == 0:
        raise FfxError(f"{onnx_path}: {backend} parsed an empty graph; is this an ONNX model?")
    if network.num_inputs != 1:
        raise FfxError(f"{onnx_path}: expected one input, found {network.num_inputs}")
    tensors = [network.get_input(0)] + [network.get_output(i) for i in range(network.num_outputs)]
    for tensor in tensors:
        numpy_dtype(trt, tensor.dtype, tensor.name, onnx_path)  # refuse IO types numpy lacks now, not at run time
    tensor = tensors[0]
    return ParsedNetwork(
        backend=backend, onnx_path=onnx_path, builder=builder, network=network, parser=parser, logger=logger,
        input_name=tensor.name, input_shape=list(tensor.shape), input_dtype=dtype_name(tensor.dtype),
        output_names=[output.name for output in tensors[1:]],
    )


def _network_flags(backend):
    """Strongly typed everywhere: explicit on TensorRT 10.x, the default (flag deprecated) on 11
    and TensorRT-RTX. EXPLICIT_BATCH is the default since 10 and gone in 11, so it is never set."""
    trt = backend.module
    if backend.is_rtx or backend.major != 10:
        return 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # from 10.1
    if strongly_typed is None:
        raise BackendUnavailable(f"{backend} has no strongly typed networks; upgrade to TensorRT 10.1 or newer")
    return 1 << int(strongly_typed)


def _parser_errors(parser, logger):
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    if not errors:
        logged = logger.errors()
        return logged[-1] if logged else "the parser reported no details"
    parser_error = errors[0]
    node_name, node_op, node_index = parser_error.node_name(), parser_error.node_operator(), parser_error.node()
    where = f"node {node_name!r}" if node_name else (f"node #{node_index}" if node_index not in (None, -1) else "the graph")
    if node_op:
        where += f" ({node_op})"
    text = f"{where}: {_one_line(parser_error.desc() or str(parser_error))}"
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


# -- step 2: configure ------------------------------------------------------------------------

@dataclasses.dataclass
class BuilderSetup:
    """A builder config ready to build `parsed`, and what was decided while making it."""

    config: object
    profile: dict  # {"min": [..], "opt": [..], "max": [..]} of the input
    targets: list  # TensorRT-RTX compute capabilities the engine runs on; [] for full TensorRT
    timing_cache: object  # the attached ITimingCache, or None
    timing_cache_loaded_bytes: int
    notes: list


def configure_builder(parsed, options):
    """BuilderSetup for `parsed` from `options` (a BuildOptions). InvalidOption for an option the
    backend cannot honour; a note for one it ignores (TensorRT-RTX: timing cache, hardware
    compatibility)."""
    backend, trt = parsed.backend, parsed.backend.module
    if options.wants_current_gpu:
        raise InvalidOption("compute_capabilities", "target 'current' must be resolved to this GPU's compute capability first")
    check_backend_options(backend, options)
    config = parsed.builder.create_builder_config()
    notes = []
    if options.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.optimization_level is not None:
        config.builder_optimization_level = options.optimization_level
    if not options.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if backend.is_rtx:
        targets = _configure_rtx(parsed, config, options, notes)
    else:
        targets = _configure_full_tensorrt(parsed, config, options)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names, tactics, formats for `ffx inspect --layers`
    profile_shapes = _profile_shapes(parsed, options)
    if profile_shapes is not None:
        profile = parsed.builder.create_optimization_profile()
        profile.set_shape(parsed.input_name, profile_shapes["min"], profile_shapes["opt"], profile_shapes["max"])
        config.add_optimization_profile(profile)
    timing_cache, loaded = None, 0
    if options.timing_cache is not None and not backend.is_rtx:
        timing_cache, loaded = _attach_timing_cache_full_tensorrt(config, Path(options.timing_cache))
    fixed = {"min": parsed.input_shape, "opt": parsed.input_shape, "max": parsed.input_shape}
    return BuilderSetup(config=config, profile=profile_shapes or fixed, targets=targets, timing_cache=timing_cache,
                        timing_cache_loaded_bytes=loaded, notes=notes)


def check_backend_options(backend, options):
    """InvalidOption for an option `backend` cannot honour: checked before any long step
    (calibration) and again when configuring."""
    if backend.is_rtx and options.version_compatible:
        raise InvalidOption("version_compatible", "TensorRT-RTX cannot build version-compatible engines "
                            "(it has no lean runtime to embed); build with full TensorRT for that")
    if not backend.is_rtx and options.compute_capabilities:
        raise InvalidOption("compute_capabilities", "target compute capabilities apply to TensorRT-RTX; full TensorRT "
                            "builds for the GPU it runs on (or Ampere and newer with hardware compatibility)")


def _configure_rtx(parsed, config, options, notes):
    """TensorRT-RTX: ahead-of-time targets; the options it has no use for are noted."""
    if options.hardware_compatibility not in (None, "none"):
        notes.append(f"TensorRT-RTX engines are portable across {', '.join(RTX_DEFAULT_TARGETS)} by default; "
                     "the hardware compatibility option was ignored")
    if options.timing_cache is not None:
        notes.append("TensorRT-RTX has no builder timing cache; the timing cache option was ignored")
    if not options.compute_capabilities:
        return list(RTX_DEFAULT_TARGETS)
    _set_compute_capabilities_rtx(parsed.backend, config, options.compute_capabilities)
    if TURING in options.compute_capabilities:
        notes.append("Turing (7.5) on TensorRT-RTX: FP16 runs; FP32 has limits and INT8 GEMMs are unsupported there "
                     "(support matrix); NVIDIA recommends a Turing-only engine")
    return list(options.compute_capabilities)


def _set_compute_capabilities_rtx(backend, config, labels):
    trt = backend.module
    members = []
    for label in labels:
        member = getattr(trt.ComputeCapability, "SM" + label.replace(".", ""), None)
        if member is None:  # 12.1 came with TensorRT-RTX 1.5
            raise InvalidOption("compute_capabilities", f"{backend} cannot target compute capability {label}; upgrade TensorRT-RTX")
        members.append(member)
    config.num_compute_capabilities = len(members)
    for index, member in enumerate(members):
        if not config.set_compute_capability(member, index):
            raise FfxError(f"{backend} refused target compute capability {labels[index]}")


def _configure_full_tensorrt(parsed, config, options):
    """Full TensorRT builds for the GPU it runs on, optionally portable across GPUs or versions."""
    trt = parsed.backend.module
    if options.hardware_compatibility not in (None, "none"):
        member = getattr(trt.HardwareCompatibilityLevel, HARDWARE_COMPATIBILITY[options.hardware_compatibility], None)
        if member is None:
            raise InvalidOption("hardware_compatibility", f"{parsed.backend} has no hardware compatibility level "
                                f"{options.hardware_compatibility}")
        config.hardware_compatibility_level = member
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    return []


def _profile_shapes(parsed, options):
    """min/opt/max input shapes for a dynamic batch; None when the batch is fixed in the graph."""
    input_shape = parsed.input_shape
    if any(d < 0 for d in input_shape[1:]):
        raise FfxError(f"{parsed.onnx_path}: only the batch dimension may be dynamic, input shape is {input_shape}")
    if input_shape[0] >= 0:
        fixed = input_shape[0]
        for given in (options.min_batch if options.min_batch != 1 else None, options.opt_batch, options.max_batch):
            if given is not None and given != fixed:
                raise FfxError(f"{parsed.onnx_path}: the batch is fixed at {fixed} in the graph; re-export with a dynamic batch")
        return None
    rest = list(input_shape[1:])
    minimum, optimum, maximum = options.profile_batches()
    return {"min": [minimum, *rest], "opt": [optimum, *rest], "max": [maximum, *rest]}


def _attach_timing_cache_full_tensorrt(config, path):
    """Attach the timing cache in `path` (empty when absent): (cache, bytes read)."""
    loaded = path.read_bytes() if path.is_file() else b""
    timing_cache = config.create_timing_cache(loaded)
    if timing_cache is None or not config.set_timing_cache(timing_cache, False):
        raise InvalidOption("timing_cache", f"{path}: TensorRT cannot use this timing cache (made by another "
                            "TensorRT version or GPU?); delete it and it is rebuilt")
    return timing_cache, len(loaded)


def _save_timing_cache_full_tensorrt(config, path):
    """Write the build's timing cache back to `path`, combined with whatever is on disk now (a
    parallel build may have added to it since it was read, as trtexec does); atomic. Bytes written."""
    from ffx.artifacts import write_bytes_atomic

    timing_cache = config.get_timing_cache()
    on_disk = path.read_bytes() if path.is_file() else b""
    if on_disk:
        disk_timing_cache = config.create_timing_cache(on_disk)
        if disk_timing_cache is None or not timing_cache.combine(disk_timing_cache, False):
            raise FfxError(f"{path}: the timing cache on disk could not be combined with this build's; "
                           "delete it and it is rebuilt")
    data = bytes(memoryview(timing_cache.serialize()))
    write_bytes_atomic(path, data)
    return len(data)


# -- step 3: build ----------------------------------------------------------------------------

def build_plan(parsed, setup, progress=None):
    """The serialized engine (bytes) of `parsed` built with `setup`. `progress`: False for none,
    otherwise a bar on a terminal and lines in a log (ffx.progress)."""
    monitor = _progress_monitor(parsed.backend.module, progress)
    if monitor is not None:
        setup.config.progress_monitor = monitor
    try:
        with _no_collection_inside_tensorrt():
            serialized = parsed.builder.build_serialized_network(parsed.network, setup.config)
    finally:
        if monitor is not None:
            monitor.close()
    if serialized is None:
        errors = parsed.logger.errors()
        reason = _one_line(errors[-1]) if errors else "no error was logged; its log shows more (verbose)"
        raise FfxError(f"{parsed.onnx_path}: {parsed.backend} failed to build an engine: {reason}")
    return bytes(memoryview(serialized))


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
    build_seconds: float
    options: BuildOptions
    optimization_level: int  # the one the builder used (its default when not given)
    hardware_compatibility: str | None  # full TensorRT's level, lower-case; None for TensorRT-RTX
    tf32: bool  # whether FP32 layers could run in TF32
    compute_capabilities: list  # TensorRT-RTX targets the engine runs on; [] for full TensorRT
    timing_cache: dict | None  # {"path", "loaded_bytes", "saved_bytes"} or None
    notes: list  # things the user should know (ignored options, ...)


def build_serialized_engine(onnx_path, options=None, backend="auto", progress=None, verbose=False):
    """Parse, configure, build: (engine bytes, EngineBuild). `backend`: "auto", "tensorrt",
    "tensorrt-rtx" or a Backend; `options`: a BuildOptions (defaults when None)."""
    options = options or BuildOptions()
    backend = backend if isinstance(backend, Backend) else available_backend(backend)
    started = time.perf_counter()
    parsed = parse_onnx(backend, onnx_path, verbose)
    setup = configure_builder(parsed, options)
    engine_bytes = build_plan(parsed, setup, progress)
    cache_info = None
    if setup.timing_cache is not None:
        path = Path(options.timing_cache)
        saved = _save_timing_cache_full_tensorrt(setup.config, path)
        cache_info = {"path": str(path), "loaded_bytes": setup.timing_cache_loaded_bytes, "saved_bytes": saved}
    trt = backend.module
    level = None if backend.is_rtx else setup.config.hardware_compatibility_level
    targets = _plan_targets_rtx(engine_bytes, setup) if backend.is_rtx else setup.targets
    build = EngineBuild(
        backend=backend.name,
        backend_version=backend.version,
        input_name=parsed.input_name,
        input_shape=parsed.input_shape,
        input_dtype=parsed.input_dtype,
        output_names=parsed.output_names,
        profile=setup.profile,
        build_seconds=round(time.perf_counter() - started, 3),
        options=options,
        optimization_level=int(setup.config.builder_optimization_level),
        hardware_compatibility=_enum_name(level).lower() if level is not None else None,
        tf32=bool(setup.config.get_flag(trt.BuilderFlag.TF32)),
        compute_capabilities=targets,
        timing_cache=cache_info,
        notes=setup.notes,
    )
    return engine_bytes, build


def _plan_targets_rtx(engine_bytes, setup):
    """The targets the TensorRT-RTX plan records in its header (what the runtime will check), or
    the ones ffx asked for when the header cannot be read; a difference is noted."""
    recorded = rtx_plan_targets(engine_bytes)
    if recorded is None:
        setup.notes.append("the engine's own list of targets could not be read; recorded the targets asked for")
        return list(setup.targets)
    if list(recorded) != list(setup.targets):
        setup.notes.append(f"the engine records compute capability {', '.join(recorded)} "
                           f"(asked for {', '.join(setup.targets)})")
    return list(recorded)
