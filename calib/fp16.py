"""FP32 ONNX -> float16-typed ONNX with float32 inputs and outputs (TensorRT's strongly typed FP16).

TensorRT 10/11 build FP16 only from a graph whose tensors are float16. The conversion is written
here (about a hundred lines) rather than taken from onnxconverter-common, which ffx does not
otherwise depend on and whose converter cannot keep *chosen tensors* in float32 by range: the
overflow preflight needs exactly that. LayerNormalization stays the fused op (a decomposed
LayerNorm overflows in float16); its stash_type keeps the statistics in float32.

With calibration images, a preflight runs the FP32 model on them and keeps in float32 every node
that reads or writes a tensor whose |x| comes within `OVERFLOW_HEADROOM` of the float16 limit
(65504); the manifest and the report name those tensors.
"""

import dataclasses
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ffx import __version__
from ffx.reporting import warn
from ffx.calib.conversion import Checks, ConversionReport, check_and_write, gather_statistics, report_fields
from ffx.calib.layers import network_layers
from ffx.calib.model_io import load_source_model, output_paths
from ffx.calib.options import CalibrationOptions
from ffx.calibration_manifest import CalibrationManifest, ManifestInput
from ffx.errors import FfxError

FP16_MAX = 65504.0
# Calibration images rarely contain the most extreme inputs a deployed model meets: a tensor is
# "near the limit" when its observed |x| max is above FP16_MAX / OVERFLOW_HEADROOM.
OVERFLOW_HEADROOM = 4.0
FP16_AGREEMENT_WARNING = 0.99


@dataclasses.dataclass
class Fp16Report(ConversionReport):
    fp32_tensors: list  # [{"tensor", "absmax", "node", "after_layer"}] kept in float32


def fp16_params(options, with_images):
    """The manifest's `params` of an FP16 conversion (with or without preflight images)."""
    return {
        "method": "fp16",
        "num_images": options.num_images if with_images else 0,
        "seed": options.seed if with_images else None,
        "overflow_limit": FP16_MAX / OVERFLOW_HEADROOM,
        "io": "float32",
    }


def convert_fp16(onnx_path: str | Path, output: str | Path | None = None, data=None,
                 options: CalibrationOptions = CalibrationOptions(), *, progress=None, tensorrt_check: bool = True,
                 tensorrt_backend: str = "auto") -> Fp16Report:
    """Convert an FP32 ffx model to a float16-typed ONNX with float32 inputs and outputs.

    Args:
        onnx_path: the FP32 ONNX that `ffx export` wrote.
        output: the model to write (default MODEL.fp16.onnx); its manifest is OUT.json.
        data: images for the overflow preflight (folder, list file or ImageDataset); None skips it.
        options: image count, seed, workers and cache of the preflight (the range method and
            keep_fp apply to INT8 only).
        progress, tensorrt_check, tensorrt_backend: as for `calibrate_int8`.

    Returns:
        Fp16Report: output and manifest paths, the tensors kept in float32 and the checks.

    Raises:
        FfxError: bad input (exit 2 in the CLI).
        GateFailed: TensorRT rejects the result (exit 1); nothing is written.
    """
    started = time.perf_counter()
    source = load_source_model(onnx_path)
    output, manifest_path = output_paths(source.path, output, "fp16", [data])
    model = source.model
    float_tensors = _float_tensors(model)
    produced = [out for node in model.graph.node for out in node.output if out in float_tensors]

    images = stats = None
    absmax = {}
    if data is not None:
        images, stats = gather_statistics("absmax", source, data, produced, options, progress)
        absmax = dict(zip(stats.tensors, (float(v) for v in stats.absmax)))
    else:
        warn("no calibration images: the float16 overflow preflight was skipped (every tensor is float16)")

    large = _near_fp16_limit(model, absmax)
    fp32_nodes = {
        i for i, node in enumerate(model.graph.node) if large & (set(node.input) | set(node.output))
    }
    fp32_tensors = _describe_kept(model, large, absmax, source.metadata)
    if fp32_tensors:
        _warn_kept(fp32_tensors)

    fp16_model = convert_graph_to_fp16(model, float_tensors, fp32_nodes)
    manifest, calibration = _fp16_manifest(output, source, options, data, images, stats, fp32_tensors,
                                           [model.graph.node[i].name for i in sorted(fp32_nodes)])
    checks = Checks("FP16", FP16_AGREEMENT_WARNING, "", tensorrt_check, tensorrt_backend)
    try:
        model_data, ort_check, trt_check = check_and_write(
            fp16_model, source, output, manifest_path, manifest, calibration, images, stats, checks)
    except FfxError as e:
        if data is None and "inf/NaN" in str(e):
            raise FfxError(f"{e}: float16 overflows; pass --data so the preflight keeps the tensors near "
                           f"the limit in float32 ({output} was not written)") from None
        raise
    return Fp16Report(
        **report_fields(output, manifest_path, model_data, source, images, stats, ort_check, trt_check, started),
        precision="fp16",
        method="fp16",
        fp32_tensors=fp32_tensors,
    )


