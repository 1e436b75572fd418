"""The quantizable layers of an exported graph, named as in the PyTorch model.

The exporter names ONNX nodes after the traced functions (`node_MatMul_12`) and stores MatMul
weights as anonymous transposed constants (`val_13`), so neither says which layer a node is.
The graph's structure does: one Conv (the patch embedding), then per block four MatMuls in
execution order (mlp1.fc1, mlp1.fc2 over features, mlp2.fc1, mlp2.fc2 over tokens), then one
Gemm (the head). Users name layers as the checkpoint does: ``patch_embed``, ``blocks.3``,
``blocks.3.mlp2``, ``blocks.3.mlp2.fc1``, ``head``.
"""

import dataclasses

from ffx.errors import FfxError

QUANTIZABLE_OP_TYPES = ("Conv", "MatMul", "Gemm")
BLOCK_LINEARS = ("mlp1.fc1", "mlp1.fc2", "mlp2.fc1", "mlp2.fc2")


@dataclasses.dataclass(frozen=True)
class Layer:
    name: str  # user-facing: patch_embed, blocks.0.mlp1.fc1, head
    node: str  # ONNX node name
    op_type: str
    activation: str  # the input tensor whose range is calibrated
    weight: str  # the initializer holding the weight


def network_layers(model, metadata):
    """The Conv/MatMul/Gemm nodes with a weight initializer, in graph order, with user names,
    the block count read from `metadata` (the model's ModelMetadata). When the graph does not
    have the exported structure, layers are named by node."""
    initializers = {init.name for init in model.graph.initializer}
    nodes = [
        node for node in model.graph.node
        if node.op_type in QUANTIZABLE_OP_TYPES and len(node.input) > 1 and node.input[1] in initializers
        and node.input[0] not in initializers
    ]
    depth = int(metadata.depth if metadata.depth is not None else -1)
    ops = [node.op_type for node in nodes]
    expected = ["Conv"] + ["MatMul"] * (4 * depth) + ["Gemm"]
    if ops == expected:
        names = ["patch_embed"] + [f"blocks.{i // 4}.{BLOCK_LINEARS[i % 4]}" for i in range(4 * depth)] + ["head"]
    else:
        names = [node.name for node in nodes]
    return [Layer(name, node.name, node.op_type, node.input[0], node.input[1]) for name, node in zip(names, nodes)]


def resolve_layer_selection(layers, selection, flag="--keep-fp"):
    """The layers that `selection` (user names such as ``head``, ``patch_embed``, ``blocks.3``,
    ``blocks.3.mlp2``, or node names; comma-separated strings allowed) refers to; `flag` names the
    option in the error about a name that matches none."""
    tokens = [token.strip() for entry in selection for token in str(entry).split(",") if token.strip()]
    chosen = []
    for token in tokens:
        key = token.rstrip(".")
        matched = [layer for layer in layers if layer.name == key or layer.name.startswith(key + ".") or layer.node == key]
        if not matched:
            raise FfxError(f"{flag} {token}: no such layer; {describe_layer_names(layers)}")
        chosen.extend(layer for layer in matched if layer not in chosen)
    return [layer for layer in layers if layer in chosen]


def describe_layer_names(layers):
    names = [layer.name for layer in layers]
    if names and names[0] == "patch_embed" and names[-1] == "head":
        depth = (len(names) - 2) // 4
        return (
            f"layers are patch_embed, blocks.0 .. blocks.{depth - 1} (each with mlp1.fc1, mlp1.fc2, "
            "mlp2.fc1, mlp2.fc2; mlp1 mixes features, mlp2 tokens), head"
        )
    return "layers are " + ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
