"""Activation statistics from running the FP32 model on calibration images, cached by content.

Written here rather than taken from onnxruntime.quantization's calibrators because those collect
method-specific data (MinMax keeps ranges, Entropy a 128-bin signed histogram, Percentile a
2048-bin one) in the same pass that computes the ranges, so switching method means running
inference again and nothing can be cached. Here one pass collects, per tensor, the exact |x| max
and a histogram of |x| fine enough for every method (max, percentile, entropy, mse in
`ranges.py`); the ranges then take milliseconds, and the statistics are cached under a key made
of the model's sha256, the preprocessing, the images' content hashes, the tensor list and this
collector's version, so a cache entry can never be used for anything but exactly those inputs.

The histogram has power-of-two ranges: when a batch exceeds the range, the range doubles and
neighbouring bins merge, which is exact, so the result does not depend on batch order.
"""

import dataclasses
import io
import json
import os
from pathlib import Path

import numpy as np
import onnx

from ffx.artifacts import atomic_output, sha256_bytes
from ffx.calib.model_io import cpu_session
from ffx.datasets import load_batches
from ffx.errors import FfxError
from ffx.json_input import parse_json
from ffx.reporting import warn

STATISTICS_VERSION = 1  # bump whenever what is collected changes: old cache entries then miss
HISTOGRAM_BINS = 4096  # power-of-two ranges leave at least half of them in use: >= 2048 bins
REFERENCE_IMAGES = 32  # FP32 logits kept for a quick INT8/FP16 vs FP32 agreement check
# Activations returned per inference batch, in bytes: bounds memory (ff_base: ~73 MB per image).
ACTIVATION_BYTES_PER_BATCH = 96 << 20
MAX_BATCH = 16


@dataclasses.dataclass
class ActivationStatistics:
    kind: str  # "histogram" (INT8) or "absmax" (FP16 preflight)
    tensors: list
    absmax: np.ndarray  # float64 [tensors]
    hist_range: np.ndarray  # float64 [tensors]: the histogram covers [0, hist_range)
    histograms: np.ndarray  # int64 [tensors, bins] (empty for kind "absmax")
    images_used: int
    skipped: list  # [{"path", "reason"}]
    reference_indices: list  # positions (in the image selection) of the images with kept logits
    reference_logits: np.ndarray  # float32 [len(reference_indices), classes]
    cache: str = "off"  # "hit", "miss" (computed and stored) or "off"

    def index(self, tensor):
        return self.tensors.index(tensor)


def default_cache_dir():
    if os.environ.get("FFX_CACHE_DIR"):
        return Path(os.environ["FFX_CACHE_DIR"]) / "calib"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ffx" / "calib"


def statistics_key(kind, model_sha256, preprocess, image_hashes, tensors):
    """The content key of a statistics cache entry."""
    payload = {
        "version": STATISTICS_VERSION,
        "kind": kind,
        "bins": HISTOGRAM_BINS,
        "model_sha256": model_sha256,
        "preprocess": preprocess.to_dict(),
        "images": image_hashes,
        "tensors": list(tensors),
        "reference_images": REFERENCE_IMAGES,
    }
    return sha256_bytes(json.dumps(payload, sort_keys=True).encode())


