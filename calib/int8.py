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
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from ffx import __version__
from ffx.datasets import print_warning
from ffx.calib.layers import network_layers, resolve_layer_selection
from ffx.calib.model_io import finish_model, load_source_model, manifest_bytes, output_paths, write_outputs
from ffx.calib.ranges import ENTROPY_FLOOR, METHODS, activation_threshold
from ffx.calib.selection import choose_calibration_images, decode_reference_images
from ffx.calib.statistics import HISTOGRAM_BINS, collect_statistics, default_cache_dir, statistics_key
from ffx.calib.validate import check_onnxruntime, tensorrt_gate
from ffx.artifacts import sha256_bytes
from ffx.errors import FfxError

QUANTIZED_OP_TYPES = ["Conv", "MatMul", "Gemm"]
# Below this top-1 agreement with FP32 on the check images, the result is suspicious: say so.
AGREEMENT_WARNING = 0.9


@dataclasses.dataclass
class CalibrationReport:
    output: str
    manifest: str
    sha256: str
    precision: str
    method: str
    percentile: float | None
    num_images: int  # images whose activations set the ranges
    skipped_images: int
    quantized_layers: list
    kept_fp_layers: list
    cache: str  # hit, miss or off
    onnxruntime: dict
    tensorrt: dict
    input_sha256: str
    image_list_sha256: str
    seconds: float


