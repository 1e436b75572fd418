"""The cheapest set of layers to keep in float for a quantized graph to reach an accuracy target,
judged on enough held-out images to mean it.

A target is judged by default on the 95% bound of what is measured: the Wilson lower bound of
the top-1 agreement with FP32, the upper end of the paired interval of the top-1 drop (as `ffx
verify` computes it). Before anything runs, the held-out images are counted: when even a graph
that agrees on every one of them could not show the target (99.9% takes 3,838 images), the
search stops there with that number, unless the target is to be judged on the point estimates.

The search, in the order it runs (FP8 with `choose_int8`: first `choose_int8_layers` writes each
layer in whichever of FP8 and INT8 errs less alone, by the error of step 2; the rest runs on that graph;
`int8_choice`, FP8's `--int8-layers auto` without a target, makes only that choice):
1. The all-quantized graph is measured on the held-out images, closest calls first (FP32's
   top-1 logit minus its runner-up, smallest first: the images a quantized graph flips are
   almost all among the first), stopping as soon as it can no longer meet the target.
2. Each layer's error: with it alone quantized, the power of its error in FP32's top-1 margin
   (the top-1 logit minus the runner-up's, the difference that decides agreement) on the
   RANKING_IMAGES closest calls. Rounding errors of different layers are nearly independent, so
   their powers add (bench/int8_noise: 33.5 dB predicted from the parts, 33.7 dB measured), and
   the error of any float set follows without measuring it. The margin, not every logit: on the
   deep fixture in FP8 the head's error is a large share of the all-FP8 graph's logit error power
   but a small one of its margin error (it lands on classes that are not in contention), and
   keeping the head in float removes almost none of the disagreements.
3. Each layer's cost: its share of the matrix-product FLOPs (the CPU cost model that
   bench/int8_noise checked against `ffx bench`: within 0.02x).
4. For every cost, the float set that removes the most error (a knapsack over the FLOPs shares),
   and how many held-out images it should flip: each closest call's all-quantized logit error,
   scaled to the set's predicted error, against its FP32 margins.
5. The cheapest set likely to meet the target (PASS_PROBABILITY) is measured on the held-out
   images; a set that fails re-fits the prediction to what was measured and a costlier one is
   measured next. Every figure recorded is a measurement of the chosen graph on every held-out
   image.

The search never builds a graph itself: it asks `variants.with_float(layers)` (calib/sensitivity's
QuantizedVariants: the graph `calibrate_int8` writes with those layers in --keep-fp) for every
graph it measures, so another precision is another `variants`.
"""

import dataclasses
import math

import numpy as np

from ffx.calib.conversion import choose_images
from ffx.calib.int8 import calibration_statistics
from ffx.calib.qdq import keep_fp_selection, quantization_plan
from ffx.calib.precisions import qdq_recipe
from ffx.calib.model_io import cpu_session, load_source_model
from ffx.calib.sensitivity import (EVAL_BATCH, choose_held_out, decode_held_out, fidelity_of,
                                   held_out_candidates, matmul_flops, quantized_variants, run_model)
from ffx.errors import FfxError, GateFailed, InvalidOption
from ffx.fidelity import (disagreements_allowed, images_to_resolve_agreement, images_to_resolve_drop,
                          paired_difference_ci, wilson_interval)
from ffx.progress import Progress

DEFAULT_HELD_OUT_IMAGES = 10_000  # 99.9% on the lower bound: up to 3 of them may disagree
RANKING_IMAGES = 64  # the closest calls each layer's margin error is measured on
SCREENED_SHARE = 0.1  # the all-quantized graph is measured on at least this share of the closest calls
MIN_SCREENED = 500
PASS_PROBABILITY = 0.9  # the chance a set must have, by the prediction, to be measured
RANKED_BY = "error in FP32's top-1 margin on the closest calls"  # the manifest's keep_fp_search.ranked_by
COST_UNITS = 10_000  # the knapsack's resolution: 0.01% of the FLOPs
# FP8: cheaper sets measured after one meets the target (`_shrink`). INT8 searches do without: their
# figures in BENCHMARKS and issue 20's 4-minute bar were measured so.
SHRINK_MEASUREMENTS = 6