def _near_fp16_limit(model, absmax):
    """Tensors to keep in float32: activations whose observed |x| max is above the headroom limit,
    and weights above the float16 limit itself (their |x| max joins `absmax`)."""
    limit = FP16_MAX / OVERFLOW_HEADROOM
    large = {name for name, value in absmax.items() if value > limit}
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in large:
            values = numpy_helper.to_array(init)
            if values.size and float(np.max(np.abs(values))) > FP16_MAX:
                large.add(init.name)
                absmax[init.name] = float(np.max(np.abs(values)))
    return large


def _warn_kept(fp32_tensors):
    shown = ", ".join(f"{t['tensor']} (|x| {t['absmax']:.0f}, after {t['after_layer']})" for t in fp32_tensors[:4])
    more = f" and {len(fp32_tensors) - 4} more" if len(fp32_tensors) > 4 else ""
    warn(f"kept in float32, near the float16 limit {FP16_MAX:.0f}: {shown}{more}")


def _fp16_manifest(output, source, options, data, images, stats, fp32_tensors, fp32_nodes):
    """The manifest written beside the FP16 model, and the `calibration` entry of its metadata."""
    manifest = CalibrationManifest(
        ffx_version=__version__,
        precision="fp16",
        output=output.name,
        input=ManifestInput(source.path.name, source.sha256),
        params=fp16_params(options, data is not None),
        preprocess=source.preprocess.to_dict(),
        data=(
            {"path": images.data_path, "layout": images.dataset.layout, "available_images": len(images.dataset.items)}
            if images else None
        ),
        image_list_sha256=images.list_sha256 if images else None,
        images=images.manifest_entries() if images else [],
        images_used=stats.images_used if stats else 0,
        skipped=stats.skipped if stats else [],
        fp32_tensors=fp32_tensors,
        fp32_nodes=fp32_nodes,
    )
    calibration = {
        "method": "fp16",
        "params": manifest.params,
        "image_list_sha256": manifest.image_list_sha256,
        "images_used": manifest.images_used,
        "fp32_tensors": [t["tensor"] for t in fp32_tensors],
    }
    return manifest, calibration


