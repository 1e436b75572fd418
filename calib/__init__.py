"""Stage 2: FP32 ONNX -> INT8 (Q/DQ) or FP16 ONNX (installed as ffx.calib)."""
