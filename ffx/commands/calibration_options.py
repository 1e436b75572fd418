"""The calibration option group: the flags that fill a `CalibrationOptions`, declared once.

`ffx calibrate`, `ffx sensitivity` and `ffx build-engine` (there behind a `--calib-` prefix) take
the same calibration settings. Each declares a `CalibrationOptionGroup` and decorates its command
with it; the group owns the flags' names, help, defaults and checks, and the flag each
`CalibrationOptions` field is named by in an error. Like Polygraphy's argument groups
(tools/args/): a concern declares its flags once, commands subscribe to it.

    CALIBRATION = CalibrationOptionGroup(prefix="calib-", images="images")

    @click.command("build-engine")
    @CALIBRATION                       # --calib-images --calib-method --calib-percentile ...
    def command(..., num_images, method, percentile, seed, keep_fp, ...):
        ...
        except InvalidOption as e:
            raise CALIBRATION.error(e) from None

Each flag's parameter is named after its CalibrationOptions field (`num_images`, `method`, ...),
whatever the flag is called.
"""

import click
from click.core import ParameterSource

from ffx.calib.options import DEFAULT_METHOD, DEFAULT_NUM_IMAGES, DEFAULT_PERCENTILE, CalibrationOptions
from ffx.calib.precisions import PRECISIONS
from ffx.calib.ranges import METHODS
from ffx.cli import WORKERS, FiniteFloat
from ffx.commands.outlier_options import outlier_options
from ffx.errors import FfxError, InvalidOption

# The flags the statistics part adds, by the CalibrationOptions field they set.
STATISTICS_FLAGS = {"gelu_range": "--gelu-range", "bias_correction": "--bias-correction", "smooth_gelu": "--smooth-gelu",
                    "cache_dir": "--cache-dir", "workers": "--workers"}
SELECTION_FIELDS = ("num_images", "method", "percentile", "seed", "keep_fp")


class CalibrationOptionGroup:
    """The calibration flags of one command.

    Args:
        prefix: put before every flag of the image-selection part ("" or "calib-").
        images: the name of the calibration-image count after the prefix: `--num-images` in
            calibrate, `--calib-images` in sensitivity (whose --num-images counts held-out images)
            and build-engine.
        keep_fp: whether the command takes --keep-fp (sensitivity measures every layer instead).
        statistics: whether the command takes the activation-statistics flags (the outlier options,
            --cache-dir, --no-cache, --workers), added where `statistics_options` decorates it.
        flags: the command's own flags for other CalibrationOptions fields (precision ...), for errors.
    """

    def __init__(self, prefix="", images="num-images", keep_fp=True, statistics=False, flags=None):
        self.prefix = prefix
        self.keep_fp = keep_fp
        self.statistics = statistics
        self.flags = {"num_images": f"--{prefix}{images}", "method": f"--{prefix}method",
                      "percentile": f"--{prefix}percentile", "seed": f"--{prefix}seed"}
        if keep_fp:
            self.flags["keep_fp"] = f"--{prefix}keep-fp"
        if statistics:
            self.flags.update(STATISTICS_FLAGS)
        self.flags.update(flags or {})

    def __call__(self, command):
        """Add the image-selection flags: the image count, --method, --percentile, --seed, --keep-fp."""
        fp8 = PRECISIONS["fp8"]
        options = [
            click.option(self.flags["num_images"], "num_images", type=click.IntRange(min=1), default=DEFAULT_NUM_IMAGES,
                         show_default=True, help="Images to calibrate on: stratified across classes, seeded (the same "
                                                 "images reuse the cached activation statistics)."),
            click.option(self.flags["method"], "method", type=click.Choice(METHODS),
                         help=f"Range method. INT8: default {DEFAULT_METHOD} (TensorRT's KL-divergence calibration). "
                              f"FP8: {', '.join(fp8.methods)}, default {fp8.default_method}."),
            click.option(self.flags["percentile"], "percentile", type=FiniteFloat(min=0, max=100, min_open=True),
                         help=f"Percentile of |x| for {self.flags['method']} percentile (default {DEFAULT_PERCENTILE})."),
            click.option(self.flags["seed"], "seed", type=click.IntRange(min=0), default=0, show_default=True,
                         help="Seed of the calibration image selection."),
        ]
        if self.keep_fp:
            options.append(click.option(
                self.flags["keep_fp"], "keep_fp", multiple=True, metavar="LAYERS",
                help="Layers to leave unquantized, as named in the model: patch_embed, head, blocks.N, blocks.N.mlp1, "
                     "blocks.N.mlp2.fc1 (comma-separated or repeated); `none` for none. Default: none for INT8, "
                     "patch_embed,head for FP8."))
        for option in reversed(options):
            command = option(command)
        return command

    def statistics_options(self, command):
        """Add the activation-statistics flags: the outlier options, --cache-dir, --no-cache, --workers."""
        options = [
            outlier_options,
            click.option("--cache-dir", type=click.Path(file_okay=False),
                         help="Where activation statistics are cached (default ~/.cache/ffx/calib, or "
                              "$FFX_CACHE_DIR/calib)."),
            click.option("--no-cache", is_flag=True, help="Neither read nor write cached activation statistics."),
            click.option("--workers", type=WORKERS, default=2, show_default=True,
                         help="Image decoding processes (0: decode in this process)."),
        ]
        for option in reversed(options):
            command = option(command)
        return command

    def given(self, ctx):
        """The image-selection flags given on the command line (not left at their defaults)."""
        return [flag for field, flag in self.flags.items()
                if field in SELECTION_FIELDS and ctx.get_parameter_source(field) is ParameterSource.COMMANDLINE]

    def range_method(self, method, percentile):
        """The range method to calibrate with: a percentile alone asks for the percentile method; a
        UsageError when it comes with another method."""
        if percentile is not None and method not in (None, "percentile"):
            raise click.UsageError(f"{self.flags['percentile']} applies to {self.flags['method']} percentile, not {method}")
        return "percentile" if percentile is not None else method

    def options(self, precision, percentile=None, keep_fp=(), no_cache=False, **fields):
        """The CalibrationOptions these flags' values make (`no_cache` for use_cache; no percentile:
        the default one; no --keep-fp: the precision's default), or the error naming the flag."""
        try:
            return CalibrationOptions(precision=precision,
                                      percentile=DEFAULT_PERCENTILE if percentile is None else percentile,
                                      keep_fp=tuple(keep_fp) or None, use_cache=not no_cache, **fields)
        except InvalidOption as e:
            raise self.error(e) from None

    def error(self, error, **flags):
        """An FfxError naming the flag for an InvalidOption about a field (`flags`: more fields' flags)."""
        flag = {**self.flags, **flags}.get(error.option, error.option)
        return FfxError(f"{flag}: {error}")