@dataclasses.dataclass(frozen=True)
class Target:
    """What the quantized graph must achieve against FP32 on the held-out images."""

    agreement: float | None = None  # minimum top-1 agreement with FP32, in %
    max_top1_drop: float | None = None  # maximum top-1 loss, in points (needs labels)
    point_estimate: bool = False  # judge the measured values themselves, not their 95% bounds

    def __post_init__(self):
        for field, value in (("agreement", self.agreement), ("max_top1_drop", self.max_top1_drop)):
            if value is not None and not math.isfinite(value):  # nan would be met by any graph
                raise InvalidOption(field, f"the target must be a finite number, got {value}")

    @property
    def judged_on(self):
        return "point estimate" if self.point_estimate else "95% bound"

    def images_needed(self):
        """The fewest held-out images on which the target can be shown at all (every image
        agreeing, no discordant one); None when no number can (100%, or a drop of 0)."""
        if self.point_estimate:
            return 1
        needed = []
        if self.agreement is not None:
            needed.append(images_to_resolve_agreement(self.agreement))
        if self.max_top1_drop is not None:
            needed.append(images_to_resolve_drop(self.max_top1_drop))
        return None if None in needed else max(needed, default=1)

    def met_by(self, counts):
        if self.agreement is not None:
            agreement = counts.agreement if self.point_estimate else counts.agreement_ci95[0]
            if agreement < self.agreement - 1e-9:
                return False
        if self.max_top1_drop is not None:
            drop = counts.top1_drop if self.point_estimate else counts.top1_drop_ci95[1]
            if drop > self.max_top1_drop + 1e-9:
                return False
        return True

    def out_of_reach(self, counts, images):
        """Whether `counts`, measured on part of `images` held-out images, can no longer meet the
        target whatever the rest gives (for the drop: if the rest are all concordant)."""
        if self.agreement is not None and counts.disagreeing > self.disagreements_allowed(images):
            return True
        if self.max_top1_drop is not None and counts.labelled:
            final = dataclasses.replace(counts, images=images)
            drop = final.top1_drop if self.point_estimate else final.top1_drop_ci95[1]
            return drop > self.max_top1_drop + 1e-9
        return False

    def disagreements_allowed(self, images):
        """The most images of `images` that may disagree with FP32 for the target to hold (for a
        drop target: if every one of them costs FP32 a correct answer)."""
        allowed = [images]
        if self.agreement is not None:
            if self.point_estimate:
                allowed.append(math.floor(images * (1 - self.agreement / 100) + 1e-9))
            else:
                allowed.append(disagreements_allowed(self.agreement, images))
        if self.max_top1_drop is not None:
            lost = 0
            while lost < images and not self._drop_too_large(lost + 1, images):
                lost += 1
            allowed.append(lost if not self._drop_too_large(0, images) else -1)
        return min(allowed)

    def _drop_too_large(self, lost, images):
        drop = 100 * lost / images if self.point_estimate else paired_difference_ci(lost, 0, images)[1]
        return drop > (self.max_top1_drop or 0) + 1e-9

    def describe(self):
        parts = []
        if self.agreement is not None:
            parts.append(f"top-1 agreement with FP32 >= {self.agreement:g}%")
        if self.max_top1_drop is not None:
            parts.append(f"top-1 drop <= {self.max_top1_drop:g} points")
        return " and ".join(parts)


@dataclasses.dataclass
class Counts:
    """What a graph's top-1 did on held-out images, against FP32's."""

    images: int = 0
    disagreeing: int = 0
    reference_only: int = 0  # images FP32 classifies correctly and the graph does not
    candidate_only: int = 0  # the other way round
    labelled: bool = False

    def add(self, reference, logits, labels):
        ours, theirs = logits.argmax(1), reference.argmax(1)
        self.images += len(logits)
        self.disagreeing += int(np.sum(ours != theirs))
        if labels is not None:
            self.reference_only += int(np.sum((theirs == labels) & (ours != labels)))
            self.candidate_only += int(np.sum((ours == labels) & (theirs != labels)))

    @property
    def agreement(self):
        return 100 * (self.images - self.disagreeing) / self.images

    @property
    def agreement_ci95(self):
        low, high = wilson_interval(self.images - self.disagreeing, self.images)
        return [100 * low, 100 * high]

    @property
    def top1_drop(self):
        return 100 * (self.reference_only - self.candidate_only) / self.images if self.labelled else None

    @property
    def top1_drop_ci95(self):
        return paired_difference_ci(self.reference_only, self.candidate_only, self.images) if self.labelled else None


