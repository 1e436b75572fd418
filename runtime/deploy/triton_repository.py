"""A Triton Inference Server model repository for an engine or an ffx ONNX, loadable unchanged.

    REPO/NAME/config.pbtxt      names, dtypes, dims, max_batch_size, dynamic batching, instances
    REPO/NAME/labels.txt        class names, one per line, attached to the output (classification)
    REPO/NAME/1/model.plan      the engine (backend tensorrt)   or   1/model.onnx (backend onnxruntime)
    REPO/NAME/ffx.json          the model's ffx metadata (and the engine's sidecar): provenance
    REPO/NAME/README.txt        the tritonserver command and a client example

`max_batch_size` and the preferred batch sizes come from the engine's optimization profile
(TensorRT rejects a batch outside it); an ONNX has a dynamic batch, so the caller's limit is used.
The config uses only fields of Triton's `ModelConfig` protobuf (tests parse it strictly).
"""

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path

from ffx.artifacts import partial_folder
from ffx.errors import FfxError
from ffx.metadata import escape_text
from ffx.onnx_file import external_data_files
from ffx.runtime.deploy.model_interface import read_model_interface

DEFAULT_ONNX_MAX_BATCH = 32
DEFAULT_QUEUE_DELAY_US = 100
_TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8"}
_MODEL_FILES = {"engine": ("model.plan", "tensorrt"), "onnx": ("model.onnx", "onnxruntime")}


@dataclasses.dataclass
class TritonRepositoryReport:
    repository: str
    model_name: str
    model_dir: str
    backend: str
    model_file: str
    max_batch_size: int
    preferred_batch_sizes: list
    max_queue_delay_us: int
    instances: int
    labels: bool
    files: list
    warnings: list


def default_model_name(path):
    """A Triton model name from the file name: `fashion.int8.onnx` -> `fashion_int8`."""
    stem = Path(path).name
    for suffix in (".onnx", ".engine", ".plan", ".trt"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem)
    return name or "model"


MAX_MODEL_NAME_BYTES = 200  # + "_preprocess" and a ".NAME.XXXXXXXX.partial" staging name stay within 255 bytes


def check_model_name(name):
    """`name` when Triton takes it as a model name (and it is safe as a folder or file name, also
    with the suffixes ffx adds to it)."""
    if not name or any(not (c.isalnum() or c in "_-.") for c in name) or name.startswith("."):
        raise FfxError(f"model name {name!r}: use letters, digits, '_', '-' and '.'")
    if len(name.encode()) > MAX_MODEL_NAME_BYTES:
        raise FfxError(f"model name {name[:20]}... is {len(name.encode())} bytes long; at most {MAX_MODEL_NAME_BYTES} "
                       "(it names folders, with suffixes added)")
    return name


def batch_settings(interface, max_batch=None):
    """(max_batch_size, preferred batch sizes) for Triton: the engine's profile bounds both."""
    if interface.max_batch is not None:
        if max_batch is not None and max_batch > interface.max_batch:
            raise FfxError(f"{interface.path.name} was built for batches up to {interface.max_batch}; "
                           f"a max batch of {max_batch} would exceed its optimization profile")
        if interface.min_batch > 1:
            raise FfxError(f"{interface.path.name}'s profile starts at batch {interface.min_batch}; "
                           "Triton sends batches from 1: rebuild it with a minimum batch of 1")
        limit = max_batch or interface.max_batch
        preferred = sorted({b for b in (interface.opt_batch, interface.max_batch) if b and b <= limit})
        return limit, preferred or [limit]
    limit = max_batch or DEFAULT_ONNX_MAX_BATCH
    return limit, [limit]


def labels_text(interface):
    """Triton's label file for the model's output (one class name per line, control characters
    escaped so that each name stays one line), or None when the model names no classes."""
    names = interface.class_names
    if not names or len(names) != interface.output_dims[0]:
        return None
    return "".join(f"{escape_text(label)}\n" for label in names)


