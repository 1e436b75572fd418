"""CPU latency and throughput of every precision, measured with `ffx bench` itself.

One `ffx bench` process per model times the PyTorch checkpoint (eager FP32) and the ONNX FP32,
FP16 and INT8 graphs at each batch size, one after the other in the same process, so the ratios
to PyTorch come from the same run. The CPU INT8 target of issue 6 (ff_base INT8 over PyTorch, per
batch: TARGET_RATIOS) is then re-measured in a second `ffx bench` call that times
only those two, INT8 first, as a check that the order of the first call did not decide it.
"""

import json
import os
import subprocess
import time

from bench.machine import OtherLoad

TARGET_RATIOS = {1: 4.0, 8: 3.5}


def ffx_bench(targets, batches, iterations=50, warmup=3, max_seconds=15.0):
    """(command line, rows) of `ffx bench TARGETS --batch ... --json`."""
    command = ["ffx", "bench", *map(str, targets), "--batch", ",".join(map(str, batches)), "--iterations",
               str(iterations), "--warmup", str(warmup), "--max-seconds", str(max_seconds), "--json"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return command, json.loads(done.stdout)


def label(row):
    if row["backend"] == "pytorch":
        return "PyTorch eager FP32"
    return f"onnxruntime {row['precision'].upper()}"


def with_ratios(rows):
    """Each row plus `vs_pytorch`: its images/s over PyTorch's at the same batch (same call)."""
    pytorch = {row["batch"]: row["images_per_s"] for row in rows if row["backend"] == "pytorch"}
    out = []
    for row in rows:
        row = dict(row, label=label(row))
        if row["batch"] in pytorch:
            row["vs_pytorch"] = round(row["images_per_s"] / pytorch[row["batch"]], 2)
        out.append(row)
    return out


def measure(name, files, batches, iterations=50, warmup=3, max_seconds=15.0, log=print):
    """`files`: {"checkpoint", "fp32", "fp16", "int8"} paths of one model."""
    targets = [files[key] for key in ("checkpoint", "fp32", "fp16", "int8") if files.get(key)]
    load_before = _load()
    started = time.perf_counter()
    with OtherLoad() as other:
        command, rows = ffx_bench(targets, batches, iterations, warmup, max_seconds)
    seconds = time.perf_counter() - started
    rows = with_ratios(rows)
    for row in rows:
        log(f"speed: {name} {row['label']:<20} batch {row['batch']:>2}: p50 {row['p50_ms']:.2f} ms, "
            f"{row['images_per_s']:.1f} images/s" + (f", {row['vs_pytorch']}x PyTorch" if "vs_pytorch" in row else ""))
    log(f"speed: {name}: other processes kept {other.other_cpus} CPUs busy meanwhile (steal {other.steal_cpus})")
    return {"model": name, "command": _short(command), "rows": rows, "seconds": round(seconds, 1),
            "load_before": load_before, "load_after": _load(), "other_cpus": other.other_cpus,
            "steal_cpus": other.steal_cpus}


def target_check(files, iterations=50, warmup=3, max_seconds=15.0, log=print):
    """Issue 6's CPU INT8 targets, in a separate `ffx bench` call: INT8 first, then PyTorch."""
    batches = sorted(TARGET_RATIOS)
    with OtherLoad() as other:
        command, rows = ffx_bench([files["int8"], files["checkpoint"]], batches, iterations, warmup, max_seconds)
    rows = with_ratios(rows)
    checks = []
    for batch, wanted in TARGET_RATIOS.items():
        ratio = next(r["vs_pytorch"] for r in rows if r["batch"] == batch and r["precision"] == "int8")
        checks.append({"batch": batch, "ratio": ratio, "target": wanted, "met": ratio >= wanted})
        log(f"speed: target check batch {batch}: INT8 {ratio}x PyTorch (target {wanted}x)")
    return {"command": _short(command), "rows": rows, "checks": checks, "load_after": _load(),
            "other_cpus": other.other_cpus, "steal_cpus": other.steal_cpus}


def _short(command):
    """The command with the work directory's paths shortened to file names."""
    return " ".join(os.path.basename(part) if os.sep in part else part for part in command)


def _load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None
