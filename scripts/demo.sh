#!/usr/bin/env bash
# The main job on the bundled default: a trained FF-only model on real Fashion-MNIST photos.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${FFX_DEMO_DIR:-out/demo}
mkdir -p "$out"
fixture=tests/fixtures/fashion

echo "== export: checkpoint -> ONNX (config, preprocessing and class names inferred)"
ffx export --checkpoint "$fixture/model.pth" --check-images "$fixture/val" -o "$out/fashion.onnx"
