"""Reading the FP32 model to convert and writing the converted model with its manifest."""

import dataclasses
from pathlib import Path

import onnx

from ffx.artifacts import atomic_outputs, check_output_path, sha256_bytes, sha256_file, written_together
from ffx.errors import FfxError, reraise_onnxruntime
from ffx.metadata import ModelMetadata, Preprocess, set_onnx_metadata
from ffx.model_file import open_onnx
from ffx.onnx_file import exact_quantized_arithmetic


@dataclasses.dataclass
class SourceModel:
    path: Path
    model: onnx.ModelProto
    metadata: ModelMetadata  # its ffx metadata, validated when loaded: what the converted model's starts from
    sha256: str  # of the file: what manifests record as the input
    preprocess: Preprocess
    derived_sha256: str | None = None  # of `model` when calibration rewrote it in memory (--smooth-gelu)

    @property
    def model_sha256(self):
        """The hash of the graph statistics are collected on (keys the statistics cache)."""
        return self.derived_sha256 or self.sha256

    @property
    def input_name(self):
        return self.metadata.input_name or self.model.graph.input[0].name

    @property
    def input_shape(self):
        return tuple(self.preprocess.input_size)


def with_outputs(model, tensors):
    """A copy of `model` that also returns `tensors` (those not among its outputs already)."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    outputs = {value.name for value in augmented.graph.output}
    for tensor in tensors:
        if tensor not in outputs:
            augmented.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
            outputs.add(tensor)
    return augmented


def cpu_session(model, source=None):
    """A quiet onnxruntime CPU session of `model` (a ModelProto or its serialized bytes) that runs
    Q/DQ with TensorRT's arithmetic (ffx.onnx_file.exact_quantized_arithmetic). A graph
    onnxruntime cannot load, or cannot execute in run(), is an FfxError naming `source` (the file)."""
    import onnxruntime

    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    options = exact_quantized_arithmetic(onnxruntime.SessionOptions())
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as e:
        reraise_onnxruntime(e, source, "load")
    return _CheckedSession(session, source)


class _CheckedSession:
    def __init__(self, session, source):
        self._session = session
        self._source = source

    def __getattr__(self, name):  # get_inputs, get_outputs, ...
        return getattr(self._session, name)

    def run(self, output_names, feeds):
        try:
            return self._session.run(output_names, feeds)
        except Exception as e:
            reraise_onnxruntime(e, self._source, "run")



def load_source_model(path):
    """The FP32 ffx model at `path`; FfxError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FfxError(f"{path}: no such file")
    # Calibration runs sessions from the model in memory: bring the weights in with it.
    model_file = open_onnx(path, weights=True)
    model = model_file.graph
    digest = sha256_bytes(model.SerializeToString()) if model_file.external_weights else sha256_file(path)
    if model_file.recorded is None:
        raise FfxError(f"{path}: has no ffx metadata; export it with `ffx export` first")
    metadata = model_file.metadata
    if metadata.precision not in (None, "fp32"):
        raise FfxError(f"{path}: is already {metadata.precision}; calibrate the FP32 model that `ffx export` wrote")
    op_types = {node.op_type for node in model.graph.node}
    if op_types & {"QuantizeLinear", "DequantizeLinear"}:
        raise FfxError(f"{path}: already has Q/DQ nodes; calibrate the FP32 model that `ffx export` wrote")
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        raise FfxError(f"{path}: already has float16 weights; convert the FP32 model that `ffx export` wrote")
    if not metadata.has_preprocess:
        raise FfxError(f"{path}: its ffx metadata has no preprocessing; re-export it with `ffx export`")
    if len(model.graph.input) != 1:
        raise FfxError(f"{path}: expected one graph input, found {len(model.graph.input)}")
    model_file.check_graph()
    return SourceModel(path, model, metadata, digest, metadata.checked_preprocess(path))


def output_paths(model_path, output, suffix, inputs=()):
    """(model path, manifest path): OUT.onnx and OUT.json beside it. Default OUT: MODEL.<suffix>.onnx.
    Both are checked as outputs now, before any image is read: FfxError for a device, FIFO or
    folder there, the model, the data list or another of `inputs`, an unwritable folder."""
    model_path = Path(model_path)
    if output is None:
        stem = model_path.name[:-5] if model_path.name.endswith(".onnx") else model_path.name
        output = model_path.with_name(f"{stem}.{suffix}.onnx")
    output = Path(output)
    manifest = output.with_suffix(".json") if output.suffix == ".onnx" else output.with_name(output.name + ".json")
    for path in (output, manifest):
        check_output_path(path, [model_path, *(data_path(source) for source in inputs)])
    return output, manifest


def data_path(data):
    """The file or folder behind a data argument (a path, or an ImageDataset: its list file or folder)."""
    return getattr(data, "root", data)


def finish_model(model, source, precision, calibration):
    """Serialized `model` carrying the source's ffx metadata with `precision` and `calibration`."""
    kept = [prop for prop in model.metadata_props if prop.key != "onnx.infer"]  # onnxruntime's marker
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    set_onnx_metadata(model, source.metadata.calibrated(precision, calibration).to_dict())
    model.producer_name = "ffx"
    from ffx import __version__

    model.producer_version = __version__
    return model.SerializeToString()


def write_outputs(model_path, model_data, manifest_path, manifest_data):
    """Both files or neither: each is written to a temporary name and renamed when both are complete."""
    with written_together(model_path.parent), atomic_outputs(manifest_path, model_path) as (manifest_tmp, model_tmp):
        model_tmp.write_bytes(model_data)
        manifest_tmp.write_bytes(manifest_data)
