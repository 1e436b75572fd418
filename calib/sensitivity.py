"""Which layers cost INT8 accuracy: each quantizable layer quantized alone and kept in float alone,
measured against FP32 on held-out images, and the smallest float set that reaches a target.

Every variant comes from one Q/DQ graph built exactly as `calibrate_int8` builds it (same
statistics, same cache entry, same thresholds): keeping a layer in float rewires its Conv/MatMul/
Gemm back to the float activation and weight and drops its now unused Q/DQ nodes, which is the
graph `calibrate_int8` writes with that layer in `keep_fp`. Held-out images are never the
calibration images: they are the rest of the calibration data set (or another data set).
"""

import dataclasses

import numpy as np
import onnx

from ffx.calib.int8 import calibration_statistics, insert_qdq, quantization_plan
from ffx.calib.precisions import qdq_recipe
from ffx.calib.outliers import bias_of, correct_biases
from ffx.calib.model_io import cpu_session, load_source_model
from ffx.calib.statistics import load_reference_logits, reference_logits_key, save_reference_logits
from ffx.datasets import ImageDataset, load_batches, open_dataset, select_images
from ffx.errors import FfxError
from ffx.fidelity import row_cosines, snr_db, summed_errors
from ffx.progress import Progress
from ffx.reporting import silenced, warn

DEFAULT_HELD_OUT_IMAGES = 500  # `ffx sensitivity`'s default too: ranks the layers of a small model in well under a minute
EVAL_BATCH = 8  # images per onnxruntime call: deep fixture on 2 cores, FP32 48.6 img/s at 8, 42.6 at 32, 38.1 at 128

UNUSED_CALIBRATION_IMAGES = "(the images not used for calibration)"  # how held-out images from --data are described


@dataclasses.dataclass
class Fidelity:
    """How close a graph's logits are to FP32's on the held-out images."""

    agreement: float  # % of images with FP32's top-1 class
    cosine: float  # mean per-image cosine similarity of the logits
    snr_db: float  # 10 log10(sum FP32 logits^2 / sum error^2)
    top1: float | None  # % correct, when the images are labelled


@dataclasses.dataclass
class LayerSensitivity:
    name: str
    op_type: str
    flops_share: float  # share of the model's Conv/MatMul/Gemm multiply-adds
    quantized_alone: Fidelity  # only this layer in INT8
    float_alone: Fidelity  # every layer in INT8 but this one
    error_share: float = 0.0  # its logit error power alone, as a share of the sum over all layers


@dataclasses.dataclass
class SensitivityReport:
    model: str
    method: str
    calibration_images: int
    held_out_images: int
    held_out_source: str
    fp32_top1: float | None
    all_int8: Fidelity
    layers: list  # LayerSensitivity, most harmful first
    cache: str
    seconds: float
    # The all-INT8 SNR that the sum of the layers' error powers predicts (rounding errors of
    # different layers are nearly independent, so they add): close to all_int8.snr_db when they do.
    predicted_snr_db: float | None = None

    def to_dict(self):
        return dataclasses.asdict(self)


class HeldOutSet:
    """Decoded held-out images, their FP32 logits and labels: the yardstick of every variant."""

    def __init__(self, images, labels, reference_logits, source, reference_cache="off"):
        self.images = images
        self.labels = labels
        self.reference_logits = reference_logits
        self.source = source
        self.reference_cache = reference_cache  # FP32 logits: "hit", "miss" (computed and stored) or "off"

    def __len__(self):
        return len(self.images)

    def fidelity(self, model_bytes):
        logits = run_model(model_bytes, self.images)
        return fidelity_of(logits, self.reference_logits, self.labels)

    def closest_calls_first(self):
        """Image indices by FP32's margin (top-1 logit minus the runner-up), smallest first: the
        images a quantized graph flips are almost all among the first."""
        top_two = np.sort(self.reference_logits, axis=1)[:, -2:]
        return np.argsort(top_two[:, 1] - top_two[:, 0], kind="stable")


def run_model(model, images, progress=None, description=None):
    """Logits of an ONNX model (bytes or ModelProto) on `images`, onnxruntime on the CPU;
    `progress` (see ffx.progress) counts the images when `description` names the step."""
    session = cpu_session(model)
    name = session.get_inputs()[0].name
    logits = []
    with Progress(len(images), description or "images", enabled=progress if description else False) as bar:
        for start in range(0, len(images), EVAL_BATCH):
            logits.append(session.run(None, {name: images[start:start + EVAL_BATCH]})[0])
            bar.update(len(logits[-1]))
    return np.concatenate(logits)


