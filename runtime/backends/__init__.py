"""Running a model: one runner per backend behind runner.py's interface (onnxrt: ONNX Runtime,
engine: TensorRT and TensorRT-RTX, pytorch: checkpoints), and cuda.py's device memory for engines."""
