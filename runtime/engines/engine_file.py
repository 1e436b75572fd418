"""An engine file and its JSON sidecar from an ONNX model: what `ffx build-engine` does.

The TensorRT build itself is ffx.tensorrt's (parse -> configure -> build); this module decides
what graph to build from and writes the two files. Precision is decided in the ONNX graph
(TensorRT 11 has no FP16/INT8 builder flags), so an FP16, INT8 or FP8 engine from an FP32 model
first runs the calibration stage in-process (typed FP16, or Q/DQ INT8/FP8 calibrated on
`calib_data`) and builds from the result, which is kept beside the engine so that `ffx verify` can
check exactly that graph with ONNX Runtime too. An FP8 engine is built only for GPUs with FP8
tensor cores (ffx/gpu_precisions.py): other targets are refused before anything is calibrated, and
TensorRT-RTX builds it for the FP8-capable ones among its default targets.
"""

import dataclasses
import datetime
import platform
from pathlib import Path

from ffx import __version__
from ffx.artifacts import atomic_outputs, check_output_path, sha256_bytes, sha256_file, written_together
from ffx.compute_capability import RTX_DEFAULT_TARGETS
from ffx.errors import FfxError, InvalidOption
from ffx.gpu_precisions import fp8_refusal, gpu_precisions, supports_fp8
from ffx.calibration_manifest import calibration_manifest_path
from ffx.runtime.engines.onnx_model import graph_precision, int8_layer_count
from ffx.runtime.engines.sidecar import (
    ENGINE_SUFFIXES,
    BuilderRecord,
    EngineFileRecord,
    EngineSidecar,
    FileRecord,
    GpuRecord,
    ProfileRecord,
    sidecar_path,
)
from ffx.model_file import open_onnx


@dataclasses.dataclass
class BuildReport:
    engine: str
    sidecar: str
    onnx: str  # the graph the engine was built from (the calibrated one when calibration ran)
    calibrated_onnx: str | None  # written (or reused, see below) by this build's FP16/INT8 calibration step
    calibration_reused: bool  # the calibrated graph on disk was exactly what calibrating would write
    backend: str
    backend_version: str
    precision: str
    profile: dict
    engine_bytes: int
    engine_sha256: str
    build_seconds: float
    gpu: dict | None
    targets: list  # TensorRT-RTX compute capabilities the engine runs on; [] for full TensorRT
    tf32: bool
    notes: list
    precision_guide: list = dataclasses.field(default_factory=list)  # per target GPU: what it runs, what ffx recommends