def fidelity_of(logits, reference, labels=None):
    logits, reference = logits.astype(np.float64), reference.astype(np.float64)
    snr = snr_db(float(np.sum(reference ** 2)), float(np.sum((logits - reference) ** 2)))
    return Fidelity(
        agreement=round(100 * float(np.mean(logits.argmax(1) == reference.argmax(1))), 4),
        cosine=float(np.mean(row_cosines(reference, logits))),
        snr_db=round(snr, 3),
        top1=round(100 * float(np.mean(logits.argmax(1) == labels)), 4) if labels is not None else None,
    )


class QuantizedVariants:
    """The source model with any chosen set of its quantizable layers in INT8."""

    def __init__(self, source, layers, thresholds, corrections, insert=insert_qdq):
        self.source = source
        self.layers = layers
        self.all_int8 = insert(source, thresholds, [])  # every layer quantized (INT8, or FP8 with calib.fp8's insert)
        correct_biases(self.all_int8, source, corrections)
        self.corrected = set(corrections)
        self.weights = {init.name: init for init in source.model.graph.initializer}

    def with_float(self, float_layers):
        """ModelProto: every layer in INT8 except `float_layers` (Layer objects)."""
        model = onnx.ModelProto()
        model.CopyFrom(self.all_int8)
        names = {layer.node: layer for layer in float_layers}
        present = {init.name for init in model.graph.initializer}
        for node in model.graph.node:
            layer = names.get(node.name)
            if layer is None:
                continue
            node.input[0], node.input[1] = layer.activation, layer.weight
            if layer.weight not in present:
                model.graph.initializer.append(self.weights[layer.weight])
                present.add(layer.weight)
        initializers = {init.name: init for init in model.graph.initializer}
        for layer in float_layers:
            if layer in self.corrected:  # a float layer has no INT8 error to correct
                _, bias = bias_of(self.source.model, layer)
                initializers[bias].CopyFrom(self.weights[bias])
        _drop_unused(model)
        return model

    def quantized_only(self, layer):
        return self.with_float([other for other in self.layers if other is not layer])


