"""FP32 ONNX -> FP8 (E4M3) Q/DQ ONNX for TensorRT on GPUs with FP8 tensor cores (compute
capability 8.9 and newer: Ada, Hopper, Blackwell, Thor).

The placement is INT8's (calib/int8.py): Q/DQ only on the inputs of Conv, MatMul and Gemm,
LayerNormalization, GELU, residual Adds and biases in float. Activations are quantized per tensor
with scale threshold / 448 (E4M3's largest finite value), weights per output channel with scale
|w| max / 448, stored as float8e4m3fn initializers read by a DequantizeLinear; every zero point is a
float8e4m3fn 0. onnxruntime's quantizer is not used: it derives float8 scales from standard
deviations, not from ranges.

Layers kept in float by default: the first and the last (patch_embed, which reads the image, and
head, which writes the logits), as NVIDIA ModelOpt's fp8 mode does. Three mantissa bits cost most
there, and both together are a fraction of a percent of the FLOPs (BENCHMARKS.md sections 6d/6e,
`python -m bench.int8_accuracy --precisions`, measure both choices on both Fashion-MNIST fixtures);
`--keep-fp none` quantizes them too.

Opset: QuantizeLinear/DequantizeLinear take float8 from opset 19. `ffx export` writes opset 17, so
the graph is lifted to 19 with onnx's version converter, and the result is used only when the
converter changed nothing but the opset number (true of every graph `ffx export` writes: its
operators mean the same in 17 and 19 for float tensors). Anything else is refused with a hint to
export with `--opset 19`; a graph exported at 19 or newer is used as it is. Statistics are
collected on the source graph, so INT8 and FP8 calibrations of one model share a cache entry.

Thresholds: the histogram methods of calib/ranges.py for a floating-point format (``max``, the
default; ``percentile``; ``mse`` with E4M3's relative rounding). With `scale_search`
(``--scale-search``), each threshold is then searched over one octave *above* it: E4M3 has the same
relative step at any magnitude, so a scale that is larger by a factor in [1, 2) clips nothing and
only moves where the values fall between representable numbers. The factor kept is the one with the
least squared error in the layer's output, (Q(x) - x) W, on a sample of the calibration images.
That matters where many values are the same in every image (a blank background: the normalized
black pixel, the tokens of empty patches), whose rounding error is then the same everywhere instead
of averaging out: that is the image, read by patch_embed, which stays in float by default; for the
other layers the search bought nothing measurable (BENCHMARKS.md 6d/6e), so it is off by default.

INT8 layers: E4M3 keeps 3 mantissa bits at every magnitude, INT8 about 7 near its range. A tensor
that fills its range evenly (a LayerNorm's output, which every fc1 reads) loses less in INT8; a
heavy-tailed one (the post-GELU tensor each fc2 reads) less in E4M3. `Fp8Recipe(int8_layers)`
(``--int8-layers``) writes the named layers as `ffx calibrate` writes INT8 (INT8_METHOD ranges,
scale threshold / 127; per-channel int8 weights, scale |w| max / 127, as onnxruntime's quantizer)
and the rest in E4M3. The graph stays an FP8 graph: it needs FP8 tensor cores, and on the GPUs that
have them INT8 runs at FP8's rate, except Blackwell Ultra (ffx/gpu_precisions.py). The target search
chooses the layers itself (calib/mixed_precision.py: `choose_int8_layers`).
"""

import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ffx.calib.layers import network_layers, resolve_layer_selection
from ffx.calib.options import CalibrationOptions
from ffx.calib.outliers import bias_corrections, bias_of, dequantized_weight, fake_quantize, sampled_activations
from ffx.calib.qdq import CalibrationReport, QdqRecipe, activation_thresholds, calibrate_qdq
from ffx.calib.ranges import E4M3_MAX
from ffx.errors import FfxError

FP8_OPSET = 19  # the first opset whose QuantizeLinear/DequantizeLinear take float8
FLOAT8_IR_VERSION = 9  # the first IR version with float8 types
SCALE_SEARCH_STEPS = 16  # scale factors tried per tensor: 2^(k/16), k = 0..15 (one octave, no clipping)
SCALE_SEARCH_IMAGES = 32  # calibration images the output error is measured on
PLATEAU_SHARE = 0.05  # a value making this share of a tensor's sampled values is put exactly on the E4M3 grid


