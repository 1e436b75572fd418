"""`ffx build-engine CHECKPOINT`: export, calibrate and build in one command.

Every intermediate file lands beside the engine with its provenance, and one whose inputs are
the same as this run's is reused (so a second run only rebuilds the engine):

- `OUT.onnx` and `OUT.json`: the export, and its record (the checkpoint's sha256, the weights,
  opset and ffx version, the parity check, and the ONNX's own sha256). Reused when the record
  matches this checkpoint and the ONNX still has the recorded sha256.
- `OUT.int8.onnx` and `OUT.int8.json` (or `.fp16`): calibration and its manifest, reused when the
  manifest's hashes say it was made from this ONNX with the same settings and images
  (runtime/engines/conversion_reuse.py); see `ffx.runtime.engines.engine_file.write_engine`.
- `OUT.engine` and `OUT.engine.json`: the engine and its sidecar, always built.

A file at an intermediate name that is not such a record of this checkpoint (the user's own
`OUT.onnx`) is never replaced: the run's export then goes to `OUT.engine.fp32.onnx` (record
`OUT.engine.fp32.json`), which belongs to the engine like its sidecar; the calibrated graph
follows the same rule (`OUT.engine.int8.onnx`).
"""

import dataclasses
import datetime
import importlib.util
import json
from pathlib import Path

from ffx import __version__
from ffx.artifacts import atomic_output, refuse_overwriting_inputs, sha256_file, written_together
from ffx.errors import TORCH_CPU_INSTALL, FfxError, InvalidOption, install_hint
from ffx.runtime.engines.sidecar import ENGINE_SUFFIXES

EXPORT_RECORD_FORMAT = "ffx-export-record"
EXPORT_RECORD_VERSION = 1
MAX_RECORD_BYTES = 1 << 20
# What `ffx export` needs beyond a plain install (the `export` extra).
EXPORT_PACKAGES = ("torch", "onnxscript", "safetensors")


