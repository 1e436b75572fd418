"""`ffx serve`: an engine or ffx ONNX behind a real Triton Inference Server, through NVIDIA PyTriton.

PyTriton starts the `tritonserver` binary it ships (HTTP, gRPC, Prometheus metrics, dynamic
batching, health endpoints) and routes each batch Triton forms to a Python function in this
process, which runs ffx's runner (ONNX Runtime, or TensorRT for an engine on a GPU machine).
Two models are served:

    NAME           float tensors: input [batch, C, H, W] preprocessed, output logits [batch, classes];
                   requests from many clients are batched together (dynamic batching).
    NAME_image     encoded image files (PNG, JPEG, ...) as BYTES [batch, 1]; decoded and preprocessed
                   here with the model's own metadata, exactly as `ffx predict` does. Each request runs
                   alone (no dynamic batching), so one undecodable image fails only its own request.

Triton validates names, shapes and dtypes before a request reaches ffx; what it cannot check
(an undecodable image) comes back to the client as an error and the server keeps serving.
"""

import concurrent.futures
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import socket
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

import numpy as np

from ffx.errors import BackendUnavailable, FfxError
from ffx.runtime.triton_repository import DEFAULT_QUEUE_DELAY_US

DEFAULT_PORT = 8000
SHUTDOWN_GRACE_SECONDS = 5  # Triton waits this long for in-flight requests and open connections


class PortInUse(FfxError):
    def __init__(self, role, host, port):
        super().__init__(f"port {port} ({role}) is already in use on {host}")
        self.role, self.host, self.port = role, host, port


@dataclasses.dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    http_port: int = DEFAULT_PORT
    grpc_port: int | None = None  # default: http_port + 1
    metrics_port: int | None = None  # default: http_port + 2
    max_batch: int | None = None  # default: the engine profile's max batch, 32 for ONNX
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    name: str | None = None  # default: from the file name
    provider: str = "cpu"  # ONNX Runtime execution provider

    def ports(self):
        return {"HTTP": self.http_port, "gRPC": self.grpc_port or self.http_port + 1,
                "metrics": self.metrics_port or self.http_port + 2}


@dataclasses.dataclass
class ServerInfo:
    model_name: str
    image_model_name: str
    backend: str
    precision: str
    input_name: str
    input_shape: list  # [-1, C, H, W]
    output_name: str
    max_batch_size: int
    preferred_batch_sizes: list
    http_url: str
    grpc_url: str
    metrics_url: str
    log_file: str


def image_model_name(name):
    return f"{name}_image"


def check_ports_free(host, ports):
    """PortInUse for the first of `ports` ({role: port}) that something already listens on."""
    for role, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR: a port in TIME_WAIT from a previous server is free; a listener is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except socket.gaierror:
                raise FfxError(f"--host {host}: not an address or host name this machine resolves") from None
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL:
                    raise FfxError(f"--host {host}: not an address of this machine (0.0.0.0 listens on every one)") from None
                raise PortInUse(role, host, port) from None


def free_loopback_ports(count):
    """`count` distinct TCP ports free on 127.0.0.1 right now (for tests and benchmarks)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _pytriton():
    try:
        import pytriton.triton  # noqa: F401
    except ImportError:
        raise BackendUnavailable("serving needs NVIDIA PyTriton: pip install 'ffx[serve]'") from None
    import pytriton.decorators
    import pytriton.exceptions
    import pytriton.model_config

    return pytriton


def _python_library_on_loader_path():
    """Put this interpreter's libpython first on LD_LIBRARY_PATH for the tritonserver process.

    Triton's Python backend stub links `libpython3.X.so` and imports this interpreter's standard
    library; with pyenv, conda or a venv over them the loader would otherwise find the system's
    libpython, a different patch release whose C internals the stdlib no longer matches (seen:
    multiprocessing failing on `RLock._recursion_count`)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    library = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY") or ""
    if not libdir or not (Path(libdir) / library).is_file():
        return
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir not in current.split(":"):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