class Fp8Recipe(QdqRecipe):
    """E4M3 Q/DQ; with `int8_layers` (layer names), those layers in INT8 instead (the module's docstring)."""

    precision = "fp8"
    label = "FP8"
    advice = "; try --keep-fp head,patch_embed (the first and last layers lose most to 3 mantissa bits)"

    def __init__(self, int8_layers=()):
        self.int8_layers = tuple(int8_layers)

    def configured(self, source, options):
        layers = network_layers(source.model, source.metadata)
        return Fp8Recipe(layer.name for layer in resolve_layer_selection(layers, options.int8_layers, "--int8-layers"))

    def check(self):
        check_fp8_support()

    def ranges(self, source, layers, stats, items, options):
        fp8 = [layer for layer in layers if layer.name not in self.int8_layers]
        int8 = [layer for layer in layers if layer.name in self.int8_layers]
        thresholds = activation_thresholds(stats, fp8, options)
        if options.scale_search:
            thresholds = search_scales(source, fp8, thresholds, items, options.workers)
        thresholds = exact_plateaus(source, fp8, thresholds, items, options.workers)
        thresholds.update(activation_thresholds(stats, int8, int8_options(options)))
        corrections = {}
        if options.bias_correction:
            corrections = fp8_bias_corrections(source, layers, thresholds, items, options, self.int8_layers)
        return thresholds, corrections

    def insert(self, source, thresholds, excluded_nodes):
        int8_nodes = [layer.node for layer in network_layers(source.model, source.metadata)
                      if layer.name in self.int8_layers]
        return insert_fp8_qdq(source, thresholds, excluded_nodes, int8_nodes)

    def default_keep_fp(self, layers):
        # The layer that reads the image and the one that writes the logits (patch_embed and head):
        # E4M3 costs most there and they are a fraction of a percent of the FLOPs (see the docstring).
        return [layers[0].name, layers[-1].name] if len(layers) > 2 else []

    def params(self, source, options):
        params = {
            "activations": "per-tensor float8 e4m3fn (scale = threshold / 448)",
            "weights": "per-channel float8 e4m3fn (scale = |w| max / 448)",
            "opset": {"source": model_opset(source.model), "output": max(model_opset(source.model), FP8_OPSET)},
        }
        params["plateaus"] = (f"a value making >= {PLATEAU_SHARE:.0%} of a tensor's values on {SCALE_SEARCH_IMAGES} "
                              "calibration images is exactly on the E4M3 grid (its threshold raised by < 1/8)")
        if options.scale_search:
            params["scale_search"] = {"factors": f"2^(k/{SCALE_SEARCH_STEPS}), k = 0..{SCALE_SEARCH_STEPS - 1}",
                                      "criterion": "squared error of the layer's output", "images": SCALE_SEARCH_IMAGES}
        if self.int8_layers:  # only then, so that the manifest of an FP8-only graph stays as it was
            params["int8_layers"] = {"layers": list(self.int8_layers), "method": INT8_METHOD,
                                     "activations": "per-tensor symmetric int8 (scale = threshold / 127)",
                                     "weights": "per-channel symmetric int8 (scale = |w| max / 127)"}
        return params


FP8 = Fp8Recipe()
INT8_METHOD = "entropy"  # the range method of the INT8 layers of an FP8 graph: INT8's default


def int8_options(options):
    """The options the INT8 layers of an FP8 calibration take their ranges with: INT8's method."""
    return options.replace(precision="int8", method=INT8_METHOD, scale_search=False, int8_layers=())


def calibrate_fp8(onnx_path: str | Path, data, output: str | Path | None = None,
                  options: CalibrationOptions | None = None, *, progress=None, tensorrt_check: bool = True,
                  tensorrt_backend: str = "auto",
                  keep_fp_search: dict | None = None, int8_choice: dict | None = None) -> CalibrationReport:
    """Calibrate an FP32 ffx model to an FP8 E4M3 Q/DQ ONNX (opset 19 or the model's, if newer).

    Arguments, result and errors as for `calibrate_int8`; `options` must be made with
    CalibrationOptions(precision="fp8") (the default), whose range methods are max, percentile, mse.
    `int8_choice`: the record of `mixed_precision.int8_choice` that chose `options.int8_layers`,
    kept in the manifest. The output defaults to MODEL.fp8.onnx.
    """
    return calibrate_qdq(FP8, onnx_path, data, output, options, progress=progress, tensorrt_check=tensorrt_check,
                         tensorrt_backend=tensorrt_backend, keep_fp_search=keep_fp_search, int8_choice=int8_choice)