def search_keep_fp(onnx_path, data, options, target, held_out_images=None, held_out_data=None,
                   progress=None, log=None, choose_int8=False):
    """The cheapest float set (by FLOPs) for the quantized graph (INT8 or FP8) to meet `target`, as a dict for the manifest:
    keep_fp, its FLOPs share, the fidelity measured on every held-out image with its intervals,
    the held-out images, the layers' error shares and each graph measured. With `choose_int8` (FP8
    only), each layer is first written in INT8 or FP8, whichever errs less (`choose_int8_layers`),
    and the record's int8_layers says which of the quantized layers are INT8 (its layers, what each
    chose).

    Raises FfxError (before any image is decoded) when the held-out images are too few to
    resolve the target, or fewer than `held_out_images`; GateFailed when even every layer but the
    cheapest in float misses the target."""
    log = log or (lambda message: None)
    recipe = qdq_recipe(options.precision)  # INT8 or FP8, as `ffx calibrate` writes it
    recipe.check()  # before any image is read
    source, images, stats, held_out = _held_out(load_source_model(onnx_path), data, options, target,
                                                held_out_images, held_out_data, progress, log)
    errors, choice = None, None
    if choose_int8:
        options, errors, choice = choose_int8_layers(recipe, source, stats, images, options, held_out, progress, log)
    variants = quantized_variants(recipe, source, stats, images, options)
    record = search(variants, held_out, target, matmul_flops(source.model, variants.layers), progress, log, errors,
                    shrink=SHRINK_MEASUREMENTS if options.precision == "fp8" else 0)
    if choice is not None:
        record["int8_layers"] = [name for name in options.int8_layers if name not in record["keep_fp"]]
        for row in record["layers"]:
            row.update(choice[row["name"]])
    return record


def _held_out(source, data, options, target, held_out_images, held_out_data, progress, log):
    """(source, calibration images, their statistics, HeldOutSet) for a search for `target` (None:
    for `int8_choice`). Refused before any image is decoded when the held-out images are fewer than
    asked or cannot resolve the target, or have no labels for a top-1 drop."""
    images = choose_images(source, data, options)
    candidates, where = held_out_candidates(source, images, held_out_data)
    if target is not None and target.max_top1_drop is not None and any(item.label is None for item in candidates):
        raise FfxError(f"{where}: the held-out images have no labels, so a top-1 drop cannot be measured")
    count = held_out_count(target, held_out_images, len(candidates), where, log)
    chosen = choose_held_out(candidates, count, options.seed)
    source, images, stats, _ = calibration_statistics(source, data, options, progress, images=images)
    held_out = decode_held_out(source, chosen, where, options.workers, progress, options.statistics_cache)
    if target is not None:
        check_resolution(target, len(held_out), where, f"only {len(held_out):,} of the {count:,} chosen could be read; ")
    return source, images, stats, held_out


