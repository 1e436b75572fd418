"""Stage 2: FP32 ONNX -> INT8 (Q/DQ) or FP16 ONNX (installed as ffx.calib).

`calibrate_int8` and `convert_fp16` are imported lazily so that `ffx.calib.datasets`, which the
torch-free runtime uses, never pulls in onnxruntime.quantization.
"""

_LAZY = {
    "calibrate_int8": "ffx.calib.int8",
    "CalibrationReport": "ffx.calib.int8",
    "convert_fp16": "ffx.calib.fp16",
    "Fp16Report": "ffx.calib.fp16",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
