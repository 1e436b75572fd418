"""FP32 ONNX -> INT8 ONNX with Q/DQ nodes placed for TensorRT (explicit quantization).

The recipe (TensorRT's explicit-quantization placement): Q/DQ only on the inputs of Conv, MatMul and Gemm;
activations per-tensor symmetric int8, weights per-channel symmetric int8; LayerNormalization,
GELU, residual Adds, Transposes and biases stay float (TensorRT rejects an int32 bias
DequantizeLinear, and quantized norms/residuals wreck ViT accuracy). Ranges come from
`statistics.py` + `ranges.py`; inserting the Q/DQ nodes is onnxruntime.quantization's
`quantize_static`, fed those ranges through its calibration-cache file. The rest of the flow
(images, statistics, manifest, checks) is the one every Q/DQ precision shares: calib/qdq.py.
"""

import contextlib
import inspect
import logging
from pathlib import Path

import numpy as np
import onnx

from ffx.artifacts import scratch_folder
from ffx.calib.layers import network_layers
from ffx.calib.options import CalibrationOptions
from ffx.calib.outliers import (bias_corrections, bias_of, dequantized_weight, output_aware_thresholds,
                                post_gelu_layers)
# The flow every Q/DQ precision shares lives in calib/qdq.py; these names are imported from here too.
from ffx.calib.qdq import (AGREEMENT_WARNING, QUANTIZED_OP_TYPES, CalibrationReport, QdqRecipe,  # noqa: F401
                           activation_thresholds, calibrate_qdq, calibration_statistics, qdq_params,
                           quantization_plan)
from ffx.calib.ranges import ENTROPY_FLOOR
from ffx.errors import FfxError


class Int8Recipe(QdqRecipe):
    """Symmetric int8: ranges from the histograms (and calib/outliers.py when asked), Q/DQ nodes
    from onnxruntime's quantizer."""

    precision = "int8"
    label = "INT8"
    advice = "; try another --method or --keep-fp head,patch_embed"

    def check(self):
        check_quantizer()

    def ranges(self, source, layers, stats, items, options):
        return outlier_handled_ranges(source, layers, stats, items, options)

    def insert(self, source, thresholds, excluded_nodes):
        return insert_qdq(source, thresholds, excluded_nodes)

    def params(self, source, options):
        return {
            "entropy_floor": ENTROPY_FLOOR if options.method == "entropy" else None,
            "activations": "per-tensor symmetric int8",
            "weights": "per-channel symmetric int8",
        }


INT8 = Int8Recipe()


def calibrate_int8(onnx_path: str | Path, data, output: str | Path | None = None,
                   options: CalibrationOptions = CalibrationOptions(), *, progress=None, tensorrt_check: bool = True,
                   tensorrt_backend: str = "auto",
                   keep_fp_search: dict | None = None) -> CalibrationReport:
    """Calibrate an FP32 ffx model to a TensorRT-ready INT8 (Q/DQ) ONNX.

    Args:
        onnx_path: the FP32 ONNX that `ffx export` wrote.
        data: calibration images (a folder, a list file or an ImageDataset).
        output: the Q/DQ model to write (default MODEL.int8.onnx); its manifest is OUT.json.
        options: method, image count, seed, layers kept in float, workers, cache.
        progress: False for none; otherwise a bar on a terminal, lines in a log (ffx.progress).
        tensorrt_check: build the result with TensorRT/TensorRT-RTX before writing it.
        tensorrt_backend: "auto", "tensorrt" or "tensorrt-rtx".
        keep_fp_search: the record of a search that chose `options.keep_fp`, kept in the manifest.

    Returns:
        CalibrationReport: output and manifest paths, method, images used, quantized and kept
        layers, the onnxruntime agreement check and the TensorRT check.

    Raises:
        FfxError: bad input (exit 2 in the CLI).
        GateFailed: TensorRT rejects the result (exit 1); nothing is written.
    """
    return calibrate_qdq(INT8, onnx_path, data, output, options, progress=progress, tensorrt_check=tensorrt_check,
                         tensorrt_backend=tensorrt_backend, keep_fp_search=keep_fp_search)


def int8_params(options, kept_names, smoothed=()):
    """The manifest's `params` of an INT8 calibration with `options` that keeps `kept_names` in
    float (and smoothed `smoothed` post-GELU tensors): what reusing a calibrated graph compares."""
    return qdq_params(INT8, None, options, kept_names, smoothed)


def outlier_handled_ranges(source, layers, stats, items, options):
    """(thresholds {activation: |x| threshold}, bias corrections {layer: array}) of `layers`:
    the histogram thresholds of the options' method, with the post-GELU ranges and the bias
    corrections of calib/outliers.py when the options ask for them."""
    thresholds = activation_thresholds(stats, layers, options)
    if options.gelu_range == "histogram" and not options.bias_correction:
        return thresholds, {}
    # The weights as quantized, from a graph with exactly these layers in INT8 (the others excluded).
    others = [layer.node for layer in network_layers(source.model, source.metadata) if layer not in layers]
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