def _float_tensors(model):
    """Names of every float32 tensor of the graph (inputs, initializers, node outputs)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    names = set()
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            names.add(value.name)
    names.update(init.name for init in model.graph.initializer if init.data_type == TensorProto.FLOAT)
    return names


def _describe_kept(model, tensors, absmax, metadata):
    """The kept tensors in graph order, each with the layer (user name) it follows."""
    layer_of_node = {layer.node: layer.name for layer in network_layers(model, metadata)}
    described, last_layer = [], "the input"
    for node in model.graph.node:
        last_layer = layer_of_node.get(node.name, last_layer)
        for name in node.output:
            if name in tensors:
                described.append({"tensor": name, "absmax": absmax[name], "node": node.name, "after_layer": last_layer})
    initial = [
        {"tensor": name, "absmax": absmax[name], "node": None, "after_layer": "weights"}
        for name in sorted(tensors) if name not in {d["tensor"] for d in described}
    ]
    return initial + described


def convert_graph_to_fp16(model, float_tensors, fp32_nodes=frozenset()):
    """A copy of `model` whose float32 tensors are float16, except in the nodes (indices) of
    `fp32_nodes`; Casts join the two, and the graph's inputs and outputs stay float32."""
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes = list(graph.node)
    fp16_initializer = _half_initializers(graph, nodes, initializers, float_tensors, fp32_nodes)
    new_nodes = _typed_nodes(graph, nodes, initializers, fp16_initializer, float_tensors, fp32_nodes)

    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {name for node in graph.node for name in node.input}
    remaining = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    del graph.value_info[:]
    onnx.checker.check_model(converted)
    return converted


def _half_initializers(graph, nodes, initializers, float_tensors, fp32_nodes):
    """{float initializer: its float16 name}. One read only by float16 nodes becomes float16 in
    place; one read by both precisions gets a float16 copy beside it."""
    readers = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            if name in initializers and name in float_tensors:
                readers.setdefault(name, set()).add(index in fp32_nodes)
    fp16_initializer = {}
    for name, kept_flags in readers.items():
        half = numpy_helper.from_array(
            numpy_helper.to_array(initializers[name]).astype(np.float16),
            name if kept_flags == {False} else f"{name}.fp16",
        )
        if kept_flags == {False}:
            initializers[name].CopyFrom(half)
        else:
            graph.initializer.append(half)
        fp16_initializer[name] = half.name
    return fp16_initializer


def _typed_nodes(graph, nodes, initializers, fp16_initializer, float_tensors, fp32_nodes):
    """The graph's nodes in their precisions, with a Cast wherever an activation crosses from
    one precision to the other and before each graph output made in float16."""
    graph_outputs = {value.name for value in graph.output}
    dtype = {value.name: "fp32" for value in graph.input}  # precision each activation is produced in
    casts = {}
    new_nodes = []

    def cast(name, to):
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}.to_{to}"
            new_nodes.append(helper.make_node(
                "Cast", [name], [casts[key]], name=f"{name}.cast_to_{to}",
                to=TensorProto.FLOAT16 if to == "fp16" else TensorProto.FLOAT,
            ))
        return casts[key]

    renamed_outputs = {}
    for index, node in enumerate(nodes):
        precision = "fp32" if index in fp32_nodes else "fp16"
        for slot, name in enumerate(node.input):
            if not name or name not in float_tensors:
                continue
            if name in fp16_initializer:
                node.input[slot] = fp16_initializer[name] if precision == "fp16" else name
            elif name in initializers:
                continue
            else:
                source = renamed_outputs.get(name, name)
                if dtype.get(name, "fp32") != precision:
                    node.input[slot] = cast(source, precision)
                else:
                    node.input[slot] = source
        if precision == "fp16":
            _float_attributes_to_fp16(node)
            for slot, name in enumerate(node.output):
                if name in float_tensors:
                    dtype[name] = "fp16"
                    if name in graph_outputs:  # keep the graph's float32 output under its own name
                        renamed_outputs[name] = f"{name}.fp16"
                        node.output[slot] = renamed_outputs[name]
        else:
            for name in node.output:
                if name in float_tensors:
                    dtype[name] = "fp32"
        new_nodes.append(node)
    for name, half_name in renamed_outputs.items():
        new_nodes.append(helper.make_node("Cast", [half_name], [name], name=f"{name}.cast_to_fp32", to=TensorProto.FLOAT))
    return new_nodes


def _float_attributes_to_fp16(node):
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
            attribute.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(np.float16), attribute.t.name))
        if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
            attribute.i = TensorProto.FLOAT16
