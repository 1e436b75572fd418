"""CUDA compute capabilities: the one parser ffx has, and TensorRT-RTX's support matrix.

A capability is written "8.6" everywhere ffx records one (sidecars, reports); users may also
type "SM86", "sm_86" or "86". TensorRT-RTX builds for a list of targets ahead of time; its
support matrix (1.0 to 1.5 and latest, docs.nvidia.com/deeplearning/tensorrt-rtx) lists 7.5,
8.6, 8.9, 12.0 and, from 1.5, 12.1. A100 (8.0), H100/H200 (9.0) and Jetson (8.7, 10.x) are not
supported even though the bindings' enum has an SM80 member, so support is checked by
membership, never as "this or later".
"""

from ffx.errors import FfxError

# What TensorRT-RTX runs on, and what a build without explicit targets covers.
RTX_SUPPORTED = ("7.5", "8.6", "8.9", "12.0", "12.1")
RTX_DEFAULT_TARGETS = ("8.6", "8.9", "12.0")
TURING = "7.5"
# GPUs people try TensorRT-RTX on that it does not support: named in the message.
RTX_UNSUPPORTED_EXAMPLES = {"8.0": "A100", "8.7": "Jetson Orin", "9.0": "H100/H200"}


def parse_compute_capability(text):
    """"8.6", "SM86", "sm_86", "86", "12.0", "SM120" -> (major, minor). FfxError if unreadable."""
    digits = str(text).strip().upper().removeprefix("SM").lstrip("_")
    try:
        if "." in digits:
            major, minor = digits.split(".", 1)
            value = int(major), int(minor)
        elif digits.isdigit() and len(digits) >= 2:
            value = int(digits[:-1]), int(digits[-1])
        else:
            raise ValueError(digits)
    except ValueError:
        raise FfxError(f"{text!r} is not a compute capability (write it as 8.6 or SM86)") from None
    if not (1 <= value[0] <= 99 and 0 <= value[1] <= 9):
        raise FfxError(f"{text!r} is not a compute capability (write it as 8.6 or SM86)")
    return value


def capability_label(text):
    """The spelling ffx records: "SM86" -> "8.6", (12, 0) -> "12.0"."""
    major, minor = text if isinstance(text, tuple) else parse_compute_capability(text)
    return f"{major}.{minor}"


def rtx_supports(capability):
    """Whether TensorRT-RTX runs on a GPU of this capability (membership in its support matrix)."""
    return capability_label(capability) in RTX_SUPPORTED


def rtx_unsupported_reason(capability, gpu_name=None):
    """Why TensorRT-RTX cannot run on `capability`, naming what to use instead."""
    label = capability_label(capability)
    name = gpu_name or RTX_UNSUPPORTED_EXAMPLES.get(label, "this GPU")
    return (f"TensorRT-RTX does not run on {name} (compute capability {label}; it supports "
            f"{', '.join(RTX_SUPPORTED)}): build with full TensorRT there (`--backend tensorrt`)")