def write_engine(onnx_path, output, options=None, precision=None, calib_data=None, calib_options=None, backend="auto",
                 progress=None, verbose=False):
    """Build `output` (a plan file) and `output.json` from `onnx_path`; returns a BuildReport.

    Args:
        options: a BuildOptions (profile, workspace, targets, ...); defaults when None.
        precision: None builds the graph as it is; "fp16", "int8" or "fp8" convert or calibrate an
            FP32 graph first (INT8/FP8 on the images in `calib_data`, with `calib_options` for
            `ffx.calib.CalibrationOptions`), a graph already in that precision builds as it is. An
            FP8 engine (asked for, or from an FP8 graph) is refused for targets without FP8.
        backend: "auto", "tensorrt" or "tensorrt-rtx".
    """
    from ffx.runtime.backends.cuda import current_gpu
    from ffx.tensorrt import BuildOptions, available_backend, build_serialized_engine, check_backend_options

    onnx_path, output = Path(onnx_path), Path(output)
    options = options or BuildOptions()
    _check_build_request(onnx_path, output, options, precision, calib_data)
    model_file = open_onnx(onnx_path)
    metadata = model_file.metadata
    model_file.check_graph()  # else the sidecar would carry preprocessing the engine cannot take
    graph = graph_precision(model_file.graph)
    backend = available_backend(backend)  # fail before a long calibration if TensorRT is missing
    gpu = current_gpu()
    options = options.with_current_gpu(gpu.compute_capability if gpu else None)
    check_backend_options(backend, options)
    notes = []
    if "fp8" in (precision, graph):  # before any calibration: a target without FP8 cannot take the engine
        options = _fp8_targets(backend, options, gpu, notes)
    if graph == "fp8":
        notes.extend(slow_int8_notes(model_file.graph, options.compute_capabilities or
                                     ([gpu.compute_capability] if gpu else [])))
    calibrated = None
    calibration_reused = False
    if precision is not None and graph != precision:
        calibrated, calibration_reused = _convert_first(onnx_path, output, graph, precision, calib_data, calib_options,
                                                        notes, progress)
    elif calib_data is not None:
        notes.append(f"calibration images ignored: {onnx_path.name} is already {graph}")

    source = Path(calibrated) if calibrated else onnx_path
    if calibrated:
        calibrated_file = open_onnx(source)  # written (or reused) by the calibration above
        metadata = calibrated_file.unchecked_metadata if calibrated_file.recorded else metadata
        graph = graph_precision(calibrated_file.graph)

    engine_bytes, build = build_serialized_engine(source, options, backend=backend, progress=progress, verbose=verbose)
    notes.extend(build.notes)
    if backend.is_rtx and gpu is not None and gpu.compute_capability not in build.compute_capabilities:
        notes.append(f"this machine's GPU, {gpu.name} ({gpu.compute_capability}), is not among the engine's targets")
    sidecar = _sidecar(output, engine_bytes, build, source, metadata, graph, gpu, notes)
    _write_engine_and_sidecar(output, engine_bytes, sidecar)
    return _build_report(output, source, calibrated, calibration_reused, graph, engine_bytes, build, sidecar, gpu, notes)


def _check_build_request(onnx_path, output, options, precision, calib_data):
    """FfxError/InvalidOption for an engine name, precision or output path the build cannot take,
    before anything is read."""
    if output.suffix.lower() not in ENGINE_SUFFIXES:
        raise FfxError(f"{output}: an engine file should end in {', '.join(ENGINE_SUFFIXES)}")
    if precision not in (None, "fp16", "int8", "fp8"):
        raise InvalidOption("precision", f"unknown engine precision {precision!r}; choose fp16, int8 or fp8 (or the graph's own)")
    for path in (output, sidecar_path(output)):
        check_output_path(path, [onnx_path, calib_data])
    if options.timing_cache is not None:  # full TensorRT reads it and writes it back after the build
        _check_timing_cache(Path(options.timing_cache), onnx_path, calib_data, output)


def _convert_first(onnx_path, output, graph, precision, calib_data, calib_options, notes, progress):
    """(calibrated graph, reused): the FP32 graph converted (FP16) or calibrated (INT8, FP8) to
    `precision` beside the engine, or the identical one already there."""
    if graph != "fp32":
        raise FfxError(f"{onnx_path} is a {graph} graph; {precision.upper()} engines are made from FP32 models")
    quantized = precision in ("int8", "fp8")
    if quantized and calib_data is None:
        raise InvalidOption("calib_data", f"{onnx_path} has no Q/DQ nodes: an {precision.upper()} engine needs "
                            "calibration images to calibrate it first (or give a model made by `ffx calibrate`)")
    conversion_options = _calibration_options(calib_options if quantized else {}, precision if quantized else None)
    derived, reused = _conversion_path(output, precision, onnx_path, calib_data, conversion_options, notes)
    if reused:
        return derived, True
    if quantized:
        return _calibrate(onnx_path, calib_data, derived, conversion_options, progress), False
    return _convert_fp16(onnx_path, derived, calib_data, progress), False