def check_fp8_support():
    """FfxError unless this Python can write FP8 graphs (ml_dtypes rounds the weights to E4M3)."""
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        raise FfxError("FP8 calibration needs ml_dtypes (`pip install ml_dtypes`) to round weights to E4M3") from None
    if not hasattr(TensorProto, "FLOAT8E4M3FN"):
        raise FfxError(f"FP8 calibration needs onnx 1.14 or newer (found {onnx.__version__})")


# -- opset ------------------------------------------------------------------------------------

def model_opset(model):
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)


def to_fp8_opset(model, source_path="the model"):
    """`model` at opset FP8_OPSET or newer: a copy lifted by onnx's version converter when it is older,
    accepted only when the converter changed nothing but the opset (FfxError otherwise)."""
    from onnx import version_converter

    if model_opset(model) >= FP8_OPSET:
        converted = onnx.ModelProto()
        converted.CopyFrom(model)
    else:
        try:
            converted = version_converter.convert_version(model, FP8_OPSET)
        except Exception as e:  # the converter raises RuntimeError/ValueError/its own C++ errors
            raise FfxError(f"{source_path}: onnx cannot convert opset {model_opset(model)} to {FP8_OPSET}, which FP8 "
                           f"Q/DQ needs ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}); "
                           f"export it with `ffx export --opset {FP8_OPSET}`") from None
        changed = _changed_nodes(model, converted)
        if changed:
            raise FfxError(f"{source_path}: lifting opset {model_opset(model)} to {FP8_OPSET} (FP8 Q/DQ needs it) rewrites "
                           f"{changed}; export it with `ffx export --opset {FP8_OPSET}` instead")
    converted.ir_version = max(converted.ir_version, FLOAT8_IR_VERSION)
    return converted


def _changed_nodes(before, after):
    """What the version converter changed besides the opset number: None, or a short description."""
    if len(before.graph.node) != len(after.graph.node) or len(before.graph.initializer) != len(after.graph.initializer):
        return (f"the graph ({len(before.graph.node)} -> {len(after.graph.node)} nodes, "
                f"{len(before.graph.initializer)} -> {len(after.graph.initializer)} initializers)")
    for old, new in zip(before.graph.node, after.graph.node):
        old, new = _without_metadata(old), _without_metadata(new)
        if old.SerializeToString() != new.SerializeToString():
            return f"node {old.name or old.op_type!r} ({old.op_type})"
    return None


def _without_metadata(node):
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    del copy.metadata_props[:]  # the exporter's rewrite notes, which the converter drops
    return copy


# -- Q/DQ -------------------------------------------------------------------------------------

def to_e4m3(values):
    """`values` rounded to float8 e4m3fn (nearest, ties to even; saturated at +-448), as float32."""
    import ml_dtypes

    return np.clip(values, -E4M3_MAX, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)


def _float8_tensor(values, name):
    """A FLOAT8E4M3FN initializer of `values` (already on the E4M3 grid, or zeros)."""
    import ml_dtypes

    values = np.asarray(values, np.float32)
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = TensorProto.FLOAT8E4M3FN
    tensor.dims.extend(values.shape)
    tensor.raw_data = np.clip(values, -E4M3_MAX, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn).view(np.uint8).tobytes()
    return tensor


def weight_axis(layer, node, weight):
    """The output-channel axis of a layer's weight: Conv [out, in, kh, kw] 0; MatMul [in, out] its
    last; Gemm 0 with transB, else 1."""
    if layer.op_type == "Conv":
        return 0
    if layer.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return weight.ndim - 1


