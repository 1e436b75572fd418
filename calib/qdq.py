"""FP32 ONNX -> a Q/DQ ONNX for TensorRT's explicit quantization: the calibration every Q/DQ
precision shares (INT8 in calib/int8.py, FP8 E4M3 in calib/fp8.py).

One flow for all of them: choose the calibration images, collect every layer's input histogram on
the FP32 graph (one statistics cache entry serves every precision, method and --keep-fp), choose a
clipping threshold per activation tensor, insert Q/DQ pairs on the inputs of Conv, MatMul and Gemm
(LayerNormalization, GELU, residual Adds and biases stay float), check the graph with onnxruntime
and TensorRT, write it with its manifest. What differs between precisions is a `QdqRecipe`: how
thresholds are chosen, how the Q/DQ nodes are written, and what the manifest says about them.
"""

import dataclasses
import time

import onnx

from ffx import __version__
from ffx.calib.conversion import Checks, ConversionReport, check_and_write, choose_images, image_statistics, report_fields
from ffx.calib.layers import network_layers, resolve_layer_selection
from ffx.calib.model_io import load_source_model, output_paths
from ffx.calib.options import CalibrationOptions
from ffx.calib.outliers import correct_biases
from ffx.calib.ranges import activation_threshold
from ffx.calib.smoothing import SMOOTHING_ALPHA, SMOOTHING_SPREAD, smooth_post_gelu, unsmooth
from ffx.calib.statistics import HISTOGRAM_BINS
from ffx.calibration_manifest import CalibrationManifest, ManifestInput
from ffx.errors import FfxError, InvalidOption

QUANTIZED_OP_TYPES = ["Conv", "MatMul", "Gemm"]
# Below this top-1 agreement with FP32 on the check images, the result is suspicious: say so.
AGREEMENT_WARNING = 0.9


@dataclasses.dataclass
class CalibrationReport(ConversionReport):
    percentile: float | None
    quantized_layers: list
    kept_fp_layers: list
    keep_fp_search: dict | None  # how --target-agreement chose kept_fp_layers (None: given by the user)
    int8_layers: list = dataclasses.field(default_factory=list)  # FP8: the layers written in INT8 instead
    int8_choice: dict | None = None  # FP8: how --int8-layers auto chose int8_layers without a target


class QdqRecipe:
    """What makes one Q/DQ precision. Subclasses set the three names and write the four methods."""

    precision = ""  # "int8", "fp8": manifests, metadata, the default output name MODEL.<precision>.onnx
    label = ""  # "INT8", "FP8" in messages
    advice = ""  # appended to the warning about a low agreement with FP32
    int8_layers = ()  # names of the layers written in INT8 instead (an FP8 recipe's `--int8-layers`)

    def check(self):
        """FfxError when this Python cannot write the precision; called before any image is read."""

    def ranges(self, source, layers, stats, items, options):
        """({activation tensor: |x| threshold}, {Layer: bias correction}) of the quantized `layers`."""
        raise NotImplementedError

    def insert(self, source, thresholds, excluded_nodes):
        """The Q/DQ ModelProto of `source` with the activations of `thresholds` quantized and the
        Conv/MatMul/Gemm nodes named in `excluded_nodes` left in float."""
        raise NotImplementedError

    def params(self, source, options):
        """The manifest's `params` entries proper to this precision."""
        return {}

    def default_keep_fp(self, layers):
        """The layers (names) kept in float when the options name none (`keep_fp` None)."""
        return []

    def configured(self, source, options):
        """The recipe that writes what `options` ask of `source` beyond the precision (FP8: the
        layers it writes in INT8)."""
        return self


