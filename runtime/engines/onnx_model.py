"""What an ONNX file is, read from the graph itself: precision, Q/DQ count, op histogram. (The
calibration manifest that came with a Q/DQ model: ffx.calibration_manifest, ffx.model_file.)"""

import collections

import onnx

from ffx.onnx_file import load_onnx  # noqa: F401  (runtime modules import it from here)

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# ONNX's float8 element types (onnx 1.14+): Q/DQ with one of them as its zero point is FP8.
FLOAT8_TYPES = frozenset(getattr(onnx.TensorProto, name) for name in
                         ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ")
                         if hasattr(onnx.TensorProto, name))


def op_histogram(model):
    return dict(collections.Counter(node.op_type for node in model.graph.node).most_common())


def graph_precision(model):
    """"fp8" when the graph has Q/DQ pairs with float8 zero points (any: FP8 then decides which GPUs
    can run it), "int8" when it has other Q/DQ pairs, "fp16" when its weights or casts are float16,
    else "fp32"."""
    ops = {node.op_type for node in model.graph.node}
    if ops & set(QDQ_OPS):
        return "fp8" if _has_float8_qdq(model) else "int8"
    float16 = onnx.TensorProto.FLOAT16
    if any(init.data_type == float16 for init in model.graph.initializer):
        return "fp16"
    for node in model.graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == float16 for a in node.attribute):
            return "fp16"
    return "fp32"


def int8_layer_count(model):
    """How many Conv/MatMul/Gemm read an INT8 DequantizeLinear (an int8 zero point): in an FP8
    graph, the layers `ffx calibrate --int8-layers` wrote in INT8."""
    int8 = {init.name for init in model.graph.initializer if init.data_type == onnx.TensorProto.INT8}
    dequantized = {node.output[0] for node in model.graph.node
                   if node.op_type == "DequantizeLinear" and len(node.input) > 2 and node.input[2] in int8}
    return sum(1 for node in model.graph.node
               if node.op_type in ("Conv", "MatMul", "Gemm") and node.input and node.input[0] in dequantized)


def _has_float8_qdq(model):
    float8 = {init.name for init in model.graph.initializer if init.data_type in FLOAT8_TYPES}
    for node in model.graph.node:  # zero points written as Constant nodes count too
        if node.op_type == "Constant" and any(a.t.data_type in FLOAT8_TYPES for a in node.attribute if a.name == "value"):
            float8.update(node.output)
    return any(node.op_type in QDQ_OPS and len(node.input) > 2 and node.input[2] in float8 for node in model.graph.node)