def choose_int8_layers(recipe, source, stats, images, options, held_out, progress=None, log=None):
    """(options naming the layers to write in INT8, {layer: error} of each layer in its chosen
    precision, {layer: {"precision", "fp8_error", "int8_error"}}) for an FP8 calibration: each
    layer alone in FP8 and alone in INT8, measured as the search ranks layers (its error in FP32's
    top-1 margin on the RANKING_IMAGES closest calls), in INT8 where that errs less. The errors of
    different layers add (see the module's docstring), so this is the least error any graph without
    float layers has; on GPUs with FP8 tensor cores INT8 runs at FP8's rate, so it costs nothing,
    except on Blackwell Ultra (ffx/gpu_precisions.py; README, "Which precision for which GPU")."""
    log = log or (lambda message: None)
    fp8 = quantized_variants(recipe, source, stats, images, options.replace(int8_layers=()))
    names = [layer.name for layer in fp8.layers]
    int8 = quantized_variants(recipe, source, stats, images, options.replace(int8_layers=tuple(names)))
    order = held_out.closest_calls_first()
    log(f"choosing FP8 or INT8 for each of the {len(names)} layers: each alone in each, by its error in FP32's top-1 "
        f"margin on the {min(RANKING_IMAGES, len(order))} closest calls")
    fp8_errors = layer_errors(fp8, held_out, order, progress, "FP8")
    int8_errors = layer_errors(int8, held_out, order, progress, "INT8")
    chosen = [name for name in names if int8_errors[name] < fp8_errors[name]]
    choice = {name: {"precision": "int8" if name in chosen else "fp8", "fp8_error": round(fp8_errors[name], 9),
                     "int8_error": round(int8_errors[name], 9)} for name in names}
    log(f"{len(chosen)} of {len(names)} layers in INT8, where it errs less than FP8"
        + (f": {', '.join(chosen)}" if chosen else ""))
    errors = {name: min(fp8_errors[name], int8_errors[name]) for name in names}
    return options.replace(int8_layers=tuple(chosen)), errors, choice


def held_out_count(target, asked, available, where, log):
    """How many held-out images the search measures on: `asked` (None: the default, or all there
    are when fewer), refused when there are not that many or when they cannot resolve the target
    (None: no target, as for `int8_choice`)."""
    if asked is not None and asked > available:
        raise InvalidOption("held_out_images", f"{asked:,} held-out images asked for, but {where} has only "
                                               f"{available:,}")
    count = asked or min(DEFAULT_HELD_OUT_IMAGES, available)
    if asked is None and available < DEFAULT_HELD_OUT_IMAGES:
        log(f"measuring on all {available:,} held-out images of {where} (the default is {DEFAULT_HELD_OUT_IMAGES:,})")
    if target is not None:
        check_resolution(target, count, where)
    return count


def int8_choice(onnx_path, data, options, held_out_images=None, held_out_data=None, progress=None, log=None):
    """FP8 without a target (`--int8-layers auto`): (options naming the layers to write in INT8, the
    manifest's int8_choice). Each layer is measured alone in FP8 and alone in INT8 on the closest
    calls of the held-out images, exactly as the target search chooses (`choose_int8_layers`: the
    same held-out images give the same choice), and written in whichever errs less; the layers kept
    in float (--keep-fp, or FP8's default patch_embed and head) stay float."""
    log = log or (lambda message: None)
    recipe = qdq_recipe(options.precision)
    recipe.check()  # before any image is read
    source = load_source_model(onnx_path)
    _, kept = quantization_plan(source, keep_fp_selection(recipe, source, options))  # a bad --keep-fp fails first
    source, images, stats, held_out = _held_out(source, data, options, None, held_out_images, held_out_data,
                                                progress, log)
    options, _, choice = choose_int8_layers(recipe, source, stats, images, options, held_out, progress, log)
    kept_names = {layer.name for layer in kept}
    int8 = [name for name in options.int8_layers if name not in kept_names]
    if kept:
        log(f"kept in float by --keep-fp{' (FP8 default; --keep-fp none quantizes them)' if options.keep_fp is None else ''}: "
            + ", ".join(layer.name for layer in kept))
    layers = [{"name": name, **row, **({"precision": "float"} if name in kept_names else {})}
              for name, row in choice.items()]
    record = {"ranked_by": RANKED_BY, "ranking_images": min(RANKING_IMAGES, len(held_out)),
              "held_out_images": len(held_out), "held_out_source": held_out.source, "layers": layers,
              "int8_layers": int8}
    return options.replace(int8_layers=tuple(int8)), record


