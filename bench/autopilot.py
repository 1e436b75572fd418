"""The accuracy autopilot on the deep fixture: wall time, keep-set, verdict and what it is worth.

    python -m bench.autopilot --fashion DIR [--workdir DIR] [--out FILE]

DIR holds the Fashion-MNIST PNG folders train/ (60,000) and val/ (the 10,000 test images), as
scripts/fashion_mnist_to_folders.py writes them. As a new user would (issue 20's bar), on the deep
fixture (tests/fixtures/fashion_tiny197: ff_tiny's 12 blocks, 50 quantizable layers):

1. `ffx export` the checkpoint;
2. `ffx calibrate tiny197.onnx --data DIR/train --target-agreement 99.9`, each search from an
   empty cache and timed from start to exit: as it is (10,000 held-out train images, the target
   judged on the 95% lower bound) and with `--point-estimate`; stderr is kept (a file, as in CI)
   and its progress lines counted; then the default again, with the statistics and FP32 logits
   it cached;
3. the same command with the 300 images of the fixture's val/ as held-out images: its exit code
   and what it says before searching;
4. the plain all-INT8 graph (`ffx calibrate` without a target), the speed baseline;
5. `ffx verify` of each search's graph against the FP32 ONNX on the 10,000 test images;
6. one `ffx bench` run of all the INT8 graphs at batch 1 and 8 (onnxruntime CPU, 1 thread).

The "before" figures are the ones issue 20 measured on main (not re-measured: 20 minutes).
How busy the machine was: the load average before and after each timed search, and the CPUs
other processes kept busy meanwhile (bench.machine.OtherLoad).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.fidelity import DEEP_CHECKPOINT, REPO
from bench.machine import OtherLoad, describe, load_average
from bench.int8_accuracy import search_caveat

TARGET = 99.9
SPEED_BATCHES = (1, 8)
SPEED_ARGS = "--iterations 200 --warmup 10 --max-seconds 8 --threads 1"
SPEED_BAR = 0.9
WALL_BAR = 240  # seconds: issue 20's "at most 4 minutes"
# The searches timed, each from an empty cache: the default verdict (the 95% lower bound) and the
# documented alternative (the point estimate, the summary still giving the bound).
RUNS = {"default": [], "point-estimate": ["--point-estimate"]}
# Issue 20, measured on main before this work (`ffx calibrate ... --target-agreement 99.9 --held-out
# fashion_tiny197/val --smooth-gelu`, 300 held-out images, 2-core shared machine).
BEFORE = {"seconds": 1221, "held_out_images": 300, "agreement_ci95": [98.74, 100.0],
          "source": "issue 20 (measured on main; not re-measured here)"}


def ffx(*args, stderr_path=None):
    """Run the `ffx` beside this python: (exit code, stdout, stderr, wall seconds, other CPUs busy)."""
    command = [str(Path(sys.executable).with_name("ffx")), *map(str, args)]
    started = time.perf_counter()
    with OtherLoad() as load:
        done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if stderr_path is not None:
        Path(stderr_path).write_text(done.stderr)
    return done.returncode, done.stdout, done.stderr, round(seconds, 1), load.other_cpus


def checked(result, what):
    code, _, stderr, _, _ = result
    if code != 0:
        raise RuntimeError(f"{what} failed ({code}): {stderr.strip()[-2000:]}")
    return result


def autopilot(fp32, train, output, cache, log, *flags):
    before = load_average()
    code, stdout, stderr, seconds, other = checked(
        ffx("calibrate", fp32, "--data", train, "--target-agreement", TARGET, "-o", output, "--cache-dir", cache,
            "--json", *flags, stderr_path=Path(output).with_suffix(".stderr.txt")), "the autopilot")
    report = json.loads(stdout)
    search = report["keep_fp_search"]
    log(f"autopilot {' '.join(flags)}: {seconds:.0f} s, keep {search['keep_fp']}")
    return {"flags": " ".join(flags), "seconds": seconds, "command_seconds": report["seconds"],
            "load_average_before": before, "load_average_after": load_average(), "other_cpus": other,
            "statistics_cache": report["cache"], "keep_fp": search["keep_fp"], "ranked_by": search.get("ranked_by"),
            "float_flops_share": search["float_flops_share"], "held_out_images": search["held_out_images"],
            "agreement": search["measured"]["agreement"], "agreement_ci95": search["agreement_ci95"],
            "disagreeing": search["disagreeing"], "disagreements_allowed": search["disagreements_allowed"],
            "top1_drop": search["top1_drop"], "top1_drop_ci95": search["top1_drop_ci95"],
            "judged_on": search["judged_on"], "graphs_measured": len(search["steps"]), "steps": search["steps"],
            "tensorrt_rtx": report["tensorrt"]["status"], "progress_lines": _progress_lines(stderr)}


def _progress_lines(stderr):
    """Lines of the progress a log gets (ffx.progress and the search's own)."""
    return sum(1 for line in stderr.splitlines() if line.startswith("search: ") or "%)" in line)


def run(args, log=print):
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    fashion = Path(args.fashion)
    train, test = fashion / "train", fashion / "val"
    fp32 = workdir / "tiny197.onnx"
    checked(ffx("export", "--checkpoint", args.checkpoint, "-o", fp32), "export")
    cache = workdir / "cache"
    subprocess.run(["rm", "-rf", str(cache)], check=True)  # a new user's empty cache

    # Each search from an empty cache, as a new user runs it; then the default again, with what it cached.
    runs = {}
    for name, flags in RUNS.items():
        cache = workdir / f"cache-{name}"
        subprocess.run(["rm", "-rf", str(cache)], check=True)
        runs[name] = autopilot(fp32, train, workdir / f"{name}.int8.onnx", cache, log, *flags)
    warm = autopilot(fp32, train, workdir / "warm.int8.onnx", workdir / "cache-default", log)

    code, _, stderr, seconds, _ = ffx("calibrate", fp32, "--data", train, "--target-agreement", TARGET,
                                      "--held-out", REPO / "tests" / "fixtures" / "fashion_tiny197" / "val",
                                      "-o", workdir / "small.int8.onnx", "--cache-dir", workdir / "cache-default")
    too_few = {"exit_code": code, "seconds": seconds, "message": stderr.strip().splitlines()[-1] if stderr.strip() else ""}
    log(f"300 held-out images: exit {code} in {seconds:.0f} s")

    _, stdout, _, _, _ = checked(ffx("calibrate", fp32, "--data", train, "-o", workdir / "plain.int8.onnx",
                                     "--cache-dir", workdir / "cache-default", "--json"), "plain INT8")
    plain_tensorrt = json.loads(stdout)["tensorrt"]["status"]

    for name, run_result in runs.items():
        _, stdout, _, verify_seconds, _ = ffx("verify", workdir / f"{name}.int8.onnx", "--reference", fp32,
                                              "--data", test, "--json")
        verified = json.loads(stdout)
        run_result["verify"] = {"agreement": verified["agreement"], "images": verified["images"],
                                "agreement_ci95": _wilson_percent(verified["agreement"], verified["images"]),
                                "seconds": verify_seconds}
        log(f"verify {name}: agreement {verified['agreement']:.2f}% on {verified['images']} test images")

    graphs = ["plain.int8.onnx"] + [f"{name}.int8.onnx" for name in runs]
    _, stdout, _, _, _ = checked(ffx("bench", *(workdir / graph for graph in graphs),
                                     "--batch", ",".join(map(str, SPEED_BATCHES)), *SPEED_ARGS.split(), "--json"),
                                 "bench")
    speed = {}
    for row in json.loads(stdout):
        speed.setdefault(Path(row["target"]).name, {})[str(row["batch"])] = row["images_per_s"]
    for name, run_result in runs.items():
        run_result["images_per_s"] = speed[f"{name}.int8.onnx"]
        run_result["speed_vs_plain_int8"] = {b: round(speed[f"{name}.int8.onnx"][b] / speed["plain.int8.onnx"][b], 3)
                                             for b in speed["plain.int8.onnx"]}
        log(f"speed {name} vs all-INT8: {run_result['speed_vs_plain_int8']}")
    return {
        "checkpoint": _relative(args.checkpoint), "target": TARGET, "before": BEFORE, "runs": runs, "warm": warm,
        "too_few_held_out": too_few, "plain_int8_images_per_s": speed["plain.int8.onnx"],
        "plain_int8_tensorrt_rtx": plain_tensorrt, "speed_args": SPEED_ARGS, "machine": describe(REPO),
        "load_average_end": load_average(), "cpus": os.cpu_count(),
    }


def _wilson_percent(agreement, images):
    from ffx.calib.mixed_precision import agreement_interval

    return agreement_interval(agreement, images)


def _relative(path):
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def section(result, heading="### 6f. The autopilot on the deep fixture: minutes, and a verdict that means it"):
    """BENCHMARKS.md's section for a run (bench/report.py includes it when bench/autopilot.json exists)."""
    before, warm, runs = result["before"], result["warm"], result["runs"]
    lines = [
        heading + "\n",
        f"`{result.get('command', 'python -m bench.autopilot')}`: `ffx calibrate tiny197.onnx --data train/ "
        f"--target-agreement {result['target']:g}` on the deep fixture ({result['checkpoint']}: ff_tiny's 12 blocks, "
        "50 quantizable layers), as a new user runs it (empty cache; by default 10,000 held-out train images, the "
        "target judged on the 95% lower bound of the agreement), and with `--point-estimate`; each graph then "
        "checked on the 10,000 test images by `ffx verify` and timed against the all-INT8 graph in one "
        f"`ffx bench {result['speed_args']}` run.\n",
        "| run | wall time | held-out images | kept in float | held-out agreement (95% interval) | judged on | "
        "test agreement (`ffx verify`) | CPU speed vs all-INT8, batch " + " / ".join(map(str, SPEED_BATCHES)) + " |",
        "|---|---|---|---|---|---|---|---|",
        f"| before: main ({before['source']}) | {_minutes(before['seconds'])} | {before['held_out_images']:,} | | "
        f"100% ({before['agreement_ci95'][0]:.2f}-{before['agreement_ci95'][1]:.2f}%) | point estimate | | |",
    ]
    for name, run in runs.items():
        low, high = run["agreement_ci95"]
        kept = ", ".join(run["keep_fp"]) or "-"
        ratio = " / ".join(f"{run['speed_vs_plain_int8'][str(b)]:.2f}x" for b in SPEED_BATCHES)
        lines.append(
            f"| `{run['flags'] or 'default'}`, empty cache | **{_minutes(run['seconds'])}** | {run['held_out_images']:,} "
            f"| {kept} ({100 * run['float_flops_share']:.1f}% of the FLOPs) | {run['agreement']:.2f}% ({low:.2f}-{high:.2f}%), "
            f"{run['disagreeing']} disagree (at most {run['disagreements_allowed']} may) | {run['judged_on']} | "
            f"{run['verify']['agreement']:.2f}% | {ratio} |")
    lines.append(f"| default again, statistics and FP32 logits cached | {_minutes(warm['seconds'])} | "
                 f"{warm['held_out_images']:,} | {', '.join(warm['keep_fp']) or '-'} | {warm['agreement']:.2f}% | "
                 f"{warm['judged_on']} | | |")
    lines.append("")
    for name, run in runs.items():
        lines.append(
            f"`{run['flags'] or 'default'}`: load average {_load(run['load_average_before'])} before, "
            f"{_load(run['load_average_after'])} after; other processes kept {run['other_cpus']} of {result['cpus']} "
            f"CPUs busy on average meanwhile. It measured {run['graphs_measured']} graphs on the held-out images, "
            f"wrote {run['progress_lines']} progress lines to its stderr (a file), and TensorRT-RTX "
            f"{run['tensorrt_rtx']} the result. Issue 20's bar: at most 4 minutes "
            f"({_met(run['seconds'] <= WALL_BAR)}), at least {result['target']:g}% on the test images "
            f"({_met(run['verify']['agreement'] >= result['target'])}), at least {SPEED_BAR:.2f}x the all-INT8 CPU "
            f"speed at batch 1 and 8 ({_met(min(run['speed_vs_plain_int8'].values()) >= SPEED_BAR)}), TensorRT-RTX "
            f"builds it ({_met(run['tensorrt_rtx'] == 'built')}).\n")
    if any(not run.get("ranked_by") for run in runs.values()):
        lines.append(search_caveat(None).strip() + "\n")
    too_few = result["too_few_held_out"]
    lines.append(f"With the fixture's 300 val images as held-out images, the same command exits {too_few['exit_code']} "
                 f"after {too_few['seconds']:.0f} s, before searching: \"{too_few['message']}\"\n")
    return "\n".join(lines) + "\n"


def _minutes(seconds):
    seconds = round(seconds)  # 899.6 s is 15 min 0 s, not 14 min 60 s
    return f"{seconds // 60} min {seconds % 60} s"


def _met(condition):
    return "met" if condition else "NOT met"


def _load(values):
    return ", ".join(f"{v:.1f}" for v in values) if values else "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion", required=True, help="folder with the Fashion-MNIST train/ and val/ PNG folders")
    parser.add_argument("--checkpoint", default=str(DEEP_CHECKPOINT))
    parser.add_argument("--workdir", default="autopilot-work")
    parser.add_argument("--out", default="bench/autopilot.json")
    args = parser.parse_args(argv)
    result = run(args)
    result["command"] = "python -m bench.autopilot " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(section(result))


if __name__ == "__main__":
    main()
