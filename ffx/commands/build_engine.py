import dataclasses

import click

from ffx.cli import print_json, warn
from ffx.errors import FfxError
from ffx.tensorrt import HARDWARE_COMPATIBILITY


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
        raise FfxError(f"--workspace {text!r}: give a positive size such as 512M, 2G or a number of MiB")
    return size


@click.command("build-engine")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Engine file to write (.engine or .plan); OUTPUT.json is written beside it.")
@click.option("--fp16", is_flag=True, help="FP16 engine: an FP32 model is converted to typed FP16 first.")
@click.option("--int8", is_flag=True, help="INT8 engine: a Q/DQ model builds as is, an FP32 model is calibrated first (needs --calib-data).")
@click.option("--calib-data", type=click.Path(file_okay=False), help="Calibration images for --int8 on an FP32 model (a folder, searched recursively).")
@click.option("--calib-images", "num_images", type=click.IntRange(min=1), help="How many calibration images to use (default: calibrate's).")
@click.option("--calib-method", "method", help="Calibration method, as `ffx calibrate --method`: entropy (default), max, percentile, mse.")
@click.option("--calib-percentile", "percentile", type=click.FloatRange(0, 100, min_open=True), help="Percentile for --calib-method percentile.")
@click.option("--calib-keep-fp", "keep_fp", multiple=True, metavar="LAYERS", help="Layers to leave unquantized, as `ffx calibrate --keep-fp` (e.g. head,patch_embed).")
@click.option("--calib-seed", "seed", type=int, help="Seed of the calibration image selection.")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "tensorrt-rtx"]), default="auto", show_default=True, help="Full TensorRT (GPU machines, Jetson) or TensorRT-RTX (builds ahead of time, even without a GPU).")
@click.option("--min-batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--opt-batch", type=click.IntRange(min=1), help="Batch the kernels are tuned for [default: min(8, max)].")
@click.option("--max-batch", type=click.IntRange(min=1), help="Largest batch the engine accepts [default: 32].")
@click.option("--workspace", help="Builder workspace limit, e.g. 512M or 2G (plain numbers are MiB). Lower it on Jetson if builds run out of memory.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="Timing cache file, read when present and updated after the build (full TensorRT).")
@click.option("--builder-optimization-level", "optimization_level", type=click.IntRange(0, 5), help="0 builds fastest, 5 searches longest [TensorRT default: 3].")
@click.option("--hardware-compatibility", type=click.Choice(list(HARDWARE_COMPATIBILITY)), help="Let the engine run on other GPU architectures (full TensorRT; Ampere or newer).")
@click.option("--version-compatible", is_flag=True, help="Let the engine load on later TensorRT versions of the same major.")
@click.option("--compute-capability", "compute_capabilities", multiple=True, help="TensorRT-RTX target, e.g. 8.6 or SM75 (repeatable); default: 8.0, 8.6, 8.9, 12.0.")
@click.option("--verbose", is_flag=True, help="Print TensorRT's log.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
def command(model, output, fp16, int8, calib_data, num_images, method, percentile, keep_fp, seed, backend, min_batch, opt_batch, max_batch,
            workspace, timing_cache, optimization_level, hardware_compatibility, version_compatible,
            compute_capabilities, verbose, as_json):
    """Build a TensorRT or TensorRT-RTX engine from an ONNX model, with a JSON sidecar.

    The engine is a plain plan file (trtexec loads it); OUTPUT.json beside it records the
    backend and version, GPU, precision, ONNX and calibration hashes, the batch profile and the
    model's metadata, so `ffx verify`, `bench` and `predict` need no further flags.

    \b
    Examples:
      ffx build-engine model.int8.onnx -o model.engine
      ffx build-engine model.onnx --int8 --calib-data train/ -o model.int8.engine
      ffx build-engine model.onnx --fp16 --backend tensorrt-rtx -o model.fp16.engine
      ffx build-engine model.onnx -o model.engine --max-batch 8 --workspace 1G --timing-cache trt.cache
    """
    from ffx.runtime.build import build_engine

    if (num_images or method or percentile is not None or keep_fp or seed is not None) and not (int8 and calib_data):
        raise click.UsageError("the --calib-* options apply to --int8 with --calib-data")
    if percentile is not None and method not in (None, "percentile"):
        raise click.UsageError(f"--calib-percentile applies to --calib-method percentile, not {method}")
    if percentile is not None:
        method = "percentile"
    report = build_engine(
        model,
        output,
        fp16=fp16,
        int8=int8,
        calib_data=calib_data,
        calib_options={"num_images": num_images, "method": method, "percentile": percentile,
                       "keep_fp": tuple(keep_fp) or None, "seed": seed},
        backend=backend,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        workspace=parse_size(workspace) if workspace else None,
        timing_cache=timing_cache,
        optimization_level=optimization_level,
        hardware_compatibility=hardware_compatibility,
        version_compatible=version_compatible,
        compute_capabilities=list(compute_capabilities) or None,
        progress=None if not as_json else False,
        verbose=verbose,
    )
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    for note in report.notes:
        warn(note)
    label = "TensorRT-RTX" if report.backend == "tensorrt-rtx" else "TensorRT"
    profile = report.profile
    batches = f"batch {profile['min'][0]}..{profile['opt'][0]}..{profile['max'][0]} (min..opt..max)"
    click.echo(f"{report.engine}: {label} {report.backend_version}, {report.precision}, {batches}, "
               f"{report.engine_bytes / (1 << 20):.1f} MiB, built in {report.build_seconds:.1f} s")
    if report.calibrated_onnx:
        click.echo(f"built from {report.calibrated_onnx} (written by this build's calibration)")
    where = f"on {report.gpu['name']} ({report.gpu['compute_capability']})" if report.gpu else "ahead of time, no GPU"
    click.echo(f"sidecar {report.sidecar} ({where}); sha256 {report.engine_sha256}")
