"""The accuracy gate: a candidate (engine, ONNX, checkpoint) against a reference on labelled images.

Both models see the very same preprocessed batches (the candidate's preprocessing metadata, which
is what deployment uses), so a difference in accuracy is the model's, never the pipeline's. The
top-1 drop comes with a paired 95% confidence interval: every image is scored by both models, so
only the discordant images (one right, the other wrong) carry information about the difference.
"""

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from ffx.artifacts import sha256_file
from ffx.calibration_manifest import CalibrationManifest, calibration_manifest_path
from ffx.errors import BackendUnavailable, FfxError, InvalidOption, MissingPreprocess
from ffx.fidelity import paired_difference_ci, row_cosines
from ffx.metadata import Preprocess, lineage_mismatch
from ffx.model_file import ModelFile, open_onnx
from ffx.reporting import collect_warnings, warn, warnings_to
from ffx.runtime.backends.runner import existing_model_kind, open_model, open_runner, runner_kind

DEFAULT_MAX_TOP1_DROP = 0.5  # percentage points


@dataclasses.dataclass
class PairedComparison:
    """Accuracy of two models on the same labelled images, and how their outputs differ."""

    images: int
    reference_top1: float  # percent
    reference_top5: float
    candidate_top1: float
    candidate_top5: float
    top1_drop: float  # reference - candidate, percentage points
    top1_drop_ci95: list  # [low, high], percentage points
    discordant: dict  # {"candidate_only": b, "reference_only": c} correct on one model only
    agreement: float  # percent of images with the same top-1 class
    logit_cosine_mean: float
    logit_cosine_min: float
    max_abs_error: float
    classes_lost: list  # [{"class", "name", "images", "reference_top1", "candidate_top1", "lost"}]
    topk: int  # k of "top5" (smaller when the model has fewer than 5 classes)


def compare_predictions(reference_logits, candidate_logits, labels, class_names=None, worst=5):
    """PairedComparison of two [N, C] logit arrays on integer labels [N]."""
    reference_logits = np.asarray(reference_logits, np.float64)
    candidate_logits = np.asarray(candidate_logits, np.float64)
    labels = np.asarray(labels, np.int64)
    n, classes = reference_logits.shape
    if candidate_logits.shape != reference_logits.shape:
        raise FfxError(f"the models disagree on the output shape: reference {reference_logits.shape}, "
                       f"candidate {candidate_logits.shape}")
    if n == 0:
        raise FfxError("no images to compare")
    if labels.min() < 0 or labels.max() >= classes:
        raise FfxError(f"labels run to {labels.max()} but the models have {classes} classes")
    k = min(5, classes)
    ref_top1 = reference_logits.argmax(1) == labels
    cand_top1 = candidate_logits.argmax(1) == labels
    ref_topk = _in_topk(reference_logits, labels, k)
    cand_topk = _in_topk(candidate_logits, labels, k)

    only_candidate = int(np.sum(cand_top1 & ~ref_top1))
    only_reference = int(np.sum(ref_top1 & ~cand_top1))
    drop = 100.0 * (only_reference - only_candidate) / n
    low, high = paired_difference_ci(only_reference, only_candidate, n)

    cosine = row_cosines(reference_logits, candidate_logits)

    lost = []
    for label in np.unique(labels):
        mask = labels == label
        delta = int(ref_top1[mask].sum() - cand_top1[mask].sum())
        if delta > 0:
            lost.append({
                "class": int(label),
                "name": class_names[label] if class_names and label < len(class_names) else str(label),
                "images": int(mask.sum()),
                "reference_top1": round(100.0 * ref_top1[mask].mean(), 2),
                "candidate_top1": round(100.0 * cand_top1[mask].mean(), 2),
                "lost": delta,
            })
    lost.sort(key=lambda row: (-row["lost"], row["class"]))

    return PairedComparison(
        images=n,
        reference_top1=100.0 * ref_top1.mean(),
        reference_top5=100.0 * ref_topk.mean(),
        candidate_top1=100.0 * cand_top1.mean(),
        candidate_top5=100.0 * cand_topk.mean(),
        top1_drop=drop,
        top1_drop_ci95=[low, high],
        discordant={"candidate_only": only_candidate, "reference_only": only_reference},
        agreement=100.0 * np.mean(reference_logits.argmax(1) == candidate_logits.argmax(1)),
        logit_cosine_mean=float(cosine.mean()),
        logit_cosine_min=float(cosine.min()),
        max_abs_error=float(np.max(np.abs(reference_logits - candidate_logits))),
        classes_lost=lost[:worst],
        topk=k,
    )


