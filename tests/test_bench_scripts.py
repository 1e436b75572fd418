"""bench/ (the BENCHMARKS.md generator): its pieces on tiny inputs. No timing is asserted: only
that the measurements run on real onnxruntime / torch / `ffx bench` and that the report renders
every section from a results dict."""

import json
from pathlib import Path

import numpy as np
import pytest

from bench import cpu_speed, fidelity, int8_analysis, machine, plot, report, roofline

REPO = Path(__file__).resolve().parents[1]


def test_optimized_graph_shows_int8_matmuls_and_bias_adds(qdq):
    graph = int8_analysis.optimized_graph(qdq)
    # The mini model has depth 2: four MatMuls per block, all int8 in onnxruntime's graph.
    assert graph["int8_matmuls"] == 8 and graph["float_matmuls"] == 0
    assert graph["op_counts"]["MatMulIntegerToFloat"] == 8 and graph["op_counts"]["QGemm"] == 1
    # One QuantizeLinear per quantized layer input: the patch Conv, eight MatMuls, the head Gemm.
    assert graph["op_counts"]["QuantizeLinear"] == 10
    # onnxruntime never folds the bias into MatMulIntegerToFloat: fc1's goes into BiasGelu, the
    # other MatMuls' (one per token and channel MLP: fc2) stay separate Adds.
    assert graph["int8_matmuls_with_bias"] == 0 and graph["op_counts"]["BiasGelu"] == 4
    assert graph["int8_matmuls_followed_by_add"] == 4


def test_profile_attributes_time_to_op_types(qdq, mini):
    result = int8_analysis.profile(qdq, batch=2, runs=2, warmup=1)
    ops = {row["op"]: row for row in result["ops"]}
    assert {"MatMulIntegerToFloat", "QGemm", "QuantizeLinear", "BiasGelu", "LayerNormalization"} <= set(ops)
    assert sum(row["share"] for row in result["ops"]) == pytest.approx(1.0, abs=0.01)
    assert int8_analysis.matmul_ms(result) >= ops["MatMulIntegerToFloat"]["ms"] > 0
    variants = int8_analysis.session_variants(mini.onnx, batch=1, runs=1)
    assert [v["variant"] for v in variants][:2] == ["default (all optimizations, default threads)", "1 intra-op thread"]
    assert len(variants) == 6 and all(v["p50_ms"] > 0 for v in variants)
    eager = int8_analysis.torch_profile(mini.checkpoint, batch=1, runs=1)
    assert {"aten::addmm", "aten::gelu", "aten::native_layer_norm"} <= {op["op"] for op in eager["ops"]}
    assert eager["wall_ms"] >= eager["matmul_ms"] > 0


@pytest.mark.slow
def test_cpu_speed_runs_ffx_bench_and_computes_ratios(mini, qdq):
    block = cpu_speed.measure("mini", {"checkpoint": mini.checkpoint, "fp32": mini.onnx, "int8": qdq}, [1],
                              iterations=5, warmup=0, max_seconds=0.2, log=lambda _: None)
    labels = [row["label"] for row in block["rows"]]
    assert labels == ["PyTorch eager FP32", "onnxruntime FP32", "onnxruntime INT8"]
    assert block["rows"][0]["vs_pytorch"] == 1.0
    assert all(row["vs_pytorch"] > 0 for row in block["rows"])
    assert block["command"].startswith("ffx bench mini.pth mini.onnx mini.qdq.onnx --batch 1")


def test_scores_and_calibration_overlap(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200)
    reference = rng.standard_normal((200, 10))
    reference[np.arange(200), labels] += 3  # mostly right
    row = fidelity.score("same", reference.copy(), reference, labels, None)
    assert row["agreement"] == 100.0 and row["top1_drop"] == 0.0
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"images": [{"path": "0_a/x.png"}, {"path": "0_a/y.png"}]}))
    train = tmp_path / "train"
    assert fidelity._calibration_overlap(manifest, train, {str((train / "0_a/y.png").resolve())}) == 1
    assert fidelity._calibration_overlap(manifest, train, set()) == 0


