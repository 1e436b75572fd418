"""FP32 ONNX -> INT8 ONNX with Q/DQ nodes placed for TensorRT (explicit quantization).

The recipe (TensorRT's explicit-quantization placement): Q/DQ only on the inputs of Conv, MatMul and Gemm;
activations per-tensor symmetric int8, weights per-channel symmetric int8; LayerNormalization,
GELU, residual Adds, Transposes and biases stay float (TensorRT rejects an int32 bias
DequantizeLinear, and quantized norms/residuals wreck ViT accuracy). Ranges come from
`statistics.py` + `ranges.py`; inserting the Q/DQ nodes is onnxruntime.quantization's
`quantize_static`, fed those ranges through its calibration-cache file.
"""

import contextlib
import dataclasses
import inspect
import logging
import time
from pathlib import Path

import numpy as np
import onnx

from ffx import __version__
from ffx.artifacts import scratch_folder
from ffx.datasets import print_warning
from ffx.calib.layers import network_layers, resolve_layer_selection
from ffx.calib.conversion import Checks, ConversionReport, check_and_write, choose_images, image_statistics, report_fields
from ffx.calib.model_io import load_source_model, output_paths
from ffx.calib.options import CalibrationOptions
from ffx.calib.outliers import (bias_corrections, bias_of, correct_biases, dequantized_weight, output_aware_thresholds,
                                post_gelu_layers)
from ffx.calib.ranges import ENTROPY_FLOOR, activation_threshold
from ffx.calib.smoothing import SMOOTHING_ALPHA, SMOOTHING_SPREAD, smooth_post_gelu, unsmooth
from ffx.calib.statistics import HISTOGRAM_BINS
from ffx.errors import FfxError

QUANTIZED_OP_TYPES = ["Conv", "MatMul", "Gemm"]
# Below this top-1 agreement with FP32 on the check images, the result is suspicious: say so.
AGREEMENT_WARNING = 0.9


@dataclasses.dataclass
class CalibrationReport(ConversionReport):
    percentile: float | None
    quantized_layers: list
    kept_fp_layers: list
    keep_fp_search: dict | None  # how --target-agreement chose kept_fp_layers (None: given by the user)


def calibrate_int8(onnx_path: str | Path, data, output: str | Path | None = None,
                   options: CalibrationOptions = CalibrationOptions(), *, progress=None, tensorrt_check: bool = True,
                   tensorrt_backend: str = "auto", warn=print_warning,
                   keep_fp_search: dict | None = None) -> CalibrationReport:
    """Calibrate an FP32 ffx model to a TensorRT-ready INT8 (Q/DQ) ONNX.

    Args:
        onnx_path: the FP32 ONNX that `ffx export` wrote.
        data: calibration images (a folder, a list file or an ImageDataset).
        output: the Q/DQ model to write (default MODEL.int8.onnx); its manifest is OUT.json.
        options: method, image count, seed, layers kept in float, workers, cache.
        progress: show a progress bar (None: when stderr is a terminal).
        tensorrt_check: build the result with TensorRT/TensorRT-RTX before writing it.
        tensorrt_backend: "auto", "tensorrt" or "tensorrt-rtx".
        warn: called with each warning message (None: silent).
        keep_fp_search: the record of a search that chose `options.keep_fp`, kept in the manifest.

    Returns:
        CalibrationReport: output and manifest paths, method, images used, quantized and kept
        layers, the onnxruntime agreement check and the TensorRT check.

    Raises:
        FfxError: bad input (exit 2 in the CLI).
        GateFailed: TensorRT rejects the result (exit 1); nothing is written.
    """
    started = time.perf_counter()
    check_quantizer()
    original = source = load_source_model(onnx_path)
    output, manifest_path = output_paths(source.path, output, "int8", [data])
    quantization_plan(source, options.keep_fp)  # a bad --keep-fp fails before any image is read
    source, images, stats, smoothed = calibration_statistics(source, data, options, progress, warn)
    layers, kept = quantization_plan(source, options.keep_fp)
    quantized = [layer for layer in layers if layer not in kept]
    thresholds, corrections = outlier_handled_ranges(source, quantized, stats, images.items, options)
    qdq_model = insert_qdq(source, thresholds, [layer.node for layer in kept])
    correct_biases(qdq_model, source, corrections)
    # A layer kept in float has nothing rounded to smooth for: its Add and Mul would only cost time.
    kept_names = {layer.name for layer in kept}
    unsmooth(qdq_model, original.model, [tensor for tensor in smoothed if tensor.layer in kept_names])
    smoothed = [tensor for tensor in smoothed if tensor.layer not in kept_names]
    scales = _activation_scales(qdq_model)

    method = options.method
    params = int8_params(options, [layer.name for layer in kept], smoothed)
    manifest = {
        "ffx_version": __version__,
        "precision": "int8",
        "output": output.name,
        "input": {"file": source.path.name, "sha256": source.sha256},
        "params": params,
        "preprocess": source.preprocess.to_dict(),
        "data": {
            "path": images.data_path,
            "layout": images.dataset.layout,
            "labels": images.dataset.label_source,
            "available_images": len(images.dataset.items),
        },
        "image_list_sha256": images.list_sha256,
        "images": images.manifest_entries(),
        "images_used": stats.images_used,
        "skipped": stats.skipped,
        "layers": [_layer_entry(layer, stats, thresholds, scales) for layer in layers],
    }
    if keep_fp_search is not None:
        manifest["keep_fp_search"] = keep_fp_search
    calibration = {
        "method": method,
        "params": params,
        "image_list_sha256": images.list_sha256,
        "images_used": stats.images_used,
    }
    checks = Checks("INT8", AGREEMENT_WARNING, "; try another --method or --keep-fp head,patch_embed",
                    tensorrt_check, tensorrt_backend)
    model_data, ort_check, trt_check = check_and_write(
        qdq_model, source, output, manifest_path, manifest, calibration, images, stats, checks, warn)
    return CalibrationReport(
        **report_fields(output, manifest_path, model_data, source, images, stats, ort_check, trt_check, started),
        precision="int8",
        method=method,
        percentile=params["percentile"],
        quantized_layers=[layer.name for layer in quantized],
        kept_fp_layers=[layer.name for layer in kept],
        keep_fp_search=keep_fp_search,
    )


