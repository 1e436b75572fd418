"""Stage 2: FP32 ONNX -> INT8 (Q/DQ) or FP16 ONNX (installed as ffx.calib).

The data sets it reads live in ffx.datasets (shared with runtime and bench), so importing this
package never pulls onnxruntime.quantization into the torch-free runtime.
"""

from ffx.calib.conversion import ConversionReport
from ffx.calib.fp16 import Fp16Report, convert_fp16
from ffx.calib.int8 import CalibrationReport, calibrate_int8
from ffx.calib.options import CalibrationOptions

__all__ = ["calibrate_int8", "CalibrationOptions", "CalibrationReport", "ConversionReport", "convert_fp16", "Fp16Report"]
