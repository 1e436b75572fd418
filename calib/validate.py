"""Checks on a converted graph before it is written: onnxruntime runs it and agrees with FP32,
and TensorRT (or TensorRT-RTX, which builds on a CPU-only machine) parses and builds it."""

import dataclasses
import time

import numpy as np

from ffx.artifacts import scratch_folder
from ffx.calib.model_io import cpu_session
from ffx.errors import BackendUnavailable, FfxError, GateFailed


@dataclasses.dataclass
class OnnxRuntimeCheck:
    images: int  # images compared with the FP32 model (0: random input only)
    top1_agreement: float | None  # fraction of images with the same top-1 class as FP32
    max_abs_logit_diff: float | None


@dataclasses.dataclass
class TensorRTCheck:
    status: str  # "built", "failed" or "skipped"
    backend: str | None = None  # "TensorRT 10.3.0", "TensorRT-RTX 1.7.1.116"
    seconds: float | None = None
    reason: str | None = None  # why it failed or was skipped


def check_onnxruntime(model_bytes, input_name, images=None, reference_logits=None, input_shape=None):
    """Load the graph in onnxruntime and run it: on `images` compared with `reference_logits`, or
    on one random input. Raises FfxError when onnxruntime rejects the graph."""
    session = cpu_session(model_bytes, "the converted graph")
    if images is None or len(images) == 0:
        sample = np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)
        output = session.run(None, {input_name: sample})[0]
        if not np.all(np.isfinite(output)):
            raise FfxError("the converted graph produces inf/NaN on a random input")
        return OnnxRuntimeCheck(images=0, top1_agreement=None, max_abs_logit_diff=None)
    logits = np.concatenate([session.run(None, {input_name: images[i:i + 8]})[0] for i in range(0, len(images), 8)])
    if not np.all(np.isfinite(logits)):
        raise FfxError("the converted graph produces inf/NaN on calibration images")
    agreement = float(np.mean(logits.argmax(1) == reference_logits.argmax(1)))
    return OnnxRuntimeCheck(
        images=len(images),
        top1_agreement=agreement,
        max_abs_logit_diff=float(np.max(np.abs(logits.astype(np.float64) - reference_logits))),
    )


def check_tensorrt(model_bytes, backend="auto"):
    """Parse and build the graph with the first TensorRT flavour that can build here (full
    TensorRT needs a GPU to build; TensorRT-RTX builds ahead of time on a CPU)."""
    from ffx import tensorrt

    names = ("tensorrt", "tensorrt-rtx") if backend == "auto" else (backend,)
    reasons = []
    with scratch_folder("ffx-trt-check-") as folder:
        path = folder / "model.onnx"
        path.write_bytes(model_bytes)
        for name in names:
            try:
                chosen = tensorrt.available_backend(name)
            except BackendUnavailable as e:
                reasons.append(str(e))
                continue
            started = time.perf_counter()
            try:
                tensorrt.build_serialized_engine(path, tensorrt.BuildOptions(min_batch=1, opt_batch=1, max_batch=8),
                                                backend=chosen, progress=False)
            except BackendUnavailable as e:  # installed, but cannot build here (full TensorRT without a GPU)
                reasons.append(str(e))
                continue
            except FfxError as e:
                return TensorRTCheck("failed", str(chosen), reason=str(e).replace(f"{path}: ", ""))
            return TensorRTCheck("built", str(chosen), seconds=round(time.perf_counter() - started, 2))
    return TensorRTCheck("skipped", reason="; ".join(reasons) or "no TensorRT backend")


def tensorrt_gate(model_bytes, backend, enabled, label, output):
    """Build `model_bytes` with TensorRT when `enabled`; GateFailed (nothing written) when TensorRT
    rejects it. Returns the check as a dict for the report."""
    if not enabled:
        return {"status": "skipped", "reason": "--no-tensorrt-check"}
    check = check_tensorrt(model_bytes, backend)
    if check.status == "failed":
        raise GateFailed(
            f"{check.backend} rejected the {label} graph: {check.reason}; {output} was not written "
            "(--no-tensorrt-check writes it anyway)"
        )
    return dataclasses.asdict(check)