def _build_report(output, source, calibrated, calibration_reused, graph, engine_bytes, build, sidecar, gpu, notes):
    return BuildReport(
        engine=str(output),
        sidecar=str(sidecar_path(output)),
        onnx=str(source),
        calibrated_onnx=str(calibrated) if calibrated else None,
        calibration_reused=calibration_reused,
        backend=build.backend,
        backend_version=build.backend_version,
        precision=graph,
        profile=dataclasses.asdict(sidecar.profile),
        engine_bytes=len(engine_bytes),
        engine_sha256=sidecar.engine.sha256,
        build_seconds=build.build_seconds,
        gpu=dataclasses.asdict(sidecar.gpu) if sidecar.gpu else None,
        targets=build.compute_capabilities,
        tf32=build.tf32,
        notes=notes,
        precision_guide=[gpu_precisions(target).describe() for target in
                         (build.compute_capabilities or ([gpu.compute_capability] if gpu else []))],
    )


def slow_int8_notes(model, targets):
    """A note for each target (compute capability) whose INT8 tensor cores are far slower than its
    FP8 ones, when this FP8 graph has INT8 layers (`ffx calibrate --int8-layers`, or its search's)."""
    count = int8_layer_count(model)
    return [f"{count} layer{'s' if count != 1 else ''} of this FP8 graph are INT8, and compute capability {row.capability} "
            f"({row.architecture}: {row.examples}) runs INT8 at 1/30 of FP8's rate: for it, calibrate with "
            "`ffx calibrate --fp8 --int8-layers none`"
            for row in map(gpu_precisions, targets) if count and row.slow_int8]


def _fp8_targets(backend, options, gpu, notes):
    """`options` for an FP8 engine: TensorRT-RTX targets that all have FP8 (the FP8-capable ones
    among its defaults when none are given); full TensorRT builds for this GPU, which must have FP8.
    InvalidOption/FfxError naming the GPU and what to use instead otherwise."""
    if backend.is_rtx:
        for target in options.compute_capabilities:
            if not supports_fp8(target):
                raise InvalidOption("compute_capabilities", fp8_refusal(target))
        if not options.compute_capabilities:
            targets = tuple(target for target in RTX_DEFAULT_TARGETS if supports_fp8(target))
            notes.append(f"FP8 engine: built for {', '.join(targets)} only, the TensorRT-RTX default targets with FP8 "
                         "tensor cores")
            options = dataclasses.replace(options, compute_capabilities=targets)
    elif gpu is not None and not supports_fp8(gpu.compute_capability):
        raise FfxError(fp8_refusal(gpu.compute_capability, gpu.name))
    return options


def _sidecar(output, engine_bytes, build, source, metadata, precision, gpu, notes):
    """The EngineSidecar of a build: full TensorRT builds for `gpu`; a TensorRT-RTX build is ahead
    of time and records its targets (the building GPU, if any, is recorded too)."""
    manifest = calibration_manifest_path(source, metadata)
    return EngineSidecar(
        engine=EngineFileRecord(output.name, sha256_bytes(engine_bytes), len(engine_bytes)),
        backend=build.backend,
        backend_version=build.backend_version,
        gpu=GpuRecord(gpu.name, gpu.compute_capability) if gpu else None,
        target_compute_capabilities=build.compute_capabilities,
        hardware_compatibility=build.hardware_compatibility,
        version_compatible=build.options.version_compatible,
        precision=precision,
        onnx=FileRecord(_relative(source, output), sha256_file(source)),
        calibration_manifest=FileRecord(_relative(manifest, output), sha256_file(manifest)) if manifest else None,
        profile=ProfileRecord(build.input_name, build.profile["min"], build.profile["opt"], build.profile["max"]),
        input_dtype=build.input_dtype,
        outputs=build.output_names,
        build_seconds=build.build_seconds,
        builder=BuilderRecord(
            optimization_level=build.optimization_level,
            workspace_bytes=build.options.workspace_bytes,
            timing_cache=build.timing_cache,
            strongly_typed=True,
            tf32=build.tf32,
        ),
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        built_on={"machine": platform.machine(), "system": platform.system()},
        ffx_version=__version__,
        metadata=dict(metadata.to_dict(), precision=precision),
        notes=notes,
    )


