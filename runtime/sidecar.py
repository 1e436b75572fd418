"""The JSON sidecar beside every engine, and the check that an engine can load here.

The engine itself stays a plain TensorRT plan (trtexec and any TensorRT program load it); what
it was built from and for lives in `ENGINE.json` beside it: backend and version, GPU, precision,
ONNX and calibration hashes, the batch profile and the model's ffx metadata. Engines only load
on the TensorRT version and GPU architecture that built them (unless built hardware- or
version-compatible), so the runner compares the sidecar with this machine first and explains
a mismatch in one sentence instead of letting deserialization fail with a C++ error.
"""

import json
from pathlib import Path

from ffx.errors import FfxError

SIDECAR_FORMAT = "ffx-engine-sidecar"
SIDECAR_VERSION = 1
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
# Compute capabilities a TensorRT-RTX engine runs on when built without explicit targets.
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0")


def sidecar_path(engine_path):
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def read_sidecar(engine_path, required=False):
    """The sidecar dict of `engine_path`, or None when absent (FfxError if `required`)."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        if required:
            raise FfxError(f"{engine_path}: no sidecar {path.name}; rebuild the engine with `ffx build-engine`")
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FfxError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise FfxError(f"{path}: not an ffx engine sidecar")
    return data


def describe_build(sidecar):
    """'TensorRT 10.3.0 on Orin (8.7)' or 'TensorRT-RTX 1.7 ahead of time for 8.0, 8.6, ...'."""
    label = "TensorRT-RTX" if sidecar.get("backend") == "tensorrt-rtx" else "TensorRT"
    text = f"{label} {sidecar.get('backend_version', '?')}"
    gpu = sidecar.get("gpu")
    if gpu:
        text += f" on {gpu.get('name', '?')} (compute capability {gpu.get('compute_capability', '?')})"
    elif sidecar.get("backend") == "tensorrt-rtx":
        targets = sidecar.get("target_compute_capabilities") or list(RTX_DEFAULT_TARGETS)
        text += f" ahead of time for compute capability {', '.join(targets)}"
    return text


def compatibility_problem(sidecar, backend_name, backend_version, gpu):
    """None when an engine described by `sidecar` should load with the installed backend on `gpu`
    (a runtime.cuda.GpuInfo or None), else one sentence saying why not and what to do."""
    built = describe_build(sidecar)
    rebuild = _rebuild_hint(sidecar)
    if sidecar.get("backend") and sidecar["backend"] != backend_name:
        wanted = "TensorRT-RTX" if sidecar["backend"] == "tensorrt-rtx" else "TensorRT"
        return f"the engine was built by {built} and only {wanted} can load it, but this machine runs {backend_name}; {rebuild}"
    built_version = str(sidecar.get("backend_version", ""))
    if built_version and built_version != str(backend_version):
        same_major = built_version.split(".")[0] == str(backend_version).split(".")[0]
        if not (sidecar.get("version_compatible") and same_major):
            return (f"the engine was built by {built} but this machine has version {backend_version} "
                    f"(engines load only on the version that built them); {rebuild}")
    if gpu is None:
        return None
    here = _capability(gpu.compute_capability)
    built_gpu = sidecar.get("gpu")
    compat = (sidecar.get("hardware_compatibility") or "none").replace("_", "-")
    if sidecar.get("backend") == "tensorrt-rtx":
        targets = sidecar.get("target_compute_capabilities") or list(RTX_DEFAULT_TARGETS)
        target_values = [_capability(t) for t in targets]
        default_targets = not sidecar.get("target_compute_capabilities")
        # Default RTX engines also run on later architectures ("12.0 and later").
        runs = here in target_values or (default_targets and here >= max(target_values))
        if not runs:
            return (f"the engine was built by {built} but this GPU, {gpu.name}, has compute capability "
                    f"{gpu.compute_capability}; {rebuild}")
        return None
    if not built_gpu:
        return None
    there = _capability(built_gpu.get("compute_capability", "0.0"))
    if compat == "ampere-plus":
        if here < (8, 0):
            return f"the engine was built Ampere-plus compatible by {built} but {gpu.name} ({gpu.compute_capability}) is older than Ampere; {rebuild}"
        return None
    if here != there:
        return (f"the engine was built by {built} but this GPU, {gpu.name}, has compute capability "
                f"{gpu.compute_capability}; engines are tied to the architecture that built them; {rebuild}")
    return None


def _capability(text):
    """"8.9", "SM89", "sm_120", "12.0" -> (major, minor); (0, 0) when unreadable."""
    digits = str(text).upper().replace("SM", "").replace("_", "").strip()
    try:
        if "." in digits:
            major, minor = digits.split(".", 1)
            return int(major), int(minor)
        return int(digits[:-1]), int(digits[-1])
    except (ValueError, IndexError):
        return (0, 0)


def _rebuild_hint(sidecar):
    source = (sidecar.get("onnx") or {}).get("file")
    return f"rebuild it here with `ffx build-engine {source or 'MODEL.onnx'} -o ENGINE`"