def synthetic_results():
    rows = [
        {"model": "PyTorch FP32 (eager)", "precision": "fp32", "backend": "pytorch", "top1": 89.33, "top1_drop": 0.0,
         "top1_drop_ci95": [-0.02, 0.02], "agreement": 100.0, "logit_cosine_min": 1.0, "max_abs_logit_error": 0.0},
        {"model": "ONNX FP32", "precision": "fp32", "backend": "onnxruntime", "top1": 89.33, "top1_drop": 0.0,
         "top1_drop_ci95": [-0.02, 0.02], "agreement": 100.0, "logit_cosine_min": 1.0, "max_abs_logit_error": 1e-6},
        {"model": "INT8 entropy, 64 images", "precision": "int8", "backend": "onnxruntime", "method": "entropy",
         "calibration_images": 64, "top1": 89.0, "top1_drop": 0.33, "top1_drop_ci95": [0.05, 0.61], "agreement": 97.5,
         "logit_cosine_min": 0.87, "max_abs_logit_error": 1.0, "calibration_seconds": 5.6,
         "test_images_in_calibration": 0, "tensorrt": "built (TensorRT-RTX 1.7)"},
        {"model": "FP16", "precision": "fp16", "backend": "onnxruntime", "calibration_images": 64, "fp32_tensors": 0,
         "top1": 89.33, "top1_drop": 0.0, "top1_drop_ci95": [-0.02, 0.02], "agreement": 100.0,
         "logit_cosine_min": 1.0, "max_abs_logit_error": 1e-3, "tensorrt": "built"},
    ]

    def speed_rows(scale):
        out = []
        for backend, precision, ips in (("pytorch", "fp32", 10.0), ("onnxruntime", "fp32", 20.0),
                                        ("onnxruntime", "fp16", 5.0), ("onnxruntime", "int8", 50.0)):
            for batch in (1, 8):
                out.append({"backend": backend, "precision": precision, "batch": batch, "p50_ms": 1000 / ips,
                            "p99_ms": 1100 / ips, "images_per_s": ips * scale, "iterations": 5, "cv": 0.02})
        return cpu_speed.with_ratios(out)

    profile = {"runs": 2, "wall_p50_ms": 10.0, "kernel_ms": 9.0, "matmul_ms": 6.0, "matmul_gops": 100.0,
               "ops": [{"op": "MatMulIntegerToFloat", "ms": 6.0, "share": 0.67, "nodes": 8},
                       {"op": "BiasGelu", "ms": 3.0, "share": 0.33, "nodes": 4}]}
    return {
        "started": "2026-01-01T00:00:00+00:00", "seconds": 90.0, "quick": True,
        "machine": machine.describe(REPO),
        "settings": {"batches": [1, 8], "iterations": 5, "max_seconds": 1.0, "calibration_counts": [64],
                     "archs": ["ff_tiny"], "speed_archs": ["ff_tiny"]},
        "load": {"start": [0.1, 0.1, 0.1], "timing_start": [0.2, 0.1, 0.1], "end": [0.3, 0.2, 0.1]},
        "fidelity": {"checkpoint": "tests/fixtures/fashion/model.pth", "test_images": 10000, "decode_seconds": 8.0,
                     "counts": [64], "methods": ["entropy"], "rows": rows},
        "configs": {"calibration_images": 16, "photos": "JPEG", "rows": [
            {"arch": "ff_tiny", "parameters": 7676332, "onnx_fp32_mb": 30.6, "onnx_fp16_mb": 15.3, "onnx_int8_mb": 8.0,
             "export_seconds": 14.4, "calibrate_int8_seconds": 7.1, "convert_fp16_seconds": 1.2,
             "engine_fp32_mb": 32.6, "build_fp32_seconds": 1.8, "engine_fp16_mb": 19.0, "build_fp16_seconds": 2.2,
             "engine_int8_error": "rejected", "tensorrt": "tensorrt-rtx 1.7"}]},
        "speed": {name: {"command": "ffx bench a b", "seconds": 3.0, "rows": speed_rows(1.0),
                         "load_before": [0.1, 0.1, 0.1], "load_after": [0.1, 0.1, 0.1]}
                  for name in ("ff_tiny", "ff_base", "fashion")},
        "target_check": {"command": "ffx bench int8 pth", "rows": speed_rows(1.0), "load_after": [0.1, 0.1, 0.1],
                         "checks": [{"batch": 1, "ratio": 5.0, "target": 4.0, "met": True},
                                    {"batch": 8, "ratio": 3.0, "target": 3.5, "met": False}]},
        "analysis": {"arch": "ff_tiny", "matmul_gflop_per_image": 2.8,
                     "graphs": {p: {"nodes": 10, "op_counts": {"MatMulIntegerToFloat": 8, "QuantizeLinear": 9},
                                    "int8_matmuls": 8, "int8_matmuls_with_bias": 0, "int8_matmuls_followed_by_add": 4,
                                    "float_matmuls": 0} for p in ("fp32", "int8")},
                     "profiles": [dict(profile, precision=p, batch=1) for p in ("fp32", "int8")],
                     "variants": [{"variant": "default", "batch": 1, "p50_ms": 10.0}],
                     "torch": [{"batch": 1, "wall_ms": 30.0, "matmul_ms": 20.0, "matmul_gops": 50.0, "copy_ms": 1.0,
                                "ops": [{"op": "aten::addmm", "ms": 20.0, "share": 0.6}]}],
                     "int8_extended_same_as_all": True,
                     "two_live_sessions": [{"batch": 1, "alone_p50_ms": 10.0, "two_live_p50_ms": 20.0}],
                     "gelu_fusion": {"gelus": 4, "unfused_op_counts": {"Erf": 4, "Div": 4, "Mul": 8, "Add": 12},
                                     "rows": [{"batch": 1, "fused_p50_ms": 10.0, "unfused_p50_ms": 12.0}]}},
        "roofline": roofline.rows(batches=(1, 8)),
    }


