"""ONNX -> TensorRT engine + JSON sidecar: what `ffx build-engine` does.

Precision is decided in the ONNX graph (TensorRT 11 has no FP16/INT8 builder flags), so
`--fp16` / `--int8` on an FP32 model first run the calibration stage in-process (typed FP16, or
Q/DQ INT8 calibrated on `calib_data`) and build from the result, which is kept beside the engine
so that `ffx verify` can check exactly that graph with ONNX Runtime too.
"""

import dataclasses
import datetime
import platform
from pathlib import Path

from ffx import __version__
from ffx.artifacts import atomic_output, sha256_bytes, sha256_file
from ffx.errors import FfxError
from ffx.runtime.onnx_model import calibration_manifest_path, graph_precision, load_onnx
from ffx.runtime.sidecar import ENGINE_SUFFIXES, SIDECAR_FORMAT, SIDECAR_VERSION, sidecar_path
from ffx.metadata import onnx_metadata


@dataclasses.dataclass
class BuildReport:
    engine: str
    sidecar: str
    onnx: str  # the graph the engine was built from (the calibrated one when calibration ran)
    calibrated_onnx: str | None  # written by this build's --fp16/--int8 calibration step
    backend: str
    backend_version: str
    precision: str
    profile: dict
    engine_bytes: int
    engine_sha256: str
    build_seconds: float
    gpu: dict | None
    notes: list


def build_engine(
    onnx_path,
    output,
    fp16=False,
    int8=False,
    calib_data=None,
    calib_options=None,
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
    """Build `output` (a plan file) and `output.json` from `onnx_path`; returns a BuildReport."""
    from ffx.tensorrt import available_backend, build_serialized_engine

    onnx_path, output = Path(onnx_path), Path(output)
    if output.suffix.lower() not in ENGINE_SUFFIXES:
        raise FfxError(f"{output}: an engine file should end in {', '.join(ENGINE_SUFFIXES)}")
    if fp16 and int8:
        raise FfxError("choose one of --fp16 and --int8 (an INT8 graph keeps its unquantized layers in float)")
    model = load_onnx(onnx_path)
    metadata = onnx_metadata(model) or {}
    precision = graph_precision(model)
    backend = available_backend(backend)  # fail before a long calibration if TensorRT is missing
    notes = []
    calibrated = None

    if int8 and precision != "int8":
        if precision != "fp32":
            raise FfxError(f"{onnx_path} is a {precision} graph; --int8 calibrates FP32 models")
        if calib_data is None:
            raise FfxError(f"{onnx_path} has no Q/DQ nodes: --int8 needs --calib-data DIR to calibrate it first "
                           "(or give a model made by `ffx calibrate`)")
        calibrated = _calibrate_int8(onnx_path, calib_data, _derived_path(output, "int8"), calib_options or {}, progress)
    elif fp16 and precision != "fp16":
        if precision != "fp32":
            raise FfxError(f"{onnx_path} is a {precision} graph; --fp16 converts FP32 models")
        calibrated = _convert_fp16(onnx_path, _derived_path(output, "fp16"), calib_data, progress)
    elif calib_data is not None:
        notes.append(f"--calib-data ignored: {onnx_path.name} is already {precision}")

    source = Path(calibrated) if calibrated else onnx_path
    if calibrated:
        model = load_onnx(source)
        metadata = onnx_metadata(model) or metadata
        precision = graph_precision(model)

    engine_bytes, build = build_serialized_engine(
        source,
        backend=backend,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        workspace=workspace,
        timing_cache=timing_cache,
        optimization_level=optimization_level,
        hardware_compatibility=hardware_compatibility,
        version_compatible=version_compatible,
        compute_capabilities=compute_capabilities,
        progress=progress,
        verbose=verbose,
    )
    notes.extend(build.notes)
    gpu = _gpu_for()
    manifest = calibration_manifest_path(source, metadata)
    metadata = dict(metadata, precision=precision)
    engine_sha256 = sha256_bytes(engine_bytes)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "sidecar_version": SIDECAR_VERSION,
        "engine": {"file": output.name, "sha256": engine_sha256, "bytes": len(engine_bytes)},
        "backend": build.backend,
        "backend_version": build.backend_version,
        "gpu": gpu,
        "target_compute_capabilities": build.compute_capabilities,
        "hardware_compatibility": build.hardware_compatibility,
        "version_compatible": build.version_compatible,
        "precision": precision,
        "onnx": {"file": _relative(source, output), "sha256": sha256_file(source)},
        "calibration_manifest": (
            {"file": _relative(manifest, output), "sha256": sha256_file(manifest)} if manifest else None
        ),
        "profile": {"input": build.input_name, **build.profile},
        "input_dtype": build.input_dtype,
        "outputs": build.output_names,
        "build_seconds": build.build_seconds,
        "builder": {
            "optimization_level": build.optimization_level,
            "workspace_bytes": build.workspace_bytes,
            "timing_cache": build.timing_cache,
            "strongly_typed": build.strongly_typed,
        },
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "built_on": {"machine": platform.machine(), "system": platform.system()},
        "ffx_version": __version__,
        "metadata": metadata,
        "notes": notes,
    }
    _write_engine_and_sidecar(output, engine_bytes, sidecar)
    return BuildReport(
        engine=str(output),
        sidecar=str(sidecar_path(output)),
        onnx=str(source),
        calibrated_onnx=str(calibrated) if calibrated else None,
        backend=build.backend,
        backend_version=build.backend_version,
        precision=precision,
        profile=sidecar["profile"],
        engine_bytes=len(engine_bytes),
        engine_sha256=engine_sha256,
        build_seconds=build.build_seconds,
        gpu=gpu,
        notes=notes,
    )