def check_resolution(target, images, where, reason=""):
    """FfxError unless `images` held-out images can show `target` on its 95% bound."""
    needed = target.images_needed()
    advice = "or judge it on the point estimate with --point-estimate"
    if needed is None:
        raise FfxError(f"{target.describe()} cannot be shown on a 95% bound by any number of images; {advice}")
    if images >= needed:
        return
    lower = 100 * wilson_interval(images, images)[0]
    example = max(DEFAULT_HELD_OUT_IMAGES, needed * 2)
    room = target.disagreements_allowed(example)
    raise FfxError(
        f"{reason}{images:,} held-out images ({where}) cannot resolve {target.describe()}: "
        + (f"even with all of them agreeing, the 95% lower bound is {lower:.2f}%. " if target.agreement is not None
           else "even with no discordant image, the 95% interval is too wide. ")
        + f"It takes at least {needed:,} images ({example:,} leave room for {room} disagreeing); give more with "
        f"--held-out DIR or --held-out-images N, {advice}"
    )


@dataclasses.dataclass
class Measurement:
    """A graph measured on the held-out images, closest calls first, perhaps stopped early."""

    keep_fp: list  # layer names
    counts: Counts
    logits: np.ndarray  # of the measured images, in the order measured
    stopped: bool  # stopped before the end: it could no longer meet the target


class Search:
    """The measurements and predictions of one search (see the module's docstring)."""

    def __init__(self, variants, held_out, target, flops, progress, log):
        self.variants, self.held_out, self.target = variants, held_out, target
        self.progress, self.log = progress, log
        total = sum(flops.values())
        self.cost = {layer.name: flops[layer.name] / total for layer in variants.layers}
        self.order = held_out.closest_calls_first()
        self.allowed = target.disagreements_allowed(len(held_out))
        self.steps = []

    def measure(self, float_layers, at_least=0, prediction=None):
        """Measure the graph with `float_layers` in float, stopping once it cannot meet the
        target (but not before `at_least` images)."""
        held_out, order = self.held_out, self.order
        names = [layer.name for layer in float_layers]
        session = cpu_session(self.variants.with_float(float_layers))
        input_name = session.get_inputs()[0].name
        counts = Counts(labelled=held_out.labels is not None)
        logits, stopped = [], False
        what = f"{len(names)} layer{'s' if len(names) != 1 else ''} in float" if names else "all quantized"
        with Progress(len(order), f"measuring {what}", enabled=self.progress) as bar:
            for start in range(0, len(order), EVAL_BATCH):
                chosen = order[start:start + EVAL_BATCH]
                batch = session.run(None, {input_name: held_out.images[chosen]})[0]
                logits.append(batch)
                counts.add(held_out.reference_logits[chosen], batch,
                           held_out.labels[chosen] if held_out.labels is not None else None)
                bar.update(len(chosen))
                if counts.images >= at_least and self.target.out_of_reach(counts, len(order)):
                    stopped = counts.images < len(order)
                    bar.outcome = "stopped: it can no longer meet the target"
                    break
        measurement = Measurement(names, counts, np.concatenate(logits), stopped)
        met = not stopped and self.target.met_by(counts)
        step = {"keep_fp": names, "float_flops_share": round(sum(self.cost[name] for name in names), 6),
                "images": counts.images, "disagreeing": counts.disagreeing, "stopped_early": stopped, "met": met}
        if prediction is not None:
            step.update(predicted_disagreeing=round(prediction[0], 2), predicted_pass_probability=round(prediction[1], 3))
        self.steps.append(step)
        verdict = "meets the target" if met else (
            "cannot meet the target: stopped there" if stopped else "misses the target")
        self.log(f"{what} ({100 * step['float_flops_share']:.1f}% of the FLOPs): {counts.disagreeing:,} of the first "
                 f"{counts.images:,} held-out images disagree with FP32; {verdict}")
        return measurement

    def layer_errors(self):
        """{layer name: the power of its error in FP32's top-1 margins, alone quantized, relative to
        the power of FP32's logits} on the RANKING_IMAGES closest calls."""
        self.log(f"ranking the {len(self.variants.layers)} layers: each alone quantized, by its error in FP32's top-1 "
                 f"margin on the {min(RANKING_IMAGES, len(self.order))} closest calls")
        return layer_errors(self.variants, self.held_out, self.order, self.progress)


