"""`ffx deploy triton --image-input`: a preprocessing model and an ensemble in front of the model,
so that Triton clients send image files (bytes) instead of preprocessed tensors.

    REPO/NAME_preprocess/config.pbtxt     backend python: IMAGE (TYPE_STRING, the file's bytes) -> the
                                          network input, batched like the model
    REPO/NAME_preprocess/1/model.py       Triton Python backend model: numpy and Pillow only
    REPO/NAME_preprocess/1/ffx/...        ffx's own decoder and preprocessing (ffx/images.py and the
                                          ffx modules it imports), copied verbatim: the same code as
                                          `ffx predict`, never a re-implementation that can drift
    REPO/NAME_preprocess/1/preprocess.json  the model's preprocessing (its ffx metadata) and dtype
    REPO/NAME_image/config.pbtxt          platform ensemble: IMAGE -> NAME_preprocess -> NAME -> logits
    REPO/NAME_image/labels.txt            the class names, attached to the output
    REPO/NAME_image/README.txt            how to run it and call it
"""

import ast
import importlib.util
import json
import sys
from pathlib import Path

from ffx import __version__
from ffx.errors import FfxError

IMAGE_INPUT = "IMAGE"
PREPROCESS_SUFFIX = "_preprocess"
ENSEMBLE_SUFFIX = "_image"
# What the copied modules may import besides the standard library and each other.
ALLOWED_THIRD_PARTY = {"numpy", "PIL"}
ENTRY_MODULE = "ffx.images"

MODEL_PY = '''"""Triton Python backend model written by `ffx deploy triton --image-input` (ffx {version}).

Image file bytes in (input IMAGE, TYPE_STRING), the network input out ({output!r}), decoded and
preprocessed by ffx's own code: ffx/images.py beside this file, a verbatim copy of ffx's module
(the one `ffx predict` uses). Needs numpy and Pillow only.
"""

import json
import os
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ffx.images as ffx_images  # noqa: E402  (the copy beside this file)
from ffx.errors import FfxError  # noqa: E402

if not os.path.abspath(ffx_images.__file__).startswith(HERE + os.sep):
    raise ImportError(f"ffx.images was imported from {{ffx_images.__file__}}, not from the copy in {{HERE}}")

import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        with open(os.path.join(HERE, "preprocess.json")) as f:
            settings = json.load(f)
        self.preprocess = types.SimpleNamespace(**settings["preprocess"])
        self.output_name = settings["output_name"]
        self.dtype = np.dtype(settings["dtype"])

    def execute(self, requests):
        responses = []
        for request in requests:
            files = pb_utils.get_input_tensor_by_name(request, "{image_input}").as_numpy().reshape(-1)
            try:
                images = np.stack([
                    ffx_images.preprocess_image(ffx_images.decode_rgb(bytes(data), f"image {{index}}"), self.preprocess)
                    for index, data in enumerate(files)
                ]).astype(self.dtype, copy=False)
            except (ffx_images.UnreadableImage, FfxError) as e:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, images)]))
        return responses
'''


def preprocessing_sources():
    """{path relative to the model version folder: file bytes} of ffx's preprocessing: ffx.images,
    every ffx module it imports (transitively) and ffx/__init__.py, read from the installed ffx.
    FfxError if one of them imports anything but the standard library, numpy and Pillow."""
    sources, pending = {}, [ENTRY_MODULE, "ffx"]
    while pending:
        module = pending.pop()
        spec = importlib.util.find_spec(module)
        origin = Path(spec.origin)
        relative = "/".join(module.split(".")) + ("/__init__.py" if origin.name == "__init__.py" else ".py")
        if relative in sources:
            continue
        data = origin.read_bytes()
        sources[relative] = data
        for imported in _imports(ast.parse(data), module):
            top = imported.split(".")[0]
            if top == "ffx":
                pending.append(imported)
            elif top not in ALLOWED_THIRD_PARTY and top not in sys.stdlib_module_names:
                raise FfxError(f"{module} imports {imported}: the preprocessing model may need numpy and Pillow only")
    return dict(sorted(sources.items()))


def _imports(tree, module):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = module.rsplit(".", node.level)[0]
                yield f"{base}.{node.module}" if node.module else base
            else:
                yield node.module