def _write_engine_and_sidecar(output, engine_bytes, sidecar):
    """The two temporaries are renamed only once both are written, the engine first."""
    import json

    # The engine is renamed first, then its sidecar: a failure between the two renames leaves any old
    # sidecar, whose engine sha256 no longer matches (inspect notices).
    with written_together(output.parent), atomic_outputs(output, sidecar_path(output)) as (engine_tmp, sidecar_tmp):
        engine_tmp.write_bytes(engine_bytes)
        sidecar_tmp.write_text(json.dumps(sidecar.to_dict(), indent=2, sort_keys=True) + "\n")


def _check_timing_cache(path, onnx_path, calib_data, output):
    """FfxError unless the timing cache can be written back: a regular file or nothing, none of the
    build's inputs or outputs."""
    check_output_path(path, [onnx_path, calib_data])
    if path.resolve() in (output.resolve(), sidecar_path(output).resolve()):
        raise FfxError(f"--timing-cache {path}: is also the engine or its sidecar; give the cache its own file")


def _derived_path(output, precision, source, notes):
    """Where a build's own calibration writes its graph: `OUT.engine` -> `OUT.int8.onnx`
    (`OUT.int8.engine` -> `OUT.int8.onnx` too, not `OUT.int8.int8.onnx`). A graph or manifest
    already there (the user's own calibration, or the input) is never replaced: the build's
    graph then goes to `OUT.engine.int8.onnx`, which belongs to the engine like its sidecar."""
    derived = _primary_derived_path(output, precision)
    if derived.exists() or derived.with_suffix(".json").exists() or derived.resolve() == Path(source).resolve():
        kept = derived
        derived = output.with_name(f"{output.name}.{precision}.onnx")
        notes.append(f"kept the existing {kept.name}; the build's {precision} graph is {derived.name}")
    return derived


def _primary_derived_path(output, precision):
    return output.with_name(f"{output.stem.removesuffix(f'.{precision}')}.{precision}.onnx")


def _conversion_path(output, precision, source, data, options, notes):
    """(path, reused): a graph at either name `_derived_path` uses that is exactly what converting
    `source` would write now (runtime/engines/conversion_reuse.py: same input sha256, settings, images and
    ffx version) is reused; otherwise `_derived_path`'s choice, to be written."""
    from ffx.runtime.engines.conversion_reuse import conversion_mismatch

    for candidate in (_primary_derived_path(output, precision), output.with_name(f"{output.name}.{precision}.onnx")):
        if candidate.is_file() and candidate.resolve() != Path(source).resolve() \
                and conversion_mismatch(candidate, source, precision, data, options) is None:
            return candidate, True
    return _derived_path(output, precision, source, notes), False


def _calibration_options(options, precision=None):
    """CalibrationOptions for `precision` (a Q/DQ one, or None: the default) from `options`
    (None meaning calibrate's own default)."""
    from ffx.calib import CalibrationOptions

    given = {key: value for key, value in (options or {}).items() if value is not None}
    if precision is not None:
        given["precision"] = precision
    return CalibrationOptions(**given)


def _relative(path, output):
    path, base = Path(path).resolve(), Path(output).resolve().parent
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _calibrate(onnx_path, data, output, options, progress=None):
    from ffx.calib import calibrate

    # tensorrt_check off: the engine build right after is that check, with the user's backend.
    report = calibrate(str(onnx_path), str(data), str(output), options, progress=progress, tensorrt_check=False)
    return report.output


def _convert_fp16(onnx_path, output, data, progress=None):
    from ffx.calib import convert_fp16

    report = convert_fp16(str(onnx_path), str(output), data=str(data) if data else None, progress=progress,
                          tensorrt_check=False)
    return report.output
