"""Engine files: what an ONNX graph is (onnx_model), building an engine from it (engine_file) or
from a checkpoint (checkpoint_engine, conversion_reuse), and the JSON sidecar beside it (sidecar)."""
