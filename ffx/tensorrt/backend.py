"""Finding and importing a TensorRT flavour, and what building and running engines both need of it.

Two flavours: full TensorRT 10.x / 11.x (`tensorrt`, GPU machines and Jetson) and TensorRT-RTX
(`tensorrt_rtx_bindings`). `available_backend` imports the one asked for (or the first of them
that imports) as a `Backend` with its version; `make_logger` is the ILogger both the builder and
the runtime take; `dtype_name` and `numpy_dtype` translate TensorRT data types.
"""

import dataclasses
import importlib
import sys
import warnings

from ffx.errors import BackendUnavailable, FfxError, install_hint

BACKENDS = ("tensorrt", "tensorrt-rtx")
MIN_TENSORRT_MAJOR = 10

_INSTALL_HINT = {
    "tensorrt": (
        "install TensorRT 10 or newer (`pip install tensorrt` on a CUDA machine; JetPack ships it on "
        "Jetson)"
    ),
    "tensorrt-rtx": (
        "install TensorRT-RTX (`pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings`, or "
        f"{install_hint('tensorrt-rtx')}); it builds engines for RTX GPUs ahead of time, even without a GPU"
    ),
}


@dataclasses.dataclass(frozen=True)
class Backend:
    """An importable TensorRT flavour: its name in ffx, the Python module and its version."""

    name: str  # "tensorrt" or "tensorrt-rtx"
    module: object
    version: str

    @property
    def major(self):
        return int(self.version.split(".")[0])

    @property
    def is_rtx(self):
        return self.name == "tensorrt-rtx"

    @property
    def label(self):
        return backend_label(self.name)

    def __str__(self):
        return f"{self.label} {self.version}"


def backend_label(name):
    """How people write a backend: "tensorrt-rtx" -> "TensorRT-RTX", "tensorrt" -> "TensorRT"."""
    return "TensorRT-RTX" if name == "tensorrt-rtx" else "TensorRT"


def _import_backend(name):
    """The Backend for `name`, or a string saying why it cannot be used."""
    module_name = "tensorrt" if name == "tensorrt" else "tensorrt_rtx_bindings"
    if module_name in sys.modules and sys.modules[module_name] is None:
        return f"{module_name} is blocked in this interpreter"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(module_name)
    except ImportError as e:
        if getattr(e, "name", None) == module_name:
            return f"Python module `{module_name}` is not installed"
        return f"`import {module_name}` failed ({e})"
    except Exception as e:  # broken installs raise OSError (missing .so) and friends
        return f"`import {module_name}` failed ({type(e).__name__}: {e})"
    version = str(getattr(module, "__version__", "0"))
    backend = Backend(name, module, version)
    if name == "tensorrt" and backend.major < MIN_TENSORRT_MAJOR:
        return f"TensorRT {version} is installed but ffx needs {MIN_TENSORRT_MAJOR}.x or newer (strongly typed networks)"
    return backend


def available_backend(preferred="auto"):
    """The TensorRT flavour to use: `tensorrt`, `tensorrt-rtx`, or `auto` (full TensorRT first,
    then TensorRT-RTX). Raises BackendUnavailable with what to install."""
    if preferred not in ("auto", *BACKENDS):
        raise FfxError(f"unknown backend {preferred!r}; choose auto, tensorrt or tensorrt-rtx")
    names = BACKENDS if preferred == "auto" else (preferred,)
    reasons = []
    for name in names:
        found = _import_backend(name)
        if isinstance(found, Backend):
            return found
        reasons.append(found)
    if preferred == "auto":
        raise BackendUnavailable(
            "no TensorRT backend found (" + "; ".join(reasons) + "): "
            + _INSTALL_HINT["tensorrt"] + ", or " + _INSTALL_HINT["tensorrt-rtx"]
        )
    raise BackendUnavailable(f"backend {preferred} is unavailable ({reasons[0]}): {_INSTALL_HINT[preferred]}")


def make_logger(backend, verbose=False):
    """A TensorRT ILogger that keeps every message, so a failed build can say why in one line;
    it prints them too when `verbose`."""
    trt = backend.module
    label = backend.label

    class RecordingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages = []  # (severity name, text)

        def log(self, severity, msg):
            name = str(severity).rsplit(".", 1)[-1]
            self.messages.append((name, msg))
            if verbose:
                print(f"[{label}] [{name}] {msg}", file=sys.stderr)

        def errors(self):
            return [msg for name, msg in self.messages if name in ("ERROR", "INTERNAL_ERROR")]

    return RecordingLogger()


# -- data types -------------------------------------------------------------------------------

_DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
                "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8", "INT4": "int4", "FP4": "float4"}


def _enum_name(member):
    return str(member).rsplit(".", 1)[-1]


def dtype_name(dtype):
    """A TensorRT DataType as ffx writes it: DataType.HALF -> "float16"."""
    name = _enum_name(dtype)
    return _DTYPE_NAMES.get(name, name.lower())


def numpy_dtype(trt, dtype, tensor_name, where):
    """The numpy type of a TensorRT IO tensor; FfxError for types numpy has none for (BF16, FP8,
    INT4, FP4), which an engine's inputs and outputs must not use here."""
    try:
        return trt.nptype(dtype)
    except TypeError:
        raise FfxError(f"{where}: tensor {tensor_name!r} is {dtype_name(dtype)}, which numpy has no type for; "
                       "keep the model's inputs and outputs float32 (or float16)") from None
