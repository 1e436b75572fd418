"""CUDA compute capabilities: the one parser ffx has, and TensorRT-RTX's targets.

A capability is written "8.6" everywhere ffx records one (sidecars, reports); users may also
type "SM86", "sm_86" or "86". TensorRT-RTX builds for a list of targets ahead of time. What it
runs on, as of TensorRT-RTX 1.7.1: 7.5 (Turing, only in a Turing-only build), and Ampere onwards
as far as RTX goes: 8.0, 8.6, 8.9, 12.0, 12.1. The 1.0-1.5 support matrices listed 7.5, 8.6, 8.9,
12.0 (12.1 from 1.5); the CPU-only AOT page of the current documentation
(docs.nvidia.com/deeplearning/tensorrt-rtx/latest/inference-library/cpu-engines.html) says a
default build runs on 8.0, 8.6, 8.9 and 12.0, "any supported NVIDIA Ampere and later devices",
and the engines say so themselves: a default 1.7.1 plan records `accelerators={sm80 }` with
`hardware_forward_compatibility=1` (read by `rtx_plan_targets`), and one deserialized on an H200
was refused with "Supported compute capabilities: 8.0 8.6 8.9 12.0 12..." (the log cut the rest;
12.1, GB10, is the other Ampere-or-newer target the 1.7.1 bindings' ComputeCapability enum has:
CURRENT, NONE, SM75, SM80, SM86, SM89, SM120, SM121). H100/H200 (9.0), B200 (10.0) and Jetson
(8.7, 11.0) are not among them: support is membership, never "this or later".
"""

import re

from ffx.errors import FfxError

# What TensorRT-RTX runs on, and what a build without explicit targets covers (every supported
# target from Ampere on: the plan records sm80 "and forward").
RTX_SUPPORTED = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0", "12.1")
TURING = "7.5"
# GPUs people try TensorRT-RTX on that it does not support: named in the message.
RTX_UNSUPPORTED_EXAMPLES = {"8.7": "Jetson Orin", "9.0": "H100/H200", "10.0": "B200", "11.0": "Jetson Thor"}
# The plan's own header, in plain text: "accelerators={sm80 sm86 }", "hardware_forward_compatibility=1".
_PLAN_ACCELERATORS = re.compile(rb"accelerators=\{((?:sm\d{2,3} )*)\}")
_PLAN_FORWARD = re.compile(rb"hardware_forward_compatibility=([01])")
PLAN_HEADER_SEARCH_BYTES = 64 << 20  # the header follows the layer names: a few KiB in, MiB for huge graphs


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


def rtx_plan_targets(plan):
    """The compute capabilities a TensorRT-RTX plan (bytes) says it runs on, from its own header:
    its accelerators, and with hardware forward compatibility (a default build: sm80 and
    forward) every supported target from the lowest of them on, Turing excepted. None when the
    header is not found (not a TensorRT-RTX plan, or a layout this does not know)."""
    head = plan[:PLAN_HEADER_SEARCH_BYTES]
    found = _PLAN_ACCELERATORS.search(head)
    if not found:
        return None
    listed = [capability_label(name.decode()) for name in found.group(1).split()]
    if not listed:
        return None
    forward = _PLAN_FORWARD.search(head)
    if forward and forward.group(1) == b"1":
        lowest = min(parse_compute_capability(label) for label in listed)
        return tuple(label for label in RTX_SUPPORTED
                     if label != TURING and parse_compute_capability(label) >= lowest)
    return tuple(sorted(set(listed), key=parse_compute_capability))
