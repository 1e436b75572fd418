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


def _session(path, threads=None, level="all", spinning=True, profile_prefix=None, optimized_path=None,
             gelu_approximation=False):
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
    if gelu_approximation:
        options.add_session_config_entry("optimization.enable_gelu_approximation", "1")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    if optimized_path:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _input(session, batch, seed=0):
    shape = session.get_inputs()[0].shape[1:]
    return {session.get_inputs()[0].name: np.random.default_rng(seed).standard_normal((batch, *shape), dtype=np.float32)}


def optimized_graph(path, level="all"):
    """Op counts of the graph onnxruntime runs, and how the quantized MatMuls look in it."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="ffx-ort-opt-") as folder:
        optimized = Path(folder) / "optimized.onnx"
        _session(path, level=level, optimized_path=optimized)
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
        "op_sequence": [f"{node.domain}:{node.op_type}" for node in nodes],
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


def time_sessions(factories, batch, runs=10, rounds=2):
    """{name: (p50 ms, logits)} of each session factory, timed with only that session alive:
    two sessions alive in one process make each other's spinning thread pools fight for the
    cores (BENCHMARKS.md measures how much), so a round-robin between live sessions would measure
    that fight. Each factory runs `rounds` times, in alternating order; the best p50 counts."""
    best, logits = {}, {}
    names = list(factories)
    for round_index in range(rounds):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            session = factories[name]()
            feed = _input(session, batch)
            for _ in range(2):
                logits[name] = session.run(None, feed)[0]
            timings = []
            for _ in range(runs):
                started = time.perf_counter()
                session.run(None, feed)
                timings.append(time.perf_counter() - started)
            del session
            best[name] = min(best.get(name, float("inf")), 1000 * statistics.median(timings))
    return {name: (round(best[name], 2), logits[name]) for name in names}


def session_variants(path, batch, runs=10):
    """p50 latency (ms) of one model under different session settings, and how far each moves the logits."""
    cpus = os.cpu_count() or 1
    variants = {
        "default (all optimizations, default threads)": {},
        "1 intra-op thread": {"threads": 1},
        f"{cpus} intra-op threads, spinning off": {"threads": cpus, "spinning": False},
        "optimization level extended": {"level": "extended"},
        "optimization level basic": {"level": "basic"},
        "GELU tanh approximation (changes the numbers)": {"gelu_approximation": True},
    }
    timed = time_sessions({name: (lambda settings=settings: _session(path, **settings))
                           for name, settings in variants.items()}, batch, runs)
    reference = next(iter(timed.values()))[1]
    return [{"variant": name, "p50_ms": p50, "max_abs_logit_change": float(f"{np.abs(logits - reference).max():.3g}")}
            for name, (p50, logits) in timed.items()]


def two_live_sessions(path, batch, runs=10):
    """p50 ms of one session alone, and of the same model's calls when two sessions are alive and
    called in turn (as a round-robin benchmark or `ffx verify` would)."""
    alone = time_sessions({"alone": lambda: _session(path)}, batch, runs, rounds=1)["alone"][0]
    first, second = _session(path), _session(path)
    feed = _input(first, batch)
    first.run(None, feed)
    second.run(None, feed)
    timings = []
    for _ in range(runs):
        for session in (first, second):
            started = time.perf_counter()
            session.run(None, feed)
            timings.append(time.perf_counter() - started)
    return {"batch": batch, "alone_p50_ms": round(alone, 2),
            "two_live_p50_ms": round(1000 * statistics.median(timings), 2)}


def unfuse_gelu(model):
    """Undo export's GELU reordering (577c0fe): `(x * (1 + erf)) * 0.5` back to the exporter's
    `x * (0.5 * (1 + erf))`, which onnxruntime's GeluFusion does not match. Returns the count."""
    producer = {output: node for node in model.graph.node for output in node.output}
    rewritten = 0
    for outer in model.graph.node:
        if outer.op_type != "Mul" or len(outer.input) != 2:
            continue
        inner = producer.get(outer.input[0])
        if inner is None or inner.op_type != "Mul":
            continue
        one_plus_erf = producer.get(inner.input[1])
        erf = one_plus_erf is not None and one_plus_erf.op_type == "Add" and next(
            (producer[i] for i in one_plus_erf.input if i in producer and producer[i].op_type == "Erf"), None)
        if not erf:
            continue
        x, half = inner.input[0], outer.input[1]
        inner.input[:] = [half, one_plus_erf.output[0]]
        outer.input[:] = [x, inner.output[0]]
        rewritten += 1
    return rewritten


