"""Channel smoothing of post-GELU tensors before INT8 (``ffx calibrate --smooth-gelu``).

TensorRT quantizes activations per tensor, with zero point 0. A post-GELU tensor (the input of
an MLP's fc2) breaks both assumptions: a few outlier channels reach 10x the median channel's
range (on the Fashion-MNIST fixture, block 0's widest channel reaches 8.9 against a median of
0.65), and GELU outputs barely go below zero (-0.17), so half of the int8 codes go unused.

For such a tensor x, with per-channel centre z_j = (max_j + min_j) / 2 and half-range r_j over
a sample of calibration images, the graph computes fc2 as

    fc2(x) = ((x - z) / s) @ (diag(s) W) + (b + z @ W)

which is the same function in FP32: a per-channel Add and Mul before the Q/DQ, fc2's weight rows
scaled by s and its bias shifted. The quantized tensor (x - z) / s has centred, evened-out
channels. s is SmoothQuant's migration, s_j = r_j^alpha / max|W_j|^(1 - alpha) with alpha 0.5,
moving part of each channel's range into the (per-channel quantized) weights. Only tensors whose
widest channel's half-range is at least SMOOTHING_SPREAD times the median channel's are smoothed.

TensorRT fuses the Add and Mul into the GELU before the quantizer; onnxruntime on the CPU runs
them as two more nodes per smoothed tensor. `python -m bench.int8_accuracy` measures both the
fidelity gained and the CPU time it costs (BENCHMARKS.md section 6).

SmoothQuant's usual form, scales folded into a LayerNorm, is not offered: the LayerNorm outputs of
this network have no outlier channels (widest channel at most 2.1x the median on the Fashion-MNIST
fixture, BENCHMARKS.md section 6b), so there is nothing to move.
"""

import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ffx.artifacts import sha256_bytes
from ffx.calib.outliers import BATCH, bias_of, post_gelu_layers, sampled_activations
from ffx.datasets import load_batches
from ffx.reporting import silenced

SMOOTHING_ALPHA = 0.5
SMOOTHING_SPREAD = 5.0
# The smoothed FP32 graph must give the source's logits to this relative tolerance (of the largest
# |logit|) on a batch of sample images; anything more is a defect here, not an INT8 effect.
EXACTNESS_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class SmoothedTensor:
    layer: str  # the fc2 it feeds, as --keep-fp names it
    tensor: str  # the post-GELU tensor in the source graph
    spread: float  # widest channel's half-range / median channel's, before smoothing

    def to_dict(self):
        return {"layer": self.layer, "tensor": self.tensor, "spread": round(self.spread, 3)}


def smooth_post_gelu(source, layers, items, workers=0):
    """(source with its outlier post-GELU tensors smoothed, [SmoothedTensor]) for the MatMul fc2
    `layers` of `source`, from the channel ranges over the sample of calibration `items`.
    The source comes back unchanged when no tensor qualifies."""
    candidates = [layer for layer in post_gelu_layers(layers) if _smoothable(source.model, layer)]
    if not candidates:
        return source, []
    ranges = channel_ranges(source, items, [layer.activation for layer in candidates], workers)
    model = onnx.ModelProto()
    model.CopyFrom(source.model)
    smoothed = []
    for layer in candidates:
        low, high = ranges[layer.activation]
        centre, half_range = (high + low) / 2, (high - low) / 2
        spread = channel_spread(half_range)
        if spread < SMOOTHING_SPREAD:
            continue
        _rewrite(model, source.model, layer, centre, half_range)
        smoothed.append(SmoothedTensor(layer.name, layer.activation, spread))
    if not smoothed:
        return source, []
    result = dataclasses.replace(source, model=model, derived_sha256=sha256_bytes(model.SerializeToString()))
    _check_exact(source, result, items)
    return result, smoothed


def _smoothable(model, layer):
    """An fc2 MatMul that is its activation's only reader, with its own weight and a float bias."""
    if layer.op_type != "MatMul" or bias_of(model, layer) is None:
        return False
    readers = [node for node in model.graph.node if layer.activation in node.input]
    weight_readers = [node for node in model.graph.node if layer.weight in node.input]
    return len(readers) == 1 and len(weight_readers) == 1


