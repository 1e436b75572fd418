#!/usr/bin/env bash
# Run the tests that need a CUDA GPU and TensorRT, on a machine that has them, and refuse to
# report success if they were skipped.
#
#   scripts/run_gpu_tests.sh                 # the GPU tests, plus the runtime tests beside them
#   scripts/run_gpu_tests.sh -k cuda_graph   # extra pytest arguments pass through
#   PYTHON=.venv/bin/python scripts/run_gpu_tests.sh
#
# Needs: an NVIDIA driver, TensorRT >= 10 (`pip install tensorrt`, or JetPack's) or TensorRT-RTX
# (`pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings`), and pycuda and/or cuda-python
# (`pip install cuda-python`; CUDA graphs need it). FFX_REQUIRE_GPU=1 turns "needs a CUDA GPU"
# skips into failures, so a failed engine build (FP16 included) fails the run. The CUDA graph
# tests (batch A -> B -> A replay) run once per CUDA library; a library that is not installed is
# skipped, and the run fails when neither is.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader || true
else
  echo "warning: nvidia-smi not found; is there an NVIDIA driver?" >&2
fi
"$PYTHON" - <<'PY'
import importlib
import sys

found = {}
for module in ("tensorrt", "tensorrt_rtx_bindings", "pycuda.driver", "cuda.bindings.runtime", "onnxruntime"):
    try:
        mod = importlib.import_module(module)
        found[module] = getattr(mod, "__version__", "importable")
    except Exception as e:  # report, then let the tests fail with the real reason
        print(f"{module}: not importable ({type(e).__name__})")
    else:
        print(f"{module}: {found[module]}")
if "pycuda.driver" not in found and "cuda.bindings.runtime" not in found:
    sys.exit("neither pycuda nor cuda-python is importable: engines cannot run here")
PY

export FFX_REQUIRE_GPU=1
exec "$PYTHON" -m pytest -v -rs \
  tests/test_runtime_gpu.py \
  tests/test_runtime_runners.py \
  tests/test_tensorrt_conformance.py \
  tests/test_bench.py \
  tests/test_inspect.py \
  tests/test_verify.py \
  "$@"
