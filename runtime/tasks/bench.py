"""Latency and throughput of engines, ONNX models and checkpoints, measured side by side.

Each (target, batch) pair gets warm-up runs (TensorRT-RTX compiles kernels on first use, ONNX
Runtime and PyTorch allocate), then timed end-to-end `infer` calls on one random-normal batch:
host-to-device copy, compute and copy back for engines, the whole session call for ONNX Runtime.
Random input is fine for timing: the network has no data-dependent control flow.
"""

import dataclasses
import time

import numpy as np

from ffx.errors import BackendUnavailable
from ffx.reporting import warn, warnings_to
from ffx.runtime.backends.runner import open_runner

UNSTABLE_CV = 0.10  # coefficient of variation above which timings are flagged as unstable


@dataclasses.dataclass
class BenchResult:
    target: str
    backend: str
    precision: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    images_per_s: float
    cv: float  # standard deviation / mean of the per-call latency
    iterations: int
    warmup: int
    stable: bool
    # Engines only (CUDA events, median per call): host-to-device copy, execution, copy back.
    h2d_ms: float | None = None
    compute_ms: float | None = None
    d2h_ms: float | None = None


def latency_stats(seconds, batch):
    """Percentiles (ms), throughput and coefficient of variation of per-call timings."""
    ms = np.asarray(seconds, np.float64) * 1000.0
    mean = float(ms.mean())
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": mean,
        "min_ms": float(ms.min()),
        "images_per_s": batch * 1000.0 / float(np.median(ms)),
        "cv": float(ms.std() / mean) if mean > 0 else 0.0,
    }


def _random_input(runner, batch, seed):
    """Random images in the range the model takes: normalized RGB is about standard normal; a
    model with its normalization folded in takes RGB in [0, input_scale]."""
    rng = np.random.default_rng(seed)
    shape = (batch, *runner.input_shape)
    preprocess = runner.metadata.preprocess
    if preprocess is not None and preprocess.normalization_folded:
        return rng.uniform(0.0, preprocess.input_scale, shape).astype(np.float32)
    return rng.standard_normal(shape, dtype=np.float32)


def bench_runner(runner, batch, iterations=50, warmup=5, max_seconds=10.0, seed=0):
    """Time `runner.infer` on one batch; stops after `iterations` calls or `max_seconds` (at
    least 5 calls). The runner must be active."""
    images = _random_input(runner, batch, seed)
    for _ in range(warmup):
        runner.infer(images)
    timings, phases = [], []
    deadline = time.perf_counter() + max_seconds
    while len(timings) < iterations and (len(timings) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        runner.infer(images)
        timings.append(time.perf_counter() - start)
    if runner.supports_phase_timing:
        # A separate pass: reading the events synchronizes, which must not distort the latencies.
        runner.phase_timing = True
        try:
            for _ in range(min(len(timings), 20)):
                runner.infer(images)
                phases.append(runner.last_phases_ms)
        finally:
            runner.phase_timing = False
    stats = latency_stats(timings, batch)
    if phases:
        stats.update({key: float(np.median([p[key] for p in phases])) for key in ("h2d_ms", "compute_ms", "d2h_ms")})
    return BenchResult(
        target=str(runner.path),
        backend=runner.backend,
        precision=runner.precision,
        batch=batch,
        iterations=len(timings),
        warmup=warmup,
        stable=stats["cv"] <= UNSTABLE_CV,
        **stats,
    )


def bench(targets, batches=(1,), iterations=50, warmup=5, max_seconds=10.0, provider="cpu", cuda_graph=False,
          threads=None, on_result=None, on_skip=None):
    """BenchResults for every target and batch. Targets run one at a time (one session or engine
    loaded at a time; a checkpoint's weights, though, are read when it is opened, before the first
    measurement, so several checkpoints share memory). A batch beyond an engine's profile is skipped via `on_skip(message)`,
    and so is a target that cannot run on this machine (an engine without a GPU) when others can;
    when none can, BackendUnavailable says why. What a runner warns of while it is made or runs
    is reported (ffx.reporting) after its results."""
    opened = []  # (runner, its own warnings held: an engine without a sidecar, a failed CUDA graph capture)
    for target in targets:
        held = []
        with warnings_to(held.append):
            # Speed is measured on the kernels a deployment runs: onnxruntime's fused int8 ones.
            runner = open_runner(target, provider=provider, cuda_graph=cuda_graph, threads=threads, int8_kernels=True)
        opened.append((runner, held))
    available = []
    for runner, held in opened:  # checked before measuring anything
        try:
            runner.check_available()
        except BackendUnavailable as e:
            if len(opened) == 1:
                raise
            if on_skip:
                on_skip(f"{runner.name} skipped: {e}")
            continue
        available.append((runner, held))
    if not available:
        raise BackendUnavailable("none of the targets can run on this machine (see the warnings above)")
    results = []
    for runner, held in available:
        with runner:
            for batch in batches:
                if runner.max_batch is not None and runner.fixed_batch is None and batch > runner.max_batch:
                    if on_skip:
                        on_skip(f"{runner.name}: batch {batch} is beyond its profile (max {runner.max_batch}); skipped")
                    continue
                if runner.fixed_batch and batch != runner.fixed_batch:
                    if on_skip:
                        on_skip(f"{runner.name}: the graph's batch is fixed at {runner.fixed_batch}; batch {batch} skipped")
                    continue
                if batch < runner.min_batch:  # padding would time more images than the batch claims
                    if on_skip:
                        on_skip(f"{runner.name}: batch {batch} is below its profile (min {runner.min_batch}); skipped")
                    continue
                with warnings_to(held.append):
                    result = bench_runner(runner, batch, iterations=iterations, warmup=warmup, max_seconds=max_seconds)
                results.append(result)
                if on_result:
                    on_result(result)
            for message in held:
                warn(message)
    return results
