"""CUDA from Python behind one small interface: pycuda where installed, cuda-python otherwise.

The TensorRT engine runner needs device memory, page-locked host memory, a stream, async copies
and (optionally) CUDA graph capture. Jetsons usually carry pycuda (compiled on the device);
NVIDIA's own samples moved to cuda-python (`cuda.bindings.runtime`). Both are wrapped here with
the same methods so the runner never cares which one it got. Released pycuda has no
stream-capture API, so CUDA graphs go through cuda-python only (`supports_graphs`). Nothing here
is imported unless an engine is actually run.
"""

import ctypes
import dataclasses

import numpy as np

from ffx.errors import BackendUnavailable, FfxError, install_hint

CUDA_LIBRARIES = ("pycuda", "cuda-python")


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.9"
    total_memory_bytes: int
    cuda_library: str  # which Python CUDA library answered

    def to_dict(self):
        return dataclasses.asdict(self)


GRAPHS_NEED_CUDA_PYTHON = (f"CUDA graphs need cuda-python ({install_hint('cuda12')}, or '.[cuda13]' for a CUDA 13 "
                           "driver): released pycuda has no stream-capture API")
CUDA_LIBRARY_HINT = (f"{install_hint('cuda12')} (cuda-python; '.[cuda13]' for a CUDA 13 driver, '.[pycuda]' for "
                     "pycuda, compiled on the device)")


class CudaLibraryMissing(BackendUnavailable):
    """A CUDA library is not installed (as opposed to installed, with no GPU or driver to talk to)."""


def open_cuda(preferred="auto", device=0, graphs=False):
    """A CudaApi for `device`, from pycuda, cuda-python, or the first that works (auto).
    `graphs`: CUDA graphs will be captured, which only cuda-python can do."""
    if preferred not in ("auto", *CUDA_LIBRARIES):
        raise BackendUnavailable(f"unknown CUDA library {preferred!r}; choose auto, pycuda or cuda-python")
    if graphs and preferred == "pycuda":
        raise FfxError(GRAPHS_NEED_CUDA_PYTHON)
    order = CUDA_LIBRARIES if preferred == "auto" else (preferred,)
    if graphs:
        order = ("cuda-python",)
    missing, failed = [], []
    for name in order:
        try:
            return PycudaApi(device) if name == "pycuda" else CudaPythonApi(device)
        except CudaLibraryMissing:
            missing.append(name)
        except BackendUnavailable as e:
            failed.append(str(e))
    if failed:  # a library is there: what is missing is a GPU, or a driver it can use
        raise BackendUnavailable("running a TensorRT engine needs a CUDA GPU and its driver, and none is usable here ("
                                 + "; ".join(failed) + ")")
    if graphs:
        raise BackendUnavailable(GRAPHS_NEED_CUDA_PYTHON)
    raise BackendUnavailable(f"running a TensorRT engine needs a CUDA GPU and pycuda or cuda-python, and neither "
                             f"library is installed: {CUDA_LIBRARY_HINT}")


def current_gpu(device=0):
    """GpuInfo of `device`, or None where no CUDA library or GPU answers (e.g. a CPU-only build machine)."""
    try:
        cuda = open_cuda("auto", device)
    except BackendUnavailable:
        return None
    try:
        return cuda.gpu_info()
    finally:
        cuda.close()


class CudaApi:
    """What the engine runner uses. Pointers and stream handles are plain ints (what TensorRT takes)."""

    name = "?"
    supports_graphs = False

    def gpu_info(self):
        raise NotImplementedError

    def device_alloc(self, nbytes):
        """Device memory: an object with `.ptr` (int) and `.free()`."""
        raise NotImplementedError

    def pinned_empty(self, shape, dtype):
        """A page-locked numpy array (async copies need it)."""
        raise NotImplementedError

    def create_stream(self):
        raise NotImplementedError

    def stream_handle(self, stream):
        raise NotImplementedError

    def copy_to_device(self, device_ptr, host_array, stream):
        raise NotImplementedError

    def copy_to_host(self, host_array, device_ptr, stream):
        raise NotImplementedError

    def synchronize(self, stream):
        raise NotImplementedError

    def create_event(self):
        raise NotImplementedError

    def record_event(self, event, stream):
        raise NotImplementedError

    def elapsed_ms(self, start, end):
        """Milliseconds between two recorded events (waits for `end`)."""
        raise NotImplementedError

    def destroy_stream(self, stream):
        raise NotImplementedError

    def destroy_event(self, event):
        raise NotImplementedError

    def capture_graph(self, stream, enqueue):
        """Capture what `enqueue()` (returning True on success) puts on `stream` into an
        instantiated graph for `launch_graph`; None when the capture failed (the CUDA error is
        cleared, so the caller can run without a graph)."""
        raise FfxError(GRAPHS_NEED_CUDA_PYTHON)

    def launch_graph(self, graph, stream):
        raise FfxError(GRAPHS_NEED_CUDA_PYTHON)

    def destroy_graph(self, graph):
        raise FfxError(GRAPHS_NEED_CUDA_PYTHON)

    def close(self):
        pass