def calibration_statistics(source, data, options, progress=None, warn=None):
    """(source, CalibrationImages, ActivationStatistics, [SmoothedTensor]): the images chosen from
    `data`, the source with its outlier post-GELU tensors smoothed when `options.smooth_gelu`, and
    the histograms of every layer's input in that graph (all layers: --keep-fp reuses the cache)."""
    images = choose_images(source, data, options, warn)
    smoothed = []
    if options.smooth_gelu:  # every layer, kept in float or not: one cache entry serves every --keep-fp
        source, smoothed = smooth_post_gelu(source, network_layers(source.model, source.info), images.items,
                                            options.workers)
    tensors = list(dict.fromkeys(layer.activation for layer in network_layers(source.model, source.info)))
    return source, images, image_statistics("histogram", source, images, tensors, options, progress, warn), smoothed


def int8_params(options, kept_names, smoothed=()):
    """The manifest's `params` of an INT8 calibration with `options` that keeps `kept_names` in
    float (and smoothed `smoothed` post-GELU tensors): what reusing a calibrated graph compares."""
    method = options.method
    params = {
        "method": method,
        "percentile": options.percentile if method == "percentile" else None,
        "entropy_floor": ENTROPY_FLOOR if method == "entropy" else None,
        "num_images": options.num_images,
        "seed": options.seed,
        "keep_fp": list(kept_names),
        "histogram_bins": HISTOGRAM_BINS,
        "activations": "per-tensor symmetric int8",
        "weights": "per-channel symmetric int8",
        "quantized_op_types": QUANTIZED_OP_TYPES,
    }
    # Only when asked for, so that a default calibration's manifest stays byte for byte the same.
    if options.gelu_range != "histogram":
        params["gelu_range"] = options.gelu_range
    if options.bias_correction:
        params["bias_correction"] = options.bias_correction
    if options.smooth_gelu:
        params["smooth_gelu"] = {"alpha": SMOOTHING_ALPHA, "min_spread": SMOOTHING_SPREAD,
                                 "tensors": [tensor.to_dict() for tensor in smoothed]}
    return params


def quantization_plan(source, keep_fp):
    """(every quantizable layer, the ones `keep_fp` keeps in float) of the source model."""
    layers = network_layers(source.model, source.info)
    if not layers:
        raise FfxError(f"{source.path}: no Conv, MatMul or Gemm with constant weights to quantize")
    kept = resolve_layer_selection(layers, keep_fp)
    if len(kept) == len(layers):
        raise FfxError("--keep-fp keeps every layer in float; nothing would be quantized")
    return layers, kept


def activation_thresholds(stats, layers, options):
    """{activation tensor: |x| clipping threshold} of `layers` under the options' range method."""
    thresholds = {}
    for layer in layers:
        i = stats.index(layer.activation)
        thresholds[layer.activation] = activation_threshold(
            options.method, stats.histograms[i], stats.hist_range[i], stats.absmax[i], options.percentile
        )
    return thresholds


def outlier_handled_ranges(source, layers, stats, items, options):
    """(thresholds {activation: |x| threshold}, bias corrections {layer: array}) of `layers`:
    the histogram thresholds of the options' method, with the post-GELU ranges and the bias
    corrections of calib/outliers.py when the options ask for them."""
    thresholds = activation_thresholds(stats, layers, options)
    if options.gelu_range == "histogram" and not options.bias_correction:
        return thresholds, {}
    # The weights as quantized, from a graph with exactly these layers in INT8 (the others excluded).
    others = [layer.node for layer in network_layers(source.model, source.info) if layer not in layers]
    first = insert_qdq(source, thresholds, others)
    weights = {layer.name: dequantized_weight(first, layer) for layer in layers if layer.op_type == "MatMul"}
    if options.gelu_range == "output":
        gelu_layers = [layer for layer in post_gelu_layers(layers) if layer.name in weights]
        absmax = {tensor: float(stats.absmax[stats.index(tensor)]) for tensor in thresholds}
        thresholds.update(output_aware_thresholds(source, weights, gelu_layers, absmax, items, options.workers))
    corrections = {}
    if options.bias_correction:
        biased = [layer for layer in layers if layer.name in weights and bias_of(source.model, layer)]
        corrections = bias_corrections(source, weights, biased, thresholds, items, options.bias_correction,
                                       options.workers)
    return thresholds, corrections


