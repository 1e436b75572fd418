"""The INT8 outlier options `ffx calibrate` and `ffx sensitivity` share (calib/outliers.py,
calib/smoothing.py): each off by default, each measured in BENCHMARKS.md section 6."""

import click

from ffx.calib.outliers import BIAS_CORRECTIONS, GELU_RANGES


def outlier_options(command):
    """Add --gelu-range, --bias-correction and --smooth-gelu to a click command."""
    options = [
        click.option("--gelu-range", type=click.Choice(GELU_RANGES), default="histogram", show_default=True,
                     help="Ranges of the post-GELU tensors (each fc2's input): the --method's, or 'output': the one "
                          "with the least error in the layer's output."),
        click.option("--bias-correction", type=click.Choice(BIAS_CORRECTIONS),
                     help="Subtract each quantized MatMul's mean INT8 or FP8 output error from its bias, per output channel "
                          "or per output position (token and channel)."),
        click.option("--smooth-gelu", is_flag=True,
                     help="Centre and even out the channels of post-GELU tensors that have outlier channels before "
                          "quantizing them, compensated exactly in fc2's weight and bias (two pointwise nodes per "
                          "smoothed tensor, which TensorRT fuses)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command