class PycudaApi(CudaApi):
    name = "pycuda"

    def __init__(self, device=0):
        self.context = None
        try:
            import pycuda.driver as driver
        except ImportError as e:
            if e.name is not None and e.name.split(".")[0] == "pycuda":
                raise CudaLibraryMissing("pycuda is not installed") from None
            raise BackendUnavailable(f"pycuda: {type(e).__name__}: {e}") from None  # e.g. libcuda.so missing
        except Exception as e:  # OSError when libcuda is missing
            raise BackendUnavailable(f"pycuda: {type(e).__name__}: {e}") from None
        try:
            driver.init()
            if driver.Device.count() <= device:
                raise BackendUnavailable(f"pycuda: no CUDA device {device}")
            self.device = driver.Device(device)
            # The primary context is the one the CUDA runtime (and so TensorRT) uses.
            self.context = self.device.retain_primary_context()
            self.context.push()
        except driver.Error as e:
            raise BackendUnavailable(f"pycuda: {e}") from None
        self.driver = driver

    def gpu_info(self):
        major, minor = self.device.compute_capability()
        return GpuInfo(self.device.name(), f"{major}.{minor}", int(self.device.total_memory()), self.name)

    def device_alloc(self, nbytes):
        allocation = self.driver.mem_alloc(max(int(nbytes), 1))
        return _DeviceBuffer(int(allocation), allocation.free)

    def pinned_empty(self, shape, dtype):
        return self.driver.pagelocked_empty(tuple(shape), dtype)

    def create_stream(self):
        return self.driver.Stream()

    def stream_handle(self, stream):
        return int(stream.handle)

    def copy_to_device(self, device_ptr, host_array, stream):
        self.driver.memcpy_htod_async(device_ptr, host_array, stream)

    def copy_to_host(self, host_array, device_ptr, stream):
        self.driver.memcpy_dtoh_async(host_array, device_ptr, stream)

    def synchronize(self, stream):
        stream.synchronize()

    def create_event(self):
        return self.driver.Event()

    def record_event(self, event, stream):
        event.record(stream)

    def elapsed_ms(self, start, end):
        end.synchronize()
        return float(start.time_till(end))

    # pycuda's Stream and Event free themselves when the last reference goes; the runner drops its own.
    def destroy_stream(self, stream):
        pass

    def destroy_event(self, event):
        pass

    def close(self):
        if self.context is not None:
            self.context.pop()
            self.context = None


