"""CUDA from Python behind one small interface: pycuda where installed, cuda-python otherwise.

The TensorRT engine runner needs device memory, page-locked host memory, a stream, async copies
and (optionally) CUDA graph capture. Jetsons usually carry pycuda (compiled on the device);
NVIDIA's own samples moved to cuda-python (`cuda.bindings.runtime`). Both are wrapped here with
the same methods so the runner never cares which one it got. Nothing here is imported unless an
engine is actually run.
"""

import ctypes
import dataclasses

import numpy as np

from ffx.errors import BackendUnavailable

CUDA_LIBRARIES = ("pycuda", "cuda-python")


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.9"
    total_memory_bytes: int
    cuda_library: str  # which Python CUDA library answered

    def to_dict(self):
        return dataclasses.asdict(self)


def open_cuda(preferred="auto", device=0):
    """A CudaApi for `device`, from pycuda, cuda-python, or the first that works (auto)."""
    if preferred not in ("auto", *CUDA_LIBRARIES):
        raise BackendUnavailable(f"unknown CUDA library {preferred!r}; choose auto, pycuda or cuda-python")
    order = CUDA_LIBRARIES if preferred == "auto" else (preferred,)
    reasons = []
    for name in order:
        try:
            return PycudaApi(device) if name == "pycuda" else CudaPythonApi(device)
        except BackendUnavailable as e:
            reasons.append(str(e))
    raise BackendUnavailable(
        "running a TensorRT engine needs a CUDA GPU and pycuda or cuda-python ("
        + "; ".join(reasons)
        + "): `pip install cuda-python` (or pycuda, compiled on the device)"
    )


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

    def begin_capture(self, stream):
        raise NotImplementedError

    def end_capture(self, stream):
        """Finish a stream capture; returns an instantiated graph to pass to `launch_graph`."""
        raise NotImplementedError

    def launch_graph(self, graph, stream):
        raise NotImplementedError

    def close(self):
        pass


class PycudaApi(CudaApi):
    name = "pycuda"

    def __init__(self, device=0):
        try:
            import pycuda.driver as driver
        except Exception as e:  # ImportError, or OSError when libcuda is missing
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

    def begin_capture(self, stream):
        stream.begin_capture()

    def end_capture(self, stream):
        return stream.end_capture().instantiate()

    def launch_graph(self, graph, stream):
        graph.launch(stream)

    def close(self):
        if getattr(self, "context", None) is not None:
            self.context.pop()
            self.context = None


class CudaPythonApi(CudaApi):
    name = "cuda-python"

    def __init__(self, device=0):
        try:
            try:
                from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
            except ImportError:
                from cuda import cudart  # older cuda-python
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

    def begin_capture(self, stream):
        mode = self.cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        self._check(self.cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream):
        graph = self._check(self.cudart.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        return self._check(self.cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def launch_graph(self, graph, stream):
        self._check(self.cudart.cudaGraphLaunch(graph, stream), "cudaGraphLaunch")

    def close(self):
        while self._host_blocks:
            self.cudart.cudaFreeHost(self._host_blocks.pop())


@dataclasses.dataclass
class _DeviceBuffer:
    ptr: int
    _free: object

    def free(self):
        if self._free is not None:
            self._free()
            self._free = None