def layer_errors(variants, held_out, order, progress=None, label=None):
    """{layer name: the power of its error in FP32's top-1 margins, alone quantized in `variants`,
    relative to the power of FP32's logits} on the RANKING_IMAGES first images of `order` (the
    closest calls)."""
    sample = np.sort(order[:RANKING_IMAGES])
    reference = held_out.reference_logits[sample]
    signal = max(float(np.sum(np.asarray(reference, np.float64) ** 2)), 1e-30)
    errors = {}
    with Progress(len(variants.layers), f"ranking layers ({label})" if label else "ranking layers", unit="layers",
                  enabled=progress) as bar:
        for layer in variants.layers:
            bar.note(layer.name)
            logits = run_model(variants.quantized_only(layer), held_out.images[sample])
            errors[layer.name] = margin_error_power(reference, logits) / signal
            bar.update(1)
    return errors


def margin_error_power(reference, logits):
    """The summed square of how far `logits` move each image's FP32 top-1 margin (its top-1 logit
    minus its runner-up's, as `reference` ranks them): the part of a logit error that can flip
    top-1. An error on a class not in contention, or the same on both, counts nothing."""
    reference, logits = np.asarray(reference, np.float64), np.asarray(logits, np.float64)
    contenders = np.argsort(reference, axis=1, kind="stable")[:, -2:]  # [runner-up, top-1] of each image
    rows = np.arange(len(reference))[:, None]
    error = logits[rows, contenders] - reference[rows, contenders]
    return float(np.sum((error[:, 1] - error[:, 0]) ** 2))


def search(variants, held_out, target, flops, progress=None, log=None, errors=None, shrink=0):
    """The search of `search_keep_fp` on prepared `variants` (QuantizedVariants or any object
    with `.layers`, `.with_float(layers)` and `.quantized_only(layer)`), held-out images and
    each layer's matrix-product FLOPs (and each layer's error when measured already, as
    `layer_errors` measures it); the manifest's record of it. `shrink`: how many cheaper sets to
    measure after one meets the target (`_shrink`)."""
    log = log or (lambda message: None)
    run = Search(variants, held_out, target, flops, progress, log)
    bound = "on the point estimates" if target.point_estimate else "on the 95% bounds"
    log(f"judging {target.describe()} {bound} over {len(held_out):,} held-out images: "
        f"at most {run.allowed:,} may disagree with FP32")
    screened = min(len(held_out), max(MIN_SCREENED, math.ceil(SCREENED_SHARE * len(held_out))))
    first = run.measure([], at_least=screened)
    chosen = first
    if not (not first.stopped and target.met_by(first.counts)):
        errors = errors or run.layer_errors()
        chosen = _cheapest_meeting(run, first, errors, shrink)
    return _record(run, chosen, errors)