def triton_config_text(interface, name, max_batch_size, preferred, queue_delay_us, instances, labels):
    """config.pbtxt for `interface` (text format of Triton's ModelConfig)."""
    model_file, backend = _MODEL_FILES[interface.kind]
    kind = "KIND_GPU" if interface.kind == "engine" else "KIND_AUTO"  # a plan runs only on a GPU
    lines = [
        f'name: "{name}"',
        f'backend: "{backend}"',
        f'default_model_filename: "{model_file}"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        "  {",
        f'    name: "{interface.input_name}"',
        f"    data_type: {_triton_dtype(interface.input_dtype)}",
        f"    dims: [ {', '.join(map(str, interface.input_dims))} ]",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{interface.output_name}"',
        f"    data_type: {_triton_dtype(interface.output_dtype)}",
        f"    dims: [ {', '.join(map(str, interface.output_dims))} ]",
    ]
    if labels:
        lines.append('    label_filename: "labels.txt"')
    lines += [
        "  }",
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
        f"  max_queue_delay_microseconds: {queue_delay_us}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {instances}",
        f"    kind: {kind}",
        "  }",
        "]",
    ]
    return "\n".join(lines) + "\n"


def _triton_dtype(dtype):
    try:
        return _TRITON_DTYPES[dtype]
    except KeyError:
        raise FfxError(f"tensor dtype {dtype} has no Triton equivalent ffx writes") from None


def write_triton_repository(model_path, repository, name=None, max_batch=None, instances=1,
                            queue_delay_us=DEFAULT_QUEUE_DELAY_US, image_input=False):
    """Write REPO/NAME for `model_path` (engine with sidecar, or ffx ONNX), and with `image_input`
    REPO/NAME_preprocess and the ensemble REPO/NAME_image in front of it (runtime/deploy/triton_image_input.py);
    the directories appear complete or not at all, and an existing one is never overwritten."""
    from ffx.runtime.deploy.triton_image_input import ENSEMBLE_SUFFIX, PREPROCESS_SUFFIX

    interface = read_model_interface(model_path)
    name = check_model_name(name or default_model_name(model_path))
    if instances < 1:
        raise FfxError("instances must be at least 1")
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise FfxError(f"{repository}: exists and is not a directory")
    target = repository / name
    names = [name] + ([name + PREPROCESS_SUFFIX, name + ENSEMBLE_SUFFIX] if image_input else [])
    for taken in names:
        if (repository / taken).exists():
            raise FfxError(f"{repository / taken}: already exists; choose another model name or remove it")
    if image_input and not interface.metadata.has_preprocess:
        raise FfxError(f"{interface.path.name} carries no preprocessing (not exported by ffx): --image-input "
                       "cannot know how to turn images into its input")
    max_batch_size, preferred = batch_settings(interface, max_batch)
    warnings = _deployment_warnings(interface)
    model_file, backend = _MODEL_FILES[interface.kind]
    labels = labels_text(interface) is not None
    if labels and any(escape_text(label) != label for label in interface.class_names):
        warnings.append("class names with line breaks or control characters are written escaped to labels.txt "
                        "(one name per line)")
    # Each folder appears complete or not at all. They are entered in reverse and renamed into place
    # in the order they are left, so the model lands first: an ensemble never lands without what it runs.
    with contextlib.ExitStack() as stack:
        staged = {folder: stack.enter_context(partial_folder(repository / folder)) for folder in reversed(names)}
        staging = staged[name]
        (staging / "1").mkdir()
        shutil.copyfile(interface.path, staging / "1" / model_file)
        if interface.kind == "onnx":  # external weights lie beside the model, where its graph names them
            for location in external_data_files(interface.path):
                (staging / "1" / location).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(interface.path.parent / location, staging / "1" / location)
        (staging / "config.pbtxt").write_text(
            triton_config_text(interface, name, max_batch_size, preferred, queue_delay_us, instances, labels))
        if labels:
            (staging / "labels.txt").write_text(labels_text(interface))
        provenance = {"source": interface.path.name, "metadata": interface.metadata.to_dict(), "sidecar": interface.sidecar.to_dict() if interface.sidecar else None}
        (staging / "ffx.json").write_text(json.dumps(provenance, indent=2, sort_keys=True, default=str) + "\n")
        (staging / "README.txt").write_text(readme_text(interface, name, repository, max_batch_size))
        if image_input:
            _write_image_input(staged, interface, name, repository, max_batch_size, queue_delay_us, instances, labels)
    files = sorted(str(p.relative_to(repository)) for folder in names for p in (repository / folder).rglob("*")
                   if p.is_file())
    return TritonRepositoryReport(
        repository=str(repository), model_name=name, model_dir=str(target), backend=backend,
        model_file=f"1/{model_file}", max_batch_size=max_batch_size, preferred_batch_sizes=preferred,
        max_queue_delay_us=queue_delay_us, instances=instances, labels=labels, files=files, warnings=warnings,
    )


