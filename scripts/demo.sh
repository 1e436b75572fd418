#!/usr/bin/env bash
# The main job on the bundled default: a trained FF-only model (tests/fixtures/fashion, 89.3% on
# the Fashion-MNIST test set) taken through the whole flow on real photos of clothing.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${FFX_DEMO_DIR:-out/demo}
fixture=tests/fixtures/fashion
mkdir -p "$out"

step() { printf '\n== %s\n' "$*"; }

step "export: checkpoint -> ONNX (architecture, preprocessing and class names inferred)"
ffx export --checkpoint "$fixture/model.pth" --check-images "$fixture/val" -o "$out/fashion.onnx"

step "calibrate: INT8 Q/DQ from the train images (entropy ranges), checked by onnxruntime and TensorRT-RTX"
ffx calibrate "$out/fashion.onnx" --data "$fixture/train" -o "$out/fashion.int8.onnx"

step "build-engine: TensorRT-RTX, ahead of time on this CPU (runs on an RTX-class GPU)"
ffx build-engine "$out/fashion.int8.onnx" --backend tensorrt-rtx -o "$out/fashion.int8.engine"

step "verify: INT8 model vs the PyTorch checkpoint on the held-out val images (gate: top-1 drop <= 0.5 pt)"
ffx verify "$out/fashion.int8.onnx" --reference "$fixture/model.pth" --data "$fixture/val"

step "bench: PyTorch FP32 vs onnxruntime FP32 vs INT8 on this CPU"
# One thread each: on a busy machine unpinned threads make the table measure the other load.
ffx bench "$fixture/model.pth" "$out/fashion.onnx" "$out/fashion.int8.onnx" --batch 1,32 --threads 1

step "predict: one val image of three classes"
ffx predict "$out/fashion.int8.onnx" "$fixture/val/0_t-shirt_top/t10k-00019.png" \
  "$fixture/val/7_sneaker/$(ls "$fixture/val/7_sneaker" | head -1)" "$fixture/val/8_bag/$(ls "$fixture/val/8_bag" | head -1)" --topk 3
printf '\nArtefacts in %s\n' "$out"
ls -l "$out"
printf '\nThe engine was built ahead of time by TensorRT-RTX but not run: running it needs an RTX-class GPU.\n'
printf 'verify, bench and predict above ran the INT8 ONNX graph with onnxruntime on this CPU.\n'
