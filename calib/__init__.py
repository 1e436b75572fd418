"""Stage 2: FP32 ONNX -> INT8 or FP8 (Q/DQ) or FP16 ONNX (installed as ffx.calib).

`calibrate` is the one entry: it writes the precision `options.precision` names, through the
module calib/precisions.py assigns it. The data sets it reads live in ffx.datasets (shared with
runtime and bench), so importing this package never pulls onnxruntime.quantization into the
torch-free runtime.
"""

import importlib

from ffx.calib.conversion import ConversionReport
from ffx.calib.fp16 import Fp16Report, convert_fp16
from ffx.calib.fp8 import calibrate_fp8
from ffx.calib.int8 import CalibrationReport, calibrate_int8
from ffx.calib.options import CalibrationOptions
from ffx.calib.precisions import PRECISIONS


def calibrate(onnx_path, data=None, output=None, options=CalibrationOptions(), **checks):
    """Convert an FP32 ffx model to `options.precision` ("int8", "fp8", "fp16"); returns that
    precision's report. `checks`: progress, tensorrt_check, tensorrt_backend, for the Q/DQ
    precisions keep_fp_search (see `calibrate_int8`), for FP8 int8_choice. FfxError for bad input,
    GateFailed (exit 1) when TensorRT rejects the result; nothing is written then."""
    row = PRECISIONS[options.precision]
    convert = getattr(importlib.import_module(row.module), row.function)
    for record in ("keep_fp_search", "int8_choice"):  # records only the Q/DQ precisions take
        if checks.get(record) is None:
            checks.pop(record, None)
    return convert(onnx_path, data=data, output=output, options=options, **checks)


__all__ = ["calibrate", "calibrate_int8", "calibrate_fp8", "CalibrationOptions", "CalibrationReport",
           "ConversionReport", "convert_fp16", "Fp16Report", "PRECISIONS"]
