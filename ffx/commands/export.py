import dataclasses
import sys

import click

from ffx.cli import InputPath, print_json, warn
from ffx.commands.output_options import json_option, output_file_option
from ffx.errors import FfxError
from ffx.export.limits import MAX_OPSET, MIN_OPSET
from ffx.metadata import MAX_CLASSES
from ffx.runtime.engines.checkpoint_engine import missing_export_packages_message


def require_export_packages():
    """FfxError naming what to install when exporting a checkpoint is impossible here (a plain
    `pip install ffx` leaves torch, onnxscript and safetensors out; folding the normalization into
    an existing ONNX, --from-onnx, runs without them)."""
    if message := missing_export_packages_message("ffx export"):
        raise FfxError(message)


@click.command("export")
@click.option("--arch", help="Registered architecture: ff_tiny, ff_base, ff_large (or linear_*). Inferred from the checkpoint when omitted.")
@click.option("--checkpoint", type=InputPath(dir_okay=False), help="DeiT training checkpoint, state dict or .safetensors.")
@click.option("--ema", is_flag=True, help="Use the checkpoint's model_ema weights instead of model.")
@click.option("--num-classes", type=click.IntRange(1, MAX_CLASSES), help="Classifier size when it differs from the architecture's.")
@click.option("--opset", type=click.IntRange(min=MIN_OPSET, max=MAX_OPSET), default=MIN_OPSET, show_default=True, help="ONNX opset (>= 17 keeps LayerNorm fused).")
@click.option("--check-images", type=InputPath(file_okay=False), help="Also compare ONNX Runtime and PyTorch on up to 32 real images from this folder.")
@click.option("--fold-normalization", is_flag=True, help="Fold mean/std into the first layer: the model takes RGB in [0, 1] (see --input-scale). Needed by DeepStream.")
@click.option("--input-scale", type=click.Choice(["1", "255"]), default="1", show_default=True, help="With --fold-normalization: the folded model takes RGB in [0, 1] or [0, 255].")
@click.option("--from-onnx", type=InputPath(dir_okay=False), help="With --fold-normalization: fold an existing FP32 ffx ONNX instead of exporting a checkpoint.")
@output_file_option("Where to write the ONNX model.")
@json_option()
def command(arch, checkpoint, ema, num_classes, opset, check_images, fold_normalization, input_scale, from_onnx,
            output, as_json):
    """Export a feed-forward-only ViT to ONNX, with metadata and a parity check.

    The graph has a dynamic batch and a fixed image size, carries its preprocessing and class
    names, and is written only if ONNX Runtime reproduces PyTorch (exit 1 otherwise).

    \b
    Examples:
      ffx export --checkpoint linear-tiny-checkpoint.pth -o tiny.onnx
      ffx export --arch ff_base --checkpoint ft.pth --num-classes 10 -o base10.onnx
      ffx export --arch ff_tiny -o random_tiny.onnx --json     # random weights, to try the flow
      ffx export --checkpoint model.pth --fold-normalization -o folded.onnx   # takes RGB in [0, 1]
      ffx export --from-onnx model.onnx --fold-normalization --input-scale 255 -o folded255.onnx
    """
    from ffx.artifacts import check_output_path

    if ema and not checkpoint:
        raise click.UsageError("--ema needs --checkpoint")
    if input_scale != "1" and not fold_normalization:
        raise click.UsageError("--input-scale needs --fold-normalization")
    check_output_path(output)  # before the checkpoint is read (the command's inputs are recorded)
    if from_onnx:
        _fold_existing_onnx(from_onnx, fold_normalization, float(input_scale), (arch, checkpoint, ema, num_classes, check_images), output, as_json)
        return
    require_export_packages()
    from ffx.export.checkpoint import resolve_model
    from ffx.export.onnx_export import export_onnx

    if not as_json and sys.stderr.isatty():  # scripts get one line per outcome
        click.echo(f"exporting {checkpoint or arch}: load, trace, ONNX Runtime parity check ...", err=True)
    resolved = resolve_model(arch, checkpoint, use_ema=ema, num_classes=num_classes)
    # Warnings only once the arguments made a network: a usage error comes alone.
    if not checkpoint:
        warn("no --checkpoint: exporting RANDOM weights (fine for trying the pipeline, useless for predictions)")
    if checkpoint and not resolved.preprocess_recorded:
        p = resolved.preprocess
        warn(f"{checkpoint} records no preprocessing; assuming the ImageNet evaluation transform (resize {p.resize} "
             f"{p.interpolation}, center crop {p.input_size[1]}x{p.input_size[2]}, mean {list(p.mean)}, std {list(p.std)}). "
             "If the model was trained otherwise, save it in the checkpoint's `ffx` entry as `preprocess`")
    report = export_onnx(resolved, output, opset=opset, source_path=checkpoint, check_images_dir=check_images,
                         fold_normalization=fold_normalization, input_scale=float(input_scale))
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    click.echo(
        f"{report.output}: {report.arch}, {report.parameters:,} parameters, opset {report.opset}, "
        f"input {report.input_shape}"
    )
    checked = "random inputs" + (f" and {report.check_images} images" if report.check_images else "")
    click.echo(f"parity vs PyTorch on {checked}: max abs diff {report.max_abs_diff:.2e}, max rel diff {report.max_rel_diff:.2e}")
    if fold_normalization:
        click.echo(f"normalization folded into the first layer: the model takes RGB in [0, {input_scale}]")
    click.echo(f"ONNX sha256 {report.sha256}  ({report.seconds:.1f} s)")


def _fold_existing_onnx(source, fold_normalization, input_scale, checkpoint_options, output, as_json):
    from ffx.export.normalization import fold_onnx_file

    if not fold_normalization:
        raise click.UsageError("--from-onnx needs --fold-normalization (it is the only change made to an existing ONNX)")
    if any(checkpoint_options):
        raise click.UsageError("--from-onnx takes no --arch/--checkpoint/--ema/--num-classes/--check-images")
    report = fold_onnx_file(source, output, input_scale=input_scale)
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    click.echo(f"{report.output}: {report.source} with its normalization folded; the model takes RGB in [0, {input_scale:g}]")
    click.echo(f"parity vs the original on normalized inputs: max abs diff {report.max_abs_diff:.2e} "
               f"(tolerance {report.tolerance:.2e}); ONNX sha256 {report.sha256}")