def calibrate_qdq(recipe, onnx_path, data, output=None, options=None, *, progress=None, tensorrt_check=True,
                  tensorrt_backend="auto", keep_fp_search=None, int8_choice=None):
    """Calibrate an FP32 ffx model to a Q/DQ ONNX of `recipe`'s precision (see `calibrate_int8`)."""
    started = time.perf_counter()
    options = options if options is not None else CalibrationOptions(precision=recipe.precision)
    if options.precision != recipe.precision:
        raise InvalidOption("precision", f"{recipe.label} calibration was given options for {options.precision}; "
                            f"make them with CalibrationOptions(precision={recipe.precision!r})")
    recipe.check()
    original = source = load_source_model(onnx_path)
    output, manifest_path = output_paths(source.path, output, recipe.precision, [data])
    keep_fp = keep_fp_selection(recipe, source, options)
    _, kept = quantization_plan(source, keep_fp)  # a bad --keep-fp fails before any image is read
    recipe = recipe.configured(source, options)  # a bad --int8-layers too
    check_int8_layers_quantized(recipe, kept)
    source, images, stats, smoothed = calibration_statistics(source, data, options, progress)
    layers, kept = quantization_plan(source, keep_fp)
    quantized = [layer for layer in layers if layer not in kept]
    thresholds, corrections = recipe.ranges(source, quantized, stats, images.items, options)
    qdq_model = recipe.insert(source, thresholds, [layer.node for layer in kept])
    correct_biases(qdq_model, source, corrections)
    # A layer kept in float has nothing rounded to smooth for: its Add and Mul would only cost time.
    kept_names = {layer.name for layer in kept}
    unsmooth(qdq_model, original.model, [tensor for tensor in smoothed if tensor.layer in kept_names])
    smoothed = [tensor for tensor in smoothed if tensor.layer not in kept_names]
    scales = _activation_scales(qdq_model)

    method = options.method
    params = qdq_params(recipe, source, options, [layer.name for layer in kept], smoothed,
                        default_keep_fp=options.keep_fp is None)
    manifest = CalibrationManifest(
        ffx_version=__version__,
        precision=recipe.precision,
        output=output.name,
        input=ManifestInput(source.path.name, source.sha256),
        params=params,
        preprocess=source.preprocess.to_dict(),
        data={
            "path": images.data_path,
            "layout": images.dataset.layout,
            "labels": images.dataset.label_source,
            "available_images": len(images.dataset.items),
        },
        image_list_sha256=images.list_sha256,
        images=images.manifest_entries(),
        images_used=stats.images_used,
        skipped=stats.skipped,
        layers=[_layer_entry(layer, stats, thresholds, scales, layer_precision(recipe, layer)) for layer in layers],
        keep_fp_search=keep_fp_search,
        int8_choice=int8_choice,
    )
    calibration = {
        "method": method,
        "params": params,
        "image_list_sha256": images.list_sha256,
        "images_used": stats.images_used,
    }
    checks = Checks(recipe.label, AGREEMENT_WARNING, recipe.advice, tensorrt_check, tensorrt_backend)
    model_data, ort_check, trt_check = check_and_write(
        qdq_model, source, output, manifest_path, manifest, calibration, images, stats, checks)
    return CalibrationReport(
        **report_fields(output, manifest_path, model_data, source, images, stats, ort_check, trt_check, started),
        precision=recipe.precision,
        method=method,
        percentile=params["percentile"],
        quantized_layers=[layer.name for layer in quantized],
        kept_fp_layers=[layer.name for layer in kept],
        keep_fp_search=keep_fp_search,
        int8_layers=list(recipe.int8_layers),
        int8_choice=int8_choice,
    )


def keep_fp_selection(recipe, source, options):
    """The --keep-fp selection a `recipe` calibration of `source` with `options` uses: the options'
    own, or the recipe's default when they name none."""
    if options.keep_fp is not None:
        return options.keep_fp
    return tuple(recipe.default_keep_fp(network_layers(source.model, source.metadata)))


def check_int8_layers_quantized(recipe, kept):
    """FfxError when a layer to write in INT8 is also one of the `kept` in float."""
    both = [layer.name for layer in kept if layer.name in recipe.int8_layers]
    if both:
        raise FfxError(f"--int8-layers {','.join(both)}: kept in float by --keep-fp {','.join(layer.name for layer in kept)}"
                       "; leave it out of one of them")


