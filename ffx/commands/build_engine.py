import dataclasses
import sys
from pathlib import Path

import click

from ffx.cli import InputPath, print_json, warn
from ffx.commands.calibration_options import CalibrationOptionGroup
from ffx.commands.output_options import json_option, output_file_option
from ffx.compute_capability import RTX_DEFAULT_TARGETS, RTX_SUPPORTED
from ffx.errors import FfxError, InvalidOption
from ffx.runtime.backends.runner import CHECKPOINT_SUFFIXES
from ffx.tensorrt import HARDWARE_COMPATIBILITY, backend_label


def _announce(text):
    if sys.stderr.isatty():  # scripts get the summary lines only
        click.echo(text, err=True)


def parse_size(text):
    """'2G', '512M', '64k' or a plain number of MiB -> bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = str(text).strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if text and text[-1] in units:
            size = int(float(text[:-1]) * units[text[-1]])
        else:
            size = int(float(text) * (1 << 20))
    except (ValueError, OverflowError):  # "abc"; "inf" overflows int()
        size = 0
    if size <= 0:
        raise InvalidOption("workspace_bytes", f"{text!r}: give a positive size such as 512M, 2G or a number of MiB")
    return size


# BuildOptions field -> the flag that sets it, for messages about a wrong value.
BUILD_FLAGS = {
    "min_batch": "--min-batch",
    "opt_batch": "--opt-batch",
    "max_batch": "--max-batch",
    "workspace_bytes": "--workspace",
    "timing_cache": "--timing-cache",
    "optimization_level": "--builder-optimization-level",
    "hardware_compatibility": "--hardware-compatibility",
    "version_compatible": "--version-compatible",
    "compute_capabilities": "--compute-capability",
    "tf32": "--no-tf32",
    "calib_data": "--calib-data",  # write_engine's own options
    "precision": "--fp16/--int8/--fp8",
}
# The calibration's, when an FP32 model is calibrated first: --calib-images, --calib-method, ...
CALIBRATION = CalibrationOptionGroup(prefix="calib-", images="images", flags=BUILD_FLAGS)


@click.command("build-engine")
@click.argument("model", type=InputPath(dir_okay=False))
@output_file_option("Engine file to write (.engine or .plan); OUTPUT.json is written beside it.")
@click.option("--fp16", is_flag=True, help="FP16 engine: an FP32 model is converted to typed FP16 first.")
@click.option("--int8", is_flag=True, help="INT8 engine: a Q/DQ model builds as is, an FP32 model is calibrated first (needs --calib-data).")
@click.option("--fp8", is_flag=True, help="FP8 (E4M3) engine for GPUs with FP8 tensor cores (compute capability 8.9+): an FP8 Q/DQ model builds as is, an FP32 model is calibrated first (needs --calib-data).")
@click.option("--calib-data", type=InputPath(file_okay=False), help="Calibration images for --int8/--fp8 on an FP32 model (a folder, searched recursively).")
@CALIBRATION
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "tensorrt-rtx"]), default="auto", show_default=True, help="Full TensorRT (GPU machines, Jetson) or TensorRT-RTX (RTX GPUs; builds ahead of time, even without a GPU).")
@click.option("--min-batch", type=int, default=1, show_default=True, help="Smallest batch the engine accepts; shorter batches are zero-padded when run.")
@click.option("--opt-batch", type=int, help="Batch the kernels are tuned for [default: min(8, max)].")
@click.option("--max-batch", type=int, help="Largest batch the engine accepts [default: 32].")
@click.option("--workspace", help="Builder workspace limit, e.g. 512M or 2G (plain numbers are MiB). Lower it on Jetson if builds run out of memory.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="Timing cache file, read when present and merged back after the build (full TensorRT).")
@click.option("--builder-optimization-level", "optimization_level", type=int, help="0 builds fastest, 5 searches longest [TensorRT default: 3].")
@click.option("--hardware-compatibility", type=click.Choice(list(HARDWARE_COMPATIBILITY)), help="Let the engine run on other GPU architectures (full TensorRT; Ampere or newer).")
@click.option("--version-compatible", is_flag=True, help="Let the engine load on the same or a newer TensorRT of the same major version (full TensorRT only).")
@click.option("--compute-capability", "compute_capabilities", multiple=True, metavar="CC",
              help=f"TensorRT-RTX target, e.g. 8.6 or SM75; repeat it for several. The list REPLACES the default "
                   f"({', '.join(RTX_DEFAULT_TARGETS)}); `current` means this machine's GPU. Supported: {', '.join(RTX_SUPPORTED)}.")
@click.option("--no-tf32", "no_tf32", is_flag=True, help="Keep FP32 layers in full FP32 (TensorRT allows TF32 on Ampere and newer by default); for exact FP32 comparisons.")
@click.option("--verbose", is_flag=True, help="Print TensorRT's log.")
@json_option()
def command(model, output, fp16, int8, fp8, calib_data, num_images, method, percentile, keep_fp, seed, backend, min_batch, opt_batch, max_batch,
            workspace, timing_cache, optimization_level, hardware_compatibility, version_compatible,
            compute_capabilities, no_tf32, verbose, as_json):
    """Build a TensorRT or TensorRT-RTX engine from an ONNX model or a checkpoint, with a JSON sidecar.

    The engine is a plain plan file (trtexec loads it); OUTPUT.json beside it records the
    backend and version, GPU or TensorRT-RTX targets, precision, TF32, ONNX and calibration
    hashes, the batch profile and the model's metadata, so `ffx verify`, `bench` and `predict`
    need no further flags.

    From a checkpoint (.pth, .pt, .safetensors, ...; needs torch) it exports, calibrates and
    builds in one go, each intermediate beside the engine with its record: OUT.onnx + OUT.json
    (the export), OUT.int8.onnx + OUT.int8.json (the calibration), OUT.engine + OUT.engine.json.
    An intermediate whose recorded hashes match this run's inputs is reused; a file of yours at
    one of those names is never replaced (the run's goes to OUT.engine.fp32.onnx / .int8.onnx).

    A TensorRT-RTX engine runs on 8.0 (A100), 8.6, 8.9, 12.0 and 12.1 by default; not on H100/H200
    (9.0), B200 or Jetson: use `--backend tensorrt` there. A Turing (7.5) engine is built on its
    own: `--compute-capability 7.5`. FP8 needs compute capability 8.9 or newer: other targets are
    refused, and TensorRT-RTX FP8 engines target only the FP8-capable GPUs among its defaults.

    \b
    Examples:
      ffx build-engine model.pth --int8 --calib-data train/ -o model.engine   # export + calibrate + build
      ffx build-engine model.int8.onnx -o model.engine
      ffx build-engine model.onnx --int8 --calib-data train/ -o model.int8.engine
      ffx build-engine model.onnx --fp8 --calib-data train/ -o model.fp8.engine
      ffx build-engine model.onnx --fp16 --backend tensorrt-rtx -o model.fp16.engine
      ffx build-engine model.onnx --backend tensorrt-rtx --compute-capability 7.5 -o model.turing.engine
      ffx build-engine model.onnx -o model.engine --max-batch 8 --workspace 1G --timing-cache trt.cache
    """
    if CALIBRATION.given(click.get_current_context()) and not ((int8 or fp8) and calib_data):
        raise click.UsageError("the --calib-* options apply to --int8 or --fp8 with --calib-data")
    method = CALIBRATION.range_method(method, percentile)
    if fp16 + int8 + fp8 > 1:
        raise FfxError("choose one of --fp16, --int8 and --fp8 (a Q/DQ graph keeps its unquantized layers in float)")
    try:
        options = _build_options(min_batch, opt_batch, max_batch, workspace, timing_cache, optimization_level,
                                 hardware_compatibility, version_compatible, compute_capabilities, no_tf32)
        arguments = dict(
            options=options, precision="fp16" if fp16 else "int8" if int8 else "fp8" if fp8 else None,
            calib_data=calib_data,
            calib_options={"num_images": num_images, "method": method, "percentile": percentile,
                           "keep_fp": tuple(keep_fp) or None, "seed": seed},
            backend=backend, progress=None, verbose=verbose,
        )
        pipeline, report, notes = _build(model, output, arguments, as_json)
    except InvalidOption as e:
        raise CALIBRATION.error(e) from None
    if as_json:
        print_json({**dataclasses.asdict(report), "export": dataclasses.asdict(pipeline.export), "notes": notes}
                   if pipeline else dataclasses.asdict(report))
        return
    for note in notes:
        warn(note)
    _print_summary(model, pipeline, report)


def _build_options(min_batch, opt_batch, max_batch, workspace, timing_cache, optimization_level, hardware_compatibility,
                   version_compatible, compute_capabilities, no_tf32):
    from ffx.tensorrt import BuildOptions

    return BuildOptions(
        min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
        workspace_bytes=parse_size(workspace) if workspace else None, timing_cache=timing_cache,
        optimization_level=optimization_level, hardware_compatibility=hardware_compatibility,
        version_compatible=version_compatible, compute_capabilities=tuple(compute_capabilities), tf32=not no_tf32,
    )


def _build(model, output, arguments, as_json):
    """(the checkpoint pipeline or None, the engine's BuildReport, its notes): a checkpoint is
    exported (and calibrated) on the way, an ONNX model built as it is (or calibrated first)."""
    if Path(model).suffix.lower() in CHECKPOINT_SUFFIXES:
        from ffx.runtime.engines.checkpoint_engine import build_engine_from_checkpoint

        pipeline = build_engine_from_checkpoint(model, output, announce=None if as_json else _announce, **arguments)
        return pipeline, pipeline.engine, pipeline.notes
    from ffx.runtime.engines.engine_file import write_engine

    report = write_engine(model, output, **arguments)
    return None, report, report.notes


def _print_summary(model, pipeline, report):
    if pipeline:
        step = pipeline.export
        how = (f"reused, exported from {model} earlier" if step.reused
               else f"exported from {model}, parity vs PyTorch max abs diff {step.max_abs_diff:.2e}")
        click.echo(f"{step.onnx}: {how}; record {step.record} (checkpoint sha256 {step.checkpoint_sha256[:16]}...)")
    profile = report.profile
    batches = f"batch {profile['min'][0]}..{profile['opt'][0]}..{profile['max'][0]} (min..opt..max)"
    click.echo(f"{report.engine}: {backend_label(report.backend)} {report.backend_version}, {report.precision}, {batches}, "
               f"{report.engine_bytes / (1 << 20):.1f} MiB, built in {report.build_seconds:.1f} s")
    if report.calibrated_onnx:
        how = "reused: its manifest records the same input, settings and images" if report.calibration_reused \
            else "written by this build's calibration"
        click.echo(f"built from {report.calibrated_onnx} ({how})")
    if report.backend == "tensorrt-rtx":
        where = f"ahead of time for compute capability {', '.join(report.targets)}"
    else:
        where = f"on {report.gpu['name']} ({report.gpu['compute_capability']})" if report.gpu else "no GPU recorded"
    click.echo(f"sidecar {report.sidecar} ({where}{'' if report.tf32 else ', TF32 off'}); engine sha256 {report.engine_sha256}")
    for line in report.precision_guide:
        click.echo(f"precisions on {line}")