def _in_topk(logits, labels, k):
    top = np.argpartition(-logits, kth=k - 1, axis=1)[:, :k]
    return np.any(top == labels[:, None], axis=1)


@dataclasses.dataclass
class VerifyReport:
    reference: dict  # path, backend, precision, top1, top5
    candidate: dict
    top1_drop: float
    top1_drop_ci95: list
    agreement: float
    logit_cosine_mean: float
    logit_cosine_min: float
    max_abs_error: float
    classes_lost: list
    discordant: dict
    images: int
    skipped_images: int
    calibration_overlap: int | None  # verification images that were also calibration images; None: unknown
    max_top1_drop: float
    passed: bool
    gate: str  # what was compared with max_top1_drop: "estimate" or "95% upper bound"
    seconds: float
    warnings: list

    def to_dict(self):
        return dataclasses.asdict(self)


def verify(
    candidate: str | Path,
    reference: str | Path | None,
    data: str | Path | None,
    limit: int | None = None,
    max_top1_drop: float = DEFAULT_MAX_TOP1_DROP,
    batch_size: int = 32,
    provider: str = "cpu",
    cuda_graph: bool = False,
    progress: bool | None = None,
    workers: int = 2,
    seed: int = 0,
    strict: bool = False,
    threads: int | None = None,
    preprocess: Preprocess | None = None,
) -> VerifyReport:
    """The accuracy gate: both models on the same preprocessed labelled images, compared.

    Args:
        candidate: the model under test: an engine, an ONNX model or a checkpoint.
        reference: the model it must match (usually the FP32 checkpoint or ONNX); None: the FP32
            ONNX the candidate's records lead to (`find_reference`).
        data: labelled images (class folders, a LOC_val_solution.csv folder or a list file); None
            is refused once the models are known to run here (so that a machine that cannot run
            the candidate says that first).
        limit: use at most this many images (stratified, chosen with `seed`); None: all.
        max_top1_drop: the largest top-1 drop, in points, that passes.
        batch_size, workers, threads: batch size, image-decoding processes, CPU threads.
        provider, cuda_graph: ONNX Runtime provider; CUDA graphs for engines.
        progress: False for none; otherwise a bar on a terminal, lines in a log (ffx.progress).
        strict: gate on the upper end of the drop's 95% interval instead of the estimate, so a
            pass means the data rule out a larger drop.
        preprocess: overrides the preprocessing the models carry (models exported by other
            tools); None: the candidate's, else the reference's.

    Returns:
        VerifyReport: top-1/top-5 of both, the drop with its interval, agreement, logit errors,
        the classes that lost most, and `passed` (the CLI exits 1 when it is False).

    Raises:
        FfxError: missing files, unreadable data, models that disagree on preprocessing (exit 2).
    """
    if not math.isfinite(max_top1_drop):  # nan would make every comparison, and so the gate, fail
        raise InvalidOption("max_top1_drop", f"the largest top-1 drop must be a finite number, got {max_top1_drop}")
    started = time.perf_counter()
    # Everything the run and the judge warn about (ffx.reporting) goes into the report, in order.
    with collect_warnings() as warnings:
        run = _run_pair(candidate, reference, data, limit, batch_size, provider, cuda_graph, progress, workers, seed,
                        threads, preprocess)
        report = _judge(run, max_top1_drop, strict, started)
    return dataclasses.replace(report, warnings=warnings)


@dataclasses.dataclass
class _PairedRun:
    """What verify's "run" half hands its "judge" half: both models' logits on the same images."""

    candidate: object  # the runners (ffx.runtime.backends.runner), closed by now
    reference: object
    reference_logits: list  # one array per batch
    candidate_logits: list
    labels: list
    class_names: list | None
    skipped: int  # unreadable images
    calibration_overlap: int | None  # None: the candidate has no calibration manifest


