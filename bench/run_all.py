#!/usr/bin/env python3
"""Regenerate BENCHMARKS.md, bench/results.json and bench/accuracy_vs_speed.png in one command.

    pip install matplotlib            # the plot's only extra dependency
    python bench/run_all.py           # everything (about 25 minutes on the project's 2-core machine)
    python bench/run_all.py --quick   # a smoke run with tiny settings, written to /tmp (minutes)
    python bench/run_all.py --render-only bench/results.json   # re-render the Markdown from a run's JSON

Parts, in order: fidelity (fixture model on the full Fashion-MNIST test set), configs (ff_tiny,
ff_base, ff_large exported, calibrated and built with TensorRT-RTX), speed (`ffx bench` of every
precision), analysis (onnxruntime INT8 graph and profile), roofline (GPU, computed on paper).
Timings are only meaningful on a quiet machine: `--wait-quiet` waits (up to --wait-minutes) for
the 1-minute load average to drop below --max-load before timing anything, and the load is
recorded in the file either way.
"""

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import cpu_speed  # noqa: E402
import fidelity  # noqa: E402
import int8_analysis  # noqa: E402
import machine  # noqa: E402
import paper_configs  # noqa: E402
import report  # noqa: E402
import roofline  # noqa: E402

PARTS = ("fidelity", "configs", "speed", "analysis", "roofline")


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_until_quiet(max_load, minutes):
    """Poll the 1-minute load average; True once it is below `max_load`, False after `minutes`."""
    deadline = time.time() + 60 * minutes
    while True:
        load = os.getloadavg()[0]
        if load < max_load:
            return True
        if time.time() > deadline:
            log(f"load average still {load:.2f} after {minutes} min; measuring anyway (recorded in the file)")
            return False
        log(f"load average {load:.2f} >= {max_load}; waiting")
        time.sleep(30)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=BENCH / "results.json")
    parser.add_argument("--plot", type=Path, default=BENCH / "accuracy_vs_speed.png")
    parser.add_argument("--workdir", type=Path, help="keep models and data here (default: a temporary folder)")
    parser.add_argument("--fashion-dir", type=Path, help="existing Fashion-MNIST folders (train/, val/) to reuse")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--archs", default="ff_tiny,ff_base,ff_large", help="paper configs to export, calibrate, build")
    parser.add_argument("--speed-archs", default="ff_tiny,ff_base", help="paper configs to time on the CPU")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--calib-images", type=int, default=128, help="images for the paper configs' INT8 calibration")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=15.0, help="per ffx bench measurement")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (output to /tmp)")
    parser.add_argument("--wait-quiet", action="store_true", help="wait for a quiet machine before timing")
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--wait-minutes", type=float, default=60)
    parser.add_argument("--render-only", type=Path, help="render the Markdown (and plot) from this results JSON")
    args = parser.parse_args()

    if args.render_only:
        results = json.loads(args.render_only.read_text())
        _write_outputs(results, args)
        return

    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    batches = [int(b) for b in args.batches.split(",")]
    counts, methods, archs, speed_archs = fidelity.CALIBRATION_COUNTS, None, args.archs.split(","), args.speed_archs.split(",")
    iterations, max_seconds, calib_images, analysis_runs = args.iterations, args.max_seconds, args.calib_images, 10
    if args.quick:
        counts, methods, archs, speed_archs = (64,), ("entropy", "max"), ["ff_tiny"], ["ff_tiny"]
        iterations, max_seconds, calib_images, analysis_runs, batches = 5, 2.0, 16, 2, [1, 8]
        if args.out == REPO / "BENCHMARKS.md":
            args.out, args.json, args.plot = Path("/tmp/BENCHMARKS.quick.md"), Path("/tmp/results.quick.json"), Path("/tmp/accuracy_vs_speed.quick.png")

    started = time.perf_counter()
    results = {
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine.describe(REPO),
        "quick": args.quick,
        "settings": {"batches": batches, "iterations": iterations, "max_seconds": max_seconds,
                     "calibration_counts": list(counts), "calib_images": calib_images, "archs": archs,
                     "speed_archs": speed_archs},
        "load": {"start": machine.load_average()},
    }
    with tempfile.TemporaryDirectory(prefix="ffx-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if "fidelity" in parts:
            results["fidelity"] = fidelity.run(workdir, args.fashion_dir, counts=counts, methods=methods, log=log)
        artifacts = {}
        if "configs" in parts or "speed" in parts or "analysis" in parts:
            wanted = (archs if "configs" in parts else []) + (speed_archs if "speed" in parts else [])
            wanted += ["ff_base"] if "analysis" in parts and not args.quick else []
            wanted = [arch for arch in paper_configs.ARCHS if arch in wanted]
            configs = paper_configs.run(workdir, wanted, calib_images, build="configs" in parts, log=log)
            artifacts = {row["arch"]: row["files"] for row in configs["rows"]}
            if "configs" in parts:
                results["configs"] = configs
        if "speed" in parts or "analysis" in parts:
            if args.wait_quiet:
                results["waited_for_quiet"] = wait_until_quiet(args.max_load, args.wait_minutes)
            results["load"]["timing_start"] = machine.load_average()
        if "speed" in parts:
            results["speed"] = {}
            for arch in speed_archs:
                results["speed"][arch] = cpu_speed.measure(arch, artifacts[arch], batches, iterations,
                                                           max_seconds=max_seconds, log=log)
            if "ff_base" in artifacts and "ff_base" in speed_archs:
                results["target_check"] = cpu_speed.target_check(artifacts["ff_base"], iterations,
                                                                 max_seconds=max_seconds, log=log)
            if "fidelity" in parts:
                models = results["fidelity"]["models"]
                fixture = {"checkpoint": str(fidelity.FIXTURE_CHECKPOINT), "fp32": models["fp32"], "fp16": models["fp16"],
                           "int8": models[f"int8-entropy-{max(counts)}"]}
                results["speed"]["fashion"] = cpu_speed.measure("fashion fixture", fixture, batches, iterations,
                                                                max_seconds=max_seconds, log=log)
        if "analysis" in parts:
            from ffx.export.configs import ARCHITECTURES

            analysed = "ff_base" if "ff_base" in artifacts else next(iter(artifacts))
            results["analysis"] = int8_analysis.run(artifacts[analysed], ARCHITECTURES[analysed].config,
                                                    runs=analysis_runs, log=log)
            results["analysis"]["arch"] = analysed
        results["load"]["end"] = machine.load_average()
    if "roofline" in parts:
        results["roofline"] = roofline.rows()
    results["seconds"] = round(time.perf_counter() - started, 1)
    _write_outputs(results, args)
    log(f"done in {results['seconds'] / 60:.1f} min: {args.out}, {args.json}")


def _write_outputs(results, args):
    plot_path = None
    if results.get("fidelity") and results.get("speed", {}).get("fashion"):
        import plot

        plot_path = plot.plot(results["fidelity"], results["speed"]["fashion"], args.plot)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    args.out.write_text(report.render(results, plot_path=_relative(plot_path, args.out.parent) if plot_path else None,
                                      json_path=_relative(args.json, args.out.parent)))


def _relative(path, base):
    try:
        return os.path.relpath(Path(path).resolve(), Path(base).resolve())
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