def _per_channel(weight, axis, largest):
    """(the weight in units of its per-channel scale, the scale): scale = |w| max of the channel /
    `largest`, the format's largest value (1 for an all-zero channel)."""
    reduced = tuple(i for i in range(weight.ndim) if i != axis)
    amax = np.abs(weight).max(axis=reduced)
    scale = np.where(amax > 0, amax / largest, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    return weight / scale.reshape(shape), scale


def quantize_weight(weight, axis):
    """(E4M3 values, per-channel scale) of a float weight: scale = |w| max of the channel / 448."""
    scaled, scale = _per_channel(weight, axis, E4M3_MAX)
    return to_e4m3(scaled), scale


def quantize_weight_int8(weight, axis):
    """(int8 values, per-channel scale) of a float weight: scale = |w| max of the channel / 127, as
    onnxruntime's symmetric per-channel quantizer writes INT8 graphs."""
    scaled, scale = _per_channel(weight, axis, 127)
    return np.clip(np.rint(scaled), -127, 127).astype(np.int8), scale


def insert_fp8_qdq(source, thresholds, excluded_nodes, int8_nodes=()):
    """The source graph at opset 19+ with E4M3 Q/DQ on the inputs of its layers whose activations
    `thresholds` names ({tensor: |x| threshold}), minus the nodes in `excluded_nodes`; the layers
    whose nodes are in `int8_nodes` get symmetric INT8 Q/DQ instead."""
    check_fp8_support()
    model = to_fp8_opset(source.model, source.path)
    graph = model.graph
    excluded, int8_nodes = set(excluded_nodes), set(int8_nodes)
    layers = [layer for layer in network_layers(model, source.metadata)
              if layer.node not in excluded and layer.activation in thresholds]
    initializers = {init.name: init for init in graph.initializer}
    nodes = {node.name: node for node in graph.node}
    before = {}  # node name -> Q/DQ nodes to insert before it
    added, quantized_activations, int8_qdq = [], {}, set()  # int8_qdq: names of the INT8 layers' Q/DQ nodes
    for layer in layers:
        node = nodes[layer.node]
        activation = layer.activation
        int8 = layer.node in int8_nodes
        if activation not in quantized_activations:  # one Q/DQ pair however many layers read the tensor
            scale = np.float32(thresholds[activation] / (127 if int8 else E4M3_MAX))
            names = _qdq_names(activation)
            added += [numpy_helper.from_array(np.array(scale if scale > 0 else 1.0, np.float32), names["scale"]),
                      numpy_helper.from_array(np.array(0, np.int8), names["zero_point"]) if int8
                      else _float8_tensor(0.0, names["zero_point"])]
            before.setdefault(layer.node, []).extend([
                helper.make_node("QuantizeLinear", [activation, names["scale"], names["zero_point"]], [names["quantized"]],
                                 name=names["quantize"]),
                helper.make_node("DequantizeLinear", [names["quantized"], names["scale"], names["zero_point"]],
                                 [names["dequantized"]], name=names["dequantize"]),
            ])
            quantized_activations[activation] = names["dequantized"]
            if int8:
                int8_qdq.update((names["quantize"], names["dequantize"]))
        node.input[0] = quantized_activations[activation]

        weight = numpy_helper.to_array(initializers[layer.weight]).astype(np.float32)
        axis = weight_axis(layer, node, weight)
        names = _qdq_names(layer.weight)
        if int8:
            int8_qdq.add(names["dequantize"])
            values, scale = quantize_weight_int8(weight, axis)
            added += [numpy_helper.from_array(values, names["quantized"]), numpy_helper.from_array(scale, names["scale"]),
                      numpy_helper.from_array(np.zeros(scale.shape, np.int8), names["zero_point"])]
        else:
            values, scale = quantize_weight(weight, axis)
            added += [_float8_tensor(values, names["quantized"]), numpy_helper.from_array(scale, names["scale"]),
                      _float8_tensor(np.zeros(scale.shape, np.float32), names["zero_point"])]
        before.setdefault(layer.node, []).append(helper.make_node(
            "DequantizeLinear", [names["quantized"], names["scale"], names["zero_point"]], [names["dequantized"]],
            name=names["dequantize"], axis=axis))
        node.input[1] = names["dequantized"]

    ordered = []
    for node in graph.node:
        ordered.extend(before.get(node.name, []))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(added)
    used = {name for node in graph.node for name in node.input}
    remaining = [init for init in graph.initializer if init.name in used]  # float weights now read as FP8
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    _check_fp8_placement(model, len(quantized_activations), int8_qdq)
    return model


def _qdq_names(tensor):
    """The names onnxruntime's quantizer gives a tensor's Q/DQ nodes and initializers (INT8 graphs
    use the same), so tools that read one kind of graph read the other."""
    return {"scale": f"{tensor}_scale", "zero_point": f"{tensor}_zero_point", "quantized": f"{tensor}_quantized",
            "quantize": f"{tensor}_QuantizeLinear", "dequantize": f"{tensor}_DequantizeLinear",
            "dequantized": f"{tensor}_DequantizeLinear_Output"}


def _check_fp8_placement(model, expected_activations, int8_qdq=()):
    """One activation QuantizeLinear per quantized tensor; every zero point float8 but those of the
    Q/DQ nodes named in `int8_qdq` (the INT8 layers'), which are int8 (no other INT8)."""
    initializers = {init.name: init for init in model.graph.initializer}
    quantize_nodes = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
    if len(quantize_nodes) != expected_activations:
        raise RuntimeError(f"placed {len(quantize_nodes)} QuantizeLinear nodes, expected {expected_activations}")
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = initializers.get(node.input[2]) if len(node.input) > 2 else None
            wanted = TensorProto.INT8 if node.name in int8_qdq else TensorProto.FLOAT8E4M3FN
            if zero_point is None or zero_point.data_type != wanted:
                raise RuntimeError(f"{node.name}: a Q/DQ node without a {TensorProto.DataType.Name(wanted).lower()} "
                                   "zero point")


# -- the scale search -------------------------------------------------------------------------

@dataclasses.dataclass
class _LayerMatrix:
    """A layer as a matrix product: its inputs reshaped to rows that multiply `weight` [K, N]."""

    rows: object  # callable: activation array -> [M, K] rows
    weight: np.ndarray


def search_scales(source, layers, thresholds, items, workers=0):
    """{activation: threshold} with each of `layers`' thresholds multiplied by the factor in
    [1, 2) whose E4M3 rounding leaves the least squared error in the layer's output on the first
    SCALE_SEARCH_IMAGES calibration images."""
    factors = 2.0 ** (np.arange(SCALE_SEARCH_STEPS) / SCALE_SEARCH_STEPS)
    matrices = {layer.name: _layer_matrix(source.model, layer) for layer in layers}
    searched = [layer for layer in layers if matrices[layer.name] is not None and thresholds[layer.activation] > 0]
    errors = {layer.name: np.zeros(SCALE_SEARCH_STEPS) for layer in searched}
    tensors = list(dict.fromkeys(layer.activation for layer in searched))
    for values in sampled_activations(source, items[:SCALE_SEARCH_IMAGES], tensors, workers):
        for layer in searched:
            matrix = matrices[layer.name]
            x = matrix.rows(values[layer.activation].astype(np.float32))
            for k, factor in enumerate(factors):
                error = (fake_quantize_e4m3(x, thresholds[layer.activation] * factor) - x) @ matrix.weight
                errors[layer.name][k] += float(np.sum(np.square(error, dtype=np.float64)))
    chosen = dict(thresholds)
    for layer in searched:  # a tensor read by several layers keeps the first reader's choice
        if chosen[layer.activation] == thresholds[layer.activation]:
            chosen[layer.activation] = float(thresholds[layer.activation] * factors[int(np.argmin(errors[layer.name]))])
    return chosen


def _layer_matrix(model, layer):
    """The layer as rows x weight, or None for a layer this search does not cover (a Conv with
    padding, dilation, groups or overlapping windows: searched by nothing, its threshold kept)."""
    initializers = {init.name: init for init in model.graph.initializer}
    node = next(node for node in model.graph.node if node.name == layer.node)
    weight = numpy_helper.to_array(initializers[layer.weight]).astype(np.float32)
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if layer.op_type == "MatMul" and weight.ndim == 2:
        return _LayerMatrix(lambda x: x.reshape(-1, x.shape[-1]), weight)
    if layer.op_type == "Gemm" and weight.ndim == 2 and not attributes.get("transA"):
        return _LayerMatrix(lambda x: x.reshape(-1, x.shape[-1]), weight.T if attributes.get("transB") else weight)
    if layer.op_type == "Conv" and weight.ndim == 4:
        kernel = list(weight.shape[2:])
        if (list(attributes.get("strides", [1, 1])) != kernel or any(attributes.get("pads", [0])) or
                attributes.get("group", 1) != 1 or any(d != 1 for d in attributes.get("dilations", [1, 1]))):
            return None
        kh, kw = kernel

        def patches(x):  # non-overlapping windows (a patch embedding): [B * patches, C * kh * kw]
            b, c, h, w = x.shape
            x = x[:, :, : h - h % kh, : w - w % kw].reshape(b, c, h // kh, kh, w // kw, kw)
            return x.transpose(0, 2, 4, 1, 3, 5).reshape(-1, c * kh * kw)

        return _LayerMatrix(patches, weight.reshape(weight.shape[0], -1).T)
    return None



# -- plateaus and bias correction -------------------------------------------------------------

def exact_plateaus(source, layers, thresholds, items, workers=0):
    """{activation: threshold}, each raised by less than 1/8 where the tensor has a plateau: one
    value that makes at least PLATEAU_SHARE of its values on the first SCALE_SEARCH_IMAGES
    calibration images (the normalized blank background of an image, read by patch_embed). The
    raised scale puts that value exactly on the E4M3 grid, so its rounding error, the same in every
    image and so adding up instead of averaging out, is zero; nothing more is clipped."""
    tensors = list(dict.fromkeys(layer.activation for layer in layers if thresholds.get(layer.activation, 0) > 0))
    counts = {tensor: {} for tensor in tensors}
    total = dict.fromkeys(tensors, 0)
    for values in sampled_activations(source, items[:SCALE_SEARCH_IMAGES], tensors, workers):
        for tensor in tensors:
            found, found_counts = np.unique(values[tensor], return_counts=True)
            common = found_counts >= PLATEAU_SHARE * values[tensor].size
            for value, count in zip(found[common].tolist(), found_counts[common].tolist()):
                counts[tensor][value] = counts[tensor].get(value, 0) + count
            total[tensor] += values[tensor].size
    chosen = dict(thresholds)
    for tensor in tensors:
        plateau = max(counts[tensor].items(), key=lambda entry: entry[1], default=None)
        if plateau and plateau[0] != 0 and plateau[1] >= PLATEAU_SHARE * total[tensor]:
            chosen[tensor] = exact_threshold(thresholds[tensor], plateau[0])
    return chosen


def exact_threshold(threshold, value):
    """The smallest threshold >= `threshold` whose E4M3 scale (threshold / 448) puts `value` exactly
    on the grid: |value| / scale is then the largest E4M3 number not above what it was. `threshold`
    itself when `value` is clipped by it or falls among the subnormals."""
    position = abs(value) * E4M3_MAX / threshold  # where the value falls on the grid, in units of the scale
    if not 2.0 ** -6 <= position <= E4M3_MAX:
        return threshold
    step = 2.0 ** (np.floor(np.log2(position)) - 3)  # three mantissa bits: 8 values per octave
    return float(threshold * position / (np.floor(position / step) * step))


def fake_quantize_e4m3(x, threshold):
    """QuantizeLinear -> DequantizeLinear in E4M3 with the scale threshold / 448."""
    scale = np.float32(threshold / E4M3_MAX)
    return to_e4m3(x / scale) * scale


def fp8_bias_corrections(source, layers, thresholds, items, options, int8_layers=()):
    """{layer: mean FP8 output error} of the MatMul `layers` with a float bias, as calib/outliers.py
    computes INT8's, with the weights as this FP8 graph rounds them (the layers named in
    `int8_layers`: INT8's error)."""
    others = [layer.node for layer in network_layers(source.model, source.metadata) if layer not in layers]
    quantized = insert_fp8_qdq(source, thresholds, others, [layer.node for layer in layers if layer.name in int8_layers])
    weights = {layer.name: dequantized_weight(quantized, layer) for layer in layers if layer.op_type == "MatMul"}
    biased = [layer for layer in layers if layer.name in weights and bias_of(source.model, layer)]
    return bias_corrections(source, weights, biased, thresholds, items, options.bias_correction, options.workers,
                            quantize_of=lambda layer: fake_quantize if layer.name in int8_layers else fake_quantize_e4m3)
