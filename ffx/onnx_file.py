"""Opening ONNX files that ffx may not have written: refuse what is not a model, and external
data that would make ffx read files outside the model's own folder."""

from pathlib import Path

import onnx
import onnx.external_data_helper

from ffx.errors import FfxError
from ffx.metadata import MAX_CLASSES


def load_onnx(path):
    """The ModelProto of `path` without its external weights (enough to inspect the graph)."""
    path = Path(path)
    if not path.is_file():
        raise FfxError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # DecodeError, ValueError, ... for files that are not ONNX
        raise FfxError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    # Protobuf parses an empty file (and some garbage) as an empty model without complaint.
    if not model.graph.node or not model.graph.input or not model.graph.output:
        raise FfxError(f"{path}: not a readable ONNX model (no graph inside)")
    check_external_data(model, path)
    return model


def load_external_weights(model, path):
    """Bring the external weights of `model` (loaded from `path` by `load_onnx`, which checked
    where they lie) into memory, for sessions built from the model in memory. True when it had any."""
    if not any(onnx.external_data_helper.uses_external_data(tensor) for tensor in model.graph.initializer):
        return False
    onnx.load_external_data_for_model(model, str(Path(path).resolve().parent))
    return True


def check_external_data(model, path):
    """FfxError unless every externally stored tensor lies in a file inside the model's own
    folder: no absolute paths, no `..`, no symlink leading out, no missing file. A model from
    elsewhere must not make ffx read (or hash, or send to a GPU) other files on the machine."""
    folder = Path(path).resolve().parent
    for tensor in model.graph.initializer:
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        target = Path(location)
        if not location or target.is_absolute() or ".." in target.parts:
            raise FfxError(f"{path}: tensor {tensor.name!r} stores its data at {location!r}; external data "
                           "must be a file name relative to the model's folder")
        resolved = (folder / target).resolve()
        if not resolved.is_relative_to(folder):
            raise FfxError(f"{path}: tensor {tensor.name!r} stores its data in {location}, a link leading out of "
                           "the model's folder; copy the data file next to the model")
        if not resolved.is_file():
            raise FfxError(f"{path}: tensor {tensor.name!r} stores its data in {location}, which is missing")


def external_data_files(path):
    """The files (relative paths, sorted) that hold the external weights of the ONNX at `path`,
    once checked to lie inside its folder: what must travel with the model when it is copied."""
    model = load_onnx(path)
    return sorted({next(entry.value for entry in tensor.external_data if entry.key == "location")
                   for tensor in model.graph.initializer if onnx.external_data_helper.uses_external_data(tensor)})


def input_size_mismatch(model, input_size):
    """A phrase saying how the graph's first input differs from [N, *input_size] (the (C, H, W)
    its metadata preprocesses images to), or None when they agree; unknown dims agree with any size."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    expected = [None, *input_size]
    if len(shape) != len(expected) or any(s is not None and s != e for s, e in zip(shape[1:], expected[1:])):
        shown = " x ".join("?" if s is None else str(s) for s in shape[1:]) if shape else "a scalar"
        return (f"its input takes {shown} but its ffx metadata preprocesses images to "
                f"{' x '.join(map(str, input_size))}; the graph and its metadata disagree (re-export it with `ffx export`)")
    return None


def check_input_size(model, metadata, path):
    """FfxError when the graph's input disagrees with the size its ffx `metadata` (a validated
    ModelMetadata) preprocesses images to; nothing to check when the metadata has no preprocessing."""
    preprocess = metadata.preprocess
    mismatch = preprocess and input_size_mismatch(model, preprocess.input_size)
    if mismatch:
        raise FfxError(f"{path}: {mismatch}")


def exact_quantized_arithmetic(session_options):
    """Make an onnxruntime CPU session run Q/DQ graphs as TensorRT computes them.

    onnxruntime fuses each DequantizeLinear -> MatMul/Conv/Gemm into its int8 CPU kernels. On x86
    CPUs without VNNI those kernels add pairs of u8 x s8 products in 16 bits, which saturate: on
    the Fashion fixture's INT8 graph (an AVX2-only AMD EPYC) the logit SNR against FP32 was 29.4 dB
    fused and 32.6 dB unfused. TensorRT accumulates int8 products in int32 and never makes that
    error, and neither do VNNI CPUs. Unfused, the same integers are dequantized and multiplied in
    float32: what TensorRT computes, on any CPU, at about the cost of the FP32 graph. Accuracy
    work (verify, predict, compare, sensitivity, calibration checks) uses this; speed work (bench,
    serve) keeps the fused kernels, which are what an onnxruntime CPU deployment runs."""
    session_options.add_session_config_entry("session.disable_quant_qdq", "1")
    return session_options
def check_logits_output(model, path):
    """FfxError when the graph declares its (first) output as anything but float logits [N, classes]
    (class indices, [N, 1, classes], no classes), before any image is read. Runners check what a
    graph leaves undeclared on the first call."""
    graph_output = model.graph.output[0]
    tensor = graph_output.type.tensor_type
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    problem = None
    if tensor.elem_type and tensor.elem_type not in floats:
        problem = f"is {onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name}"
    elif tensor.HasField("shape") and len(tensor.shape.dim) != 2:
        problem = f"has rank {len(tensor.shape.dim)}"
    elif tensor.HasField("shape") and tensor.shape.dim[1].HasField("dim_value") and tensor.shape.dim[1].dim_value < 1:
        problem = "has no classes"
    elif tensor.HasField("shape") and tensor.shape.dim[1].dim_value > MAX_CLASSES:
        problem = f"has {tensor.shape.dim[1].dim_value:,} classes, more than ffx's {MAX_CLASSES:,}"
    if problem:
        raise FfxError(f"{path}: output {graph_output.name!r} {problem}; ffx reads float logits [N, classes] "
                       "(a classifier's scores, not class indices)")
