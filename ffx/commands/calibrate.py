import dataclasses
import time
from pathlib import Path

import click

from ffx.calib.precisions import PRECISIONS
from ffx.calib.mixed_precision import DEFAULT_HELD_OUT_IMAGES
from ffx.calib.sensitivity import UNUSED_CALIBRATION_IMAGES
from ffx.cli import FiniteFloat, InputPath, print_json, warn
from ffx.commands.calibration_options import CalibrationOptionGroup
from ffx.commands.output_options import json_option, output_file_option
from ffx.errors import InvalidOption

CALIBRATION = CalibrationOptionGroup(statistics=True, flags={"precision": "--fp8/--fp16", "scale_search": "--scale-search",
                                                             "int8_layers": "--int8-layers"})


@click.command("calibrate")
@click.argument("model", type=InputPath(dir_okay=False))
@click.option("--data", type=InputPath(), help="Calibration images: class folders (ImageNet train/ or val/, or <class>/*), a flat folder, a LOC_val_solution.csv folder, or a list file (`path label` per line).")
@CALIBRATION
@click.option("--target-agreement", type=FiniteFloat(min=0, max=100), metavar="PCT", help="Keep in float the layers that buy the most accuracy per FLOP, as few FLOPs as it takes for the quantized graph to agree with FP32's top-1 on at least PCT % of held-out images, judged on the 95% lower bound (Wilson); exit 1 if it cannot, exit 2 if the held-out images are too few to tell.")
@click.option("--max-top1-drop", type=FiniteFloat(min=0, max=100), metavar="PT", help="Like --target-agreement, for the top-1 accuracy drop in points, judged on the upper end of its paired 95% interval (needs labelled images); both may be given.")
@click.option("--held-out", "held_out", type=InputPath(), help="Images the target (or --int8-layers auto) is measured on (default: the images of --data not used for calibration).")
@click.option("--held-out-images", type=click.IntRange(min=1), help=f"How many held-out images the target (or --int8-layers auto) is measured on [default: {DEFAULT_HELD_OUT_IMAGES:,}, or all there are when fewer]; more than there are is an error.")
@click.option("--point-estimate", is_flag=True, help="Judge the target on the measured agreement and drop themselves, not their 95% bounds: the only way to search on fewer held-out images than the target needs (say 300 for 99.9%); the summary still shows the bounds.")
@click.option("--fp16", is_flag=True, help="Write a float16 graph (float32 inputs/outputs) instead of INT8; with --data, tensors near the float16 limit stay float32.")
@click.option("--fp8", is_flag=True, help="Write FP8 (E4M3) Q/DQ instead of INT8, for GPUs with FP8 tensor cores (compute capability 8.9+: Ada, Hopper, Blackwell, Thor); opset 19.")
@click.option("--scale-search", is_flag=True, help="FP8: search each activation scale over one octave above its range by the layer's output error (helps when patch_embed is FP8 too: --keep-fp none).")
@click.option("--int8-layers", "int8_layers", multiple=True, metavar="LAYERS", help="FP8: layers to write in INT8 instead, named as for --keep-fp; `none` for none (the default); `auto`: each layer in whichever of FP8 and INT8 errs less alone on the closest calls of the held-out images (FP32 runs on them once, then its logits are cached). With --target-agreement/--max-top1-drop the default is `auto`. On Ada, Hopper and Blackwell B200/RTX INT8 tensor cores run at FP8's rate; give `none` for a GPU where INT8 is slower.")
@output_file_option("Output ONNX (default MODEL.int8.onnx, MODEL.fp8.onnx or MODEL.fp16.onnx); the manifest OUT.json is written beside it.", required=False)
@CALIBRATION.statistics_options
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "tensorrt-rtx"]), default="auto", show_default=True, help="TensorRT flavour for the build check.")
@click.option("--no-tensorrt-check", is_flag=True, help="Skip the TensorRT parse-and-build check (and write the result even if TensorRT would reject it).")
@json_option()
def command(model, data, num_images, method, percentile, seed, keep_fp, target_agreement, max_top1_drop, held_out,
            held_out_images, point_estimate, fp16, fp8, scale_search, int8_layers, output, gelu_range, bias_correction, smooth_gelu, cache_dir, no_cache, workers,
            backend, no_tensorrt_check, as_json):
    """Turn an FP32 ffx ONNX model into a TensorRT-ready INT8 or FP8 (Q/DQ) or FP16 ONNX.

    INT8 and FP8: activation ranges from real images, Q/DQ on the inputs of Conv/MatMul/Gemm only
    (per-tensor activations, per-channel weights; LayerNorm, GELU, residual Adds and biases stay
    float). FP8 (E4M3) runs on compute capability 8.9 and newer; `ffx inspect --gpu CC` says
    which precisions a GPU has. Preprocessing comes from the model's metadata. The result is checked with
    onnxruntime (top-1 agreement with FP32) and built with TensorRT or TensorRT-RTX when
    installed; a graph TensorRT rejects is not written (exit 1).

    --target-agreement / --max-top1-drop: measures each layer's error alone in INT8 (FP8: alone in
    FP8 and alone in INT8, and writes it in whichever errs less; --int8-layers none: FP8 only),
    predicts from those errors and the layers' FLOPs the cheapest set to keep in float, and measures
    it on the held-out images (default 10,000). The target is judged on the 95% bound of the measurement:
    99.9% takes at least 3,838 held-out images, and at 10,000 up to 3 may disagree.

    --fp8 --int8-layers auto without a target: each layer in whichever of FP8 and INT8 errs less
    alone on the closest calls of the held-out images (the graph the FP8 search starts from), the
    layers of --keep-fp (default: patch_embed and head) in float.

    \b
    Examples:
      ffx calibrate tiny.onnx --data imagenet/train -o tiny.int8.onnx
      ffx calibrate tiny.onnx --data calib/ --method percentile --percentile 99.9 --keep-fp head
      ffx calibrate tiny.onnx --data train/ --target-agreement 99.9 -o tiny.int8.onnx
      ffx calibrate tiny.onnx --data calib/ --held-out val/ --target-agreement 99 --max-top1-drop 0.5
      ffx calibrate tiny.onnx --fp16 --data calib/ -o tiny.fp16.onnx
      ffx calibrate tiny.onnx --fp8 --data imagenet/train -o tiny.fp8.onnx
      ffx calibrate tiny.onnx --fp8 --data imagenet/train --int8-layers auto --keep-fp none
    """
    started = time.perf_counter()
    searching = target_agreement is not None or max_top1_drop is not None
    if searching and keep_fp:
        raise click.UsageError("--keep-fp and --target-agreement/--max-top1-drop exclude each other: the search chooses the float layers")
    if fp16 and fp8:
        raise click.UsageError("choose one of --fp16 and --fp8")
    if int8_layers and not fp8:
        raise click.UsageError("--int8-layers applies to --fp8 (INT8 layers in an FP8 graph)")
    named = [name.strip().lower() for name in int8_layers]
    if "auto" in named and named != ["auto"]:
        raise click.UsageError("--int8-layers auto chooses every layer: give it alone, or name the layers")
    auto_int8 = fp8 and (named == ["auto"] or (searching and not named))
    choosing = auto_int8 and not searching  # --int8-layers auto without a target: measured on held-out images
    for name, value in (("--held-out", held_out), ("--held-out-images", held_out_images)):
        if value and not (searching or choosing):
            raise click.UsageError(f"{name} applies to --target-agreement/--max-top1-drop or --fp8 --int8-layers auto")
    if point_estimate and not searching:
        raise click.UsageError("--point-estimate applies to --target-agreement/--max-top1-drop")
    precision = "fp16" if fp16 else "fp8" if fp8 else "int8"
    if fp16:
        for name, value in (("--method", method), ("--percentile", percentile), ("--keep-fp", keep_fp),
                            ("--target-agreement", target_agreement), ("--max-top1-drop", max_top1_drop),
                            ("--gelu-range", gelu_range != "histogram"), ("--bias-correction", bias_correction),
                            ("--smooth-gelu", smooth_gelu)):
            if value:
                applies = "INT8" if name == "--gelu-range" else "INT8 and FP8"
                raise click.UsageError(f"{name} applies to {applies} calibration, not --fp16")
    elif data is None:
        raise click.UsageError(f"{PRECISIONS[precision].label} calibration needs --data DIR (images like the ones the model will see)")
    options = CALIBRATION.options(
        precision, method=CALIBRATION.range_method(method, percentile), percentile=percentile, num_images=num_images,
        seed=seed, keep_fp=keep_fp, workers=workers, cache_dir=cache_dir, no_cache=no_cache, gelu_range=gelu_range,
        bias_correction=bias_correction, smooth_gelu=smooth_gelu, scale_search=scale_search,
        int8_layers=() if auto_int8 else tuple(int8_layers),
    )
    from ffx.calib.model_io import output_paths

    output_paths(model, output, precision)  # checked before the search and any image is read
    checks = {"tensorrt_check": not no_tensorrt_check, "tensorrt_backend": backend}
    from ffx.calib import calibrate
    from ffx.reporting import warnings_to

    search = choice = None
    # The search and the calibration after it read the same images: say each warning once.
    with warnings_to(_once(warn) if searching or choosing else warn):
        if searching:
            search = _search_keep_fp(model, data, options, target_agreement, max_top1_drop, point_estimate, held_out,
                                     held_out_images, quiet=as_json, choose_int8=auto_int8)
            options = options.replace(keep_fp=tuple(search["keep_fp"]),
                                      int8_layers=tuple(search.get("int8_layers", options.int8_layers)))
        elif choosing:
            options, choice = _choose_int8(model, data, options, held_out, held_out_images, quiet=as_json)
        report = calibrate(model, data, output, options, keep_fp_search=search, int8_choice=choice, **checks)
    # The whole command's time (the search's too), not only the final calibration's.
    report = dataclasses.replace(report, seconds=round(time.perf_counter() - started, 2))
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    _print_summary(report)


