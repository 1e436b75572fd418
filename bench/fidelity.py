"""Fidelity of every precision on the full Fashion-MNIST test set, with the fixture model.

The trained fixture (tests/fixtures/fashion/model.pth) is exported, converted to FP16 and
calibrated to INT8 with each range method on CALIBRATION_COUNTS images of the **train** split;
every graph is then scored on all the **test** images, decoded once and
fed identically to each model. Agreement and the top-1 drop's 95% interval are against PyTorch
FP32 on the same images (`ffx verify`'s paired statistics).
"""

import collections
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURE_CHECKPOINT = REPO / "tests" / "fixtures" / "fashion" / "model.pth"
# ff_tiny's blocks (dim 192, depth 12, 197 tokens): where depth and token width show INT8/FP16 error.
DEEP_CHECKPOINT = REPO / "tests" / "fixtures" / "fashion_tiny197" / "model.pth"
FASHION_IDX = Path("/usr/share/datasets/fashion-mnist")
CALIBRATION_COUNTS = (64, 256, 1024)
EVAL_BATCH = 500


def write_fashion_folders(out_dir, idx_dir=FASHION_IDX):
    """All 60,000 train and 10,000 test images as class-folder PNGs (scripts/fashion_mnist_to_folders.py)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "scripts" / "fashion_mnist_to_folders.py"), str(idx_dir), str(out_dir)],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def decode_images(folder, preprocess, class_names, per_class=None):
    """(images [N, C, H, W] float32, labels [N], paths) of every image in `folder`, in path order;
    with `per_class`, only the first that many images of each class (a fixed, stratified subset)."""
    from ffx.datasets import load_batches, open_dataset
    from ffx.reporting import silenced

    with silenced():
        dataset = open_dataset(folder, class_names=class_names)
    items = dataset.items
    if per_class is not None:
        seen = collections.Counter()
        kept = []
        for item in items:
            seen[item.label] += 1
            if seen[item.label] <= per_class:
                kept.append(item)
        items = kept
    images, labels, paths = [], [], []
    loader = load_batches(items, preprocess, 1000, workers=2, progress=False)
    with silenced():
        for batch in loader:
            images.append(batch.images)
            labels.extend(batch.labels)
            paths.extend(str(Path(item.path).resolve()) for item in batch.items)
    if loader.num_skipped:
        raise RuntimeError(f"{loader.num_skipped} images of {folder} could not be read")
    return np.concatenate(images), np.asarray(labels, np.int64), paths


def logits_of(model_path, images, batch=EVAL_BATCH):
    """Logits of `model_path` (checkpoint or ONNX, through ffx's runners) on `images`."""
    from ffx.runtime.backends.runner import open_runner

    with open_runner(model_path) as runner:
        return np.concatenate([runner.infer(images[i:i + batch]) for i in range(0, len(images), batch)])


def score(name, logits, reference, labels, class_names, extra=None):
    from ffx.runtime.tasks.verify import compare_predictions

    comparison = compare_predictions(reference, logits, labels, class_names)
    row = {
        "model": name,
        "top1": round(comparison.candidate_top1, 2),
        "top1_drop": round(comparison.top1_drop, 2),
        "top1_drop_ci95": [round(v, 2) for v in comparison.top1_drop_ci95],
        "agreement": round(comparison.agreement, 2),
        "logit_cosine_min": round(comparison.logit_cosine_min, 4),
        "max_abs_logit_error": float(f"{comparison.max_abs_error:.3g}"),
    }
    row.update(extra or {})
    return row


def run(workdir, fashion_dir=None, counts=CALIBRATION_COUNTS, methods=None, checkpoint=FIXTURE_CHECKPOINT,
        test_per_class=None, log=print):
    """Every precision and method of `checkpoint` scored on the test split (all of it, or the first
    `test_per_class` images of each class, for models too slow to score 10,000 times per graph here)."""
    from ffx.calib import CalibrationOptions, calibrate_int8, convert_fp16
    from ffx.reporting import silenced
    from ffx.calib.ranges import METHODS
    from ffx.export.checkpoint import resolve_model
    from ffx.export.onnx_export import export_onnx
    from ffx.metadata import Preprocess, read_onnx_metadata

    methods = methods or METHODS
    workdir = Path(workdir)
    result = {"checkpoint": str(checkpoint.relative_to(REPO)) if checkpoint.is_relative_to(REPO) else str(checkpoint)}
    if fashion_dir is None:
        fashion_dir = workdir / "fashion-mnist"
        if not (fashion_dir / "val").is_dir():
            result["png_seconds"] = round(write_fashion_folders(fashion_dir), 1)
            log(f"fidelity: wrote the Fashion-MNIST PNGs in {result['png_seconds']} s")
    fashion_dir = Path(fashion_dir)
    train, test = fashion_dir / "train", fashion_dir / "val"

    fp32 = workdir / "fashion.onnx"
    resolved = resolve_model(None, str(checkpoint))
    export_onnx(resolved, fp32, source_path=str(checkpoint))
    config = resolved.config
    result["architecture"] = {"patch_size": config.patch_size, "embed_dim": config.embed_dim, "depth": config.depth,
                              "tokens": config.num_tokens}
    info = read_onnx_metadata(fp32)
    preprocess = Preprocess.from_dict(info["preprocess"])
    names = info.get("class_names")

    started = time.perf_counter()
    images, labels, test_paths = decode_images(test, preprocess, names, per_class=test_per_class)
    result["test_images"] = len(labels)
    result["test_per_class"] = test_per_class
    result["decode_seconds"] = round(time.perf_counter() - started, 1)
    log(f"fidelity: decoded {len(labels)} test images in {result['decode_seconds']} s")

    reference = logits_of(checkpoint, images)
    rows = [score("PyTorch FP32 (eager)", reference, reference, labels, names, {"precision": "fp32", "backend": "pytorch"})]
    rows.append(score("ONNX FP32", logits_of(fp32, images), reference, labels, names,
                      {"precision": "fp32", "backend": "onnxruntime"}))

    cache = workdir / "calib-cache"
    test_set = set(test_paths)
    models = {"fp32": str(fp32)}
    for count in counts:
        for method in methods:
            out = workdir / f"fashion.int8.{method}.{count}.onnx"
            started = time.perf_counter()
            with silenced():
                report = calibrate_int8(fp32, train, out, CalibrationOptions(method=method, num_images=count, cache_dir=cache))
            seconds = time.perf_counter() - started
            overlap = _calibration_overlap(report.manifest, train, test_set)
            row = score(f"INT8 {method}, {count} images", logits_of(out, images), reference, labels, names, {
                "precision": "int8", "backend": "onnxruntime", "method": method, "calibration_images": report.num_images,
                "calibration_seconds": round(seconds, 1), "statistics_cache": report.cache,
                "tensorrt": _tensorrt_status(report.tensorrt), "test_images_in_calibration": overlap,
            })
            rows.append(row)
            models[f"int8-{method}-{count}"] = str(out)
            log(f"fidelity: {row['model']}: top-1 {row['top1']}%, agreement {row['agreement']}% ({seconds:.1f} s)")

    fp16_out = workdir / "fashion.fp16.onnx"
    fp16_images = max(counts)
    with silenced():
        report = convert_fp16(fp32, fp16_out, data=train, options=CalibrationOptions(num_images=fp16_images, cache_dir=cache))
    rows.append(score("FP16", logits_of(fp16_out, images), reference, labels, names, {
        "precision": "fp16", "backend": "onnxruntime", "calibration_images": report.num_images,
        "fp32_tensors": len(report.fp32_tensors), "tensorrt": _tensorrt_status(report.tensorrt),
    }))
    models["fp16"] = str(fp16_out)
    log(f"fidelity: FP16: top-1 {rows[-1]['top1']}%, agreement {rows[-1]['agreement']}%")
    result["rows"] = rows
    result["models"] = models
    result["methods"] = list(methods)
    result["counts"] = list(counts)
    return result


def _calibration_overlap(manifest_path, train_dir, test_paths):
    """How many calibration images (from the manifest) are test images: must be 0."""
    import json

    manifest = json.loads(Path(manifest_path).read_text())
    calibration = {str((Path(train_dir) / entry["path"]).resolve()) for entry in manifest["images"]}
    return len(calibration & test_paths)


def _tensorrt_status(check):
    if check.get("status") == "built":
        return f"built ({check.get('backend')})"
    return check.get("status", "?")