def _write_image_input(staged, interface, name, repository, max_batch_size, queue_delay_us, instances, labels):
    """Write NAME_preprocess and the ensemble NAME_image into their staging folders (`staged`)."""
    from ffx.runtime.deploy.triton_image_input import (ENSEMBLE_SUFFIX, PREPROCESS_SUFFIX, write_ensemble,
                                                write_preprocess_model)

    write_preprocess_model(staged[name + PREPROCESS_SUFFIX], interface, name, max_batch_size, queue_delay_us, instances)
    labels_text = (staged[name] / "labels.txt").read_text() if labels else None
    write_ensemble(staged[name + ENSEMBLE_SUFFIX], interface, name, max_batch_size, labels_text, repository)


def _deployment_warnings(interface):
    sidecar = interface.sidecar
    if sidecar is not None and sidecar.backend == "tensorrt-rtx":
        return [f"{interface.path.name} was built by TensorRT-RTX; Triton's tensorrt backend runs full TensorRT "
                "and cannot load it: build the engine with TensorRT on the serving GPU (or deploy the ONNX)"]
    if interface.kind == "engine":
        return [f"{interface.path.name} loads only in a Triton release whose TensorRT is "
                f"{sidecar.backend_version}, on the GPU architecture it was built for"]
    return []


def readme_text(interface, name, repository, max_batch_size):
    c, h, w = (list(interface.input_dims) + [None, None, None])[:3]
    preprocess = interface.metadata.recorded_preprocess or {}
    folded = preprocess.get("normalization_folded")
    scale = preprocess.get("input_scale", 1.0)
    if folded:
        input_text = f"RGB scaled to [0, {scale:g}] (the normalization is folded into the model)"
    else:
        input_text = f"RGB / 255, minus mean {preprocess.get('mean')}, over std {preprocess.get('std')}"
    engine_note = ""
    if interface.kind == "engine":
        engine_note = ("\nThe plan loads only in a Triton container whose TensorRT version matches the one that built\n"
                       "it (see ffx.json), on the same GPU architecture. Rebuild it there with `ffx build-engine` if not.\n")
    return f"""Triton Inference Server model repository written by ffx.

Model {name!r}: {interface.path.name} ({interface.precision}), backend {_MODEL_FILES[interface.kind][1]}.
Input  {interface.input_name!r}: {interface.input_dtype} [batch, {c}, {h}, {w}], batch 1..{max_batch_size},
       {input_text},
       after resizing the shorter side to {preprocess.get('resize')} ({preprocess.get('interpolation')}) and a center crop.
Output {interface.output_name!r}: {interface.output_dtype} [batch, {interface.output_dims[0]}] logits; labels.txt names the classes.
{engine_note}
Start the server (Docker, NGC Triton container; --gpus all for a plan or a GPU ONNX Runtime):

  docker run --rm --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
      -v "$(realpath {repository})":/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
      tritonserver --model-repository=/models

or with a local tritonserver binary:  tritonserver --model-repository={repository}

Check it:  curl -s localhost:8000/v2/health/ready && curl -s localhost:8000/v2/models/{name}/config

Client (pip install 'tritonclient[http]'):

  import numpy as np
  import tritonclient.http as httpclient

  client = httpclient.InferenceServerClient("localhost:8000")
  images = np.zeros((1, {c}, {h}, {w}), np.float32)   # your preprocessed images
  request = httpclient.InferInput("{interface.input_name}", list(images.shape), "FP32")
  request.set_data_from_numpy(images)
  wanted = httpclient.InferRequestedOutput("{interface.output_name}", class_count=3)  # top 3 with labels
  result = client.infer("{name}", [request], outputs=[wanted])
  print(result.as_numpy("{interface.output_name}"))   # b"score:index:label" per class

Or let ffx do the preprocessing:  ffx serve {interface.path.name}  (see the ffx README, "Serving").
"""