def _once(warn):
    """`warn`, saying each distinct message only the first time."""
    said = set()

    def once(message):
        if message not in said:
            said.add(message)
            warn(message)
    return once


def _search_keep_fp(model, data, options, target_agreement, max_top1_drop, point_estimate, held_out, held_out_images,
                    quiet, choose_int8=False):
    from ffx.calib.mixed_precision import Target, search_keep_fp

    target = Target(agreement=target_agreement, max_top1_drop=max_top1_drop, point_estimate=point_estimate)
    log = None if quiet else (lambda message: click.echo(f"search: {message}", err=True))
    try:
        return search_keep_fp(model, data, options, target, held_out_images, held_out, log=log, choose_int8=choose_int8)
    except InvalidOption as e:
        raise CALIBRATION.error(e, held_out_images="--held-out-images") from None


def _choose_int8(model, data, options, held_out, held_out_images, quiet):
    from ffx.calib.mixed_precision import int8_choice

    log = None if quiet else (lambda message: click.echo(f"int8-layers auto: {message}", err=True))
    try:
        return int8_choice(model, data, options, held_out_images, held_out, log=log)
    except InvalidOption as e:
        raise CALIBRATION.error(e, held_out_images="--held-out-images") from None


def _search_summary(search):
    """One sentence: the verdict, on what it was judged, and the measured figures with their intervals."""
    measured, images = search["measured"], search["held_out_images"]
    low, high = search["agreement_ci95"]
    figures = f"agreement {measured['agreement']:.2f}% (95% interval {low:.2f}-{high:.2f}%)"
    if search["top1_drop"] is not None:
        drop_low, drop_high = search["top1_drop_ci95"]
        figures += (f", top-1 {measured['top1']:.2f}% against FP32's {search['fp32_top1']:.2f}%: a drop of "
                    f"{search['top1_drop']:.2f} points (95% interval {drop_low:.2f} to {drop_high:.2f})")
    kept = (f"{len(search['keep_fp'])} layer{'s' if len(search['keep_fp']) != 1 else ''} in float "
            f"({100 * search['float_flops_share']:.1f}% of the FLOPs)" if search["keep_fp"] else "no layer in float")
    if search["judged_on"] == "point estimate":
        verdict = f"target met at the point estimate on {images:,} held-out images"
        needed = search["images_needed"]
        if needed is not None and images < needed:
            verdict += f" (too few to show it on the 95% bound: that takes at least {needed:,})"
    else:
        verdict = f"target met on the 95% bound on {images:,} held-out images"
    return f"{verdict}, with {kept}: {figures}"


