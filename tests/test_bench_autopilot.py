"""bench/autopilot.py's report (BENCHMARKS.md section 6f): the verdicts follow the measured numbers."""

from bench.autopilot import section


def _run(flags, seconds, agreement, verified, ratio_1, ratio_8, keep_fp=(), judged_on="95% bound"):
    return {"flags": flags, "seconds": seconds, "command_seconds": seconds - 1, "load_average_before": [1.0, 1.1, 1.2],
            "load_average_after": [1.3, 1.2, 1.1], "other_cpus": 0.2, "statistics_cache": "miss",
            "keep_fp": list(keep_fp), "float_flops_share": 0.021 * len(keep_fp), "held_out_images": 10_000,
            "agreement": agreement, "agreement_ci95": [99.91, 99.99], "disagreeing": 3, "disagreements_allowed": 3,
            "top1_drop": 0.01, "top1_drop_ci95": [-0.03, 0.05], "judged_on": judged_on, "graphs_measured": 2,
            "steps": [], "tensorrt_rtx": "built", "progress_lines": 40,
            "verify": {"agreement": verified, "images": 10_000, "agreement_ci95": [99.9, 100.0], "seconds": 100},
            "images_per_s": {"1": 100.0, "8": 90.0}, "speed_vs_plain_int8": {"1": ratio_1, "8": ratio_8}}


def _result(*runs):
    return {"checkpoint": "tests/fixtures/fashion_tiny197/model.pth", "target": 99.9,
            "before": {"seconds": 1221, "held_out_images": 300, "agreement_ci95": [98.74, 100.0], "source": "issue 20"},
            "runs": {run["flags"] or "default": run for run in runs},
            "warm": _run("", 95, 99.97, None, 1, 1), "cpus": 2, "speed_args": "--threads 1",
            "too_few_held_out": {"exit_code": 2, "seconds": 4, "message": "Error: 300 held-out images cannot resolve"},
            "plain_int8_images_per_s": {"1": 110.0, "8": 100.0}}


def test_each_run_gets_its_verdict_from_its_own_numbers():
    text = section(_result(_run("", 200, 99.97, 99.95, 0.55, 0.6, ["blocks.0.mlp1.fc2"] * 40),
                           _run("--point-estimate", 150, 99.91, 99.88, 0.97, 0.98, ["blocks.0.mlp1.fc2"],
                                judged_on="point estimate")))
    assert "| before: main (issue 20) | 20 min 21 s | 300 |" in text
    assert "**3 min 20 s**" in text and "**2 min 30 s**" in text and "| default again, statistics and FP32 logits cached | 1 min 35 s" in text
    default, point = (line for line in text.splitlines() if line.startswith("`") and "Issue 20's bar" in line)
    assert "at most 4 minutes (met), at least 99.9% on the test images (met)" in default
    assert "batch 1 and 8 (NOT met)" in default and "99.9% on the test images (NOT met)" in point
    assert "batch 1 and 8 (met)" in point and "exits 2 after 4 s, before searching" in text


def test_a_slow_run_misses_the_time_bar():
    text = section(_result(_run("", 241, 99.97, 99.95, 0.95, 0.96)))
    assert "at most 4 minutes (NOT met)" in text and "**4 min 1 s**" in text