def gelu_fusion_effect(path, batches=(1, 8), runs=10):
    """p50 ms of `path` as exported now and with the pre-577c0fe GELU form, round-robin."""
    import onnx

    model = onnx.load(str(path))
    count = unfuse_gelu(model)
    with tempfile.TemporaryDirectory(prefix="ffx-gelu-") as folder:
        unfused = Path(folder) / "unfused.onnx"
        onnx.save(model, str(unfused))
        graph = optimized_graph(unfused)
        rows = []
        for batch in batches:
            timed = time_sessions({"fused": lambda: _session(path), "unfused": lambda: _session(unfused)}, batch, runs)
            rows.append({"batch": batch, "fused_p50_ms": timed["fused"][0], "unfused_p50_ms": timed["unfused"][0]})
    return {"gelus": count, "unfused_op_counts": graph["op_counts"], "rows": rows}


TORCH_MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm")


def torch_profile(checkpoint, batch, runs=3, matmul_flops=None):
    """PyTorch eager: ms per run of its top operators (torch.profiler, CPU time of each op itself),
    and of its matrix products (GFLOP/s when `matmul_flops` per image is given)."""
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
    matmul = sum(e.self_cpu_time_total for e in rows if e.key in TORCH_MATMUL_OPS) / 1000.0 / runs
    copies = sum(e.self_cpu_time_total for e in rows if e.key == "aten::copy_") / 1000.0 / runs
    return {
        "batch": batch,
        "wall_ms": round(1000 * wall, 2),
        "matmul_ms": round(matmul, 2),
        "matmul_gops": round(batch * matmul_flops / (matmul / 1000) / 1e9, 1) if matmul_flops and matmul else None,
        "copy_ms": round(copies, 2),
        "ops": [{"op": e.key, "ms": round(e.self_cpu_time_total / 1000.0 / runs, 2),
                 "share": round(e.self_cpu_time_total / total, 4), "calls": e.count // runs} for e in rows[:8]],
    }


def run(files, config, batches=(1, 8), runs=10, log=print):
    """`files`: {"checkpoint", "fp32", "int8"} of one model (ff_base); `config`: its FFConfig."""
    from bench.roofline import flops_per_image

    stem = 2 * config.grid**2 * config.embed_dim * config.in_chans * config.patch_size**2
    matmul_flops = flops_per_image(config) - stem
    result = {"graphs": {}, "profiles": [], "variants": [], "torch": []}
    for precision in ("fp32", "int8"):
        result["graphs"][precision] = optimized_graph(files[precision])
        log(f"analysis: {precision} optimized graph: {result['graphs'][precision]['op_counts']}")
    extended = optimized_graph(files["int8"], level="extended")
    result["int8_extended_same_as_all"] = extended["op_sequence"] == result["graphs"]["int8"]["op_sequence"]
    for graph in result["graphs"].values():
        graph.pop("op_sequence")
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
    result["two_live_sessions"] = [two_live_sessions(files["int8"], batch, runs=runs) for batch in batches]
    log(f"analysis: one session alone vs two live sessions: {result['two_live_sessions']}")
    result["gelu_fusion"] = gelu_fusion_effect(files["int8"], batches, runs=runs)
    log(f"analysis: GELU as exported before 577c0fe: {result['gelu_fusion']['rows']}")
    for batch in batches:
        result["torch"].append(torch_profile(files["checkpoint"], batch, matmul_flops=matmul_flops))
    result["matmul_gflop_per_image"] = round(matmul_flops / 1e9, 2)
    return result