def write_preprocess_model(folder, interface, name, max_batch_size, queue_delay_us, instances):
    """REPO/NAME_preprocess in `folder` (a staging copy of it)."""
    version = folder / "1"
    for relative, data in preprocessing_sources().items():
        path = version / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (version / "model.py").write_text(MODEL_PY.format(version=__version__, output=interface.input_name,
                                                      image_input=IMAGE_INPUT))
    settings = {"preprocess": interface.metadata.recorded_preprocess, "output_name": interface.input_name,
                "dtype": interface.input_dtype, "ffx_version": __version__}
    (version / "preprocess.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    c, h, w = interface.input_dims
    (folder / "config.pbtxt").write_text("\n".join([
        f'name: "{name}{PREPROCESS_SUFFIX}"',
        'backend: "python"',
        f"max_batch_size: {max_batch_size}",
        f'input [ {{ name: "{IMAGE_INPUT}" data_type: TYPE_STRING dims: [ 1 ] }} ]',
        f'output [ {{ name: "{interface.input_name}" data_type: {_dtype(interface.input_dtype)} dims: [ {c}, {h}, {w} ] }} ]',
        f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}",
        f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]",
    ]) + "\n")


def write_ensemble(folder, interface, name, max_batch_size, labels_text, repository):
    """REPO/NAME_image in `folder` (a staging copy of it)."""
    (folder / "1").mkdir(parents=True)  # Triton wants a version folder, empty for an ensemble
    preprocessed = "preprocessed_" + interface.input_name
    label = ' label_filename: "labels.txt"' if labels_text else ""
    (folder / "config.pbtxt").write_text("\n".join([
        f'name: "{name}{ENSEMBLE_SUFFIX}"',
        'platform: "ensemble"',
        f"max_batch_size: {max_batch_size}",
        f'input [ {{ name: "{IMAGE_INPUT}" data_type: TYPE_STRING dims: [ 1 ] }} ]',
        f'output [ {{ name: "{interface.output_name}" data_type: {_dtype(interface.output_dtype)} '
        f"dims: [ {', '.join(map(str, interface.output_dims))} ]{label} }} ]",
        "ensemble_scheduling {",
        "  step [",
        f'    {{ model_name: "{name}{PREPROCESS_SUFFIX}" model_version: -1 '
        f'input_map {{ key: "{IMAGE_INPUT}" value: "{IMAGE_INPUT}" }} '
        f'output_map {{ key: "{interface.input_name}" value: "{preprocessed}" }} }},',
        f'    {{ model_name: "{name}" model_version: -1 input_map {{ key: "{interface.input_name}" value: "{preprocessed}" }} '
        f'output_map {{ key: "{interface.output_name}" value: "{interface.output_name}" }} }}',
        "  ]",
        "}",
    ]) + "\n")
    if labels_text:
        (folder / "labels.txt").write_text(labels_text)
    (folder / "README.txt").write_text(_readme(interface, name, repository))


def _dtype(dtype):
    from ffx.runtime.deploy.triton_repository import _triton_dtype

    return _triton_dtype(dtype)


def _readme(interface, name, repository):
    ensemble, preprocess = f"{name}{ENSEMBLE_SUFFIX}", f"{name}{PREPROCESS_SUFFIX}"
    return f"""Image input for {name!r}: a Triton ensemble written by `ffx deploy triton --image-input`.

Clients send image files (JPEG, PNG, ...: the bytes as they are on disk) to {ensemble!r}:

  {ensemble}      IMAGE (TYPE_STRING, one file per batch row) -> {interface.output_name!r} logits, labels.txt attached
    step 1  {preprocess}   Triton Python backend: decodes and preprocesses with ffx's own code
                           (1/ffx/images.py is a verbatim copy of ffx's module: the same as `ffx predict`)
    step 2  {name}         the model (see {name}/README.txt)

Start the server as {name}/README.txt says (all three models load from {repository}). The Python
backend model needs numpy and Pillow in the Python that Triton's Python backend runs (the NGC
tritonserver container has numpy; add Pillow: pip install pillow).

Client (pip install 'tritonclient[http]'):

  import numpy as np
  import tritonclient.http as httpclient

  client = httpclient.InferenceServerClient("localhost:8000")
  files = [open(path, "rb").read() for path in ("cat.jpg", "dog.png")]
  image = httpclient.InferInput("{IMAGE_INPUT}", [len(files), 1], "BYTES")
  image.set_data_from_numpy(np.array(files, dtype=object).reshape(-1, 1))
  wanted = httpclient.InferRequestedOutput("{interface.output_name}", class_count=3)  # top 3 with labels
  result = client.infer("{ensemble}", [image], outputs=[wanted])
  print(result.as_numpy("{interface.output_name}"))   # b"score:index:label" per class

An image that cannot be decoded gets an error response naming it; the server keeps serving.
What ran: {preprocess} was loaded in a real tritonserver (PyTriton's build, Python backend only) and
its output compared with ffx's preprocessing of the same files, exactly equal. The ensemble and the
{name!r} model were not run there (that build has no TensorRT or ONNX Runtime backend); their
configs are parsed against Triton's ModelConfig schema.
"""