def _cheapest_meeting(run, first, errors, shrink=0):
    """Measure the cheapest predicted float sets, costlier after each failure, until one meets
    the target (then, with `shrink`, cheaper ones: `_shrink`); GateFailed when even every layer but
    the cheapest in float does not."""
    layers = run.variants.layers
    # Every layer in float is not a quantized graph: the costliest set leaves the cheapest layer quantized.
    cheapest = min(layers, key=lambda layer: (run.cost[layer.name], layer.name))
    sets = [point for point in float_set_frontier(layers, errors, run.cost) if len(point[2]) < len(layers)]
    costliest = (1.0 - run.cost[cheapest.name], sum(errors.values()) - errors[cheapest.name],
                 [layer for layer in layers if layer is not cheapest])
    if not sets or costliest[0] > sets[-1][0]:  # the last resort, whatever the prediction says of it
        sets.append(costliest)
    reference = run.held_out.reference_logits[run.order[:first.counts.images]]
    flips = FlipModel(reference, first.logits - reference)
    # The model's expected flips at full error, fitted to what the all-quantized graph flipped.
    fit = (first.counts.disagreeing + 0.5) / (flips.expected(1.0) + 0.5)
    total_error = sum(errors.values())
    cost_so_far = -1.0
    while True:
        choice = None
        for cost, removed, chosen in sets:
            if cost <= cost_so_far:
                continue
            expected = fit * flips.expected(math.sqrt(max(total_error - removed, 0.0) / total_error))
            probability = poisson_at_most(run.allowed, expected)
            choice = (cost, chosen, expected, probability)
            if probability >= PASS_PROBABILITY:
                break
        if choice is None:
            last = run.steps[-1]
            quantized = [layer.name for layer in layers if layer.name not in last["keep_fp"]]
            raise GateFailed(
                f"{run.target.describe()} cannot be reached on {len(run.held_out):,} held-out images: with every layer "
                f"but {', '.join(quantized)} in float, {last['disagreeing']:,} of the first {last['images']:,} disagree "
                f"with FP32 (at most {run.allowed:,} of {len(run.held_out):,} may)"
            )
        cost, chosen, expected, probability = choice
        run.log(f"predicted: {len(chosen)} layers in float ({100 * cost:.1f}% of the FLOPs) leave about {expected:.1f} "
                f"disagreeing images (at most {run.allowed:,} may: {100 * probability:.0f}% likely)")
        measured = run.measure(chosen, prediction=(expected, probability))
        if not measured.stopped and run.target.met_by(measured.counts):
            cheaper = [point[2] for point in sets if cost_so_far < point[0] < cost]
            return _shrink(run, cheaper, measured, shrink) if shrink else measured
        cost_so_far = cost
        # Flipped more than predicted: trust the prediction less, at least by half.
        fit *= max(2.0, (measured.counts.disagreeing + 0.5) / (expected + 0.5))


def _shrink(run, cheaper, met, measurements):
    """The cheapest of `cheaper` (float sets cheaper than `met`'s, costlier than any that missed,
    cheapest first) that meets the target, by bisection with at most `measurements` measurements;
    `met` when none does. The prediction asks a 90% chance of passing, and where its error model
    is off (FP8 on the deep fixture: it asked for 40 float layers where 17 met the target) that
    leaves a far cheaper set unmeasured; every set kept is measured on every held-out image."""
    low, high, best = 0, len(cheaper), met
    for _ in range(measurements):
        if low >= high:
            break
        middle = (low + high) // 2
        run.log(f"trying a cheaper set: {len(cheaper[middle])} layers in float")
        measured = run.measure(cheaper[middle])
        if not measured.stopped and run.target.met_by(measured.counts):
            high, best = middle, measured
        else:
            low = middle + 1
    return best


def _record(run, chosen, errors):
    """The manifest's keep_fp_search: the chosen graph measured on every held-out image."""
    held_out, target = run.held_out, run.target
    counts = chosen.counts
    order = run.order[:counts.images]
    fidelity = fidelity_of(chosen.logits, held_out.reference_logits[order],
                           held_out.labels[order] if held_out.labels is not None else None)
    fp32_top1 = (float(100 * np.mean(held_out.reference_logits.argmax(1) == held_out.labels))
                 if held_out.labels is not None else None)
    layers = []
    if errors:
        total = sum(errors.values())
        layers = sorted(({"name": name, "flops_share": round(run.cost[name], 6),
                          "error_share": round(error / total, 6)} for name, error in errors.items()),
                        key=lambda row: row["error_share"] / max(row["flops_share"], 1e-9), reverse=True)
    return {
        "target": dataclasses.asdict(target),
        "judged_on": target.judged_on,
        "keep_fp": chosen.keep_fp,
        "float_flops_share": round(sum(run.cost[name] for name in chosen.keep_fp), 6),
        "measured": dataclasses.asdict(fidelity),
        "agreement_ci95": [round(value, 4) for value in counts.agreement_ci95],
        "disagreeing": counts.disagreeing,
        "top1_drop": round(counts.top1_drop, 4) if counts.labelled else None,
        "top1_drop_ci95": [round(value, 4) for value in counts.top1_drop_ci95] if counts.labelled else None,
        "fp32_top1": round(fp32_top1, 4) if fp32_top1 is not None else None,
        "held_out_images": len(held_out),
        "held_out_source": held_out.source,
        "images_needed": dataclasses.replace(target, point_estimate=False).images_needed(),  # on the 95% bound
        "disagreements_allowed": run.allowed,
        "ranking_images": min(RANKING_IMAGES, len(held_out)) if errors else 0,
        "ranked_by": RANKED_BY,
        "layers": layers,  # most error per FLOP first: the order float layers pay off in
        "steps": run.steps,
    }