class _AbsHistogram:
    """Histogram of |x| over [0, range) with `bins` bins; range is a power of two that grows."""

    def __init__(self, bins=HISTOGRAM_BINS):
        self.bins = bins
        self.counts = np.zeros(bins, np.int64)
        self.range = 0.0
        self.absmax = 0.0

    def add(self, values):
        magnitudes = np.abs(values, dtype=np.float32).ravel()
        peak = float(magnitudes.max()) if magnitudes.size else 0.0
        if not np.isfinite(peak):
            raise FloatingPointError("non-finite activation")
        self.absmax = max(self.absmax, peak)
        if peak > 0 and peak >= self.range:
            new_range = 2.0 ** np.ceil(np.log2(peak))
            if new_range <= peak:
                new_range *= 2
            if self.range > 0:
                factor = int(round(new_range / self.range))
                self.counts = np.concatenate(
                    [self.counts.reshape(-1, factor).sum(axis=1), np.zeros(self.bins - self.bins // factor, np.int64)]
                )
            self.range = new_range
        if self.range == 0:  # all zeros so far: they belong to bin 0 whatever the range becomes
            self.counts[0] += magnitudes.size
            return
        # bins / range is a power of two, so the scaling is exact and so is the bin of every value.
        magnitudes *= np.float32(self.bins / self.range)
        np.minimum(magnitudes, self.bins - 1, out=magnitudes)
        self.counts += np.bincount(magnitudes.astype(np.intp), minlength=self.bins)


def collect_statistics(kind, model, tensors, items, preprocess, key, cache_dir=None, workers=2, progress=None,
                       relative_path=str):
    """Statistics of `tensors` over the images `items` (ImageItem list), from the cache when
    `cache_dir` holds the entry for `key`. kind "histogram": |x| max and histogram of each tensor;
    kind "absmax": |x| max only (computed inside the graph, cheap for every tensor)."""
    if cache_dir is not None:
        cached = _load_cache(Path(cache_dir), key, tensors, len(items))
        if cached is not None:
            cached.cache = "hit"
            if cached.skipped:
                warn(f"{len(cached.skipped)} unreadable calibration image(s) were skipped (cached result): "
                     + ", ".join(s["path"] for s in cached.skipped[:5]))
            return cached
    stats = _run_collection(kind, model, tensors, items, preprocess, workers, progress, relative_path)
    if cache_dir is not None:
        try:
            _save_cache(Path(cache_dir), key, stats)
            stats.cache = "miss"
        except (OSError, FfxError) as e:  # atomic_output reports an unwritable folder as FfxError
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            warn(f"could not write the calibration cache in {cache_dir} ({reason}); continuing without it")
    return stats


def _run_collection(kind, model, tensors, items, preprocess, workers, progress, relative_path):
    graph_inputs = {value.name for value in model.graph.input}
    output_name = model.graph.output[0].name
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    del augmented.metadata_props[:]
    fetched = []  # names the session returns, besides the logits
    if kind == "histogram":
        for tensor in tensors:
            if tensor not in graph_inputs and tensor != output_name:
                augmented.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
                fetched.append(tensor)
        batch_size = _batch_size_for(model, tensors)
    else:
        fetched = _add_absmax_outputs(augmented, tensors, graph_inputs, output_name)
        batch_size = 8
    session = cpu_session(augmented)
    input_name = model.graph.input[0].name
    del augmented

    histograms = {tensor: _AbsHistogram() for tensor in tensors} if kind == "histogram" else None
    absmax = dict.fromkeys(tensors, 0.0)
    position = {id(item): i for i, item in enumerate(items)}
    reference_indices, reference_logits = [], []
    used = 0
    loader = load_batches(items, preprocess, batch_size, workers=workers, progress=progress,
                          description="calibration images")
    for batch in loader:
        outputs = session.run([output_name, *fetched], {input_name: batch.images})
        if not np.isfinite(outputs[0]).all():
            raise FfxError(
                f"the FP32 model's outputs are not finite (NaN or Inf) on "
                f"{', '.join(relative_path(item) for item in batch.items[:3])}; it cannot be calibrated"
            )
        values = dict(zip(fetched, outputs[1:]))
        values.setdefault(input_name, batch.images)
        values.setdefault(output_name, outputs[0])
        for tensor in tensors:
            if kind == "histogram":
                try:
                    histograms[tensor].add(values[tensor])
                except FloatingPointError:
                    raise FfxError(
                        f"the FP32 model produces inf/NaN in {tensor!r} on "
                        f"{', '.join(relative_path(item) for item in batch.items[:3])}; it cannot be calibrated"
                    ) from None
            else:
                source = values.get(tensor if tensor in graph_inputs or tensor == output_name else f"{tensor}.absmax")
                absmax[tensor] = max(absmax[tensor], float(np.max(np.abs(source))))
        room = REFERENCE_IMAGES - len(reference_indices)
        if room > 0:
            reference_indices.extend(position[id(item)] for item in batch.items[:room])
            reference_logits.append(outputs[0][:room].astype(np.float32))
        used += len(batch.items)

    if kind == "histogram":
        absmax = {tensor: histograms[tensor].absmax for tensor in tensors}
        hist_range = np.array([histograms[t].range for t in tensors], np.float64)
        counts = np.stack([histograms[t].counts for t in tensors])
    else:
        hist_range = np.zeros(len(tensors), np.float64)
        counts = np.zeros((len(tensors), 0), np.int64)
    return ActivationStatistics(
        kind=kind,
        tensors=list(tensors),
        absmax=np.array([absmax[t] for t in tensors], np.float64),
        hist_range=hist_range,
        histograms=counts,
        images_used=used,
        skipped=[{"path": relative_path(s.item), "reason": s.reason} for s in loader.skipped],
        reference_indices=reference_indices,
        reference_logits=np.concatenate(reference_logits) if reference_logits else np.zeros((0, 0), np.float32),
    )


def _add_absmax_outputs(model, tensors, graph_inputs, output_name):
    """Append Abs -> ReduceMax for each tensor: one scalar per batch instead of the activations."""
    fetched = []
    for tensor in tensors:
        if tensor in graph_inputs or tensor == output_name:
            continue
        abs_name, max_name = f"{tensor}.abs", f"{tensor}.absmax"
        model.graph.node.append(onnx.helper.make_node("Abs", [tensor], [abs_name], name=f"{tensor}.abs_node"))
        model.graph.node.append(
            onnx.helper.make_node("ReduceMax", [abs_name], [max_name], name=f"{tensor}.absmax_node", keepdims=0)
        )
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(max_name))
        fetched.append(max_name)
    return fetched


def _batch_size_for(model, tensors):
    """Images per inference batch so that the returned activations stay within budget."""
    shapes = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            dims = value.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims[1:]):
                shapes[value.name] = int(np.prod([d.dim_value for d in dims[1:]]))
    except Exception:  # shape inference is an optimisation here; fall back to a safe size
        return 4
    per_image = sum(shapes.get(tensor, 0) for tensor in tensors) * 4
    if per_image == 0:
        return 4
    return int(max(1, min(MAX_BATCH, ACTIVATION_BYTES_PER_BATCH // per_image)))


def _cache_file(cache_dir, key):
    return cache_dir / f"{key}.npz"


def _load_cache(cache_dir, key, tensors, image_count):
    """The entry for `key` (statistics of `tensors` over `image_count` images), or None when there
    is none or it is not one this collector wrote for exactly those inputs."""
    path = _cache_file(cache_dir, key)
    try:
        if not path.is_file():
            return None
    except OSError:  # an unreadable cache folder is no cache
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = parse_json(str(data["meta"]))
            if meta.get("key") != key or meta.get("version") != STATISTICS_VERSION or meta.get("tensors") != list(tensors):
                return None
            stats = ActivationStatistics(
                kind=meta["kind"],
                tensors=meta["tensors"],
                absmax=data["absmax"],
                hist_range=data["hist_range"],
                histograms=data["histograms"],
                images_used=meta["images_used"],
                skipped=meta["skipped"],
                reference_indices=meta["reference_indices"],
                reference_logits=data["reference_logits"],
            )
    except Exception:  # a damaged entry is recomputed, never trusted
        return None
    return stats if _plausible(stats, image_count) else None


def _plausible(stats, image_count):
    """Whether a cache entry has the shapes and values this collector writes for `image_count`
    images: an entry damaged or planted by someone else (wrong shapes or types, NaN, negative or
    impossible counts, indices past the images) is a cache miss, not a crash."""
    count = len(stats.tensors)
    arrays_ok = (
        stats.kind in ("histogram", "absmax")
        and stats.absmax.shape == (count,) and stats.hist_range.shape == (count,)
        and stats.absmax.dtype.kind == "f" and stats.hist_range.dtype.kind == "f"
        and bool(np.isfinite(stats.absmax).all() and (stats.absmax >= 0).all())
        and bool(np.isfinite(stats.hist_range).all() and (stats.hist_range >= 0).all())
        and stats.histograms.dtype.kind in "iu" and bool((stats.histograms >= 0).all())
        and stats.histograms.shape == ((count, HISTOGRAM_BINS) if stats.kind == "histogram" else (count, 0))
        and stats.reference_logits.ndim == 2 and stats.reference_logits.dtype.kind == "f"
        and bool(np.isfinite(stats.reference_logits).all())
    )
    lists_ok = (
        isinstance(stats.skipped, list)
        and all(isinstance(s, dict) and isinstance(s.get("path"), str) and isinstance(s.get("reason"), str)
                for s in stats.skipped)
        and isinstance(stats.reference_indices, list) and len(stats.reference_indices) <= REFERENCE_IMAGES
        and all(type(i) is int and 0 <= i < image_count for i in stats.reference_indices)
        and len(set(stats.reference_indices)) == len(stats.reference_indices)
        and len(stats.reference_indices) == len(stats.reference_logits)
        and (not stats.reference_indices or stats.reference_logits.shape[1] > 0)
        and type(stats.images_used) is int and stats.images_used + len(stats.skipped) == image_count
    )
    return arrays_ok and lists_ok


def _save_cache(cache_dir, key, stats):
    meta = {
        "key": key,
        "version": STATISTICS_VERSION,
        "kind": stats.kind,
        "tensors": stats.tensors,
        "images_used": stats.images_used,
        "skipped": stats.skipped,
        "reference_indices": stats.reference_indices,
    }
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), absmax=stats.absmax, hist_range=stats.hist_range,
             histograms=stats.histograms, reference_logits=stats.reference_logits)
    with atomic_output(_cache_file(cache_dir, key)) as tmp:
        tmp.write_bytes(buffer.getvalue())


# --- FP32 logits of held-out images ------------------------------------------------------------
# The autopilot and `ffx sensitivity` judge every variant against the FP32 model's logits on the
# held-out images; on thousands of images those take longer than anything else they compute once,
# and they depend only on the graph, the preprocessing and the image bytes.


def reference_logits_key(source, image_hashes):
    payload = {"version": STATISTICS_VERSION, "kind": "reference_logits", "model_sha256": source.model_sha256,
               "preprocess": source.preprocess.to_dict(), "images": list(image_hashes)}
    return sha256_bytes(json.dumps(payload, sort_keys=True).encode())


def _reference_file(cache_dir, key):
    return Path(cache_dir) / f"reference-{key}.npz"


def load_reference_logits(cache_dir, key, images):
    """The cached FP32 logits of `images` images under `key`, or None (absent, damaged or planted
    entries are a miss, never trusted)."""
    try:
        with np.load(_reference_file(cache_dir, key), allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            logits = data["logits"]
    except Exception:
        return None
    if logits.ndim != 2 or len(logits) != images or logits.dtype != np.float32 or not np.isfinite(logits).all():
        return None
    return logits


def save_reference_logits(cache_dir, key, logits):
    """Store the logits under `key`; False when the cache folder cannot be written."""
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), logits=np.asarray(logits, np.float32))
    try:
        with atomic_output(_reference_file(cache_dir, key)) as tmp:
            tmp.write_bytes(buffer.getvalue())
    except (OSError, FfxError):
        return False
    return True
