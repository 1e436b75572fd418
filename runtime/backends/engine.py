"""TensorRT / TensorRT-RTX engine runner: IO tensor API, execute_async_v3, pinned host buffers,
one stream and optional CUDA graphs (one per input shape; captured through cuda-python for full
TensorRT, by TensorRT-RTX itself for its engines). Needs a CUDA GPU; pycuda or cuda-python
provide the memory (runtime/backends/cuda.py).

The sidecar beside the engine is checked against the installed TensorRT and the GPU before the
engine is deserialized, so a wrong-machine engine fails with one sentence, not a C++ error.
"""

from ffx.errors import FfxError
from ffx.runtime.backends.cuda import GRAPHS_NEED_CUDA_PYTHON
from ffx.model_file import ModelFile
from ffx.reporting import warn
from ffx.runtime.backends.runner import Runner
from ffx.runtime.engines.sidecar import compatibility_problem, read_sidecar


class EngineRunner(Runner):
    """A TensorRT or TensorRT-RTX engine on a CUDA GPU.

    Args:
        path: the plan file (or its ModelFile, its sidecar read); its sidecar (PATH.json) is checked
            against this machine first.
        cuda_graph: replay each input shape's calls as a CUDA graph (full TensorRT: through
            cuda-python; TensorRT-RTX: its own capture).
        cuda_library: host-device buffers through pycuda, cuda-python or auto.
        check_compatibility: refuse an engine whose sidecar names another TensorRT or GPU.
    """

    supports_phase_timing = True

    def __init__(self, path, cuda_graph=False, cuda_library="auto", check_compatibility=True):
        super().__init__(path)
        if not isinstance(path, ModelFile):
            self.model_file = ModelFile(self.path, "engine", sidecar=read_sidecar(self.path))
        self.sidecar = self.model_file.sidecar
        self.cuda_graph = cuda_graph
        self.cuda_library = cuda_library
        self.check_compatibility = check_compatibility
        if self.sidecar is None:
            warn(f"{self.path.name} has no sidecar: its TensorRT version and GPU cannot be checked before loading")
            self.backend = "tensorrt"
        else:
            self.backend = self.sidecar.backend
            self.metadata = self.sidecar.model_metadata
            self.precision = self.sidecar.precision
            shapes = self.sidecar.profile
            self.input_shape = tuple(shapes.max[1:])
            self.min_batch, self.max_batch = int(shapes.min[0]), int(shapes.max[0])
        if cuda_graph and cuda_library == "pycuda" and self.backend != "tensorrt-rtx":
            raise FfxError(f"{self.path}: {GRAPHS_NEED_CUDA_PYTHON}")
        self._reset()

    def _reset(self):
        self.trt = self.cuda = self.runtime = self.engine = self.context = self.stream = self.logger = None
        self.buffers = {}
        self.host = {}
        self.graphs = {}  # batch size -> CapturedGraph (one per input shape)
        self.events = []
        self.own_graphs = False  # captured here through cuda-python (not by TensorRT-RTX itself)
        self.last_batch = None  # batch of the previous call: a new shape gets a plain enqueue first

    # -- loading -------------------------------------------------------------------------------
    def _backend_name(self):
        return self.backend if self.sidecar else "auto"

    def check_available(self):
        from ffx.runtime.backends.cuda import open_cuda
        from ffx.tensorrt import available_backend

        backend = available_backend(self._backend_name())
        open_cuda(self.cuda_library, graphs=self.cuda_graph and not backend.is_rtx).close()

    def _activate(self):
        from ffx.runtime.backends.cuda import open_cuda
        from ffx.tensorrt import available_backend, make_logger

        backend = available_backend(self._backend_name())
        self.backend = backend.name  # without a sidecar, "auto" may have picked TensorRT-RTX
        self.trt = backend.module
        # TensorRT-RTX captures CUDA graphs itself (its runtime config); full TensorRT needs ours.
        self.own_graphs = self.cuda_graph and not backend.is_rtx
        self.cuda = open_cuda(self.cuda_library, graphs=self.own_graphs)
        try:
            gpu = self.cuda.gpu_info()
            if self.sidecar is not None and self.check_compatibility:
                problem = compatibility_problem(self.sidecar, backend.name, backend.version, gpu)
                if problem:
                    raise FfxError(f"{self.path}: {problem}")
            self.logger = make_logger(backend)
            self.runtime = self.trt.Runtime(self.logger)
            if self.sidecar is not None and self.sidecar.version_compatible:
                self.runtime.engine_host_code_allowed = True  # version-compatible plans embed a lean runtime
            data = self.path.read_bytes()
            if backend.is_rtx:
                self._check_validity_rtx(data)
            self.engine = self.runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise FfxError(f"{self.path}: {backend} could not load the engine: {self._last_error()}")
            self.context = self._create_context_rtx() if backend.is_rtx else self.engine.create_execution_context()
            self.stream = self.cuda.create_stream()
            self._bind_io()
        except BaseException:
            self._release()
            raise

    def _check_validity_rtx(self, data):
        """TensorRT-RTX can say from the header whether a plan fits this system."""
        runtime = self.runtime
        validity, diagnostics = runtime.get_engine_validity(data[: max(runtime.engine_header_size, 64)])
        if validity == self.trt.EngineValidity.INVALID:  # SUBOPTIMAL still runs
            reasons = _diagnostic_names_rtx(self.trt, diagnostics)
            raise FfxError(f"{self.path}: {self.backend} says this engine cannot run here ({reasons or 'no reason given'}); "
                           "rebuild it with `ffx build-engine`")

    def _create_context_rtx(self):
        if not self.cuda_graph:
            return self.engine.create_execution_context()
        # TensorRT-RTX captures and replays CUDA graphs itself, one per shape.
        runtime_config = self.engine.create_runtime_config()
        runtime_config.cuda_graph_strategy = self.trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        return self.engine.create_execution_context(runtime_config)

    def _bind_io(self):
        from ffx.tensorrt import numpy_dtype

        trt, engine, context = self.trt, self.engine, self.context
        self.inputs, self.outputs = [], []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            (self.inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self.outputs).append(name)
        if len(self.inputs) != 1 or not self.outputs:
            raise FfxError(f"{self.path}: expected one input and at least one output, found {self.inputs} -> {self.outputs}")
        self.input_name, self.output_name = self.inputs[0], self.outputs[0]
        minimum, _, maximum = engine.get_tensor_profile_shape(self.input_name, 0)
        minimum, maximum = tuple(minimum), tuple(maximum)
        self.min_batch, self.max_batch = int(minimum[0]), int(maximum[0])
        self.input_shape = tuple(int(d) for d in maximum[1:])
        # Buffers sized for the largest batch, bound once: addresses never change between calls.
        context.set_input_shape(self.input_name, tuple(maximum))
        for name in self.inputs + self.outputs:
            shape = tuple(context.get_tensor_shape(name))
            dtype = numpy_dtype(trt, engine.get_tensor_dtype(name), name, self.path)
            self.host[name] = self.cuda.pinned_empty(shape, dtype)
            self.buffers[name] = self.cuda.device_alloc(self.host[name].nbytes)
            context.set_tensor_address(name, self.buffers[name].ptr)

    # -- inference -----------------------------------------------------------------------------
    def _infer(self, images):
        count = len(images)  # Runner.infer pads short chunks up to min_batch
        self.context.set_input_shape(self.input_name, (count, *self.input_shape))
        host_in = self.host[self.input_name][:count]
        host_in[...] = images.astype(host_in.dtype, copy=False)
        mark = self._marker()
        mark(0)
        self.cuda.copy_to_device(self.buffers[self.input_name].ptr, host_in, self.stream)
        mark(1)
        self._execute(count)
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
        if not self.events:
            self.events = [self.cuda.create_event() for _ in range(4)]
        return lambda index: self.cuda.record_event(self.events[index], self.stream)

    def _execute(self, count):
        """Run the engine on the stream: a plain enqueue, or our CUDA graph for this batch size.
        After a shape change the first call is a plain enqueue (TensorRT finishes its
        shape-dependent setup outside any capture); the next call at that shape captures (once)
        and every later one replays."""
        shape_changed, self.last_batch = count != self.last_batch, count
        if not self.own_graphs or shape_changed:
            self._enqueue()
            return
        graph = self.graphs.get(count)
        if graph is None:
            graph = self._capture()
            if graph is None:
                self._enqueue()
                return
            self.graphs[count] = graph
        self.cuda.launch_graph(graph, self.stream)

    def _enqueue(self):
        if not self.context.execute_async_v3(self.cuda.stream_handle(self.stream)):
            raise FfxError(f"{self.path}: execute_async_v3 failed: {self._last_error()}")

    def _capture(self):
        """A CapturedGraph of one execute_async_v3, or None (with a warning, graphs then off) when
        this engine cannot be captured: TensorRT then runs without a graph, as trtexec does."""
        handle = self.cuda.stream_handle(self.stream)
        graph = None
        capturable = getattr(self.context, "is_stream_capturable", None)  # TensorRT-RTX has it, 10.3 / 11.1 do not
        if capturable is None or capturable(handle):
            graph = self.cuda.capture_graph(self.stream, lambda: self.context.execute_async_v3(handle))
        if graph is None:
            reason = self._last_error() if self.logger.errors() else "the stream cannot be captured"
            warn(f"{self.path.name}: CUDA graph capture failed ({reason}); running without CUDA graphs")
            self.own_graphs = False
        return graph

    def _last_error(self):
        errors = self.logger.errors() if self.logger is not None else []
        return errors[-1] if errors else "no error logged"

    def _deactivate(self):
        self._release()

    def _release(self):
        """Everything activate() made, freed in reverse order: graphs, events and the stream
        (CUDA objects that refer to the context's work), TensorRT objects (they free memory in
        the current CUDA context), our buffers, then the CUDA context itself."""
        cuda = self.cuda
        if cuda is not None:
            for graph in self.graphs.values():
                cuda.destroy_graph(graph)
            for event in self.events:
                cuda.destroy_event(event)
            if self.stream is not None:
                cuda.destroy_stream(self.stream)
        self.graphs, self.events, self.stream = {}, [], None
        self.context = self.engine = self.runtime = None
        for buffer in self.buffers.values():
            buffer.free()
        self.host.clear()
        if cuda is not None:
            cuda.close()
        self._reset()

    # -- inspection ----------------------------------------------------------------------------
    def layer_information(self):
        """TensorRT's engine inspector output (JSON dict) for the loaded engine."""
        import json

        inspector = self.engine.create_engine_inspector()
        inspector.execution_context = self.context
        text = inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)
        return json.loads(text)


def _diagnostic_names_rtx(trt, diagnostics):
    if not diagnostics:
        return ""
    return ", ".join(name.lower().replace("_", " ") for name, member in trt.EngineInvalidityDiagnostics.__members__.items()
                     if int(diagnostics) & int(member))

