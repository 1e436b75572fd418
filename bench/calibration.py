#!/usr/bin/env python3
"""Benchmarks of `ffx calibrate`: decoding speed, end-to-end time, accuracy, TensorRT-RTX builds.

    python -m bench.calibration                            # everything, on the repo's fixture
    python scripts/fashion_mnist_to_folders.py /usr/share/datasets/fashion-mnist /tmp/fashion --splits val
    python -m bench.calibration --val /tmp/fashion/val --skip-base   # accuracy on the full test set

Parts (each prints one block, and all go to --json-out):

1. decode: JPEG decode + DeiT preprocessing of ImageNet-sized photos (500x375, written here with
   PIL; or --photos DIR) through `ffx.datasets.load_batches`, 0 and 2 worker processes.
2. end-to-end: `calibrate_int8` of ff_tiny (random weights: speed does not depend on them) on 512
   such photos, statistics cache off, including the onnxruntime and TensorRT-RTX checks; then
   the same with another method, which reuses the cached statistics.
3. accuracy: the Fashion-MNIST fixture model (tests/fixtures/fashion/model.pth), calibrated on
   --calib (default the fixture's train/) with each method and converted to FP16, evaluated on
   --val (default the fixture's val/; the full test set with the commands above):
   top-1 of FP32 PyTorch, of each graph in onnxruntime, and top-1 agreement with FP32.
4. builds: ff_tiny and ff_base (random weights), Q/DQ INT8 and FP16, parsed and built by
   TensorRT-RTX on this CPU-only machine (build seconds and engine size).

Each part prints what it measured; --json-out writes it all as JSON.
"""

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "fashion"
METHODS = ("entropy", "max", "percentile", "mse")


