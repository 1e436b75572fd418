"""bench/int8_accuracy.py's report: the conclusion follows the measured numbers."""

from bench.int8_accuracy import AUTOPILOT, AUTOPILOTS, section


def _row(model, agreement, ratio_1, ratio_8, keep_fp=(), verified=None):
    row = {"model": model, "tool": "ffx", "error": None, "keep_fp": list(keep_fp), "agreement": agreement,
           "top1": 89.3, "top1_drop": 0.03, "snr_db": 33.4, "tensorrt_rtx": "built",
           "images_per_s": {"1": 1000.0, "8": 4000.0}, "speed_vs_plain_int8": {"1": ratio_1, "8": ratio_8}}
    if model in AUTOPILOTS:
        row.update(autopilot=True, target=AUTOPILOTS[model][1],
                   verify={"exit_code": 0, "agreement": verified or agreement, "images": 10000})
    return row


def _result(*autopilots):
    return {"checkpoint": "tests/fixtures/fashion/model.pth", "test_images": 10000, "fp32_top1": 89.33,
            "calibration_images": 512, "held_out_images": 2000, "fp32_images_per_s": {"1": 900.0, "8": 3000.0},
            "rows": [_row("ffx INT8 (entropy, default)", 99.68, 1.0, 1.0), *autopilots],
            "load_average": [1.0, 1.0, 1.0], "cpus": 2, "speed_args": "--threads 1"}


def test_the_conclusion_follows_the_numbers():
    met = section(_result(_row(AUTOPILOT, 99.91, 0.95, 0.97, ["blocks.0.mlp1.fc2"])))
    assert "agreement on the 10,000 test images 99.91% (met" in met and "0.95x at batch 1, 0.97x at batch 8 (met" in met
    assert "| blocks.0.mlp1.fc2 | 99.91% |" in met and "NOT met" not in met
    missed = section(_result(_row(AUTOPILOT, 99.85, 0.85, 0.97)))
    assert "99.85% (NOT met" in missed and "0.85x at batch 1, 0.97x at batch 8 (NOT met" in missed
    failed = _result(_row(AUTOPILOT, 99.85, 1, 1))
    failed["rows"][1].update(error="Error: top-1 agreement with FP32 >= 99.9% cannot be reached")
    assert "did not produce a model: Error: top-1 agreement" in section(failed)


def test_each_autopilot_gets_its_own_verdict_from_ffx_verify():
    smoothed = next(name for name in AUTOPILOTS if name != AUTOPILOT)
    lower = next(name for name, (_, target) in AUTOPILOTS.items() if target < 99.9)
    both = section(_result(_row(AUTOPILOT, 99.91, 0.8, 0.8, verified=99.84), _row(smoothed, 99.92, 0.95, 0.95),
                           _row(lower, 99.85, 0.95, 0.95)))
    assert f"`{AUTOPILOT}`: agreement on the 10,000 test images 99.84% (NOT met, >= 99.9%)" in both
    assert f"`{smoothed}`: agreement on the 10,000 test images 99.92% (met, >= 99.9%)" in both
    assert f"`{lower}`: agreement on the 10,000 test images 99.85% (met, >= 99.8%)" in both
    assert both.count("`ffx verify` of the") == 3


def test_the_verdict_counts_the_images_ffx_verify_scored():
    fewer = _result(_row(AUTOPILOT, 99.85, 0.95, 0.95, verified=99.96))
    fewer["test_images"] = 2000
    text = section(fewer)
    assert "2,000 test images (the first of each class)" in text  # the table's images
    assert f"`{AUTOPILOT}`: agreement on the 10,000 test images 99.96% (met" in text  # the verdict's
    assert "this run scored fewer" not in text