class CudaPythonApi(CudaApi):
    name = "cuda-python"
    supports_graphs = True

    def __init__(self, device=0):
        try:
            try:
                from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
            except ImportError:
                from cuda import cudart  # older cuda-python
        except ImportError as e:
            if e.name is not None and e.name.split(".")[0] == "cuda":
                raise CudaLibraryMissing("cuda-python is not installed") from None
            raise BackendUnavailable(f"cuda-python: {type(e).__name__}: {e}") from None
        except Exception as e:
            raise BackendUnavailable(f"cuda-python: {type(e).__name__}: {e}") from None
        self.cudart = cudart
        count = self._check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount", unavailable=True)
        if count <= device:
            raise BackendUnavailable(f"cuda-python: no CUDA device {device} ({count} found)")
        self._check(cudart.cudaSetDevice(device), "cudaSetDevice", unavailable=True)
        self.device = device
        self._host_blocks = []

    def _check(self, result, what, unavailable=False):
        """cuda-python returns (error, *values); raise on error, return the value(s)."""
        if not isinstance(result, tuple):
            result = (result,)
        error, values = result[0], result[1:]
        if int(error) != int(self.cudart.cudaError_t.cudaSuccess):
            _, text = self.cudart.cudaGetErrorString(error)
            message = f"cuda-python: {what} failed: {text.decode() if isinstance(text, bytes) else text}"
            if unavailable:
                raise BackendUnavailable(message)
            raise RuntimeError(message)
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def gpu_info(self):
        props = self._check(self.cudart.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return GpuInfo(name.rstrip("\x00"), f"{props.major}.{props.minor}", int(props.totalGlobalMem), self.name)

    def device_alloc(self, nbytes):
        ptr = self._check(self.cudart.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc")
        return _DeviceBuffer(int(ptr), lambda: self._check(self.cudart.cudaFree(ptr), "cudaFree"))

    def pinned_empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
        ptr = self._check(self.cudart.cudaMallocHost(nbytes), "cudaMallocHost")
        raw = (ctypes.c_byte * nbytes).from_address(int(ptr))
        array = np.frombuffer(raw, dtype=np.uint8, count=nbytes)[: int(np.prod(shape)) * dtype.itemsize]
        self._host_blocks.append(ptr)  # freed by close(): the runner drops its arrays first
        return array.view(dtype).reshape(shape)

    def create_stream(self):
        return self._check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream):
        return int(stream)

    def copy_to_device(self, device_ptr, host_array, stream):
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(device_ptr, host_array.ctypes.data, host_array.nbytes, kind, stream),
                    "cudaMemcpyAsync")

    def copy_to_host(self, host_array, device_ptr, stream):
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(host_array.ctypes.data, device_ptr, host_array.nbytes, kind, stream),
                    "cudaMemcpyAsync")

    def synchronize(self, stream):
        self._check(self.cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def create_event(self):
        return self._check(self.cudart.cudaEventCreate(), "cudaEventCreate")

    def record_event(self, event, stream):
        self._check(self.cudart.cudaEventRecord(event, stream), "cudaEventRecord")

    def elapsed_ms(self, start, end):
        self._check(self.cudart.cudaEventSynchronize(end), "cudaEventSynchronize")
        return float(self._check(self.cudart.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def destroy_stream(self, stream):
        self._check(self.cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def destroy_event(self, event):
        self._check(self.cudart.cudaEventDestroy(event), "cudaEventDestroy")

    def capture_graph(self, stream, enqueue):
        cudart = self.cudart
        # Thread-local: other threads' CUDA calls are neither captured nor made to fail meanwhile.
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        enqueued, graph = False, None
        try:
            enqueued = bool(enqueue())
        finally:
            # Always end the capture, even when enqueue raised: a stream left capturing breaks every later call.
            error, graph = cudart.cudaStreamEndCapture(stream)
            if not (enqueued and self._succeeded(error)):
                self._discard_capture(graph)
        if not (enqueued and self._succeeded(error)):
            return None
        error, graph_exec = cudart.cudaGraphInstantiate(graph, 0)
        if not self._succeeded(error):
            self._discard_capture(graph)
            return None
        return CapturedGraph(graph, graph_exec)

    def _succeeded(self, error):
        return int(error) == int(self.cudart.cudaError_t.cudaSuccess)

    def _discard_capture(self, graph):
        """Free a failed capture's graph and clear the error it left, as trtexec does."""
        if graph is not None and int(graph) != 0:
            self.cudart.cudaGraphDestroy(graph)
        self.cudart.cudaGetLastError()

    def launch_graph(self, graph, stream):
        self._check(self.cudart.cudaGraphLaunch(graph.graph_exec, stream), "cudaGraphLaunch")

    def destroy_graph(self, graph):
        self._check(self.cudart.cudaGraphExecDestroy(graph.graph_exec), "cudaGraphExecDestroy")
        self._check(self.cudart.cudaGraphDestroy(graph.graph), "cudaGraphDestroy")

    def close(self):
        while self._host_blocks:
            self.cudart.cudaFreeHost(self._host_blocks.pop())


@dataclasses.dataclass(frozen=True)
class CapturedGraph:
    """A captured CUDA graph and its executable instance (both freed by `destroy_graph`)."""

    graph: object
    graph_exec: object


@dataclasses.dataclass
class _DeviceBuffer:
    ptr: int
    _free: object

    def free(self):
        if self._free is not None:
            self._free()
            self._free = None