def channel_ranges(source, items, tensors, workers=0):
    """{tensor: (per-channel min, per-channel max)} over the sample of calibration `items`; the
    channels are the last axis, the one the consuming MatMul contracts."""
    lows, highs = {}, {}
    for values in sampled_activations(source, items, tensors, workers):
        for tensor in tensors:
            x = values[tensor].reshape(-1, values[tensor].shape[-1]).astype(np.float64)
            lows[tensor] = np.minimum(lows.get(tensor, np.inf), x.min(axis=0))
            highs[tensor] = np.maximum(highs.get(tensor, -np.inf), x.max(axis=0))
    return {tensor: (lows[tensor], highs[tensor]) for tensor in tensors}


def channel_spread(half_range):
    """The widest channel's half-range over the median channel's (channels that never vary left out)."""
    live = half_range[half_range > 0]
    return float(live.max() / np.median(live)) if live.size else 0.0


def _rewrite(model, original, layer, centre, half_range):
    """Insert (x - centre) / s before `layer` and fold s and the centre into its weight and bias."""
    initializers = {init.name: init for init in model.graph.initializer}
    weight = numpy_helper.to_array(initializers[layer.weight]).astype(np.float64)  # [in, out]
    row_max = np.abs(weight).max(axis=1)
    live = (half_range > 0) & (row_max > 0)
    scale = np.ones_like(half_range)
    scale[live] = half_range[live] ** SMOOTHING_ALPHA / row_max[live] ** (1 - SMOOTHING_ALPHA)
    scale[live] /= np.exp(np.mean(np.log(scale[live])))  # geometric mean 1: the tensor keeps its size
    _, bias_name = bias_of(original, layer)
    bias = numpy_helper.to_array(initializers[bias_name]).astype(np.float64)
    initializers[layer.weight].CopyFrom(numpy_helper.from_array((weight * scale[:, None]).astype(np.float32), layer.weight))
    initializers[bias_name].CopyFrom(numpy_helper.from_array((bias + centre @ weight).astype(np.float32), bias_name))

    shift, inverse = f"{layer.activation}/smooth_shift", f"{layer.activation}/smooth_inverse_scale"
    shifted, smoothed = f"{layer.activation}/shifted", f"{layer.activation}/smoothed"
    model.graph.initializer.extend([numpy_helper.from_array((-centre).astype(np.float32), shift),
                                    numpy_helper.from_array((1 / scale).astype(np.float32), inverse)])
    position, node = next((i, node) for i, node in enumerate(model.graph.node) if node.name == layer.node)
    node.input[0] = smoothed
    model.graph.node.insert(position, helper.make_node("Mul", [shifted, inverse], [smoothed], name=f"{layer.node}/smooth_scale"))
    model.graph.node.insert(position, helper.make_node("Add", [layer.activation, shift], [shifted], name=f"{layer.node}/smooth_shift"))


def unsmooth(model, original, tensors):
    """Undo the smoothing of `tensors` ([SmoothedTensor]) in `model`: the fc2 reads its post-GELU
    tensor again, with the weight and bias of `original` (the unsmoothed source graph)."""
    if not tensors:
        return
    originals = {init.name: init for init in original.graph.initializer}
    initializers = {init.name: init for init in model.graph.initializer}
    removed_nodes, removed_initializers = set(), set()
    for tensor in tensors:
        shift = next(node for node in model.graph.node if node.op_type == "Add" and node.input[0] == tensor.tensor
                     and node.output[0] == f"{tensor.tensor}/shifted")
        scale = next(node for node in model.graph.node if node.input and node.input[0] == shift.output[0])
        fc2 = next(node for node in model.graph.node if scale.output[0] in node.input)
        fc2.input[0] = tensor.tensor
        removed_nodes.update({shift.name, scale.name})
        removed_initializers.update({shift.input[1], scale.input[1]})
        bias_add = next(node for node in model.graph.node if node.op_type == "Add" and fc2.output[0] in node.input)
        for name in (fc2.input[1], *[name for name in bias_add.input if name in originals]):
            initializers[name].CopyFrom(originals[name])
    nodes = [node for node in model.graph.node if node.name not in removed_nodes]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [init for init in model.graph.initializer if init.name not in removed_initializers]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def _check_exact(source, smoothed, items):
    from ffx.calib.sensitivity import run_model

    with silenced():
        batch = next(iter(load_batches(items[:BATCH], source.preprocess, BATCH, workers=0, progress=False)), None)
    if batch is None:
        return
    before, after = run_model(source.model, batch.images), run_model(smoothed.model, batch.images)
    error = float(np.max(np.abs(after - before)))
    if error > EXACTNESS_TOLERANCE * max(float(np.max(np.abs(before))), 1.0):
        raise RuntimeError(f"smoothing the post-GELU tensors changed the FP32 logits by up to {error:.3g}")