def _run_pair(candidate, reference, data, limit, batch_size, provider, cuda_graph, progress, workers, seed, threads,
              preprocess):
    """Open both models, check that they can run here and agree on their input, and run them on
    the same preprocessed batches of labelled images."""
    from ffx.datasets import load_batches
    from ffx.images import normalize_pixels

    found = None
    if reference is None:  # the candidate is opened once, for its records and then its runner
        candidate = open_model(candidate)
        reference, found = find_reference(candidate)
        warn(f"reference: {reference} ({found})")
    for path in (candidate, reference):
        existing_model_kind(_path_of(path))
    if data is not None and not Path(data).exists():
        raise FfxError(f"{data}: no such directory")
    # Each runner's own warnings (an engine without a sidecar, a CUDA graph capture that failed) are
    # held while it opens and runs, and reported once both have run: the candidate's, then the reference's.
    candidate_held, reference_held = [], []
    candidate_runner, reference_runner, reference_sha256 = _open_runners(
        candidate, reference, found, provider, cuda_graph, threads, (candidate_held, reference_held))
    candidate = candidate_runner.path
    if data is None:
        raise FfxError(f"--data is needed: labelled images to compare {Path(candidate).name} and {Path(reference).name} on")
    preprocess, reference_preprocess = _shared_preprocess(candidate_runner, reference_runner, preprocess)
    class_names = candidate_runner.class_names or reference_runner.class_names
    lineage = _lineage(candidate_runner, reference_runner, reference_sha256)
    if lineage:
        warn(f"{candidate_runner.name} was {lineage}: this compares two networks, not a conversion and "
             "its source")
    items, names = _labelled_items(data, class_names, limit, seed)
    calibration = calibration_images_of(candidate_runner.model_file or candidate)

    reference_logits, candidate_logits, labels, overlap = [], [], [], 0
    with candidate_runner, reference_runner:
        loaded = load_batches(items, preprocess, batch_size, workers=workers, progress=progress, description="verify")
        for batch in loaded:
            reference_images = (batch.images if reference_preprocess is None
                                else normalize_pixels(batch.pixels, reference_preprocess))
            with warnings_to(reference_held.append):
                reference_logits.append(reference_runner.infer(reference_images))
            with warnings_to(candidate_held.append):
                candidate_logits.append(candidate_runner.infer(batch.images))
            labels.append(np.asarray(batch.labels))
            if calibration:
                overlap += _count_overlap(calibration, batch)
    for message in candidate_held + reference_held:
        warn(message)
    if not labels:
        raise FfxError(f"{data}: no readable images")
    if overlap:
        warn(
            f"{overlap} of {comparison_size(labels)} verification images were also calibration images of "
            f"{Path(candidate).name}; its accuracy on them is optimistic: verify on a held-out split"
        )
    return _PairedRun(candidate_runner, reference_runner, reference_logits, candidate_logits, labels, names,
                      loaded.num_skipped, overlap if calibration else None)


def _open_runners(candidate, reference, found, provider, cuda_graph, threads, held):
    """(candidate runner, reference runner, the checkpoint reference's sha256 or None), both
    checked to run here before any image is read: an engine on a machine without a GPU is one line.
    What each runner warns while it is made goes to its list in `held` (candidate's, reference's)."""
    with warnings_to(held[0].append):
        candidate_runner = open_runner(candidate, provider=provider, cuda_graph=cuda_graph, threads=threads)
    # A checkpoint reference is hashed once: for the lineage check, and to run the EMA weights
    # when the candidate was exported from this checkpoint's model_ema (as `ffx export --ema` does).
    reference_sha256 = (sha256_file(reference) if runner_kind(reference) == "checkpoint"
                        and candidate_runner.metadata.source_sha256 else None)
    ema = (reference_sha256 is not None and candidate_runner.metadata.weights == "model_ema"
           and candidate_runner.metadata.source_sha256 == reference_sha256)
    with warnings_to(held[1].append):
        reference_runner = open_runner(reference, provider=provider, cuda_graph=cuda_graph, threads=threads, ema=ema)
    if ema:
        warn(f"{Path(reference).name}: running its model_ema weights, which {candidate_runner.name} was "
             "exported from")
    for runner in (candidate_runner, reference_runner):
        try:
            runner.check_available()
        except BackendUnavailable as e:
            chain = f" (reference {reference}: {found})" if found else ""
            raise BackendUnavailable(f"{runner.path} cannot run here{chain}: {e}") from None
    return candidate_runner, reference_runner, reference_sha256