def calibrate_int8(onnx_path: str | Path, data, output: str | Path | None = None, num_images: int = 512,
                   method: str = "entropy", percentile: float = 99.99, seed: int = 0, keep_fp=(),
                   cache_dir: str | Path | None = None, use_cache: bool = True, workers: int = 2, progress=None,
                   tensorrt_check: bool = True, tensorrt_backend: str = "auto", warn=print_warning) -> CalibrationReport:
    """Calibrate an FP32 ffx ONNX model to INT8 and write the Q/DQ model plus its manifest (OUT.json).

    Args:
        onnx_path: the FP32 model written by `ffx export` (its metadata gives the preprocessing).
        data: calibration images: a folder, a list file (`path label` per line) or an ImageDataset.
        output: the Q/DQ model to write (default MODEL.int8.onnx beside the input).
        num_images: images to calibrate on, stratified across classes and chosen with `seed`.
        method: range method, one of METHODS ("entropy", "max", "percentile", "mse").
        percentile: the percentile of |x| for method "percentile".
        keep_fp: layer names to leave in float (e.g. "head", "blocks.3").
        cache_dir, use_cache: where activation statistics are cached, and whether to use the cache.
        workers: image-decoding processes (0 decodes in this process).
        progress: show progress bars (None: when stderr is a terminal).
        tensorrt_check, tensorrt_backend: build the result with TensorRT or TensorRT-RTX when installed.
        warn: called with each warning message (None: silent).

    Returns:
        CalibrationReport: output and manifest paths, method, images used, quantized and kept
        layers, the onnxruntime agreement check and the TensorRT check.

    Raises:
        FfxError: bad input (exit 2 in the CLI).
        GateFailed: TensorRT rejects the result (exit 1); nothing is written.
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise FfxError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "percentile" and not 0 < percentile <= 100:
        raise FfxError(f"--percentile must be in (0, 100], got {percentile}")
    source = load_source_model(onnx_path)
    output, manifest_path = output_paths(source, output, "int8")
    layers = network_layers(source.model, source.info)
    if not layers:
        raise FfxError(f"{onnx_path}: no Conv, MatMul or Gemm with constant weights to quantize")
    kept = resolve_layer_selection(layers, keep_fp)
    quantized = [layer for layer in layers if layer not in kept]
    if not quantized:
        raise FfxError("--keep-fp keeps every layer in float; nothing would be quantized")

    images = choose_calibration_images(data, num_images, seed, source.info.get("class_names"), warn)
    tensors = list(dict.fromkeys(layer.activation for layer in layers))  # all layers: --keep-fp reuses the cache
    key = statistics_key("histogram", source.sha256, source.preprocess, images.sha256, tensors)
    stats = collect_statistics(
        "histogram", source.model, tensors, images.items, source.preprocess, key,
        cache_dir=(Path(cache_dir) if cache_dir else default_cache_dir()) if use_cache else None,
        workers=workers, progress=progress, warn=warn, relative_path=images.dataset.relative_path,
    )
    if stats.images_used == 0:
        raise FfxError(f"none of the {len(images.items)} chosen images in {images.data_path} could be read")

    thresholds = {}
    for layer in quantized:
        i = stats.index(layer.activation)
        thresholds[layer.activation] = activation_threshold(
            method, stats.histograms[i], stats.hist_range[i], stats.absmax[i], percentile
        )
    qdq_model = _insert_qdq(source, thresholds, [layer.node for layer in kept])
    scales = _activation_scales(qdq_model)

    params = {
        "method": method,
        "percentile": percentile if method == "percentile" else None,
        "entropy_floor": ENTROPY_FLOOR if method == "entropy" else None,
        "num_images": num_images,
        "seed": seed,
        "keep_fp": [layer.name for layer in kept],
        "histogram_bins": HISTOGRAM_BINS,
        "activations": "per-tensor symmetric int8",
        "weights": "per-channel symmetric int8",
        "quantized_op_types": QUANTIZED_OP_TYPES,
    }
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
    manifest_data = manifest_bytes(manifest)
    calibration = {
        "method": method,
        "params": params,
        "image_list_sha256": images.list_sha256,
        "images_used": stats.images_used,
        "manifest": manifest_path.name,
        "manifest_sha256": sha256_bytes(manifest_data),
        "input_sha256": source.sha256,
    }
    model_data = finish_model(qdq_model, source, "int8", calibration)

    reference = decode_reference_images(images, stats.reference_indices, source.preprocess)
    ort_check = check_onnxruntime(
        model_data, source.input_name, reference, stats.reference_logits if reference is not None else None,
        input_shape=source.input_shape,
    )
    if ort_check.top1_agreement is not None and ort_check.top1_agreement < AGREEMENT_WARNING and warn is not None:
        warn(
            f"INT8 agrees with FP32 on only {ort_check.top1_agreement:.0%} of {ort_check.images} calibration images; "
            "try another --method or --keep-fp head,patch_embed"
        )
    trt_check = tensorrt_gate(model_data, tensorrt_backend, tensorrt_check, "INT8", output)
    write_outputs(output, model_data, manifest_path, manifest_data)
    return CalibrationReport(
        output=str(output),
        manifest=str(manifest_path),
        sha256=sha256_bytes(model_data),
        precision="int8",
        method=method,
        percentile=params["percentile"],
        num_images=stats.images_used,
        skipped_images=len(stats.skipped),
        quantized_layers=[layer.name for layer in quantized],
        kept_fp_layers=[layer.name for layer in kept],
        cache=stats.cache,
        onnxruntime=dataclasses.asdict(ort_check),
        tensorrt=trt_check,
        input_sha256=source.sha256,
        image_list_sha256=images.list_sha256,
        seconds=round(time.perf_counter() - started, 2),
    )


def _insert_qdq(source, thresholds, excluded_nodes):
    """Q/DQ nodes from onnxruntime's quantizer with our ranges (passed as its calibration cache)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        # Not stale: onnxruntime publishes no wheel past 1.23 for Python 3.10 (JetPack 6), and setup.cfg allows that.
        raise FfxError(f"INT8 calibration needs onnxruntime 1.27 or newer (found {onnxruntime.__version__}; on Python 3.10, "
                       "where none exists, calibrate on Python 3.11+ and copy the Q/DQ model over)")
    ranges = TensorsData(
        CalibrationMethod.MinMax,
        {tensor: (np.float32(-threshold), np.float32(threshold)) for tensor, threshold in thresholds.items()},
    )
    with tempfile.TemporaryDirectory(prefix="ffx-calibrate-") as folder:
        folder = Path(folder)
        save_tensors_data(ranges, folder / "ranges.json")
        quantized_path = folder / "model.int8.onnx"
        with _quiet_onnxruntime_logging():
            quantize_static(
                str(source.path),
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
