"""bench/fp8_target.py's report (BENCHMARKS.md section 6g): the verdict follows the measured numbers."""

from bench.fp8_target import section


def _result(test_agreement, keep_fp, reused=False):
    return {"checkpoint": "tests/fixtures/fashion_tiny197/model.pth", "target": 99.9, "max_float_layers": 3,
            "calibrate": None if reused else {"seconds": 3725, "load_average_before": [2.0], "load_average_after": [2.1],
                                              "other_cpus": 0.3},
            "reused": reused, "keep_fp": list(keep_fp), "float_flops_share": 0.004 * len(keep_fp),
            "int8_layers": ["blocks.0.mlp1.fc1", "blocks.0.mlp2.fc1"], "fp8_layers": ["x"] * 46,
            "held_out_images": 10_000, "held_out_agreement": 99.98, "held_out_agreement_ci95": [99.93, 99.99],
            "held_out_disagreeing": 2, "disagreements_allowed": 3, "judged_on": "95% bound", "graphs_measured": 2,
            "tensorrt_rtx": "built",
            "test": {"images": 10_000, "agreement": test_agreement, "agreement_ci95": [99.85, 99.97], "seconds": 1500},
            "fc1_in_int8": {"int8_layers": ["blocks.0.mlp1.fc1"], "keep_fp": ["patch_embed", "head"],
                            "tensorrt_rtx": "built", "calibrate_seconds": 60,
                            "test": {"images": 10_000, "agreement": 99.94, "agreement_ci95": [99.88, 99.97],
                                     "top1": 88.39, "fp32_top1": 88.41, "seconds": 500}}}


def test_the_bar_needs_the_test_agreement_and_at_most_three_float_layers():
    met = section(_result(99.93, ["patch_embed", "head"]))
    assert "**met**" in met and "| **test agreement (`ffx verify`, 10,000 images)** | **99.93%** (99.85-99.97%) |" in met
    assert "| layers in float | 2: patch_embed, head (0.8% of the FLOPs) |" in met and "| calibrate wall time | 62 min 5 s |" in met
    assert "| layers in INT8 | 2: blocks.0.mlp1.fc1, blocks.0.mlp2.fc1 |" in met
    assert "**NOT met**" in section(_result(99.89, ["patch_embed", "head"]))
    assert "**NOT met**" in section(_result(99.95, ["patch_embed", "head", "blocks.0", "blocks.1"]))
    assert "reused" in section(_result(99.93, ["head"], reused=True))
    assert "checked the same way: **99.94%** (99.88-99.97%) on the 10,000 test images, top-1 88.39% against FP32's 88.41%, 2 layers in float; TensorRT-RTX built it" in met
