"""`ffx serve`: an engine or ffx ONNX behind a real Triton Inference Server, through NVIDIA PyTriton.

PyTriton starts the `tritonserver` binary it ships (HTTP, gRPC, Prometheus metrics, dynamic
batching, health endpoints) and routes each batch Triton forms to a Python function in this
process, which runs ffx's runner (ONNX Runtime, or TensorRT for an engine on a GPU machine).
Two models are served:

    NAME           float tensors: input [batch, C, H, W] preprocessed, output logits [batch, classes];
                   requests from many clients are batched together (dynamic batching).
    NAME_image     encoded image files (PNG, JPEG, ...) as BYTES [batch, 1]; decoded and preprocessed
                   with the model's own metadata, exactly as `ffx predict` does, by a Triton
                   Python-backend model of ffx's own (runtime/deploy/triton_image_model.py), which sends
                   the images on to NAME. One undecodable image fails only its own request, with
                   HTTP 400 and one line.

Both models are in the model store when Triton starts, so /v2/health/ready answers 200 only once
both serve. Triton validates names, shapes and dtypes before a request reaches ffx; what it cannot
check (an undecodable image) comes back to the client as an error and the server keeps serving.
Each output carries the class names as its label file, so `class_count` requests (Triton's
classification extension) return them. The server's sockets, model store and (unless `log_file`
is given) its log live in one folder under TMPDIR, removed on a clean exit; after a failure only
the log is kept there, and the error names it.
"""

import concurrent.futures
import contextlib
import dataclasses
import errno
import json
import logging
import os
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ffx.errors import TERMINATING_SIGNALS, BackendUnavailable, FfxError, install_hint
from ffx.runtime.deploy.triton_repository import DEFAULT_QUEUE_DELAY_US