def _labelled_items(data, class_names, limit, seed):
    """(the images to verify on, at most `limit` of them, stratified and seeded; the class names)."""
    from ffx.datasets import open_dataset, select_images

    dataset = open_dataset(data, class_names=class_names)
    if not dataset.labelled:
        if dataset.layout == "list-file":
            raise FfxError(f"{data}: verify needs labelled images; no line ends in a label (a class index, or a class "
                           "name of the model): `path label` per line")
        raise FfxError(f"{data}: verify needs labelled images, one folder per class (e.g. {data}/<class name>/*.png)")
    items = list(dataset.items)
    if limit is not None and limit < len(items):
        # Stratified and seeded: the first N files would cover only the first classes.
        items = select_images(items, limit, seed=seed)
    return items, dataset.class_names or class_names


def _judge(run, max_top1_drop, strict, started):
    """The gate on a paired run: the comparison, and whether the top-1 drop (its estimate, or the
    upper end of its 95% interval when `strict`) is within `max_top1_drop`."""
    comparison = compare_predictions(np.concatenate(run.reference_logits), np.concatenate(run.candidate_logits),
                                     np.concatenate(run.labels), run.class_names)
    if comparison.images < 1000:
        warn(
            f"only {comparison.images} images: the top-1 drop's 95% interval runs from "
            f"{comparison.top1_drop_ci95[0]:+.2f} to {comparison.top1_drop_ci95[1]:+.2f} points; more images narrow it"
        )
    return VerifyReport(
        reference=_model_summary(run.reference, comparison.reference_top1, comparison.reference_top5),
        candidate=_model_summary(run.candidate, comparison.candidate_top1, comparison.candidate_top5),
        top1_drop=comparison.top1_drop,
        top1_drop_ci95=comparison.top1_drop_ci95,
        agreement=comparison.agreement,
        logit_cosine_mean=comparison.logit_cosine_mean,
        logit_cosine_min=comparison.logit_cosine_min,
        max_abs_error=comparison.max_abs_error,
        classes_lost=comparison.classes_lost,
        discordant=comparison.discordant,
        images=comparison.images,
        skipped_images=run.skipped,
        calibration_overlap=run.calibration_overlap,
        max_top1_drop=max_top1_drop,
        passed=bool((comparison.top1_drop_ci95[1] if strict else comparison.top1_drop) <= max_top1_drop),
        gate="95% upper bound" if strict else "estimate",
        seconds=round(time.perf_counter() - started, 2),
        warnings=[],  # verify fills them in
    )


def _model_summary(runner, top1, top5):
    return {"path": str(runner.path), "backend": runner.backend, "precision": runner.precision,
            "top1": top1, "top5": top5}


def _shared_preprocess(candidate, reference, given=None):
    """(the candidate's preprocessing, what deployment will use; the reference's own when the
    two differ only in where the normalization happens, else None: the reference gets the
    candidate's input too). A model with its normalization folded in takes scaled RGB, the
    unfolded one normalized RGB, from the very same pixels. `given` (from the user) overrides both."""
    for runner in (candidate, reference):
        size = tuple((given.input_size if given else None) or ())
        if given and runner.input_shape and tuple(runner.input_shape) != size:
            raise FfxError(f"the given preprocessing makes {size} inputs but {runner.name} takes {tuple(runner.input_shape)}")
    if given is not None:
        return given, None
    candidate_has = candidate.metadata.has_preprocess
    reference_has = reference.metadata.has_preprocess
    if not candidate_has and not reference_has:
        raise MissingPreprocess("neither model carries preprocessing metadata; export them with `ffx export` or give the "
                                "preprocessing (input size, resize, interpolation, mean, std) as JSON")
    chosen = candidate if candidate_has else reference
    if all(runner.metadata.preprocess_recorded is False for runner in (candidate, reference)
           if runner.metadata.has_preprocess):
        warn("the preprocessing both models carry was assumed at export (the ImageNet default), "
             "not recorded with the trained weights: a mismatch with training would go unnoticed")
    if (candidate_has and reference_has and candidate.preprocess != reference.preprocess
            and candidate.preprocess.same_pixels(reference.preprocess)
            and _network_input_range(candidate.preprocess) != _network_input_range(reference.preprocess)):
        return candidate.preprocess, reference.preprocess
    if candidate_has and reference_has and candidate.preprocess != reference.preprocess:
        warn(
            f"the models were exported with different preprocessing ({candidate.preprocess} vs "
            f"{reference.preprocess}); both are fed {candidate.name}'s, which deployment uses"
        )
    if candidate.input_shape and reference.input_shape and tuple(candidate.input_shape) != tuple(reference.input_shape):
        raise FfxError(f"the models take different inputs: {candidate.name} {candidate.input_shape}, "
                       f"{reference.name} {reference.input_shape}")
    return chosen.preprocess, None


