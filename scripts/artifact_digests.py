"""The sha256 of every artefact ffx writes for the Fashion fixture, to check that a refactor changed
no byte: run it before and after, on the same machine, and diff the two outputs.

    python scripts/artifact_digests.py out/digests > before.json
    ... change the code ...
    python scripts/artifact_digests.py out/digests > after.json && diff before.json after.json

It runs the CLI as a user does (export, calibrate INT8, FP8 and FP16, build-engine with TensorRT-RTX
when it is installed) into OUT_DIR, which it empties first, on a copy of the fixture in
OUT_DIR/inputs, so that every output and input has the same path in both runs, whichever checkout
runs it (manifests record the output's name and the data folder's path). An engine sidecar is hashed without the two
fields that differ between identical builds: `build_seconds` and `built_at`.
"""

import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "fashion"
VOLATILE_SIDECAR_FIELDS = ("build_seconds", "built_at")


def ffx(*args):
    command = [sys.executable, "-m", "ffx", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")


def digest(path):
    data = path.read_bytes()
    if path.name.endswith(".engine.json"):
        sidecar = json.loads(data)
        for field in VOLATILE_SIDECAR_FIELDS:
            sidecar.pop(field, None)
        data = json.dumps(sidecar, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder for the artefacts (emptied first)")
    args = parser.parse_args()
    out = args.out_dir
    if out.exists():
        shutil.rmtree(out)
    inputs = out / "inputs"
    shutil.copytree(FIXTURE / "train", inputs / "train")
    shutil.copy(FIXTURE / "model.pth", inputs / "model.pth")
    ffx("export", "--checkpoint", inputs / "model.pth", "-o", out / "model.onnx")
    ffx("calibrate", out / "model.onnx", "--data", inputs / "train", "--no-cache", "-o", out / "model.int8.onnx")
    ffx("calibrate", out / "model.onnx", "--fp8", "--data", inputs / "train", "--no-cache", "-o", out / "model.fp8.onnx")
    ffx("calibrate", out / "model.onnx", "--fp16", "--data", inputs / "train", "-o", out / "model.fp16.onnx")
    if importlib.util.find_spec("tensorrt_rtx_bindings") is None:
        print("TensorRT-RTX is not installed: no engine", file=sys.stderr)
    else:
        ffx("build-engine", out / "model.int8.onnx", "--backend", "tensorrt-rtx", "-o", out / "model.engine")
    print(json.dumps({path.name: digest(path) for path in sorted(out.iterdir()) if path.is_file()}, indent=2))


if __name__ == "__main__":
    main()
