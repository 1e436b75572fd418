"""ONNX Runtime runner: the exact graph TensorRT builds from, on the CPU (int8 and float16
kernels included; FP8 Q/DQ with E4M3's exact rounding) or on a GPU through the CUDA or TensorRT execution provider."""

import numpy as np
import onnx

from ffx.errors import BackendUnavailable, FfxError, from_onnxruntime, reraise_onnxruntime
from ffx.model_file import ModelFile, open_onnx
from ffx.onnx_file import exact_quantized_arithmetic
from ffx.runtime.engines.onnx_model import graph_precision
from ffx.runtime.backends.runner import ONNX_PROVIDERS, Runner

_PROVIDER_NAMES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def _input_dtype(graph_input, path):
    """numpy dtype of the image input: float32, or float16 (fed the same normalized values).
    Integer inputs expect raw pixels, which ffx's normalized images are not."""
    elem_type = graph_input.type.tensor_type.elem_type
    if elem_type == onnx.TensorProto.FLOAT:
        return np.float32
    if elem_type == onnx.TensorProto.FLOAT16:
        return np.float16
    name = onnx.helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "undefined"
    raise FfxError(f"{path}: input {graph_input.name!r} is {name}; ffx feeds normalized float32 (or float16) images: "
                   "export the model with a float input that takes the normalized image")


class OnnxRuntimeRunner(Runner):
    """An ONNX model in ONNX Runtime.

    Args:
        path: the .onnx file, or its ModelFile when already opened.
        provider: execution provider: cpu, cuda or tensorrt (ONNX_PROVIDERS).
        threads: intra-op threads (None: onnxruntime's default).
        int8_kernels: on the CPU, run Q/DQ through onnxruntime's fused int8 kernels (what an
            onnxruntime CPU deployment runs: bench, serve) rather than TensorRT's arithmetic (the
            default; ffx.onnx_file.exact_quantized_arithmetic says why they differ).
    """

    backend = "onnxruntime"

    def __init__(self, path, provider="cpu", threads=None, int8_kernels=False):
        super().__init__(path)
        if provider not in ONNX_PROVIDERS:
            raise FfxError(f"unknown ONNX Runtime provider {provider!r}; choose {', '.join(ONNX_PROVIDERS)}")
        self.provider = provider
        self.threads = threads
        self.int8_kernels = int8_kernels
        model_file = path if isinstance(path, ModelFile) else open_onnx(self.path)
        model = model_file.graph
        self.metadata = model_file.metadata
        self.precision = graph_precision(model)
        graph_inputs = [i for i in model.graph.input if i.name not in {init.name for init in model.graph.initializer}]
        if len(graph_inputs) != 1:
            raise FfxError(f"{self.path}: expected one input, found {len(graph_inputs)}")
        dims = graph_inputs[0].type.tensor_type.shape.dim
        if len(dims) != 4:
            raise FfxError(f"{self.path}: expected an image input [N, C, H, W], found rank {len(dims)}")
        shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if any(v is None for v in shape[1:]):
            raise FfxError(f"{self.path}: only the batch dimension may be dynamic")
        self.input_shape = tuple(shape[1:])
        model_file.check_input_size()
        self.fixed_batch = shape[0]
        self.input_name = graph_inputs[0].name
        self.input_dtype = _input_dtype(graph_inputs[0], self.path)
        model_file.check_logits_output()
        self.model_file = model_file.without_graph()  # the session reads the file itself
        self.session = None
        if self.provider != "cpu":
            self.backend = f"onnxruntime-{self.provider}"

    def check_available(self):
        import onnxruntime

        wanted = _PROVIDER_NAMES[self.provider]
        available = onnxruntime.get_available_providers()
        if wanted[0] not in available:
            raise BackendUnavailable(
                f"ONNX Runtime here has no {wanted[0]} (available: {', '.join(available)}); "
                "install onnxruntime-gpu on a CUDA machine, or use --provider cpu"
            )
        return [p for p in wanted if p in available]

    def _activate(self):
        import onnxruntime

        providers = self.check_available()
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; ORT's warnings about unused initializers are noise here
        if self.provider == "cpu" and not self.int8_kernels:
            exact_quantized_arithmetic(options)
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise FfxError(f"{self.path}: ONNX Runtime cannot load the model: {from_onnxruntime(e) or e}") from None
        self.output_name = self.session.get_outputs()[0].name

    def _infer(self, images):
        try:
            return self.session.run([self.output_name], {self.input_name: images.astype(self.input_dtype, copy=False)})[0]
        except Exception as e:
            reraise_onnxruntime(e, self.path, "run")

    def _deactivate(self):
        self.session = None
