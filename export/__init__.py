"""Stage 1: PyTorch checkpoint -> ONNX (installed as ffx.export)."""
