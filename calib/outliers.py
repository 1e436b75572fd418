"""Two corrections for what INT8 rounding does to this network, each behind an option until measured.

Both keep TensorRT's placement (Q/DQ only on Conv/MatMul/Gemm inputs, biases in float) and
use the FP32 activations of a sample of the calibration images, one extra pass:

- Output-aware ranges for post-GELU tensors (the inputs of each MLP's fc2): GELU outputs carry
  a few large outlier channels, and Fashion-MNIST's blank background makes many tokens
  identical across images, so rounding errors do not average out and a histogram of |x| alone
  cannot see what they cost. The threshold is instead chosen, among |x|max * 2^(-k/8), by the
  squared error of the layer's *output*, (Q(x) - x) W, with the weights as quantized.
- Bias correction: the mean output error of each quantized MatMul, Q(x) Wq - x W over the
  sample, is subtracted from its (float) bias, per output channel or per output position
  (token and channel: exact for the tokens that are the same in every image).

bench/int8_accuracy.py measures both on the full Fashion-MNIST test set.
"""

import numpy as np
from onnx import numpy_helper

from ffx.calib.model_io import cpu_session, with_outputs
from ffx.datasets import load_batches
from ffx.reporting import iterate_with_warnings_to

SAMPLE_IMAGES = 128  # calibration images the extra pass runs on
GELU_RANGE_STEPS = 25  # thresholds tried: |x|max * 2^(-k/8), k = 0 .. 24 (down to 1/8 of the max)
BIAS_CORRECTIONS = ("channel", "position")
GELU_RANGES = ("histogram", "output")
BATCH = 16


def post_gelu_layers(layers):
    """The layers whose input is a GELU output: each MLP's second Linear."""
    return [layer for layer in layers if layer.name.endswith(".fc2")]


def bias_of(model, layer):
    """(Add node, bias initializer name) that adds the bias to `layer`'s output, or None (Conv and
    Gemm carry their bias inside)."""
    initializers = {init.name for init in model.graph.initializer}
    output = next(node.output[0] for node in model.graph.node if node.name == layer.node)
    for node in model.graph.node:
        if node.op_type == "Add" and output in node.input:
            others = [name for name in node.input if name != output]
            if len(others) == 1 and others[0] in initializers:
                return node, others[0]
    return None


def dequantized_weight(qdq_model, layer):
    """The weight of `layer` as its Q/DQ graph computes it (int8 values times per-channel scale)."""
    initializers = {init.name: init for init in qdq_model.graph.initializer}
    node = next(node for node in qdq_model.graph.node if node.name == layer.node)
    dequantize = next(n for n in qdq_model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == node.input[1])
    values = numpy_helper.to_array(initializers[dequantize.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(initializers[dequantize.input[1]]).astype(np.float64)
    axis = next((a.i for a in dequantize.attribute if a.name == "axis"), 1)
    shape = [1] * values.ndim
    shape[axis] = -1
    return values * scale.reshape(shape)


def fake_quantize(x, threshold):
    """QuantizeLinear -> DequantizeLinear with a symmetric int8 scale threshold / 127."""
    scale = np.float32(threshold / 127)
    return np.clip(np.rint(x / scale), -128, 127) * scale


def sampled_activations(source, items, tensors, workers=0):
    """Yield {tensor: FP32 activations} per batch of the first SAMPLE_IMAGES calibration images."""
    graph_inputs = {value.name for value in source.model.graph.input}
    fetched = [tensor for tensor in tensors if tensor not in graph_inputs]
    session = cpu_session(with_outputs(source.model, fetched), source.path)
    loader = load_batches(items[:SAMPLE_IMAGES], source.preprocess, BATCH, workers=workers, progress=False,
                          description="outlier statistics")
    for batch in iterate_with_warnings_to(None, loader):
        values = dict(zip(fetched, session.run(fetched, {source.input_name: batch.images})))
        values.update({name: batch.images for name in tensors if name in graph_inputs})
        yield values


def output_aware_thresholds(source, weights, layers, absmax, items, workers=0):
    """{activation: threshold} for `layers` minimising their output's squared error on the sample.
    `weights`: {layer name: weight as quantized}; `absmax`: {activation: |x| max}."""
    candidates = {layer.name: absmax[layer.activation] * 2.0 ** (-np.arange(GELU_RANGE_STEPS) / 8) for layer in layers}
    errors = {layer.name: np.zeros(GELU_RANGE_STEPS) for layer in layers}
    for values in sampled_activations(source, items, [layer.activation for layer in layers], workers):
        for layer in layers:
            x = values[layer.activation]
            for k, threshold in enumerate(candidates[layer.name]):
                difference = (fake_quantize(x, threshold) - x).reshape(-1, x.shape[-1])
                errors[layer.name][k] += float(np.sum((difference @ weights[layer.name]) ** 2))
    return {layer.activation: float(candidates[layer.name][int(np.argmin(errors[layer.name]))]) for layer in layers}


def bias_corrections(source, weights, layers, thresholds, items, mode, workers=0, quantize_of=lambda layer: fake_quantize):
    """{layer: the mean of Q(x) Wq - x W over the sample}, per output channel ([H]) or per output
    position ([positions..., H]), for MatMul `layers` with a float bias. `quantize_of(layer)(x,
    threshold)` is the layer's activation Q/DQ (INT8's by default; FP8 passes E4M3's, and INT8's
    for its INT8 layers)."""
    sums, count = {}, 0
    float_weights = {init.name: numpy_helper.to_array(init).astype(np.float64) for init in source.model.graph.initializer}
    for values in sampled_activations(source, items, [layer.activation for layer in layers], workers):
        for layer in layers:
            x = values[layer.activation].astype(np.float64)
            error = quantize_of(layer)(x, thresholds[layer.activation]) @ weights[layer.name] - x @ float_weights[layer.weight]
            sums[layer] = sums.get(layer, 0) + error.sum(axis=0)
        count += len(next(iter(values.values())))
    means = {layer: total / count for layer, total in sums.items()}
    if mode == "channel":
        means = {layer: mean.reshape(-1, mean.shape[-1]).mean(axis=0) for layer, mean in means.items()}
    return means


def correct_biases(model, source, corrections):
    """Subtract each correction ({layer: array}) from the bias its layer adds, in `model` (the
    Q/DQ graph, whose bias initializers keep the source's names)."""
    initializers = {init.name: init for init in model.graph.initializer}
    for layer, correction in corrections.items():
        _, bias_name = bias_of(source.model, layer)
        bias = numpy_helper.to_array(initializers[bias_name]).astype(np.float64)
        initializers[bias_name].CopyFrom(numpy_helper.from_array((bias - correction).astype(np.float32), bias_name))
