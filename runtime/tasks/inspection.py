"""What an ONNX model, an engine or a checkpoint contains: `ffx inspect`."""

import collections
from pathlib import Path

import onnx

from ffx.artifacts import sha256_file
from ffx.errors import BackendUnavailable, FfxError
from ffx.metadata import ModelMetadata, metadata_problem, onnx_metadata
from ffx.onnx_file import input_size_mismatch
from ffx.reporting import silenced
from ffx.calibration_manifest import calibration_manifest_path
from ffx.runtime.engines.onnx_model import QDQ_OPS, graph_precision, int8_layer_count, load_onnx, op_histogram
from ffx.runtime.backends.runner import existing_model_kind
from ffx.runtime.engines.sidecar import EngineSidecar, compatibility_problem, read_sidecar, sidecar_path


def inspect_file(path, load_engine=True):
    """A JSON-able dict describing `path`; `load_engine=False` never touches a GPU."""
    path = Path(path)
    kind = existing_model_kind(path)
    if kind == "onnx":
        return inspect_onnx(path)
    if kind == "engine":
        return inspect_engine(path, load_engine)
    return inspect_checkpoint(path)


def _tensor_info(value_info):
    tensor = value_info.type.tensor_type
    shape = [d.dim_param or d.dim_value if (d.dim_param or d.HasField("dim_value")) else "?" for d in tensor.shape.dim]
    return {"name": value_info.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name}