def _write_engine_and_sidecar(output, engine_bytes, sidecar):
    """The two temporaries are renamed only once both are written, the engine first."""
    import json

    # The inner context renames first: the engine lands before its sidecar, so a failure between
    # the two renames leaves any old sidecar, whose engine sha256 no longer matches (inspect notices).
    with atomic_output(sidecar_path(output)) as sidecar_tmp, atomic_output(output) as engine_tmp:
        engine_tmp.write_bytes(engine_bytes)
        sidecar_tmp.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")


def _derived_path(output, precision):
    """Where a build's own calibration writes its graph: `OUT.engine` -> `OUT.int8.onnx`
    (`OUT.int8.engine` -> `OUT.int8.onnx` too, not `OUT.int8.int8.onnx`)."""
    stem = output.stem.removesuffix(f".{precision}")
    return output.with_name(f"{stem}.{precision}.onnx")


def _relative(path, output):
    path, base = Path(path).resolve(), Path(output).resolve().parent
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


# `ffx calibrate` flag -> the `ffx build-engine` flag that feeds it, for calibration's warnings.
_CALIBRATE_FLAGS = {"--data": "--calib-data", "--num-images": "--calib-images", "--method": "--calib-method"}


def _warn_in_build_engine_terms(message):
    import re
    import sys

    message = re.sub(r"--[a-z-]+", lambda m: _CALIBRATE_FLAGS.get(m.group(0), m.group(0)), str(message))
    print(f"Warning: {message}", file=sys.stderr)


def _calibrate_int8(onnx_path, data, output, options, progress=None):
    from ffx.calib import calibrate_int8

    # None means "calibrate's own default". tensorrt_check off: the engine build right after is
    # that check, with the user's backend.
    given = {key: value for key, value in options.items() if value is not None}
    report = calibrate_int8(str(onnx_path), str(data), str(output), progress=progress, tensorrt_check=False,
                            warn=_warn_in_build_engine_terms, **given)
    return report.output


def _convert_fp16(onnx_path, output, data, progress=None):
    from ffx.calib import convert_fp16

    report = convert_fp16(str(onnx_path), str(output), data=str(data) if data else None, progress=progress,
                          tensorrt_check=False, warn=_warn_in_build_engine_terms)
    return report.output


def _gpu_for():
    """The GPU of the build machine, None without one. Full TensorRT builds for exactly this GPU;
    a TensorRT-RTX build is ahead of time and its targets are recorded separately."""
    from ffx.runtime.cuda import current_gpu

    gpu = current_gpu()
    return {"name": gpu.name, "compute_capability": gpu.compute_capability} if gpu else None