class ModelServer:
    """Start with `start()`, stop with `stop()` (or use `with`); `info` describes the endpoints."""

    def __init__(self, model_path, settings=None):
        from ffx.runtime.model_interface import read_model_interface
        from ffx.runtime.triton_repository import batch_settings, check_model_name, default_model_name

        self.settings = settings or ServeSettings()
        self.interface = read_model_interface(model_path)
        self.preprocess = self.interface.preprocess
        self.name = check_model_name(self.settings.name or default_model_name(model_path))
        self.max_batch_size, self.preferred = batch_settings(self.interface, self.settings.max_batch)
        self.runner = None
        self.triton = None
        self.info = None
        # Every runner call (activation included) runs on this one thread: a CUDA context made
        # current by pycuda is current only on the thread that pushed it, and the two models
        # share one runner, which is not meant for concurrent calls.
        self._runner_thread = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self):
        from ffx.runtime.runner import open_runner

        pytriton = _pytriton()
        ports = self.settings.ports()
        if len(set(ports.values())) != len(ports):
            raise FfxError(f"the HTTP, gRPC and metrics ports must differ (got {ports})")
        check_ports_free(self.settings.host, ports)
        self._runner_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ffx-runner")
        self.runner = self._runner_thread.submit(
            lambda: open_runner(self.interface.path, provider=self.settings.provider, int8_kernels=True).activate()).result()
        log_file = Path(tempfile.mkstemp(prefix=f"ffx-serve-{self.name}-", suffix=".log")[1])
        config = pytriton.triton.TritonConfig(
            http_address=self.settings.host, http_port=ports["HTTP"],
            grpc_address=self.settings.host, grpc_port=ports["gRPC"],
            metrics_address=self.settings.host, metrics_port=ports["metrics"],
            allow_gpu_metrics=False, exit_timeout_secs=SHUTDOWN_GRACE_SECONDS, log_file=log_file,
        )
        logging.getLogger("pytriton").setLevel(logging.ERROR)  # its notices would drown ffx's own lines
        _python_library_on_loader_path()
        # PyTriton guards several APIs with a random token. Model loading (model-repository),
        # shared memory, tracing and log settings stay guarded; the read-only statistics are
        # opened, since they are how an operator sees dynamic batching at work.
        security = pytriton.triton.TritonSecurityConfig(
            restricted_endpoints=[e for e in pytriton.triton.DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"])
        self.triton = pytriton.triton.Triton(config=config, security_config=security)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                self._bind(pytriton)
                self.triton.run()
        except pytriton.exceptions.PyTritonError as e:
            self.stop()
            raise FfxError(f"Triton Inference Server did not start ({e}); its log: {log_file}") from None
        except BaseException:
            self.stop()
            raise
        host = self.settings.host
        self.info = ServerInfo(
            model_name=self.name, image_model_name=image_model_name(self.name), backend=self.runner.backend,
            precision=self.interface.precision, input_name=self.interface.input_name,
            input_shape=[-1, *self.interface.input_dims], output_name=self.interface.output_name,
            max_batch_size=self.max_batch_size, preferred_batch_sizes=self.preferred,
            http_url=f"http://{host}:{ports['HTTP']}", grpc_url=f"{host}:{ports['gRPC']}",
            metrics_url=f"http://{host}:{ports['metrics']}/metrics", log_file=str(log_file),
        )
        return self

    def stop(self):
        if self.triton is not None:
            triton, self.triton = self.triton, None
            with contextlib.redirect_stdout(sys.stderr):
                triton.stop()
        if self.runner is not None:
            runner, self.runner = self.runner, None
            self._runner_thread.submit(runner.deactivate).result()
        if self._runner_thread is not None:
            self._runner_thread.shutdown()
            self._runner_thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- the two models -----------------------------------------------------------------------
    def _bind(self, pytriton):
        Tensor = pytriton.model_config.Tensor
        ModelConfig = pytriton.model_config.ModelConfig
        dims = tuple(self.interface.input_dims)
        logits = Tensor(name=self.interface.output_name, dtype=np.float32, shape=tuple(self.interface.output_dims))
        self.triton.bind(
            model_name=self.name,
            infer_func=pytriton.decorators.batch(self._infer_tensors),
            inputs=[Tensor(name=self.interface.input_name, dtype=np.dtype(self.interface.input_dtype), shape=dims)],
            outputs=[logits],
            config=ModelConfig(max_batch_size=self.max_batch_size, batcher=pytriton.model_config.DynamicBatcher(
                max_queue_delay_microseconds=self.settings.max_queue_delay_us,
                preferred_batch_size=self.preferred)),
            strict=True,
        )
        self.triton.bind(
            model_name=image_model_name(self.name),
            infer_func=pytriton.decorators.batch(self._infer_encoded_images),
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[logits],
            config=ModelConfig(max_batch_size=self.max_batch_size, batcher=None),
            strict=True,
        )

    def _infer(self, images):
        return {self.interface.output_name: self._runner_thread.submit(self.runner.infer, images).result()}

    def _infer_tensors(self, **inputs):
        return self._infer(inputs[self.interface.input_name])

    def _infer_encoded_images(self, image):
        from pytriton.exceptions import PyTritonValidationError

        from ffx.images import UnreadableImage, decode_rgb, preprocess_image

        arrays = []
        for index, row in enumerate(np.asarray(image).reshape(len(image), -1)):
            try:
                arrays.append(preprocess_image(decode_rgb(bytes(row[0]), name=f"image {index}"), self.preprocess))
            except (UnreadableImage, FfxError) as e:
                raise PyTritonValidationError(str(e)) from None
        return self._infer(np.stack(arrays))


def serve_until_stopped(model_path, settings, on_ready=None):
    """Serve until SIGINT (Ctrl-C) or SIGTERM, then shut Triton down cleanly. `on_ready(info)`
    is called once the models are loaded."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ModelServer(model_path, settings) as server:
            if on_ready:
                on_ready(server.info)
            while not stop.wait(0.5):
                if not server.triton.is_alive():
                    raise FfxError(f"Triton Inference Server stopped unexpectedly; its log: {server.info.log_file}")
        return server.info
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
