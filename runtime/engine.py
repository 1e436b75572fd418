"""TensorRT / TensorRT-RTX engine runner: IO tensor API, execute_async_v3, pinned host buffers,
one stream and optional CUDA graph capture. Needs a CUDA GPU; pycuda or cuda-python provide the
memory (runtime/cuda.py).

The sidecar beside the engine is checked against the installed TensorRT and the GPU before the
engine is deserialized, so a wrong-machine engine fails with one sentence, not a C++ error.
"""

from ffx.errors import FfxError
from ffx.runtime.runner import Runner
from ffx.runtime.sidecar import compatibility_problem, read_sidecar


class EngineRunner(Runner):
    """A TensorRT or TensorRT-RTX engine on a CUDA GPU.

    Args:
        path: the plan file; its sidecar (PATH.json) is checked against this machine first.
        cuda_graph: replay each input shape's calls as a CUDA graph.
        cuda_library: host-device buffers through pycuda, cuda-python or auto.
        check_compatibility: refuse an engine whose sidecar names another TensorRT or GPU.
    """

    def __init__(self, path, cuda_graph=False, cuda_library="auto", check_compatibility=True):
        super().__init__(path)
        self.sidecar = read_sidecar(self.path)
        self.cuda_graph = cuda_graph
        self.cuda_library = cuda_library
        self.check_compatibility = check_compatibility
        self.phase_timing = False  # when True, `last_phases_ms` splits each call (CUDA events)
        self.last_phases_ms = None
        self.notes = []
        if self.sidecar is None:
            self.notes.append(f"{self.path.name} has no sidecar: its TensorRT version and GPU cannot be checked before loading")
            self.backend = "tensorrt"
        else:
            self.backend = self.sidecar.get("backend", "tensorrt")
            self.metadata = dict(self.sidecar.get("metadata") or {})
            self.precision = self.sidecar.get("precision", "?")
            profile = self.sidecar.get("profile") or {}
            if profile.get("max"):
                self.input_shape = tuple(profile["max"][1:])
                self.max_batch = int(profile["max"][0])
                self.min_batch = int(profile["min"][0])
        self._reset()

    def _reset(self):
        self.trt = self.cuda = self.runtime = self.engine = self.context = self.stream = None
        self.buffers = {}
        self.host = {}
        self.graphs = {}
        self.events = None

    # -- loading -------------------------------------------------------------------------------
    def check_available(self):
        from ffx.runtime.cuda import open_cuda
        from ffx.tensorrt import available_backend

        available_backend(self.backend if self.sidecar else "auto")
        open_cuda(self.cuda_library).close()

    def _activate(self):
        from ffx.runtime.cuda import open_cuda
        from ffx.tensorrt import available_backend, make_logger

        backend = available_backend(self.backend if self.sidecar else "auto")
        self.backend = backend.name  # without a sidecar, "auto" may have picked TensorRT-RTX
        self.trt = backend.module
        self.cuda = open_cuda(self.cuda_library)
        try:
            gpu = self.cuda.gpu_info()
            if self.sidecar is not None and self.check_compatibility:
                problem = compatibility_problem(self.sidecar, backend.name, backend.version, gpu)
                if problem:
                    raise FfxError(f"{self.path}: {problem}")
            self.logger = make_logger(backend)
            runtime = self.trt.Runtime(self.logger)
            if self.sidecar and self.sidecar.get("version_compatible"):
                runtime.engine_host_code_allowed = True  # version-compatible plans embed a lean runtime
            data = self.path.read_bytes()
            self._check_validity(runtime, data)
            self.engine = runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                errors = self.logger.errors()
                raise FfxError(f"{self.path}: {backend} could not load the engine: {errors[-1] if errors else 'unknown error'}")
            self.runtime = runtime
            self.context = self._create_context()
            self.stream = self.cuda.create_stream()
            self._bind_io()
        except BaseException:
            self._deactivate()
            raise

    def _check_validity(self, runtime, data):
        """TensorRT-RTX can say from the header whether a plan fits this system."""
        check = getattr(runtime, "get_engine_validity", None)
        if check is None:
            return
        validity, diagnostics = check(data[: max(getattr(runtime, "engine_header_size", 0), 64)])
        if str(validity).endswith("INVALID"):
            reasons = _diagnostic_names(self.trt, diagnostics)
            raise FfxError(f"{self.path}: {self.backend} says this engine cannot run here ({reasons or 'no reason given'}); "
                           "rebuild it with `ffx build-engine`")

    def _create_context(self):
        if self.cuda_graph and self.backend == "tensorrt-rtx" and hasattr(self.engine, "create_runtime_config"):
            # TensorRT-RTX captures CUDA graphs itself, with dynamic shapes handled.
            config = self.engine.create_runtime_config()
            config.cuda_graph_strategy = self.trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            self.rtx_graphs = True
            return self.engine.create_execution_context(config)
        self.rtx_graphs = False
        return self.engine.create_execution_context()

    def _bind_io(self):
        trt = self.trt
        self.inputs, self.outputs = [], []
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            (self.inputs if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self.outputs).append(name)
        if len(self.inputs) != 1 or not self.outputs:
            raise FfxError(f"{self.path}: expected one input and at least one output, found {self.inputs} -> {self.outputs}")
        self.input_name, self.output_name = self.inputs[0], self.outputs[0]
        minimum, _, maximum = self.engine.get_tensor_profile_shape(self.input_name, 0)
        minimum, maximum = tuple(minimum), tuple(maximum)
        self.min_batch, self.max_batch = int(minimum[0]), int(maximum[0])
        self.input_shape = tuple(int(d) for d in maximum[1:])
        # Buffers sized for the largest batch, bound once: addresses never change between calls.
        self.context.set_input_shape(self.input_name, tuple(maximum))
        for name in self.inputs + self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = trt.nptype(self.engine.get_tensor_dtype(name))
            self.host[name] = self.cuda.pinned_empty(shape, dtype)
            self.buffers[name] = self.cuda.device_alloc(self.host[name].nbytes)
            self.context.set_tensor_address(name, self.buffers[name].ptr)

    # -- inference -----------------------------------------------------------------------------
    def _infer(self, images):
        count = len(images)
        if count < self.min_batch:
            raise FfxError(f"{self.path}: the engine's profile needs at least {self.min_batch} images per call")
        handle = self.cuda.stream_handle(self.stream)
        self.context.set_input_shape(self.input_name, (count, *self.input_shape))
        host_in = self.host[self.input_name][:count]
        host_in[...] = images.astype(host_in.dtype, copy=False)
        mark = self._marker()
        mark(0)
        self.cuda.copy_to_device(self.buffers[self.input_name].ptr, host_in, self.stream)
        mark(1)
        self._execute(count, handle)
        mark(2)
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        host_out = self.host[self.output_name][: out_shape[0]]
        self.cuda.copy_to_host(host_out, self.buffers[self.output_name].ptr, self.stream)
        mark(3)
        self.cuda.synchronize(self.stream)
        if self.phase_timing:
            e = self.events
            self.last_phases_ms = {"h2d_ms": self.cuda.elapsed_ms(e[0], e[1]),
                                   "compute_ms": self.cuda.elapsed_ms(e[1], e[2]),
                                   "d2h_ms": self.cuda.elapsed_ms(e[2], e[3])}
        return host_out.reshape(out_shape).astype("float32", copy=True)

    def _marker(self):
        """record(i) puts CUDA event i on the stream when phase timing is on; a no-op otherwise."""
        if not self.phase_timing:
            return lambda index: None
        if self.events is None:
            self.events = [self.cuda.create_event() for _ in range(4)]
        return lambda index: self.cuda.record_event(self.events[index], self.stream)

    def _execute(self, count, handle):
        if not self.cuda_graph or self.rtx_graphs:
            if not self.context.execute_async_v3(handle):
                raise FfxError(f"{self.path}: execute_async_v3 failed: {self._last_error()}")
            return
        graph = self.graphs.get(count)
        if graph is None:
            # One plain run first: TensorRT finishes lazy setup (shape-dependent) outside capture.
            if not self.context.execute_async_v3(handle):
                raise FfxError(f"{self.path}: execute_async_v3 failed: {self._last_error()}")
            capturable = getattr(self.context, "is_stream_capturable", None)
            if capturable is not None and not capturable(handle):
                self.notes.append("this engine cannot be captured into a CUDA graph; running without")
                self.cuda_graph = False
                return
            self.cuda.begin_capture(self.stream)
            captured = self.context.execute_async_v3(handle)
            graph = self.cuda.end_capture(self.stream)  # always end the capture, even on failure
            if not captured:
                raise FfxError(f"{self.path}: execute_async_v3 failed during CUDA graph capture: {self._last_error()}")
            self.graphs[count] = graph
        self.cuda.launch_graph(graph, self.stream)

    def _last_error(self):
        errors = self.logger.errors() if getattr(self, "logger", None) else []
        return errors[-1] if errors else "no error logged"

    def _deactivate(self):
        # TensorRT objects first (they free memory in the current CUDA context), then our buffers,
        # then the context itself.
        self.graphs.clear()
        self.context = self.engine = self.runtime = None
        for buffer in self.buffers.values():
            buffer.free()
        self.host.clear()
        if self.cuda is not None:
            self.cuda.close()
        self._reset()

    # -- inspection ----------------------------------------------------------------------------
    def layer_information(self):
        """TensorRT's engine inspector output (JSON dict) for the loaded engine."""
        import json

        inspector = self.engine.create_engine_inspector()
        inspector.execution_context = self.context
        text = inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)
        return json.loads(text)


def _diagnostic_names(trt, diagnostics):
    enum = getattr(trt, "EngineInvalidityDiagnostics", None)
    if enum is None or not diagnostics:
        return ""
    return ", ".join(name.lower().replace("_", " ") for name, member in enum.__members__.items()
                     if int(diagnostics) & int(member))