def missing_export_packages_message(what):
    """One line naming the export packages this environment lacks for `what`, or None."""
    missing = [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (f"{what} needs {', '.join(missing)}: install torch (CPU-only: {TORCH_CPU_INSTALL}), "
            f"then {install_hint('export')}")


@dataclasses.dataclass
class ExportStep:
    onnx: str
    record: str
    reused: bool
    checkpoint_sha256: str
    onnx_sha256: str
    max_abs_diff: float | None  # the parity check of the export (recorded when reused)


@dataclasses.dataclass
class PipelineReport:
    export: ExportStep
    engine: object  # ffx.runtime.engines.engine_file.BuildReport
    notes: list


def build_engine_from_checkpoint(checkpoint, output, options=None, precision=None, calib_data=None, calib_options=None,
                                 backend="auto", progress=None, verbose=False, announce=None):
    """Export `checkpoint` beside `output` (or reuse that export), then build the engine from it as
    `write_engine` does (calibrating or reusing the calibrated graph). `announce(text)` is
    called before each long step. Returns a PipelineReport."""
    from ffx.runtime.engines.engine_file import write_engine
    from ffx.tensorrt import BuildOptions, available_backend, check_backend_options

    checkpoint, output = Path(checkpoint), Path(output)
    message = missing_export_packages_message(f"build-engine from a checkpoint ({checkpoint.name})")
    if message:
        raise FfxError(message)
    if not checkpoint.is_file():
        raise FfxError(f"{checkpoint}: no such file")
    # What write_engine would refuse after the export, refused before it.
    if output.suffix.lower() not in ENGINE_SUFFIXES:
        raise FfxError(f"{output}: an engine file should end in {', '.join(ENGINE_SUFFIXES)}")
    if precision == "int8" and calib_data is None:
        raise InvalidOption("calib_data", f"an INT8 engine from {checkpoint.name} needs calibration images")
    if calib_data is not None and not Path(calib_data).is_dir():
        raise FfxError(f"{calib_data}: no such directory")
    onnx_path, record_path = _export_paths(output, precision)
    for written in (output, Path(f"{output}.json"), onnx_path, record_path, *_own_paths(output)):
        refuse_overwriting_inputs(written, [checkpoint, calib_data])
    # Before the export: a missing TensorRT or an option it cannot honour fails in one line first.
    check_backend_options(available_backend(backend), options or BuildOptions())
    notes = []
    step = _export(checkpoint, output, onnx_path, record_path, notes, announce)
    report = write_engine(step.onnx, output, options, precision=precision, calib_data=calib_data,
                          calib_options=calib_options, backend=backend, progress=progress, verbose=verbose)
    return PipelineReport(export=step, engine=report, notes=notes + report.notes)


def _export_paths(output, precision):
    """`OUT.engine` -> (`OUT.onnx`, `OUT.json`); `OUT.int8.engine` -> (`OUT.onnx`, `OUT.json`) too."""
    stem = output.stem.removesuffix(f".{precision}") if precision else output.stem
    return output.with_name(f"{stem}.onnx"), output.with_name(f"{stem}.json")


def _own_paths(output):
    return output.with_name(f"{output.name}.fp32.onnx"), output.with_name(f"{output.name}.fp32.json")


def _export(checkpoint, output, onnx_path, record_path, notes, announce):
    checkpoint_sha256 = sha256_file(checkpoint)
    own = _own_paths(output)
    for candidate in ((onnx_path, record_path), own):
        record = _matching_record(*candidate, checkpoint_sha256)
        if record is not None:
            return ExportStep(str(candidate[0]), str(candidate[1]), True, checkpoint_sha256, record["onnx"]["sha256"],
                              record.get("parity", {}).get("max_abs_diff"))
    if onnx_path.exists() or record_path.exists():
        notes.append(f"kept the existing {onnx_path.name if onnx_path.exists() else record_path.name} (not an export "
                     f"of {checkpoint.name}); this build's export is {own[0].name}")
        onnx_path, record_path = own
    if announce:
        announce(f"exporting {checkpoint} to {onnx_path.name} (load, trace, ONNX Runtime parity check) ...")
    return _write_export(checkpoint, checkpoint_sha256, onnx_path, record_path, notes)


def _matching_record(onnx_path, record_path, checkpoint_sha256):
    """The export record at `record_path` when it describes an export of this checkpoint that is
    still intact at `onnx_path` with today's settings and ffx version; else None."""
    from ffx.export.onnx_export import MIN_OPSET

    if not (onnx_path.is_file() and record_path.is_file()) or record_path.stat().st_size > MAX_RECORD_BYTES:
        return None
    try:
        record = json.loads(record_path.read_bytes())
        matches = (record["format"] == EXPORT_RECORD_FORMAT and record["record_version"] == EXPORT_RECORD_VERSION
                   and record["ffx_version"] == __version__ and record["checkpoint"]["sha256"] == checkpoint_sha256
                   and record["weights"] == "model" and record["opset"] == MIN_OPSET
                   and record["onnx"]["file"] == onnx_path.name)
    except (ValueError, TypeError, KeyError):
        return None
    return record if matches and sha256_file(onnx_path) == record["onnx"]["sha256"] else None


def _write_export(checkpoint, checkpoint_sha256, onnx_path, record_path, notes):
    """Export with `ffx export`'s defaults (model weights, opset 17, parity check) and write the
    ONNX and its record together: the ONNX lands first, so a record always has its ONNX."""
    from ffx.export.checkpoint import resolve_model
    from ffx.export.onnx_export import MIN_OPSET, export_onnx

    resolved = resolve_model(None, str(checkpoint))
    if not resolved.preprocess_recorded:
        notes.append(f"{checkpoint.name} records no preprocessing; assumed the ImageNet evaluation transform "
                     "(see `ffx export`)")
    with written_together(onnx_path.parent), atomic_output(record_path) as record_tmp, \
            atomic_output(onnx_path) as onnx_tmp:
        report = export_onnx(resolved, onnx_tmp, opset=MIN_OPSET, source_path=checkpoint)
        record = {
            "format": EXPORT_RECORD_FORMAT,
            "record_version": EXPORT_RECORD_VERSION,
            "written_by": "ffx build-engine",
            "ffx_version": __version__,
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "checkpoint": {"file": str(checkpoint), "sha256": checkpoint_sha256},
            "weights": report.weights,
            "arch": report.arch,
            "parameters": report.parameters,
            "opset": report.opset,
            "input_shape": report.input_shape,
            "preprocess_recorded": resolved.preprocess_recorded,
            "parity": {"max_abs_diff": report.max_abs_diff, "max_rel_diff": report.max_rel_diff},
            "onnx": {"file": onnx_path.name, "sha256": report.sha256},
        }
        record_tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return ExportStep(str(onnx_path), str(record_path), False, checkpoint_sha256, report.sha256, report.max_abs_diff)
