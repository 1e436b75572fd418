"""Block by block, how far a converted graph (INT8 or FP8 Q/DQ, FP16) drifts from its FP32 source.

The points compared are the residual stream of the network: the embedded tokens, the output of
each block's feature MLP and token MLP (the residual Adds), and the logits. Every point is read
from both graphs on the same preprocessed images (the converted graph keeps the FP32 tensor
names), so the table shows where the error enters and how it grows through depth, the idea of
Polygraphy's mark-all comparison written for this network.
"""

import dataclasses

import numpy as np

from ffx.calib.layers import network_layers
from ffx.calib.model_io import cpu_session, load_source_model, with_outputs
from ffx.datasets import load_batches, open_dataset, select_images
from ffx.errors import FfxError
from ffx.fidelity import row_cosines, snr_db
from ffx.metadata import lineage_mismatch
from ffx.model_file import open_onnx
from ffx.reporting import silenced, warn

DEFAULT_IMAGES = 200
BATCH = 50


@dataclasses.dataclass
class PointError:
    point: str  # embedding, blocks.N.mlp1, blocks.N.mlp2, logits
    tensor: str
    relative_error: float  # ||candidate - fp32|| / ||fp32|| over all images
    cosine_min: float  # per-image cosine similarity, worst image
    snr_db: float
    growth: float | None  # relative_error / the previous point's


@dataclasses.dataclass
class LayerwiseComparison:
    reference: str
    candidate: str
    images: int
    agreement: float  # % of images with the same top-1 class
    points: list  # PointError, input to output

    def to_dict(self):
        return dataclasses.asdict(self)


def residual_points(model, metadata):
    """[(point name, tensor)] of the residual stream in graph order: the embedded tokens, each
    residual Add, and the graph output."""
    produced = {out for node in model.graph.node if node.op_type != "Constant" for out in node.output}
    residual_adds = [node for node in model.graph.node
                     if node.op_type == "Add" and len(node.input) == 2 and all(name in produced for name in node.input)]
    layers = network_layers(model, metadata)
    depth = (len(layers) - 2) // 4 if layers and layers[0].name == "patch_embed" else None
    points = []
    if depth is not None and len(residual_adds) == 2 * depth:
        embedding = residual_adds[0].input[0] if depth else None
        if embedding:
            points.append(("embedding", embedding))
        points += [(f"blocks.{i // 2}.mlp{1 + i % 2}", node.output[0]) for i, node in enumerate(residual_adds)]
    else:
        points += [(node.name, node.output[0]) for node in residual_adds]
    points.append(("logits", model.graph.output[0].name))
    return points


def compare_layerwise(reference_path, candidate_path, data, num_images=DEFAULT_IMAGES, seed=0, progress=None):
    """Compare the residual stream of `candidate_path` with its FP32 source `reference_path` on
    `num_images` images of `data`.

    Returns:
        LayerwiseComparison, input to output.
    """
    source = load_source_model(reference_path)
    candidate_file = open_onnx(candidate_path, weights=True)
    candidate, candidate_metadata = candidate_file.graph, candidate_file.metadata  # empty without
    candidate_file.check_graph()  # as every model ffx reads
    points = residual_points(source.model, source.metadata)
    candidate_tensors = {out for node in candidate.graph.node for out in node.output}
    candidate_tensors.update(value.name for value in candidate.graph.output)
    missing = [tensor for _, tensor in points if tensor not in candidate_tensors]
    if missing:
        raise FfxError(f"{candidate_path}: has no tensor {missing[0]!r} of {reference_path}; "
                       "compare a graph converted from this FP32 model")
    lineage = lineage_mismatch(candidate_metadata, source.metadata)
    if lineage:
        warn(f"{candidate_path} was {lineage}: the comparison is between two networks, not a conversion and its source")
    with silenced():
        dataset = open_dataset(data, class_names=source.metadata.class_names)
    items = select_images(dataset.items, num_images, seed)
    tensors = [tensor for _, tensor in points]
    reference_session = cpu_session(with_outputs(source.model, tensors), reference_path)
    candidate_session = cpu_session(with_outputs(candidate, tensors), candidate_path)
    sums = {tensor: [0.0, 0.0] for tensor in tensors}  # [sum fp32^2, sum error^2]
    cosine_min = dict.fromkeys(tensors, 1.0)
    agreeing = count = 0
    loader = load_batches(items, source.preprocess, BATCH, workers=0, progress=progress, description="images")
    for batch in loader:
        expected = _run(reference_session, tensors, batch.images)
        produced = _run(candidate_session, tensors, batch.images)
        for tensor in tensors:
            r = expected[tensor].reshape(len(batch.images), -1).astype(np.float64)
            c = produced[tensor].reshape(len(batch.images), -1).astype(np.float64)
            if r.shape != c.shape:
                raise FfxError(f"{candidate_path}: its tensor {tensor!r} has shape {list(produced[tensor].shape)} where "
                               f"{reference_path}'s has {list(expected[tensor].shape)}; compare a graph converted from "
                               "this FP32 model")
            sums[tensor][0] += float(np.sum(r ** 2))
            sums[tensor][1] += float(np.sum((c - r) ** 2))
            cosine_min[tensor] = min(cosine_min[tensor], float(row_cosines(r, c).min()))
        logits = tensors[-1]
        agreeing += int(np.sum(expected[logits].argmax(1) == produced[logits].argmax(1)))
        count += len(batch.images)
    if count == 0:
        raise FfxError(f"none of the {len(items)} chosen images in {data} could be read")
    rows, previous = [], None
    for name, tensor in points:
        signal, noise = sums[tensor]
        relative = float(np.sqrt(noise / signal)) if signal > 0 else float("inf")
        rows.append(PointError(
            point=name, tensor=tensor, relative_error=relative, cosine_min=cosine_min[tensor],
            snr_db=round(snr_db(signal, noise), 3),
            growth=round(relative / previous, 3) if previous else None,
        ))
        previous = relative
    return LayerwiseComparison(str(reference_path), str(candidate_path), count, round(100 * agreeing / count, 4), rows)


def _run(session, tensors, images):
    name = session.get_inputs()[0].name
    return dict(zip(tensors, session.run(tensors, {name: images})))