class FlipModel:
    """How many of some images a graph should flip (top-1 unlike FP32's) when its logit error is
    `scale` times the measured one's: the error of each logit is taken as Gaussian, with the
    measured graph's spread on that image, against FP32's margin to each other class."""

    def __init__(self, reference, errors):
        reference = np.asarray(reference, np.float64)
        top = reference.argmax(1)
        margins = reference[np.arange(len(reference)), top][:, None] - reference
        margins[np.arange(len(reference)), top] = np.inf
        spread = np.sqrt(np.mean(np.asarray(errors, np.float64) ** 2, axis=1))
        # A difference of two logits' errors has twice the variance of one.
        self.distance = margins / np.maximum(math.sqrt(2) * spread, 1e-30)[:, None]

    def expected(self, scale):
        if scale <= 0 or not len(self.distance):
            return 0.0
        tails = 0.5 * _erfc(self.distance / (scale * math.sqrt(2)))
        return float(np.sum(np.minimum(tails.sum(axis=1), 1.0)))


def _erfc(x):
    """erfc of a float array (numpy has none): 1 - erf with Abramowitz-Stegun 7.1.26 (error
    below 1.5e-7), exactly 0 at infinity."""
    x = np.asarray(x, np.float64)
    t = 1 / (1 + 0.3275911 * np.abs(x))
    polynomial = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    with np.errstate(over="ignore", invalid="ignore"):
        tail = polynomial * np.exp(-np.square(x))
    tail = np.where(np.isfinite(x), tail, 0.0)
    return np.where(x >= 0, tail, 2 - tail)


def poisson_at_most(count, mean):
    """P(X <= count) for X ~ Poisson(mean)."""
    if count < 0:
        return 0.0
    term = total = math.exp(-mean)
    for k in range(1, count + 1):
        term *= mean / k
        total += term
    return min(total, 1.0)


def float_set_frontier(layers, errors, cost):
    """[(FLOPs share, error removed, [layers])]: for each cost, the float set of `layers` that
    removes the most error power (a 0/1 knapsack over the FLOPs shares, at COST_UNITS), only the
    sets that remove more than every cheaper one, cheapest first, in graph order."""
    units = [max(0, round(cost[layer.name] * COST_UNITS)) for layer in layers]
    capacity = sum(units)
    best = np.full(capacity + 1, -1.0)  # most error removed at exactly this cost (-1: unreachable)
    best[0] = 0.0
    chosen = np.zeros(capacity + 1, dtype=object)  # the set, as a bit mask over `layers`
    chosen[:] = 0
    for index, (layer, weight) in enumerate(zip(layers, units)):
        gain = errors[layer.name]
        candidate = np.full(capacity + 1, -1.0)
        candidate[weight:] = np.where(best[:capacity + 1 - weight] >= 0, best[:capacity + 1 - weight] + gain, -1.0)
        better = candidate > best
        chosen[better] = np.roll(chosen, weight)[better] | (1 << index)
        best = np.where(better, candidate, best)
    frontier, most = [], 0.0
    for units_used in np.flatnonzero(best > 0):
        if best[units_used] > most:
            most = float(best[units_used])
            mask = int(chosen[units_used])
            picked = [layer for index, layer in enumerate(layers) if mask >> index & 1]
            frontier.append((sum(cost[layer.name] for layer in picked), most, picked))
    return frontier


def agreement_interval(agreement, images):
    """Wilson 95% interval (in %) of an agreement measured in % on `images` images."""
    low, high = wilson_interval(agreement / 100 * images, images)
    return [round(100 * low, 4), round(100 * high, 4)]