DEFAULT_PORT = 8000
SHUTDOWN_GRACE_SECONDS = 5  # Triton waits this long for in-flight requests and open connections
MAX_PORT = 65535
# A Unix socket path is at most 107 bytes (sun_path, NUL included in its 108); PyTriton's longest
# is WORKSPACE/NAME_0_0-server.sock.
MAX_SOCKET_PATH = 107


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
    log_file: str | None = None  # default: a temporary log, removed on a clean exit

    def ports(self):
        return {"HTTP": self.http_port, "gRPC": self.grpc_port or self.http_port + 1,
                "metrics": self.metrics_port or self.http_port + 2}

    def check(self):
        """FfxError for settings no server can start with, before anything is loaded."""
        if not self.host.strip() or any(not c.isprintable() or c.isspace() for c in self.host):
            raise FfxError(f"--host {self.host!r}: give an address to listen on, such as 127.0.0.1 or 0.0.0.0")
        ports = self.ports()
        for role, flag, offset in (("gRPC", "--grpc-port", 1), ("metrics", "--metrics-port", 2)):
            if not 1 <= ports[role] <= MAX_PORT:
                raise FfxError(f"--port {self.http_port}: the {role} port defaults to --port + {offset}, past {MAX_PORT}; "
                               f"give {flag} or a lower --port")
        if len(set(ports.values())) != len(ports):
            raise FfxError(f"the HTTP, gRPC and metrics ports must differ (got {ports})")
        if self.log_file is not None:  # Triton would log to stderr instead, silently
            log = Path(self.log_file)
            if not log.parent.is_dir():
                raise FfxError(f"--log-file {log}: no folder {log.parent} to write it in")
            if log.exists() and not log.is_file():
                raise FfxError(f"--log-file {log}: exists and is not a regular file")


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
        raise BackendUnavailable(f"serving needs NVIDIA PyTriton: {install_hint('serve')}") from None
    import pytriton.decorators
    import pytriton.exceptions
    import pytriton.model_config
    import pytriton.utils.workspace

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
        from ffx.runtime.deploy.model_interface import read_model_interface
        from ffx.runtime.deploy.triton_repository import batch_settings, check_model_name, default_model_name

        self.settings = settings or ServeSettings()
        self.interface = read_model_interface(model_path)
        self.preprocess = self.interface.preprocess
        self.name = check_model_name(self.settings.name or default_model_name(model_path))
        self.max_batch_size, self.preferred = batch_settings(self.interface, self.settings.max_batch)
        self.runner = None
        self.triton = None
        self.info = None
        self._folder = None  # the server's own folder under TMPDIR (sockets, model store, log)
        # Every runner call (activation included) runs on this one thread: a CUDA context made
        # current by pycuda is current only on the thread that pushed it, and the two models
        # share one runner, which is not meant for concurrent calls.
        self._runner_thread = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self):
        from ffx.runtime.backends.runner import open_runner

        pytriton = _pytriton()
        self.settings.check()
        ports = self.settings.ports()
        check_ports_free(self.settings.host, ports)
        self._folder = _server_folder(self.name)
        log_file = Path(self.settings.log_file) if self.settings.log_file else self._folder / "tritonserver.log"
        try:
            self._runner_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ffx-runner")
            self.runner = self._runner_thread.submit(
                lambda: open_runner(self.interface.path, provider=self.settings.provider,
                                    int8_kernels=True).activate()).result()
            config = pytriton.triton.TritonConfig(
                http_address=self.settings.host, http_port=ports["HTTP"],
                grpc_address=self.settings.host, grpc_port=ports["gRPC"],
                metrics_address=self.settings.host, metrics_port=ports["metrics"],
                allow_gpu_metrics=False, exit_timeout_secs=SHUTDOWN_GRACE_SECONDS, log_file=log_file,
                strict_readiness=True,
            )
            logging.getLogger("pytriton").setLevel(logging.ERROR)  # its notices would drown ffx's own lines
            _python_library_on_loader_path()
            # PyTriton guards several APIs with a random token. Model loading (model-repository),
            # shared memory, tracing and log settings stay guarded; the read-only statistics are
            # opened, since they are how an operator sees dynamic batching at work.
            security = pytriton.triton.TritonSecurityConfig(
                restricted_endpoints=[e for e in pytriton.triton.DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"])
            # A local model store: both models are in it when Triton starts, and load before it
            # reports ready (a store filled afterwards, PyTriton's default, is "ready" while empty).
            workspace = pytriton.utils.workspace.Workspace(self._folder / "workspace")
            self.triton = pytriton.triton.Triton(
                config=config, workspace=workspace, security_config=security,
                triton_lifecycle_policy=pytriton.triton.TritonLifecyclePolicy(local_model_store=True))
            with contextlib.redirect_stdout(sys.stderr):
                self._bind(pytriton, workspace.model_store_path)
                self.triton.run()
        except pytriton.exceptions.PyTritonError as e:
            self.stop(keep_log=True)
            raise FfxError(f"Triton Inference Server did not start ({e}); its log: {log_file}") from None
        except BaseException:
            self.stop(keep_log=True)
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

    def stop(self, keep_log=False):
        """Stop Triton and the runner; remove the server's folder (keeping its log when `keep_log`:
        after a failure, the log is what says why)."""
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
        if self._folder is not None:
            folder, self._folder = self._folder, None
            end_processes_started_from(folder)
            for entry in folder.iterdir():
                if not (keep_log and entry.name == "tritonserver.log"):
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()  # fails, as meant, when the log is kept

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(keep_log=exc[0] is not None)

    # -- the two models -----------------------------------------------------------------------
    def _bind(self, pytriton, model_store):
        """NAME through PyTriton (its Python proxy calls `_infer_tensors` here), then ffx's own
        NAME_image model beside it in the model store, and the class names as both outputs' labels."""
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
        from ffx.runtime.deploy.triton_repository import labels_text

        labels = labels_text(self.interface)
        if labels is not None:  # PyTriton writes no label file: add one to the config it wrote
            _attach_labels(model_store / self.name, labels)
        _write_image_model(model_store / image_model_name(self.name), self.interface, self.name, self.max_batch_size,
                           labels)

    def _infer(self, images):
        return {self.interface.output_name: self._runner_thread.submit(self.runner.infer, images).result()}

    def _infer_tensors(self, **inputs):
        return self._infer(inputs[self.interface.input_name])


def _server_folder(name):
    """A new folder under TMPDIR for the server's sockets, model store and log; FfxError when the
    socket paths in it would exceed what Unix sockets allow (a long TMPDIR, a long --name)."""
    folder = Path(tempfile.mkdtemp(prefix="ffx-serve-"))
    longest = folder / "workspace" / f"{name}_0_0-server.sock"
    if len(os.fsencode(longest)) > MAX_SOCKET_PATH:
        folder.rmdir()
        raise FfxError(f"the server's sockets would have paths of {len(os.fsencode(longest))} bytes under "
                       f"{folder.parent}, more than the {MAX_SOCKET_PATH} Unix sockets allow; set TMPDIR to a "
                       "shorter folder or give a shorter --name")
    return folder


def processes_started_from(folder):
    """PIDs of the processes (other than this one) whose program lies in `folder`: Triton and its
    Python backend stubs run from the copy of tritonserver in the server's folder. Empty where
    there is no /proc."""
    prefix = os.fsencode(Path(folder)) + b"/"
    pids = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                    program = cmdline.read(4096).split(b"\0", 1)[0]
            except OSError:  # it ended meanwhile, or is not ours to read
                continue
            if program.startswith(prefix):
                pids.append(int(entry.name))
    return pids


def end_processes_started_from(folder, grace=2.0):
    """End what still runs from the server's folder after Triton stopped (a Python backend stub
    outlived its server once in the suite, orphaned, for 20 minutes): SIGTERM, then SIGKILL after
    `grace` seconds. Only programs in our own folder (mkdtemp, 0700) are touched."""
    pids = processes_started_from(folder)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [pid for pid in pids if pid in processes_started_from(folder)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _attach_labels(model_folder, labels):
    """Write labels.txt into a model folder and name it as the output's label file in its config."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config_path = model_folder / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    config.output[0].label_filename = "labels.txt"
    config_path.write_text(text_format.MessageToString(config))
    (model_folder / "labels.txt").write_text(labels)


def _write_image_model(model_folder, interface, target_model, max_batch_size, labels):
    """The NAME_image model folder: ffx's Python-backend model (runtime/deploy/triton_image_model.py) and
    its config, which tells it where ffx is and how to preprocess."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    import ffx

    config = model_config_pb2.ModelConfig(name=model_folder.name, backend="python", max_batch_size=max_batch_size)
    config.input.add(name="image", data_type=model_config_pb2.TYPE_STRING, dims=[1])
    output = config.output.add(name=interface.output_name, data_type=model_config_pb2.TYPE_FP32,
                               dims=list(interface.output_dims))
    if labels is not None:
        output.label_filename = "labels.txt"
        (model_folder / "labels.txt").parent.mkdir(parents=True, exist_ok=True)
        (model_folder / "labels.txt").write_text(labels)
    config.instance_group.add(count=1, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
    parameters = {"ffx_path": str(Path(ffx.__file__).resolve().parents[1]),
                  "preprocess": json.dumps(interface.preprocess.to_dict()), "target_model": target_model,
                  "target_input": interface.input_name, "target_input_dtype": interface.input_dtype,
                  "target_output": interface.output_name}
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    (model_folder / "1").mkdir(parents=True, exist_ok=True)
    (model_folder / "config.pbtxt").write_text(text_format.MessageToString(config))
    (model_folder / "1" / "model.py").write_bytes(Path(__file__).with_name("triton_image_model.py").read_bytes())


def serve_until_stopped(model_path, settings, on_ready=None):
    """Serve until SIGINT (Ctrl-C), SIGTERM, SIGHUP or SIGQUIT, then shut Triton down cleanly.
    `on_ready(info)` is called once the models are loaded."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, *TERMINATING_SIGNALS)}
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