@pytest.mark.slow
def test_report_renders_every_section_and_the_plot(tmp_path):
    results = synthetic_results()
    png = tmp_path / "plot.png"
    plot.plot(results["fidelity"], results["speed"]["fashion"], png)  # matplotlib: in the dev extra
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    text = report.render(results, plot_path="plot.png", json_path="results.json")
    for heading in ("## Machine", "## Summary", "## 1. Fidelity", "## 2. Paper configurations", "## 3. CPU speed",
                    "## 4. CPU INT8", "## 5. GPU: computed on paper", "## Reproduce"):
        assert heading in text
    assert "![accuracy vs images/s per precision](plot.png)" in text
    assert "**5.00x** (target 4.0x, met" in text and "| **3.00x** | >= 3.5x | NOT met |" in text
    assert "ff_tiny int8 engine failed: `rejected`" in text
    assert "no TensorRT engine timings" in text.replace("There are no", "no")
    assert "| INT8 entropy, 64 images | 89.00 | +0.33 [+0.05, +0.61] | 97.50 |" in text
    assert "| 1 | 10.0 | 12.0 | 1.20x |" in text  # the GELU-fusion table
    assert "the very same optimized INT8 graph" in text
    assert "batch 1: 10.0 ms alone, 20.0 ms per call with two live sessions" in text


@pytest.mark.slow
def test_report_conclusions_follow_the_target_check():
    results = synthetic_results()  # batch 1 meets its target, batch 8 does not
    missed = report.render(results)
    assert "the first call clears the targets, this one does not." in missed
    assert "The targets (section 3) are not all met in this run." in missed
    assert "alone is 2.00-2.00x PyTorch, yet INT8 misses one of the 4.0x/3.5x targets" in missed
    assert "targets hold" not in missed and "both calls clear" not in missed

    results["target_check"]["checks"][1].update(ratio=3.6, met=True)
    met = report.render(results)
    assert "both calls clear the targets." in met
    assert "The targets (section 3) hold here because PyTorch eager is slow on this CPU" in met
    assert "alone is 2.00-2.00x PyTorch and INT8 clears the 4.0x/3.5x targets" in met
    assert "not all met" not in met and "misses" not in met
