"""What a serving system must know about a model, read from the model itself: tensor names,
dtypes, dims without the batch, batch limits, class names, preprocessing.

An ffx ONNX carries it in its graph and `ffx` metadata; an engine in its JSON sidecar (the batch
profile it was built with and the metadata of the ONNX it came from). Triton repositories,
DeepStream configs and `ffx serve` are all written from this one description.
"""

import dataclasses
from pathlib import Path

import onnx

from ffx.errors import FfxError
from ffx.metadata import ModelMetadata
from ffx.runtime.backends.runner import open_model
from ffx.runtime.engines.sidecar import EngineSidecar, missing_sidecar

# ONNX element types ffx graphs use at their inputs and outputs -> numpy dtype names.
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8"}


@dataclasses.dataclass
class ModelInterface:
    path: Path
    kind: str  # "engine" or "onnx"
    input_name: str
    input_dtype: str  # numpy dtype name
    input_dims: tuple  # (C, H, W), no batch
    output_name: str
    output_dtype: str
    output_dims: tuple  # (classes,)
    min_batch: int
    opt_batch: int | None  # the engine profile's tuned batch; None for ONNX (any batch)
    max_batch: int | None  # the engine profile's largest batch; None for ONNX (no limit)
    precision: str
    class_names: list | None
    metadata: ModelMetadata
    sidecar: EngineSidecar | None = None  # engines only (validated)

    @property
    def preprocess(self):
        if not self.metadata.has_preprocess:
            raise FfxError(f"{self.path}: carries no preprocessing metadata; export it with `ffx export`")
        return self.metadata.checked_preprocess()


def read_model_interface(path):
    """The ModelInterface of an ffx ONNX or an engine with its sidecar (a path, or its ModelFile
    from `open_model`); FfxError otherwise."""
    model_file = open_model(path)
    if model_file.kind == "onnx":
        return _onnx_interface(model_file)
    if model_file.kind == "engine":
        return _engine_interface(model_file)
    raise FfxError(f"{model_file.path}: is a checkpoint; export it with `ffx export` (and build an engine) first")


def _onnx_interface(model_file):
    from ffx.runtime.engines.onnx_model import graph_precision

    path, model = model_file.path, model_file.graph
    if model_file.recorded is None:
        raise FfxError(f"{path}: has no ffx metadata; export it with `ffx export` first")
    metadata = model_file.metadata  # as every runner does: serve and deploy see only well-formed metadata
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise FfxError(f"{path}: expected one input and one output, found {len(graph.input)} and {len(graph.output)}")
    model_file.check_graph()
    input_dtype, input_dims = _tensor_type(path, graph.input[0])
    output_dtype, output_dims = _tensor_type(path, graph.output[0])
    return ModelInterface(
        path=path, kind="onnx",
        input_name=graph.input[0].name, input_dtype=input_dtype, input_dims=input_dims,
        output_name=graph.output[0].name, output_dtype=output_dtype, output_dims=output_dims,
        min_batch=1, opt_batch=None, max_batch=None,
        precision=metadata.precision or graph_precision(model),
        class_names=metadata.class_names, metadata=metadata,
    )


def _tensor_type(path, value_info):
    tensor_type = value_info.type.tensor_type
    dtype = _ONNX_DTYPES.get(tensor_type.elem_type)
    dims = tensor_type.shape.dim
    if dtype is None:
        raise FfxError(f"{path}: tensor {value_info.name!r} has an element type ffx cannot serve ({tensor_type.elem_type})")
    if len(dims) < 2 or dims[0].dim_value or any(not d.dim_value for d in dims[1:]):
        raise FfxError(f"{path}: tensor {value_info.name!r} must have a dynamic batch and fixed other dims")
    return dtype, tuple(d.dim_value for d in dims[1:])


def _engine_interface(model_file):
    path, sidecar = model_file.path, model_file.sidecar  # every field checked by the reader
    if sidecar is None:
        raise missing_sidecar(path)
    metadata, profile = sidecar.model_metadata, sidecar.profile
    if not metadata.num_classes or not metadata.has_preprocess:
        raise FfxError(f"{path}: its sidecar lacks the model's metadata; rebuild it with `ffx build-engine`")
    outputs = sidecar.outputs or ["logits" if metadata.output_name is None else metadata.output_name]
    return ModelInterface(
        path=path, kind="engine",
        input_name=profile.input or ("images" if metadata.input_name is None else metadata.input_name),
        input_dtype=sidecar.input_dtype, input_dims=tuple(profile.max[1:]),
        output_name=outputs[0], output_dtype="float32", output_dims=(int(metadata.num_classes),),
        min_batch=int(profile.min[0]), opt_batch=int(profile.opt[0]), max_batch=int(profile.max[0]),
        precision=sidecar.precision, class_names=metadata.class_names, metadata=metadata, sidecar=sidecar,
    )
