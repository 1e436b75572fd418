"""ffx: feed-forward-only vision transformers from PyTorch checkpoint to verified TensorRT engine."""

__version__ = "0.1.0"
