"""Why CPU INT8 is as fast as it is: onnxruntime's optimized graph and profiler, and PyTorch's.

- The graph onnxruntime actually runs (`SessionOptions.optimized_model_filepath`): op counts of
  the FP32 and Q/DQ INT8 models, which MatMuls became int8 kernels, whether the bias Adds were
  folded into them.
- Where the time goes (`enable_profiling`): per op type, at batch 1 and 8, per-node medians over
  the profiled runs (robust against another process taking the CPU for a moment).
- GEMM throughput: FLOPs of the matrix products / the time of the MatMul kernels.
- Session settings: intra-op threads, spinning, graph optimization level.
- PyTorch eager's own profile (torch.profiler), to see what the ratio is made of.
"""

import collections
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

MATMUL_OPS = ("MatMul", "MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "FusedMatMul", "Gemm", "QGemm")


def _session(path, threads=None, level="all", spinning=True, profile_prefix=None, optimized_path=None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    if optimized_path:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _input(session, batch, seed=0):
    shape = session.get_inputs()[0].shape[1:]
    return {session.get_inputs()[0].name: np.random.default_rng(seed).standard_normal((batch, *shape), dtype=np.float32)}


def optimized_graph(path):
    """Op counts of the graph onnxruntime runs, and how the quantized MatMuls look in it."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="ffx-ort-opt-") as folder:
        optimized = Path(folder) / "optimized.onnx"
        _session(path, optimized_path=optimized)
        model = onnx.load(str(optimized), load_external_data=False)
    nodes = list(model.graph.node)
    counts = collections.Counter(node.op_type for node in nodes)
    consumers = collections.defaultdict(list)
    for node in nodes:
        for name in node.input:
            consumers[name].append(node)
    int8_matmuls = [node for node in nodes if node.op_type == "MatMulIntegerToFloat"]
    with_bias = sum(1 for node in int8_matmuls if len(node.input) > 6 and node.input[6])
    followed_by_add = sum(1 for node in int8_matmuls
                          if any(c.op_type == "Add" for c in consumers[node.output[0]]))
    float_matmuls = [node for node in nodes if node.op_type == "MatMul"]
    return {
        "nodes": len(nodes),
        "op_counts": dict(counts.most_common()),
        "int8_matmuls": len(int8_matmuls),
        "int8_matmuls_with_bias": with_bias,
        "int8_matmuls_followed_by_add": followed_by_add,
        "float_matmuls": len(float_matmuls),
    }


def profile(path, batch, threads=None, runs=10, warmup=2):
    """Per op type: ms per run (sum over its nodes of each node's median duration) and share."""
    with tempfile.TemporaryDirectory(prefix="ffx-ort-prof-") as folder:
        session = _session(path, threads=threads, profile_prefix=Path(folder) / "profile")
        feed = _input(session, batch)
        for _ in range(warmup):
            session.run(None, feed)
        wall = []
        for _ in range(runs):
            started = time.perf_counter()
            session.run(None, feed)
            wall.append(time.perf_counter() - started)
        events = json.loads(Path(session.end_profiling()).read_text())
    durations = collections.defaultdict(list)
    op_of = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            durations[event["name"]].append(event["dur"])
            op_of[event["name"]] = event["args"]["op_name"]
    per_op = collections.Counter()
    count = collections.Counter()
    for node, values in durations.items():
        per_op[op_of[node]] += statistics.median(values[-runs:]) / 1000.0
        count[op_of[node]] += 1
    total = sum(per_op.values())
    return {
        "batch": batch,
        "threads": threads,
        "runs": runs,
        "wall_p50_ms": round(1000 * statistics.median(wall), 2),
        "kernel_ms": round(total, 2),
        "ops": [{"op": op, "ms": round(ms, 2), "share": round(ms / total, 4), "nodes": count[op]}
                for op, ms in per_op.most_common()],
    }


def matmul_ms(profile_result):
    return sum(row["ms"] for row in profile_result["ops"] if row["op"] in MATMUL_OPS)


def session_variants(path, batch, runs=10):
    """p50 latency (ms) of one model under different session settings, measured round-robin so
    that a change in machine load hits every variant alike."""
    cpus = os.cpu_count() or 1
    variants = {
        "default (all optimizations, default threads)": {},
        "1 intra-op thread": {"threads": 1},
        f"{cpus} intra-op threads, spinning off": {"threads": cpus, "spinning": False},
        "optimization level extended": {"level": "extended"},
        "optimization level basic": {"level": "basic"},
    }
    sessions = {name: _session(path, **settings) for name, settings in variants.items()}
    feed = _input(next(iter(sessions.values())), batch)
    timings = {name: [] for name in sessions}
    for session in sessions.values():
        session.run(None, feed)
    for _ in range(runs):
        for name, session in sessions.items():
            started = time.perf_counter()
            session.run(None, feed)
            timings[name].append(time.perf_counter() - started)
    return [{"variant": name, "p50_ms": round(1000 * statistics.median(values), 2)} for name, values in timings.items()]


def torch_profile(checkpoint, batch, runs=3):
    """PyTorch eager: ms per run of its top operators (torch.profiler, CPU time of each op itself)."""
    import torch

    from ffx.export.checkpoint import resolve_model

    model = resolve_model(None, str(checkpoint)).model.eval()
    config = model.config
    images = torch.from_numpy(np.random.default_rng(0).standard_normal(
        (batch, config.in_chans, config.img_size, config.img_size), dtype=np.float32))
    with torch.inference_mode():
        model(images)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            for _ in range(runs):
                model(images)
            wall = (time.perf_counter() - started) / runs
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    return {
        "batch": batch,
        "wall_ms": round(1000 * wall, 2),
        "ops": [{"op": e.key, "ms": round(e.self_cpu_time_total / 1000.0 / runs, 2),
                 "share": round(e.self_cpu_time_total / total, 4), "calls": e.count // runs} for e in rows[:8]],
    }


def run(files, config, batches=(1, 8), runs=10, log=print):
    """`files`: {"checkpoint", "fp32", "int8"} of one model (ff_base); `config`: its FFConfig."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from roofline import flops_per_image

    stem = 2 * config.grid**2 * config.embed_dim * config.in_chans * config.patch_size**2
    matmul_flops = flops_per_image(config) - stem
    result = {"graphs": {}, "profiles": [], "variants": [], "torch": []}
    for precision in ("fp32", "int8"):
        result["graphs"][precision] = optimized_graph(files[precision])
        log(f"analysis: {precision} optimized graph: {result['graphs'][precision]['op_counts']}")
    for batch in batches:
        for precision in ("fp32", "int8"):
            prof = profile(files[precision], batch, runs=runs)
            ms = matmul_ms(prof)
            prof.update(precision=precision, matmul_ms=round(ms, 2),
                        matmul_gops=round(batch * matmul_flops / (ms / 1000) / 1e9, 1) if ms else None)
            result["profiles"].append(prof)
            log(f"analysis: {precision} batch {batch}: {prof['kernel_ms']} ms in kernels, matmuls {ms:.1f} ms "
                f"({prof['matmul_gops']} GOP/s)")
    for batch in batches:
        for row in session_variants(files["int8"], batch, runs=runs):
            result["variants"].append(dict(row, batch=batch))
            log(f"analysis: INT8 batch {batch}, {row['variant']}: {row['p50_ms']} ms")
    for batch in batches:
        result["torch"].append(torch_profile(files["checkpoint"], batch))
    result["matmul_gflop_per_image"] = round(matmul_flops / 1e9, 2)
    return result