def _print_summary(report):
    from ffx.calib.fp8 import INT8_METHOD

    if report.precision in ("int8", "fp8"):
        method = report.method + (f" {report.percentile}" if report.percentile is not None else "")
        kept = f", {len(report.kept_fp_layers)} kept in float ({', '.join(report.kept_fp_layers)})" if report.kept_fp_layers else ""
        int8 = (f" ({len(report.int8_layers)} of them in INT8, {INT8_METHOD} ranges: {', '.join(report.int8_layers)})"
                if report.int8_layers else "")
        click.echo(
            f"{report.output}: {'INT8' if report.precision == 'int8' else 'FP8 (E4M3)'} Q/DQ, {method} ranges from {report.num_images} images "
            f"({report.skipped_images} skipped), {len(report.quantized_layers)} layers quantized{int8}{kept}"
        )
    else:
        source = f"overflow preflight on {report.num_images} images ({report.skipped_images} skipped)" if report.num_images else "no overflow preflight"
        kept = f"{len(report.fp32_tensors)} tensors kept in float32" if report.fp32_tensors else "no tensor kept in float32"
        click.echo(f"{report.output}: FP16 with float32 inputs/outputs, {source}, {kept}")
    search = getattr(report, "keep_fp_search", None)
    if search:
        click.echo(_search_summary(search))
        if search["held_out_source"].endswith(UNUSED_CALIBRATION_IMAGES):
            click.echo("note: the held-out images come from --data; if the model was trained on them, it agrees less on "
                       "new images: measure with --held-out on images it never saw, or check with `ffx verify`")
    ort = report.onnxruntime
    if ort["images"]:
        agreeing = round(ort["top1_agreement"] * ort["images"])
        click.echo(
            f"onnxruntime: top-1 agrees with FP32 on {agreeing}/{ort['images']} calibration images "
            f"(max logit difference {ort['max_abs_logit_diff']:.3g})"
        )
    else:
        click.echo("onnxruntime: loads and runs (no images to compare on)")
    trt = report.tensorrt
    if trt["status"] == "built":
        click.echo(f"{trt['backend']}: parsed and built ({trt['seconds']:.1f} s)")
    else:
        click.echo(f"TensorRT check skipped: {trt['reason']}")
    click.echo(f"manifest {report.manifest}; {Path(report.output).name} sha256 {report.sha256} "
               f"({report.seconds:.1f} s, statistics cache: {report.cache})")
