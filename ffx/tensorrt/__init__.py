"""The one place ffx imports TensorRT: picking a backend and building a serialized engine.

Two backends share one code path: full TensorRT 10.x / 11.x (`tensorrt`, GPU machines and Jetson)
and TensorRT-RTX (`tensorrt_rtx_bindings`), whose builder compiles ahead of time on a CPU-only
machine. Precision lives in the ONNX graph (float16 tensors, Q/DQ pairs), so the network is
always strongly typed and no weak-typing API removed in TensorRT 11 (BuilderFlag.FP16/INT8,
calibrators, dynamic ranges) is ever touched.

    backend.py   finding and importing a flavour (`available_backend` -> `Backend`, its version),
                 the logger, TensorRT data types
    options.py   `BuildOptions`: how to build, validated on construction
    build.py     the three steps of a build: `parse_onnx` (network from the ONNX file),
                 `configure_builder` (a builder config from a validated `BuildOptions`),
                 `build_plan` (the serialized engine); `build_serialized_engine` runs them in order

Import from `ffx.tensorrt` (the names below), not from its modules.

TensorRT API conventions, checked by tests/test_tensorrt_conformance.py against the installed
TensorRT-RTX and NVIDIA's TensorRT 10.3, 10.16, 11.1 and 11.4 bindings in every file of this
package: TensorRT objects live in variables named after their class (`trt`, `builder`, `network`,
`parser`, `config`, `engine`, `context`, ...); a name only one flavour has is used inside a
function whose name ends in `_rtx` or `_full_tensorrt`; a name only some versions have is looked
up with `getattr(obj, "name", None)`.
"""

from ffx.tensorrt.backend import (
    BACKENDS,
    MIN_TENSORRT_MAJOR,
    Backend,
    available_backend,
    backend_label,
    dtype_name,
    make_logger,
    numpy_dtype,
)
from ffx.tensorrt.build import (
    BuilderSetup,
    EngineBuild,
    ParsedNetwork,
    build_plan,
    build_serialized_engine,
    check_backend_options,
    configure_builder,
    parse_onnx,
)
from ffx.tensorrt.options import (
    CURRENT_GPU,
    DEFAULT_MAX_BATCH,
    DEFAULT_OPT_BATCH,
    HARDWARE_COMPATIBILITY,
    MAX_WORKSPACE_BYTES,
    BuildOptions,
)

__all__ = [
    "BACKENDS", "MIN_TENSORRT_MAJOR", "Backend", "available_backend", "backend_label", "dtype_name", "make_logger",
    "numpy_dtype",
    "BuilderSetup", "EngineBuild", "ParsedNetwork", "build_plan", "build_serialized_engine", "check_backend_options",
    "configure_builder", "parse_onnx",
    "CURRENT_GPU", "DEFAULT_MAX_BATCH", "DEFAULT_OPT_BATCH", "HARDWARE_COMPATIBILITY", "MAX_WORKSPACE_BYTES",
    "BuildOptions",
]