def qdq_params(recipe, source, options, kept_names, smoothed=(), default_keep_fp=False):
    """The manifest's `params` of a `recipe` calibration of `source` with `options` that keeps
    `kept_names` in float (`default_keep_fp`: the recipe's default choice) and smoothed the
    `smoothed` post-GELU tensors: what a manifest records and what reusing a graph compares."""
    method = options.method
    params = {
        "method": method,
        "percentile": options.percentile if method == "percentile" else None,
        "num_images": options.num_images,
        "seed": options.seed,
        "keep_fp": list(kept_names),
        "histogram_bins": HISTOGRAM_BINS,
        "quantized_op_types": QUANTIZED_OP_TYPES,
        **recipe.params(source, options),
    }
    if default_keep_fp and kept_names:  # only then, so that the manifests of other calibrations stay as they were
        params["keep_fp_default"] = True
    # Only when asked for, so that a default calibration's manifest stays byte for byte the same.
    if options.gelu_range != "histogram":
        params["gelu_range"] = options.gelu_range
    if options.bias_correction:
        params["bias_correction"] = options.bias_correction
    if options.smooth_gelu:
        params["smooth_gelu"] = {"alpha": SMOOTHING_ALPHA, "min_spread": SMOOTHING_SPREAD,
                                 "tensors": [tensor.to_dict() for tensor in smoothed]}
    return params


def calibration_statistics(source, data, options, progress=None, images=None):
    """(source, CalibrationImages, ActivationStatistics, [SmoothedTensor]): the images chosen from
    `data` (or `images`, chosen already), the source with its outlier post-GELU tensors smoothed
    when `options.smooth_gelu`, and the histograms of every layer's input in that graph (all
    layers: --keep-fp reuses the cache)."""
    images = images or choose_images(source, data, options)
    smoothed = []
    if options.smooth_gelu:  # every layer, kept in float or not: one cache entry serves every --keep-fp
        source, smoothed = smooth_post_gelu(source, network_layers(source.model, source.metadata), images.items,
                                            options.workers)
    tensors = list(dict.fromkeys(layer.activation for layer in network_layers(source.model, source.metadata)))
    return source, images, image_statistics("histogram", source, images, tensors, options, progress), smoothed


def quantization_plan(source, keep_fp):
    """(every quantizable layer, the ones `keep_fp` keeps in float) of the source model."""
    layers = network_layers(source.model, source.metadata)
    if not layers:
        raise FfxError(f"{source.path}: no Conv, MatMul or Gemm with constant weights to quantize")
    kept = resolve_layer_selection(layers, keep_fp)
    if len(kept) == len(layers):
        raise FfxError("--keep-fp keeps every layer in float; nothing would be quantized")
    return layers, kept


def activation_thresholds(stats, layers, options):
    """{activation tensor: |x| clipping threshold} of `layers` under the options' range method
    (for the options' number format: the mse of int8 and of float8 differ)."""
    thresholds = {}
    for layer in layers:
        i = stats.index(layer.activation)
        thresholds[layer.activation] = activation_threshold(
            options.method, stats.histograms[i], stats.hist_range[i], stats.absmax[i], options.percentile,
            options.precision,
        )
    return thresholds


def layer_precision(recipe, layer):
    """The precision `recipe` writes `layer` in when it quantizes it: its own, or INT8 for the
    layers an FP8 recipe writes in INT8."""
    return "int8" if layer.name in recipe.int8_layers else recipe.precision


def _activation_scales(model):
    """{activation tensor: its QuantizeLinear scale}."""
    initializers = {init.name: init for init in model.graph.initializer}
    scales = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in initializers:
            scales[node.input[0]] = float(onnx.numpy_helper.to_array(initializers[node.input[1]]))
    return scales


def _layer_entry(layer, stats, thresholds, scales, precision):
    i = stats.index(layer.activation)
    entry = {
        "name": layer.name,
        "node": layer.node,
        "op_type": layer.op_type,
        "activation": layer.activation,
        "absmax": float(stats.absmax[i]),
        "precision": precision if layer.activation in thresholds else "fp32",
    }
    if layer.activation in thresholds:
        entry["threshold"] = thresholds[layer.activation]
        entry["scale"] = scales.get(layer.activation)
    return entry