def inspect_onnx(path):
    model = load_onnx(path)
    initializer_names = {init.name for init in model.graph.initializer}
    dtypes = collections.Counter(onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name for init in model.graph.initializer)
    parameters = 0
    for init in model.graph.initializer:
        count = 1
        for dim in init.dims:
            count *= dim
        parameters += count
    ops = op_histogram(model)
    try:
        recorded, metadata_error = onnx_metadata(model, path), None
    except FfxError as e:  # inspect shows the graph anyway and flags the metadata
        recorded, metadata_error = None, str(e)
    metadata = ModelMetadata.unchecked(recorded)
    input_mismatch = None
    if recorded and not metadata_problem(recorded, path) and metadata.preprocess and model.graph.input:
        input_mismatch = input_size_mismatch(model, metadata.preprocess.input_size)
    manifest = calibration_manifest_path(path, metadata)
    precision = graph_precision(model)
    return {
        "kind": "onnx",
        "path": str(path),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "ir_version": model.ir_version,
        "opset": {(entry.domain or "ai.onnx"): entry.version for entry in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [_tensor_info(v) for v in model.graph.input if v.name not in initializer_names],
        "outputs": [_tensor_info(v) for v in model.graph.output],
        "nodes": len(model.graph.node),
        "ops": ops,
        "qdq_nodes": sum(ops.get(op, 0) for op in QDQ_OPS),
        "quantized_inputs_of": _quantized_consumers(model),
        "precision": precision,
        "int8_layers_in_fp8": int8_layer_count(model) if precision == "fp8" else 0,
        "initializer_dtypes": dict(dtypes),
        "parameters": parameters,
        "calibration_manifest": str(manifest) if manifest else None,
        "metadata": recorded,
        "metadata_error": metadata_error,
        "input_mismatch": input_mismatch,
    }


def _quantized_consumers(model):
    """{op type: count} of nodes that read a DequantizeLinear output: what INT8 actually covers."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    counts = collections.Counter(
        node.op_type for node in model.graph.node
        if node.op_type not in QDQ_OPS and any(name in dequantized for name in node.input)
    )
    return dict(counts.most_common())


def inspect_sidecar(sidecar_file):
    """What a sidecar given on its own says of its engine; the engine need not be there (a
    sidecar copied off a build machine) and is never loaded."""
    sidecar_file = Path(sidecar_file)
    engine = sidecar_file.with_name(sidecar_file.name[:-len(".json")])
    if not sidecar_file.is_file():
        raise FfxError(f"{sidecar_file}: no such file")
    return inspect_engine(engine, load_engine=False, not_loaded="a sidecar given alone")


def inspect_engine(path, load_engine=True, not_loaded="--no-load"):
    sidecar = read_sidecar(path)
    present = path.is_file()
    info = {
        "kind": "engine",
        "path": str(path),
        "engine_present": present,
        "bytes": path.stat().st_size if present else None,
        "sha256": sha256_file(path) if present else None,
        "sidecar_file": str(sidecar_path(path)) if sidecar else None,
        "sidecar": sidecar.to_dict() if sidecar else None,
        "sidecar_matches_engine": None,
        "engine_targets": _engine_targets(path) if present else None,
        "loadable_here": None,
        "layers": None,
        "layers_unavailable": None,
    }
    if sidecar:
        info["sidecar_matches_engine"] = sidecar.engine.sha256 == info["sha256"] if present else None
        info["compatibility"] = engine_compatibility_here(sidecar)
    if not load_engine:
        info["layers_unavailable"] = f"not loaded ({not_loaded})"
        return info
    from ffx.runtime.backends.engine import EngineRunner

    with silenced():  # a missing sidecar is reported in `info` already
        runner = EngineRunner(path)
    try:
        with runner:
            info["loadable_here"] = True
            info["layers"] = runner.layer_information()
    except BackendUnavailable as e:
        info["layers_unavailable"] = str(e)
    except FfxError as e:
        info["loadable_here"] = False
        info["layers_unavailable"] = str(e)
    return info


def _engine_targets(path):
    """The compute capabilities a TensorRT-RTX plan's own header lists, or None (full TensorRT
    plans have no such header; they run on the GPU that built them)."""
    from ffx.compute_capability import PLAN_HEADER_SEARCH_BYTES, rtx_plan_targets

    with open(path, "rb") as f:
        targets = rtx_plan_targets(f.read(PLAN_HEADER_SEARCH_BYTES))
    return list(targets) if targets else None


def inspect_checkpoint(path):
    from ffx.runtime.backends.pytorch import CheckpointRunner

    runner = CheckpointRunner(path)
    model = runner.resolved.model
    return {
        "kind": "checkpoint",
        "path": str(path),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "arch": runner.resolved.arch,
        "config": runner.resolved.config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights": runner.resolved.weights,
        "metadata": runner.metadata.to_dict(),
    }


def engine_compatibility_here(sidecar):
    """One sentence on whether the engine fits this machine, without loading it."""
    from ffx.runtime.backends.cuda import current_gpu
    from ffx.tensorrt import available_backend

    try:
        backend = available_backend(sidecar.backend)
    except BackendUnavailable as e:
        return str(e)
    gpu = current_gpu()
    problem = compatibility_problem(sidecar, backend.name, backend.version, gpu)
    if problem:
        return problem
    if gpu is None:
        return f"{backend} matches the engine; no CUDA GPU visible here to check the architecture"
    return f"compatible with {backend} on {gpu.name} ({gpu.compute_capability})"


def precision_guide(precision, capabilities):
    """For each compute capability: what its GPU runs, what ffx recommends there, and whether a
    model of `precision` (None: no model) runs there in that precision (JSON-able dicts)."""
    from ffx.gpu_precisions import gpu_precisions

    rows = []
    for capability in capabilities:
        row = gpu_precisions(capability)
        fits = None if precision in (None, "fp32") else precision in row.supported()
        rows.append({"compute_capability": row.capability, "architecture": row.architecture, "examples": row.examples,
                     "supported": row.supported(), "recommended": row.recommended,
                     "not_written_by_ffx": row.blackwell_formats or None, "note": row.note or None,
                     "model_precision_runs_here": fits, "line": row.describe()})
    return rows


def inspected_sidecar(info):
    """The EngineSidecar of an inspected engine (`inspect_file`'s dict; its sidecar was validated
    when it was read), or None: an ONNX model, a checkpoint, an engine without a sidecar."""
    if info["kind"] != "engine" or not info["sidecar"]:
        return None
    return EngineSidecar.from_dict(info["sidecar"], source=info["sidecar_file"])


def guide_capabilities(sidecar):
    """The GPUs an inspected engine is for, when its sidecar (an EngineSidecar, or None) says:
    its TensorRT-RTX targets or its building GPU."""
    if sidecar is None:
        return []
    if sidecar.target_compute_capabilities:
        return list(sidecar.target_compute_capabilities)
    return [sidecar.gpu.compute_capability] if sidecar.gpu else []