def _lineage(candidate, reference, reference_sha256=None):
    """Why the candidate was not made from the reference's weights, or None (see lineage_mismatch);
    `reference_sha256`: the hash of a checkpoint reference (its metadata has none)."""
    reference_metadata = reference.metadata
    if reference_sha256 and reference_metadata.source_sha256 is None:
        reference_metadata = dataclasses.replace(reference_metadata, source_sha256=reference_sha256)
    return lineage_mismatch(candidate.metadata, reference_metadata)


def _network_input_range(preprocess):
    return preprocess.normalization_folded, preprocess.input_scale


def find_reference(candidate):
    """(the FP32 ONNX `candidate` descends from, how that was found) for `ffx verify` without
    --reference. The records lead there: an engine's sidecar names the ONNX it was built from; a
    calibrated (INT8/FP16) ONNX's manifest names the FP32 ONNX it was made from. Each step's sha256
    is checked, so a file replaced since is not taken for the source. FfxError (one line) when
    the chain breaks. `candidate`: a path, or its ModelFile (open_model)."""
    candidate_file = open_model(candidate)
    candidate = candidate_file.path
    steps = []
    path, model_file = candidate, candidate_file
    if candidate_file.kind == "engine":
        sidecar = candidate_file.sidecar
        if sidecar is None:
            raise FfxError(f"{candidate}: no sidecar to find its source ONNX in; give --reference")
        path = Path(candidate).parent / sidecar.onnx.file
        _check_recorded(path, sidecar.onnx.sha256, f"{candidate.name}'s sidecar")
        steps.append(f"{candidate.name} was built from {path.name}")
        model_file = open_onnx(path)
    elif candidate_file.kind != "onnx":
        raise FfxError(f"{candidate}: a checkpoint is a reference itself; give --reference")
    metadata = model_file.unchecked_metadata
    if metadata.precision not in (None, "fp32"):
        manifest_path = calibration_manifest_path(path, metadata)
        manifest = _read_manifest(manifest_path, path)
        source = path.parent / Path(str(manifest.input.file)).name
        _check_recorded(source, manifest.input.sha256, manifest_path.name)
        steps.append(f"{path.name} was calibrated from {source.name} ({manifest_path.name})")
        path = source
    elif path == candidate:
        raise FfxError(f"{candidate} is an FP32 model: it is the reference itself; give --reference to compare it "
                       "with another model")
    return path, "; ".join(steps)


def _check_recorded(path, sha256, record):
    if not path.is_file():
        raise FfxError(f"{path}: named by {record} but not there; give --reference")
    if sha256_file(path) != sha256:
        raise FfxError(f"{path} is not the file {record} names (sha256 differs); give --reference")


def _read_manifest(manifest_path, model_path):
    import json

    if manifest_path is None:
        raise FfxError(f"{model_path}: no calibration manifest beside it to find its FP32 source in; give --reference")
    try:
        data = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError):
        data = None
    manifest = CalibrationManifest.from_dict(data) if isinstance(data, dict) else None
    if manifest is None or manifest.input is None or manifest.input.file is None or manifest.input.sha256 is None:
        raise FfxError(f"{manifest_path}: not a calibration manifest (no input file and sha256); give --reference")
    return manifest


def calibration_images_of(model):
    """[(path, sha256)] the calibration manifest behind `model` (a path, or its ModelFile) lists, or
    None when there is none."""
    model_file = open_model(model)
    if model_file.manifest_path is None:
        return None
    manifest = model_file.manifest
    return manifest.image_files(model_file.manifest_path) if manifest is not None else []


def _path_of(model):
    """The file of `model`: a path, or a ModelFile."""
    return model.path if isinstance(model, ModelFile) else model


def _count_overlap(calibration, batch):
    """Images of `batch` that the calibration manifest lists, by content hash or by path."""
    paths = {p for p, _ in calibration if p}
    digests = {d for _, d in calibration if d}
    return sum(
        1 for item, digest in zip(batch.items, batch.sha256)
        if (digest and digest in digests) or str(Path(item.path).resolve()) in paths
    )


def comparison_size(labels):
    return sum(len(chunk) for chunk in labels)