def write_photos(folder, count, seed=0, size=(500, 375)):
    """`count` photo-like JPEGs (smooth colour fields, edges and noise) of ImageNet's typical size."""
    from PIL import Image, ImageDraw, ImageFilter

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(count):
        a, b, c = rng.uniform(0.5, 3, 3)
        base = np.stack([
            127 + 100 * np.sin(x / (40 * a) + i), 127 + 100 * np.cos(y / (50 * b) - i), 127 + 90 * np.sin((x + y) / (60 * c)),
        ], axis=-1)
        image = Image.fromarray(np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = rng.integers(0, width - 60), rng.integers(0, height - 60)
            draw.ellipse([x0, y0, x0 + rng.integers(20, 200), y0 + rng.integers(20, 150)],
                         fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        image.filter(ImageFilter.GaussianBlur(0.8)).save(folder / f"photo{i:04d}.JPEG", quality=90)
    return folder


def bench_decode(photos, repeats=3):
    """Images/s through load_batches, worker start-up included; the best of `repeats` runs (the
    machine is shared, so the best is the least disturbed)."""
    from ffx.datasets import load_batches, open_dataset
    from ffx.metadata import Preprocess

    items = open_dataset(photos).items
    results = {}
    for workers in (0, 2):
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            count = sum(len(batch.items) for batch in load_batches(items, Preprocess(), 32, workers=workers, progress=False))
            runs.append(time.perf_counter() - started)
        best = min(runs)
        results[f"workers_{workers}"] = {"images": count, "seconds": [round(r, 2) for r in runs],
                                         "images_per_second": round(count / best, 1)}
        print(f"decode+preprocess {count} JPEGs 500x375 -> 224, {workers} workers: best of {repeats} {best:.2f} s, "
              f"{count / best:.0f} images/s (runs: {', '.join(f'{r:.2f}' for r in runs)} s)")
    return results


def export(arch_or_checkpoint, output):
    from ffx.export.checkpoint import resolve_model
    from ffx.export.onnx_export import export_onnx

    if Path(str(arch_or_checkpoint)).is_file():
        resolved = resolve_model(None, str(arch_or_checkpoint))
        export_onnx(resolved, output, source_path=str(arch_or_checkpoint))
    else:
        export_onnx(resolve_model(arch_or_checkpoint, None), output)
    return output


def bench_end_to_end(workdir, photos):
    from ffx.calib import CalibrationOptions, calibrate_int8
    from ffx.reporting import silenced

    tiny = export("ff_tiny", workdir / "tiny.onnx")
    results = {}
    started = time.perf_counter()
    with silenced():
        report = calibrate_int8(tiny, photos, workdir / "tiny.int8.onnx", CalibrationOptions(cache_dir=workdir / "cache"))
    results["entropy_cold"] = {"seconds": round(time.perf_counter() - started, 2), "cache": report.cache,
                               "tensorrt": report.tensorrt, "num_images": report.num_images}
    started = time.perf_counter()
    with silenced():
        report = calibrate_int8(tiny, photos, workdir / "tiny.mse.onnx", CalibrationOptions(method="mse", cache_dir=workdir / "cache"))
    results["mse_cached"] = {"seconds": round(time.perf_counter() - started, 2), "cache": report.cache}
    print(f"ff_tiny, 512 photos, end to end (statistics + Q/DQ + onnxruntime + {results['entropy_cold']['tensorrt'].get('backend')} checks): "
          f"{results['entropy_cold']['seconds']:.1f} s; switching to mse with cached statistics: {results['mse_cached']['seconds']:.1f} s")
    return results


def _evaluate(onnx_path, items, preprocess, batch_size=250):
    from ffx.calib.model_io import cpu_session
    from ffx.datasets import load_batches

    session = cpu_session(Path(onnx_path).read_bytes(), onnx_path)  # TensorRT's arithmetic, on any CPU
    logits, labels = [], []
    for batch in load_batches(items, preprocess, batch_size, workers=2, progress=False):
        logits.append(session.run(None, {"images": batch.images})[0])
        labels.extend(batch.labels)
    return np.concatenate(logits), np.array(labels)


def _torch_logits(checkpoint, items, preprocess, batch_size=250):
    import torch

    from ffx.datasets import load_batches
    from ffx.export.checkpoint import resolve_model

    model = resolve_model(None, str(checkpoint)).model.eval()
    logits = []
    with torch.no_grad():
        for batch in load_batches(items, preprocess, batch_size, workers=2, progress=False):
            logits.append(model(torch.from_numpy(batch.images)).numpy())
    return np.concatenate(logits)


def bench_accuracy(workdir, checkpoint, calib, val, num_images):
    from ffx.calib import CalibrationOptions, calibrate_int8, convert_fp16
    from ffx.datasets import open_dataset
    from ffx.metadata import Preprocess, read_onnx_metadata
    from ffx.reporting import silenced

    fp32 = export(checkpoint, workdir / "fashion.onnx")
    info = read_onnx_metadata(fp32)
    preprocess = Preprocess.from_dict(info["preprocess"])
    with silenced():
        items = open_dataset(val, class_names=info.get("class_names")).items
    reference = _torch_logits(checkpoint, items, preprocess)
    onnx_fp32, labels = _evaluate(fp32, items, preprocess)
    top1 = lambda logits: float(np.mean(logits.argmax(1) == labels))  # noqa: E731
    agreement = lambda logits: float(np.mean(logits.argmax(1) == reference.argmax(1)))  # noqa: E731
    results = {"val_images": len(items), "calib_images": num_images, "fp32_pytorch_top1": top1(reference),
               "fp32_onnx_top1": top1(onnx_fp32)}
    print(f"Fashion-MNIST fixture model, {len(items)} images of {val}: FP32 PyTorch top-1 {top1(reference):.2%}")
    for method in METHODS:
        started = time.perf_counter()
        with silenced():
            report = calibrate_int8(fp32, calib, workdir / f"fashion.{method}.onnx",
                                    CalibrationOptions(method=method, num_images=num_images, cache_dir=workdir / "cache"))
        seconds = time.perf_counter() - started
        logits, _ = _evaluate(report.output, items, preprocess)
        results[f"int8_{method}"] = {"top1": top1(logits), "delta_pt": 100 * (top1(logits) - top1(reference)),
                                     "agreement": agreement(logits), "seconds": round(seconds, 2),
                                     "cache": report.cache, "tensorrt": report.tensorrt.get("status")}
        print(f"  INT8 {method:10s} top-1 {top1(logits):.2%} ({100 * (top1(logits) - top1(reference)):+.2f} pt), "
              f"agreement {agreement(logits):.2%}  [{seconds:.1f} s, cache {report.cache}, TensorRT {report.tensorrt.get('status')}]")
    with silenced():
        report = convert_fp16(fp32, workdir / "fashion.fp16.onnx", data=calib,
                              options=CalibrationOptions(num_images=num_images, cache_dir=workdir / "cache"))
    logits, _ = _evaluate(report.output, items, preprocess)
    results["fp16"] = {"top1": top1(logits), "agreement": agreement(logits), "fp32_tensors": len(report.fp32_tensors),
                       "tensorrt": report.tensorrt.get("status")}
    print(f"  FP16            top-1 {top1(logits):.2%}, agreement {agreement(logits):.2%}, "
          f"{len(report.fp32_tensors)} tensors kept in float32  [TensorRT {report.tensorrt.get('status')}]")
    return results


def bench_builds(workdir, photos, archs):
    from ffx.calib import CalibrationOptions, calibrate_int8, convert_fp16
    from ffx.calib.validate import check_tensorrt
    from ffx.reporting import silenced

    results = {}
    for arch in archs:
        model = export(arch, workdir / f"{arch}.onnx")
        fp32 = check_tensorrt(Path(model).read_bytes())
        with silenced():
            int8 = calibrate_int8(model, photos, workdir / f"{arch}.int8.onnx", CalibrationOptions(num_images=16, cache_dir=workdir / "cache"),
                                  tensorrt_check=False)
        int8_check = check_tensorrt(Path(int8.output).read_bytes())
        with silenced():
            fp16 = convert_fp16(model, workdir / f"{arch}.fp16.onnx", tensorrt_check=False)
        fp16_check = check_tensorrt(Path(fp16.output).read_bytes())
        results[arch] = {name: dataclasses.asdict(check) for name, check in (("fp32", fp32), ("int8", int8_check), ("fp16", fp16_check))}
        for name, check in (("FP32", fp32), ("INT8 Q/DQ", int8_check), ("FP16", fp16_check)):
            print(f"{arch} {name:9s}: {check.status} by {check.backend or '-'}"
                  + (f" in {check.seconds:.1f} s" if check.seconds else "") + (f" ({check.reason})" if check.reason else ""))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, help="a folder of ImageNet-sized JPEGs (default: 512 written by this script)")
    parser.add_argument("--checkpoint", type=Path, default=FIXTURE / "model.pth")
    parser.add_argument("--calib", type=Path, default=FIXTURE / "train")
    parser.add_argument("--val", type=Path, default=FIXTURE / "val")
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--skip-base", action="store_true", help="build ff_tiny only (ff_base takes minutes to export)")
    parser.add_argument("--parts", default="decode,end-to-end,accuracy,builds")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    results = {}
    with tempfile.TemporaryDirectory(prefix="ffx-bench-calib-") as folder:
        workdir = Path(folder)
        photos = args.photos or write_photos(workdir / "photos", 512)
        if "decode" in parts:
            results["decode"] = bench_decode(photos)
        if "end-to-end" in parts:
            results["end_to_end"] = bench_end_to_end(workdir, photos)
        if "accuracy" in parts:
            if args.checkpoint.is_file():
                results["accuracy"] = bench_accuracy(workdir, args.checkpoint, args.calib, args.val, args.num_images)
            else:
                print(f"accuracy: skipped, {args.checkpoint} is missing", file=sys.stderr)
        if "builds" in parts:
            results["builds"] = bench_builds(workdir, photos, ["ff_tiny"] if args.skip_base else ["ff_tiny", "ff_base"])
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
