import click

from ffx.cli import InputPath, print_json, warn
from ffx.calib.sensitivity import DEFAULT_HELD_OUT_IMAGES
from ffx.commands.calibration_options import CalibrationOptionGroup
from ffx.commands.output_options import json_option
from ffx.fidelity import error_power, snr_of

# Suggest --smooth-gelu when one post-GELU layer carries at least this share of the INT8 error.
SMOOTHING_HINT_SHARE = 0.3

# --held-out-images counts the held-out images, as on `ffx calibrate`; the calibration images are
# --calib-images (calibrate's --num-images). --num-images, its old name here, still works and warns.
CALIBRATION = CalibrationOptionGroup(images="calib-images", keep_fp=False, statistics=True, flags={"precision": "--fp8"})


@click.command("sensitivity")
@click.argument("model", type=InputPath(dir_okay=False))
@click.option("--data", required=True, type=InputPath(), help="Calibration images, as for `ffx calibrate --data`; the held-out images are the others (or --held-out).")
@click.option("--held-out-images", type=click.IntRange(min=1), help=f"Held-out images every variant is measured on [default: {DEFAULT_HELD_OUT_IMAGES}].")
@click.option("--num-images", "old_held_out_images", type=click.IntRange(min=1), hidden=True, help="The old name of --held-out-images.")
@click.option("--held-out", type=InputPath(), help="Measure on these images instead of the rest of --data.")
@CALIBRATION
@click.option("--fp8", is_flag=True, help="Rank the layers by what FP8 (E4M3) costs instead of INT8, as `ffx calibrate --fp8` writes them.")
@CALIBRATION.statistics_options
@click.option("--plot", type=click.Path(dir_okay=False), help="Also draw the ranking into this image file (.png, .svg, .pdf; needs matplotlib).")
@json_option()
def command(model, data, held_out_images, old_held_out_images, held_out, num_images, method, fp8, percentile, seed, gelu_range, bias_correction,
            smooth_gelu, cache_dir, no_cache, workers, plot, as_json):
    """Which layers cost INT8 accuracy: every quantizable layer quantized alone and kept in
    float alone, against FP32 on held-out images.

    For each layer (named as --keep-fp takes them): top-1 agreement with FP32, mean logit
    cosine and logit SNR with only that layer in INT8 and with every layer but it in INT8, and
    its share of the model's matrix-product FLOPs. Layers are ranked most harmful first (lowest
    SNR quantized alone). The INT8 graph is the one `ffx calibrate` writes with the same options,
    from the same cached statistics; everything runs on onnxruntime (CPU).

    \b
    Examples:
      ffx sensitivity model.onnx --data train/
      ffx sensitivity model.onnx --data calib/ --held-out val/ --held-out-images 1000 --plot sens.png
      ffx sensitivity model.onnx --data train/ --json > sensitivity.json
      ffx sensitivity model.onnx --data train/ --fp8
    """
    from ffx.calib.sensitivity import layer_sensitivity

    if old_held_out_images is not None:
        if held_out_images is not None and held_out_images != old_held_out_images:
            raise click.UsageError("--num-images is the old name of --held-out-images: give one of them")
        warn("--num-images on `ffx sensitivity` counts held-out images: it is now --held-out-images "
             "(the calibration images are --calib-images, calibrate's --num-images)")
        held_out_images = old_held_out_images
    if held_out_images is None:
        held_out_images = DEFAULT_HELD_OUT_IMAGES
    # Unlike calibrate, a --percentile without --method percentile is not refused: the method's own range stands.
    options = CALIBRATION.options("fp8" if fp8 else "int8", method=method, percentile=percentile, num_images=num_images,
                                  seed=seed, workers=workers, cache_dir=cache_dir, no_cache=no_cache,
                                  gelu_range=gelu_range, bias_correction=bias_correction, smooth_gelu=smooth_gelu)

    if plot:
        from ffx.calib.sensitivity_plot import check_plot_path

        check_plot_path(plot)

    report = layer_sensitivity(model, data, options, held_out_images, held_out)
    if plot:
        from ffx.calib.sensitivity_plot import draw_sensitivity

        draw_sensitivity(report, plot)
    if as_json:
        print_json(report.to_dict())
        return
    _print_table(report, "FP8" if fp8 else "INT8")
    top = report.layers[0]
    if not smooth_gelu and top.name.endswith(".fc2") and top.error_share >= SMOOTHING_HINT_SHARE:
        click.echo(f"hint: {top.name} alone carries {100 * top.error_share:.0f}% of the error and its input is a "
                   "post-GELU tensor: try --smooth-gelu (here and in `ffx calibrate`)")
    if plot:
        click.echo(f"plot written to {plot}")


def _remaining_db(report, removed_share):
    """The all-INT8 SNR with `removed_share` of the layers' summed error power taken away."""
    return snr_of(error_power(report.all_int8.snr_db) - removed_share * error_power(report.predicted_snr_db))


def _print_table(report, label="INT8"):
    base = report.all_int8
    top1 = f", top-1 {base.top1:.2f}% (FP32 {report.fp32_top1:.2f}%)" if base.top1 is not None else ""
    click.echo(f"{report.model}: {report.method} {label} from {report.calibration_images} calibration images "
               f"(statistics cache: {report.cache}); measured on {report.held_out_images} held-out images "
               f"from {report.held_out_source}")
    click.echo(f"all layers {label}: agreement {base.agreement:.2f}%, logit cosine {base.cosine:.5f}, "
               f"SNR {base.snr_db:.1f} dB{top1}")
    width = max(len(row.name) for row in report.layers)
    click.echo(f"{'rank':>4}  {'layer':<{width}}  {'FLOPs':>6}  {label + ' alone: agree':>17} {'cosine':>8} {'SNR dB':>7}"
               f" {'error share':>11}  {'float alone: agree':>18} {'SNR dB':>7}")
    for rank, row in enumerate(report.layers, 1):
        q, f = row.quantized_alone, row.float_alone
        click.echo(f"{rank:>4}  {row.name:<{width}}  {100 * row.flops_share:5.1f}%  {q.agreement:16.2f}% {q.cosine:8.5f} "
                   f"{q.snr_db:7.1f} {100 * row.error_share:10.1f}%  {f.agreement:17.2f}% {f.snr_db:7.1f}")
    if report.predicted_snr_db is not None:
        top = sum(row.error_share for row in report.layers[:3])
        click.echo(f"error share: each layer's error alone, of their sum; the sum predicts {report.predicted_snr_db:.1f} dB "
                   f"for all {label} (measured {base.snr_db:.1f} dB). The top 3 layers carry {100 * top:.0f}% of it: keeping "
                   f"them in float leaves about {_remaining_db(report, top):.1f} dB.")
    click.echo(f"({report.seconds:.1f} s) keep the top layers in float with `ffx calibrate --keep-fp NAME,...`, or let "
               "`ffx calibrate --target-agreement PCT` choose them")