def _drop_unused(model):
    """Remove nodes and initializers nothing reads any more (the Q/DQ of float layers)."""
    graph = model.graph
    needed = {value.name for value in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def matmul_flops(model, layers):
    """{layer name: multiply-adds per image} of each Conv/MatMul/Gemm, from inferred shapes."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node}
    flops = {}
    for layer in layers:
        node, weight = nodes[layer.node], weights[layer.weight]
        output = shapes.get(node.output[0])
        if not output:
            raise FfxError(f"{layer.name}: the shape of its output cannot be inferred")
        per_output = int(np.prod(weight[1:])) if layer.op_type == "Conv" else weight[0]
        if layer.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            per_output = weight[1]
        flops[layer.name] = int(np.prod(output[1:])) * int(per_output)
    return flops


def held_out_candidates(source, calibration, held_out_data=None):
    """(the images that may be held out, where they come from): `held_out_data` when given,
    otherwise the rest of the calibration data set; never a calibration image."""
    if held_out_data is not None:
        with silenced():
            dataset = held_out_data if isinstance(held_out_data, ImageDataset) else open_dataset(
                held_out_data, class_names=source.metadata.class_names)
        where = str(held_out_data.root if isinstance(held_out_data, ImageDataset) else held_out_data)
    else:
        dataset, where = calibration.dataset, f"{calibration.data_path} {UNUSED_CALIBRATION_IMAGES}"
    used = {str(item.path) for item in calibration.items}
    candidates = [item for item in dataset.items if str(item.path) not in used]
    if not candidates:
        raise FfxError(f"{where}: no images left that are not calibration images; give a held-out data set")
    return candidates, where


def choose_held_out(candidates, count, seed):
    """`count` of the candidates (stratified, seeded apart from the calibration choice)."""
    return select_images(candidates, count, seed + 1)


def held_out_set(source, calibration, count, seed, held_out_data=None, progress=None, cache_dir=None,
                 workers=0):
    """`count` images (stratified, seeded) not among the calibration images: from `held_out_data`
    when given, otherwise from the rest of the calibration data set; decoded, with FP32 logits."""
    candidates, where = held_out_candidates(source, calibration, held_out_data)
    chosen = choose_held_out(candidates, count, seed)
    if len(chosen) < count:
        warn(f"{where} has only {len(chosen)} held-out images; measuring on those instead of {count}")
    return decode_held_out(source, chosen, where, workers, progress, cache_dir)


def decode_held_out(source, chosen, where, workers=0, progress=None, cache_dir=None):
    """The HeldOutSet of the images `chosen`: decoded once (in `workers` processes), with the FP32
    model's logits, read from `cache_dir` when an earlier run computed them for the same model,
    preprocessing and image bytes."""
    images, labels, hashes = [], [], []
    loader = load_batches(chosen, source.preprocess, EVAL_BATCH, workers=workers, progress=progress,
                          description="held-out images")
    for batch in loader:
        images.append(batch.images)
        labels.extend(batch.labels)
        hashes.extend(batch.sha256)
    if not images:
        raise FfxError(f"none of the held-out images in {where} could be read")
    images = np.concatenate(images)
    labelled = all(label is not None for label in labels)
    key = reference_logits_key(source, hashes)
    reference = load_reference_logits(cache_dir, key, len(images)) if cache_dir is not None else None
    cache = "hit" if reference is not None else ("miss" if cache_dir is not None else "off")
    if reference is None:
        reference = run_model(source.model, images, progress, "FP32 on the held-out images")
        if cache_dir is not None and not save_reference_logits(cache_dir, key, reference):
            cache = "off"
    return HeldOutSet(images, np.asarray(labels, np.int64) if labelled else None, reference, where, cache)


def quantized_variants(recipe, source, stats, images, options):
    """QuantizedVariants of every quantizable layer of `source` in `recipe`'s precision, with the
    ranges its calibration on `images` (their statistics `stats`) would choose."""
    layers, _ = quantization_plan(source, ())
    recipe = recipe.configured(source, options)
    return QuantizedVariants(source, layers, *recipe.ranges(source, layers, stats, images.items, options),
                             insert=recipe.insert)


def prepare(onnx_path, data, options, held_out_images, held_out_data=None, progress=None):
    """(source, QuantizedVariants, HeldOutSet, statistics) for a sensitivity analysis or search."""
    recipe = qdq_recipe(options.precision)  # INT8 or FP8, as `ffx calibrate` writes it
    recipe.check()  # before any image is read
    source, images, stats, _ = calibration_statistics(load_source_model(onnx_path), data, options, progress)
    variants = quantized_variants(recipe, source, stats, images, options)
    held_out = held_out_set(source, images, held_out_images, options.seed, held_out_data, progress,
                            options.statistics_cache, options.workers)
    return source, variants, held_out, stats


def layer_sensitivity(onnx_path, data, options, held_out_images=DEFAULT_HELD_OUT_IMAGES, held_out_data=None,
                      progress=None, on_layer=None):
    """Per quantizable layer: fidelity with it alone in INT8 and with it alone in float, and its
    share of the matrix-product FLOPs. Layers come most harmful first (lowest SNR quantized alone).

    Args:
        onnx_path: the FP32 ONNX that `ffx export` wrote.
        data: calibration images (as for `calibrate_int8`); the held-out images come from the rest.
        options: CalibrationOptions (method, images, seed, cache) the INT8 graph is calibrated with.
        held_out_images: how many held-out images to measure on.
        held_out_data: a separate held-out data set (default: the rest of `data`).
        on_layer: called with (index, count, layer name) before each layer is measured.
    """
    import time

    started = time.perf_counter()
    source, variants, held_out, stats = prepare(onnx_path, data, options, held_out_images, held_out_data, progress)
    flops = matmul_flops(source.model, variants.layers)
    total = sum(flops.values())
    rows = []
    with Progress(len(variants.layers), "sensitivity", unit="layers", enabled=progress) as bar:
        for index, layer in enumerate(variants.layers):
            if on_layer is not None:
                on_layer(index, len(variants.layers), layer.name)
            bar.note(layer.name)
            rows.append(LayerSensitivity(
                name=layer.name,
                op_type=layer.op_type,
                flops_share=flops[layer.name] / total,
                quantized_alone=held_out.fidelity(variants.quantized_only(layer)),
                float_alone=held_out.fidelity(variants.with_float([layer])),
            ))
            bar.update(1)
    rows.sort(key=lambda row: (row.quantized_alone.snr_db, row.name))
    shares, predicted = summed_errors([row.quantized_alone.snr_db for row in rows])
    for row, share in zip(rows, shares):
        row.error_share = round(share, 4)
    fp32_top1 = (round(100 * float(np.mean(held_out.reference_logits.argmax(1) == held_out.labels)), 4)
                 if held_out.labels is not None else None)
    return SensitivityReport(
        model=str(onnx_path), method=options.method, calibration_images=stats.images_used,
        held_out_images=len(held_out), held_out_source=held_out.source, fp32_top1=fp32_top1,
        all_int8=held_out.fidelity(variants.all_int8), layers=rows, cache=stats.cache,
        seconds=round(time.perf_counter() - started, 2),
        predicted_snr_db=round(predicted, 2) if predicted is not None else None,
    )
