"""What a calibration is asked to do, validated once, with the defaults in one place.

The command builds one `CalibrationOptions` from its flags and passes it down; the library
never re-reads keyword arguments. A wrong value raises InvalidOption naming the field, not a
CLI flag: the command that set the field maps it to its flag (ffx/commands/calibration_options.py).
"""

import dataclasses
from pathlib import Path

from ffx.calib.outliers import BIAS_CORRECTIONS, GELU_RANGES
from ffx.calib.precisions import PRECISIONS
from ffx.calib.ranges import METHODS
from ffx.calib.statistics import default_cache_dir
from ffx.errors import InvalidOption

DEFAULT_METHOD = "entropy"
DEFAULT_PERCENTILE = 99.99
DEFAULT_NUM_IMAGES = 512


@dataclasses.dataclass(frozen=True)
class CalibrationOptions:
    """Settings of one INT8 or FP8 calibration or FP16 conversion.

    Attributes:
        precision: what to write, a key of `precisions.PRECISIONS` ("int8", "fp8", "fp16").
        method: range method, one of the precision's (`ranges.METHODS` for INT8); None: its default.
        percentile: |x| percentile for method "percentile" (ignored otherwise).
        num_images: calibration images to choose (stratified, seeded).
        seed: seed of the image choice.
        keep_fp: layers left unquantized, as users name them (``head``, ``blocks.3.mlp2``); None: the
            precision's default (INT8: none; FP8: the first and last layers, patch_embed and head);
            ``("none",)``: none at all.
        workers: image decoding processes (0: decode in this process).
        cache_dir: where activation statistics are cached (None: the default cache folder).
        use_cache: read and write cached statistics at all.
        gelu_range: "histogram" (the method's threshold) or "output" (post-GELU tensors: the
            threshold with the least error in the layer's output; see calib/outliers.py).
        bias_correction: None, "channel" or "position": subtract the mean INT8 or FP8 output
            error from each quantized MatMul's bias.
        smooth_gelu: centre and even out the channels of post-GELU tensors with outlier channels
            before quantizing them, exactly compensated in fc2 (see calib/smoothing.py).
        scale_search: FP8 only: search each activation scale over one octave above its threshold by
            the layer's output error (see calib/fp8.py).
        int8_layers: FP8 only: layers written in INT8 instead of FP8, named as for `keep_fp`
            (``("none",)`` or empty: none; see calib/fp8.py).
    """

    method: str | None = None
    percentile: float = DEFAULT_PERCENTILE
    num_images: int = DEFAULT_NUM_IMAGES
    seed: int = 0
    keep_fp: tuple | None = None
    workers: int = 2
    cache_dir: str | None = None
    use_cache: bool = True
    gelu_range: str = "histogram"
    bias_correction: str | None = None
    smooth_gelu: bool = False
    precision: str = "int8"
    scale_search: bool = False
    int8_layers: tuple = ()

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise InvalidOption("precision", f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        row = PRECISIONS[self.precision]
        if self.method is None:
            object.__setattr__(self, "method", row.default_method or DEFAULT_METHOD)
        if self.method not in METHODS:
            raise InvalidOption("method", f"unknown calibration method {self.method!r}; choose one of {', '.join(METHODS)}")
        if row.methods and self.method not in row.methods:
            raise InvalidOption("method", f"{row.label} calibration takes the range methods {', '.join(row.methods)}, "
                                f"not {self.method}")
        if not 0 < self.percentile <= 100:
            raise InvalidOption("percentile", f"the percentile must be in (0, 100], got {self.percentile}")
        if self.num_images < 1:
            raise InvalidOption("num_images", f"the number of calibration images must be at least 1, got {self.num_images}")
        if self.seed < 0:
            raise InvalidOption("seed", f"the seed cannot be negative, got {self.seed}")
        if self.workers < 0:
            raise InvalidOption("workers", f"the number of decoding workers cannot be negative, got {self.workers}")
        if self.gelu_range not in GELU_RANGES:
            raise InvalidOption("gelu_range", f"unknown post-GELU range {self.gelu_range!r}; choose one of {', '.join(GELU_RANGES)}")
        if self.bias_correction not in (None, *BIAS_CORRECTIONS):
            raise InvalidOption("bias_correction", f"unknown bias correction {self.bias_correction!r}; choose one of {', '.join(BIAS_CORRECTIONS)}")
        if self.precision != "int8" and self.gelu_range != "histogram":  # models int8 rounding (calib/outliers.py)
            raise InvalidOption("gelu_range", f"applies to INT8 calibration, not {row.label}")
        if self.precision not in ("int8", "fp8") and self.bias_correction:
            raise InvalidOption("bias_correction", f"applies to INT8 and FP8 calibration, not {row.label}")
        if self.scale_search and self.precision != "fp8":
            raise InvalidOption("scale_search", f"applies to FP8 calibration, not {row.label}")
        int8_layers = tuple(self.int8_layers or ())
        if [str(name).strip().lower() for name in int8_layers] == ["none"]:
            int8_layers = ()
        object.__setattr__(self, "int8_layers", int8_layers)
        if int8_layers and self.precision != "fp8":
            raise InvalidOption("int8_layers", f"applies to FP8 calibration (INT8 layers in an FP8 graph), not {row.label}")
        if self.keep_fp is None and self.precision != "fp8":  # FP8's default depends on the graph (calib/fp8.py)
            object.__setattr__(self, "keep_fp", ())
        if self.keep_fp is not None:
            keep_fp = tuple(self.keep_fp)
            object.__setattr__(self, "keep_fp", () if [str(k).strip().lower() for k in keep_fp] == ["none"] else keep_fp)

    @property
    def statistics_cache(self):
        """The statistics cache folder, or None when caching is off."""
        if not self.use_cache:
            return None
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

