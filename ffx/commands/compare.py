import click

from ffx.calib.compare import DEFAULT_IMAGES
from ffx.cli import InputPath, print_json
from ffx.commands.output_options import json_option


@click.command("compare")
@click.argument("reference", type=InputPath(dir_okay=False))
@click.argument("candidate", type=InputPath(dir_okay=False))
@click.option("--data", required=True, type=InputPath(), help="Images to run both graphs on (a folder or list file, as for `ffx verify`).")
@click.option("--num-images", type=click.IntRange(min=1), default=DEFAULT_IMAGES, show_default=True, help="Images to compare on (a seeded, class-stratified sample).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the image sample.")
@json_option()
def command(reference, candidate, data, num_images, seed, as_json):
    """Where a converted graph's error enters: REFERENCE (the FP32 ONNX) and CANDIDATE (its INT8
    or FP8 Q/DQ, or FP16 conversion) block by block on the same images.

    For the embedded tokens, the output of every block's feature MLP (mlp1) and token MLP (mlp2)
    and the logits: the relative L2 error against FP32, the logit-style SNR, the worst image's
    cosine similarity and the growth of the error from the previous point. A point whose growth
    stands out is where to look (`ffx sensitivity` ranks the layers themselves).

    \b
    Examples:
      ffx compare model.onnx model.int8.onnx --data val/
      ffx compare model.onnx model.fp16.onnx --data val/ --num-images 500 --json
    """
    from ffx.calib.compare import compare_layerwise

    report = compare_layerwise(reference, candidate, data, num_images, seed)
    if as_json:
        print_json(report.to_dict())
        return
    click.echo(f"{report.candidate} vs {report.reference} on {report.images} images: "
               f"top-1 agreement {report.agreement:.2f}%")
    width = max(len(row.point) for row in report.points)
    click.echo(f"  {'point':<{width}}  {'rel. error':>10}  {'SNR dB':>7}  {'min cosine':>10}  {'growth':>6}")
    for row in report.points:
        growth = f"x{row.growth:.2f}" if row.growth is not None else ""
        click.echo(f"  {row.point:<{width}}  {row.relative_error:10.2e}  {row.snr_db:7.1f}  {row.cosine_min:10.6f}  {growth:>6}")