def check_quantizer():
    """FfxError unless this onnxruntime's quantizer takes ffx's ranges (a calibration cache: 1.27 and
    newer). Called before any image is read, so an old onnxruntime costs no calibration run."""
    import onnxruntime
    from onnxruntime.quantization import calibrate, quantize_static

    if ("calibration_cache_path" not in inspect.signature(quantize_static).parameters
            or not hasattr(calibrate, "save_tensors_data")):
        # Not stale: onnxruntime publishes no wheel past 1.23 for Python 3.10 (JetPack 6), and setup.cfg allows that.
        raise FfxError(f"INT8 calibration needs onnxruntime 1.27 or newer (found {onnxruntime.__version__}; on Python 3.10, "
                       "where none exists, calibrate on Python 3.11+ and copy the Q/DQ model over)")


def insert_qdq(source, thresholds, excluded_nodes):
    """Q/DQ nodes from onnxruntime's quantizer with our ranges (passed as its calibration cache)."""
    check_quantizer()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    ranges = TensorsData(
        CalibrationMethod.MinMax,
        {tensor: (np.float32(-threshold), np.float32(threshold)) for tensor, threshold in thresholds.items()},
    )
    # The quantizer is handed a copy in a folder of ours, never the user's file: it writes and then
    # deletes MODEL-inferred.onnx beside the model it is given (a user's file of that name was lost).
    with scratch_folder("ffx-calibrate-") as folder:
        save_tensors_data(ranges, folder / "ranges.json")
        source_path, quantized_path = folder / "model.onnx", folder / "model.int8.onnx"
        onnx.save(source.model, str(source_path))  # the graph in memory: its weights loaded, maybe smoothed
        with _quiet_onnxruntime_logging():
            quantize_static(
                str(source_path),
                str(quantized_path),
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=QUANTIZED_OP_TYPES,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(excluded_nodes),
                calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=str(folder / "ranges.json"),
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    # TensorRT's parser rejects an int32 bias DequantizeLinear: keep biases float.
                    "QuantizeBias": False,
                    # Q/DQ on the inputs only: an output Q/DQ would quantize the residual Add's input.
                    "OpTypesToExcludeOutputQuantization": QUANTIZED_OP_TYPES,
                },
            )
        model = onnx.load(str(quantized_path))
    _feed_other_readers_the_float_tensor(model)
    _check_placement(model, len(thresholds))
    return model


def _feed_other_readers_the_float_tensor(model):
    """onnxruntime points every reader of a quantized tensor at its DequantizeLinear, so the
    `Shape` that reads the batch size from `images` would read the fake-quantized image. Only the
    quantized layer should: the other readers get the original float tensor back."""
    quantized_input = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            quantized_input[node.output[0]] = node.input[0]
    dequantized = {node.output[0]: quantized_input[node.input[0]]
                   for node in model.graph.node if node.op_type == "DequantizeLinear" and node.input[0] in quantized_input}
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OP_TYPES:
            for slot, name in enumerate(node.input):
                if name in dequantized:
                    node.input[slot] = dequantized[name]


@contextlib.contextmanager
def _quiet_onnxruntime_logging():
    # quantize_static logs "Please consider to run pre-processing" on the root logger.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _check_placement(model, expected_activations):
    """The graph must have exactly one activation QuantizeLinear per quantized layer, no int32 DQ."""
    initializers = {init.name: init for init in model.graph.initializer}
    quantize_nodes = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
    if len(quantize_nodes) != expected_activations:
        raise RuntimeError(
            f"onnxruntime placed {len(quantize_nodes)} QuantizeLinear nodes, expected {expected_activations}: "
            "the Q/DQ recipe no longer holds with this onnxruntime"
        )
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers:
            if initializers[node.input[0]].data_type != onnx.TensorProto.INT8:
                raise RuntimeError(f"{node.name}: a non-int8 DequantizeLinear, which TensorRT rejects")


def _activation_scales(model):
    """{activation tensor: its QuantizeLinear scale}."""
    initializers = {init.name: init for init in model.graph.initializer}
    scales = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in initializers:
            scales[node.input[0]] = float(onnx.numpy_helper.to_array(initializers[node.input[1]]))
    return scales


def _layer_entry(layer, stats, thresholds, scales):
    i = stats.index(layer.activation)
    entry = {
        "name": layer.name,
        "node": layer.node,
        "op_type": layer.op_type,
        "activation": layer.activation,
        "absmax": float(stats.absmax[i]),
        "precision": "int8" if layer.activation in thresholds else "fp32",
    }
    if layer.activation in thresholds:
        entry["threshold"] = thresholds[layer.activation]
        entry["scale"] = scales.get(layer.activation)
    return entry
