"""Fold the input normalization (mean/std) into the patch-embedding convolution of an ONNX graph.

The stem is Conv(3, E, kernel=patch, stride=patch) with no padding, so every output position sees
whole input patches and the fold is exact in real arithmetic:

    conv(W, b)((x / s - mean) / std) = conv(W / (s * std), b - sum(W * mean / std))(x)

where s is the input scale (1: RGB in [0, 1]; 255: RGB in [0, 255]). The folded network takes
scaled RGB directly, which is what DeepStream's single `net-scale-factor` and most camera
pipelines can produce; the metadata records the fold (`Preprocess.normalization_folded`).
The new weights are computed in float64 and rounded once to float32.
"""

import dataclasses
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ffx.artifacts import check_output_path, sha256_bytes, write_bytes_atomic
from ffx.errors import FfxError, GateFailed
from ffx.export.limits import PARITY_ATOL, PARITY_RTOL
from ffx.metadata import INPUT_SCALES, set_onnx_metadata
from ffx.model_file import open_onnx


def fold_normalization_into_graph(model, preprocess, input_scale=1.0):
    """Rewrite `model` (an onnx.ModelProto, in place) so that it takes RGB scaled to
    [0, input_scale]; returns the folded Preprocess. FfxError when the graph's first layer is not
    a padding-free Conv fed by the graph input alone, or when it is already folded."""
    if preprocess.normalization_folded:
        raise FfxError("the model's normalization is already folded into its first layer")
    if float(input_scale) not in INPUT_SCALES:
        raise FfxError(f"input scale {input_scale}: use 1 (RGB in [0, 1]) or 255 (RGB in [0, 255])")
    graph = model.graph
    input_name = graph.input[0].name
    # Shape nodes read only the batch size; the pixels must reach exactly one convolution.
    consumers = [node for node in graph.node if input_name in node.input and node.op_type != "Shape"]
    if len(consumers) != 1 or consumers[0].op_type != "Conv" or consumers[0].input[0] != input_name:
        raise FfxError("the graph input does not feed exactly one convolution; cannot fold the normalization")
    conv = consumers[0]
    pads = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [])
    auto_pad = next((a.s.decode() for a in conv.attribute if a.name == "auto_pad"), "NOTSET")
    if any(pads) or auto_pad not in ("NOTSET", "VALID"):
        raise FfxError("the first convolution pads its input; folding the normalization would not be exact")
    initializers = {init.name: init for init in graph.initializer}
    if conv.input[1] not in initializers or (len(conv.input) > 2 and conv.input[2] not in initializers):
        raise FfxError("the first convolution's weights are not constants; cannot fold the normalization")
    weight = numpy_helper.to_array(initializers[conv.input[1]]).astype(np.float64)
    if weight.ndim != 4 or weight.shape[1] != len(preprocess.mean):
        raise FfxError(f"the first convolution takes {weight.shape[1]} channels, the normalization has {len(preprocess.mean)}")
    bias = (numpy_helper.to_array(initializers[conv.input[2]]).astype(np.float64) if len(conv.input) > 2
            else np.zeros(weight.shape[0]))
    folded_weight, folded_bias = fold_conv_weights(weight, bias, preprocess.mean, preprocess.std, input_scale)

    # New initializer names: the old ones might be shared with another node.
    weight_name, bias_name = f"{conv.input[1]}_normalization_folded", f"{conv.name or 'conv'}_bias_normalization_folded"
    graph.initializer.extend([numpy_helper.from_array(folded_weight.astype(np.float32), weight_name),
                              numpy_helper.from_array(folded_bias.astype(np.float32), bias_name)])
    conv.input[1] = weight_name
    if len(conv.input) > 2:
        conv.input[2] = bias_name
    else:
        conv.input.append(bias_name)
    still_used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return preprocess.folded(input_scale)


def fold_conv_weights(weight, bias, mean, std, input_scale=1.0):
    """(weight, bias) of a Conv that applied to RGB in [0, input_scale] equals the original Conv
    applied to ((x / input_scale) - mean) / std. float64 in, float64 out."""
    mean = np.asarray(mean, np.float64)
    std = np.asarray(std, np.float64)
    folded_weight = weight / (float(input_scale) * std)[None, :, None, None]
    folded_bias = bias - (weight * (mean / std)[None, :, None, None]).sum(axis=(1, 2, 3))
    return folded_weight, folded_bias


def normalize_network_input(pixels, preprocess):
    """What the unfolded network takes for `pixels`, float32 [N, C, H, W] in [0, input_scale]:
    the PyTorch-plus-normalization reference that parity checks compare a folded model with."""
    pixels = np.asarray(pixels, np.float32) / np.float32(preprocess.input_scale)
    mean = np.asarray(preprocess.mean, np.float32)[None, :, None, None]
    std = np.asarray(preprocess.std, np.float32)[None, :, None, None]
    return (pixels - mean) / std


def random_pixels(preprocess, sizes=(1, 3), seed=0):
    """Random network inputs in the folded model's range, one batch per size."""
    generator = np.random.default_rng(seed)
    shape = tuple(preprocess.input_size)
    return [generator.uniform(0.0, preprocess.input_scale, (n, *shape)).astype(np.float32) for n in sizes]


@dataclasses.dataclass
class FoldReport:
    output: str
    source: str
    input_scale: float
    max_abs_diff: float
    tolerance: float
    sha256: str
    seconds: float


def fold_onnx_file(source, output, input_scale=1.0):
    """An existing FP32 ffx ONNX -> the same model with the normalization folded in, written only
    if ONNX Runtime gives the same logits as the original on normalized inputs (export's
    tolerance; GateFailed otherwise)."""
    started = time.perf_counter()
    source = Path(source)
    check_output_path(output, [source])
    model_file = open_onnx(source, weights=True)  # refuses non-models and external data outside the model's folder
    model = model_file.graph
    metadata = model_file.metadata if model_file.recorded is not None else None
    if metadata is None or not metadata.has_preprocess:
        raise FfxError(f"{source}: has no ffx preprocessing metadata; export it with `ffx export` first")
    if metadata.precision not in (None, "fp32"):
        raise FfxError(f"{source}: is {metadata.precision}; fold the FP32 model, then calibrate the folded one")
    original = model.SerializeToString()
    folded_preprocess = fold_normalization_into_graph(model, metadata.checked_preprocess(), input_scale)
    set_onnx_metadata(model, dict(metadata.to_dict(), preprocess=folded_preprocess.to_dict()))
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()

    import onnxruntime

    sessions = [onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"]) for blob in (original, data)]
    input_name = model.graph.input[0].name
    max_abs = max_ref = 0.0
    for batch in random_pixels(folded_preprocess):
        expected = sessions[0].run(None, {input_name: normalize_network_input(batch, folded_preprocess)})[0]
        actual = sessions[1].run(None, {input_name: batch})[0]
        # np.max, not max(): Python's max() silently drops a NaN that comes second.
        max_abs = float(np.max([max_abs, np.abs(actual.astype(np.float64) - expected).max()]))
        max_ref = float(np.max([max_ref, np.abs(expected).max()]))
    tolerance = PARITY_ATOL + PARITY_RTOL * max_ref
    if not max_abs <= tolerance:  # also false for NaN
        raise GateFailed(f"the folded model differs from the original by up to {max_abs:.3g} "
                         f"(tolerance {tolerance:.3g}); {output} was not written")
    write_bytes_atomic(output, data)
    return FoldReport(output=str(output), source=str(source), input_scale=float(input_scale), max_abs_diff=max_abs,
                      tolerance=tolerance, sha256=sha256_bytes(data), seconds=time.perf_counter() - started)
