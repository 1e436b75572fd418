"""Where INT8's error comes from, tensor by tensor: the noise budget behind BENCHMARKS.md section 6.

    python -m bench.int8_noise --fashion DIR [--checkpoint PATH] [--workdir DIR] [--out FILE]

For ffx's plain INT8 graph and the `--smooth-gelu` graph (512 calibration images, as section 6),
scored on all 10,000 Fashion-MNIST test images against the FP32 ONNX:

- every activation quantized, weights in float (the activations' share), and the reverse;
- each activation tensor quantized alone (weights float) and each weight alone (activations
  float): its logit SNR, and its error power as a share of the sum over all tensors.

Rounding errors of different tensors are nearly independent, so their powers add: the sum
predicts the all-INT8 SNR (printed beside the measured one). What no placement or range choice
can remove is the error of tensors that are already at the INT8 limit for their distribution, so
the budget says how far float layers (the autopilot) have to go, and what they cost.

The speed side (onnxruntime CPU, 1 thread, batch 1 and 8): how much longer the FP32 graph runs than
the all-INT8 one; a layer kept in float costs its share of the FLOPs of that. Over every subset of
layers, the most error float layers can buy back while the graph stays at SPEED_BAR of all-INT8
speed, and the SNR that leaves (the measured all-INT8 SNR with that share of the error power
removed). Section 6's autopilot graphs, timed by `ffx bench`, check the cost model.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from bench.fidelity import FIXTURE_CHECKPOINT, decode_images
from bench.int8_accuracy import CALIBRATION_IMAGES, SPEED_BAR, _relative, exported_fixture, ffx
from ffx.calib.smoothing import SMOOTHING_SPREAD
from ffx.fidelity import error_power, snr_of, summed_errors

VARIANTS = {"plain INT8": [], "--smooth-gelu": ["--smooth-gelu"]}
TIMED_BATCHES = (1, 8)
TIMING_RUNS = 300
INT8_ACCURACY = Path(__file__).resolve().parent / "int8_accuracy.json"


def activation_quantizers(model):
    """{activation tensor: (QuantizeLinear node, DequantizeLinear node)} of a Q/DQ graph."""
    dequantize = {node.input[0]: node for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return {node.input[0]: (node, dequantize[node.output[0]]) for node in model.graph.node
            if node.op_type == "QuantizeLinear"}


def weight_dequantizers(model):
    """{weight initializer name: DequantizeLinear node} of a Q/DQ graph (ffx names them NAME_quantized)."""
    initializers = {init.name for init in model.graph.initializer}
    return {node.input[0][:-len("_quantized")]: node for node in model.graph.node
            if node.op_type == "DequantizeLinear" and node.input[0] in initializers and node.input[0].endswith("_quantized")}


def partly_float(model, float_weights, keep_activations, keep_weights):
    """`model` with only the activations in `keep_activations` and the weights in `keep_weights`
    left quantized; every other Q/DQ pair is bypassed, every other weight is its float value."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    bypass = {}
    removed = set()
    for tensor, (quantize, dequantize) in activation_quantizers(result).items():
        if tensor not in keep_activations:
            bypass[dequantize.output[0]] = tensor
            removed.update({quantize.name, dequantize.name})
    for weight, dequantize in weight_dequantizers(result).items():
        if weight not in keep_weights:
            bypass[dequantize.output[0]] = f"{weight}/float"
            removed.add(dequantize.name)
            result.graph.initializer.append(numpy_helper.from_array(float_weights[weight], f"{weight}/float"))
    nodes = [node for node in result.graph.node if node.name not in removed]
    for node in nodes:
        for slot, name in enumerate(node.input):
            node.input[slot] = bypass.get(name, name)
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    return result


def budget(model, float_weights, images, reference, tensor_names=None):
    """The noise budget of one Q/DQ graph on `images`; `tensor_names` ({tensor: what to call it})
    names the tensors in the result (default: their ONNX names)."""
    tensor_names = tensor_names or {}
    from ffx.calib.sensitivity import fidelity_of, run_model

    def score(variant):
        fidelity = fidelity_of(run_model(variant, images), reference)
        return {"agreement": fidelity.agreement, "snr_db": fidelity.snr_db}

    activations, weights = list(activation_quantizers(model)), list(weight_dequantizers(model))
    result = {
        "all_int8": score(model),
        "activations_only": score(partly_float(model, float_weights, activations, [])),
        "weights_only": score(partly_float(model, float_weights, [], weights)),
        "tensors": [],
    }
    for kind, names in (("activation", activations), ("weight", weights)):
        for name in names:
            alone = partly_float(model, float_weights, [name] if kind == "activation" else [],
                                 [name] if kind == "weight" else [])
            result["tensors"].append({"kind": kind, "tensor": tensor_names.get(name, name), **score(alone)})
    shares, predicted = summed_errors([row["snr_db"] for row in result["tensors"]])
    for row, share in zip(result["tensors"], shares):
        row["share"] = round(share, 4)
    result["predicted_all_int8_snr_db"] = round(predicted, 2)
    return result


def float_slowdown(fp32_path, int8_path, batch):
    """How much longer the FP32 graph runs than the all-INT8 one (0.36: 36% longer), onnxruntime CPU,
    1 thread, each timed alone in alternating rounds (as `ffx bench` times the bar's ratio)."""
    from bench.int8_analysis import _session, time_sessions

    timed = time_sessions({"fp32": lambda: _session(fp32_path, threads=1), "int8": lambda: _session(int8_path, threads=1)},
                          batch, runs=TIMING_RUNS, rounds=3)
    return timed["fp32"][0] / timed["int8"][0] - 1


def most_error_under_bar(shares, costs, bar=SPEED_BAR):
    """Over every subset of layers, the one removing the largest error share whose float layers
    (each costing `costs[name]`, a fraction of the all-INT8 run time) keep the graph at `bar` of the
    all-INT8 speed or faster: (layers, error share, speed ratio)."""
    names = sorted(costs)
    chosen = (np.arange(1 << len(names))[:, None] >> np.arange(len(names))) & 1
    share = chosen @ np.array([shares[name] for name in names])
    ratio = 1 / (1 + chosen @ np.array([max(costs[name], 0.0) for name in names]))
    best = int(np.argmax(np.where(ratio >= bar, share, -1.0)))
    return [name for name, used in zip(names, chosen[best]) if used], float(share[best]), float(ratio[best])


def speed_budget(fp32_path, int8_path, layers, flops, budget_):
    """Per batch: FP32's slowdown over INT8 and, with a float layer costing its FLOPs share of that,
    the most error float layers can buy back at SPEED_BAR, and the SNR that leaves."""
    total = sum(flops.values())
    shares = {layer.name: sum(row["share"] for row in budget_["tensors"]
                              if row["tensor"] in (f"{layer.name} input", f"{layer.name} weight")) for layer in layers}
    result = {}
    for batch in TIMED_BATCHES:
        slowdown = float_slowdown(fp32_path, int8_path, batch)
        costs = {name: slowdown * count / total for name, count in flops.items()}
        keep, share, ratio = most_error_under_bar(shares, costs)
        result[str(batch)] = {
            "fp32_slowdown": round(slowdown, 4), "keep_fp": keep, "share": round(share, 4), "ratio": round(ratio, 3),
            "float_flops_share": round(sum(flops[name] for name in keep) / total, 4),
            "predicted_snr_db": round(snr_of(error_power(budget_["all_int8"]["snr_db"]) * (1 - share)), 2)
            if share < 1 else None,
        }
    return result


def run(args, log=print):
    from ffx.calib import CalibrationOptions
    from ffx.calib.int8 import calibration_statistics
    from ffx.calib.layers import network_layers
    from ffx.calib.model_io import load_source_model
    from ffx.calib.sensitivity import matmul_flops, run_model
    from ffx.calib.smoothing import channel_ranges, channel_spread
    from ffx.metadata import Preprocess
    from ffx.reporting import silenced

    workdir, fashion, fp32, info = exported_fixture(args)
    images, labels, _ = decode_images(fashion / "val", Preprocess.from_dict(info["preprocess"]), info.get("class_names"))
    reference = run_model(fp32.read_bytes(), images)
    results = []
    for name, flags in VARIANTS.items():
        output = workdir / f"noise.{len(results)}.onnx"
        ffx("calibrate", fp32, "--data", fashion / "train", "--num-images", CALIBRATION_IMAGES, "--cache-dir",
            workdir / "calib-cache", "--no-tensorrt-check", "-o", output, *flags)
        # The float weights of the graph that was quantized (smoothing rescales fc2's weights).
        options = CalibrationOptions(num_images=CALIBRATION_IMAGES, smooth_gelu="--smooth-gelu" in flags,
                                     cache_dir=str(workdir / "calib-cache"))
        with silenced():
            source, calibration, _, _ = calibration_statistics(load_source_model(fp32), fashion / "train", options)
        float_weights = {init.name: numpy_helper.to_array(init) for init in source.model.graph.initializer}
        layers = network_layers(source.model, source.metadata)
        tensor_names = {layer.activation: f"{layer.name} input" for layer in layers}
        tensor_names.update({layer.weight: f"{layer.name} weight" for layer in layers})
        results.append({"graph": name, **budget(onnx.load(output), float_weights, images, reference, tensor_names)})
        results[-1]["speed_budget"] = speed_budget(fp32, output, layers, matmul_flops(source.model, layers), results[-1])
        if not flags:  # what --smooth-gelu looks for: channels far wider than the median, in each MatMul's input
            matmuls = [layer for layer in layers if layer.op_type == "MatMul"]
            ranges = channel_ranges(source, calibration.items, [layer.activation for layer in matmuls])
            results[-1]["channel_spread"] = {
                layer.name: round(channel_spread((ranges[layer.activation][1] - ranges[layer.activation][0]) / 2), 2)
                for layer in matmuls}
        log(f"int8_noise: {name}: all INT8 {results[-1]['all_int8']['snr_db']:.1f} dB, "
            f"predicted {results[-1]['predicted_all_int8_snr_db']:.1f} dB")
    return {"checkpoint": _relative(args.checkpoint), "test_images": int(len(labels)), "variants": results,
            "load_average": list(os.getloadavg())}


def section(result):
    """BENCHMARKS.md section 6b (bench/report.py includes it when bench/int8_noise.json exists)."""
    lines = [
        "### 6b. The INT8 noise budget: why the last 0.1% of agreement costs most of the speed\n",
        f"`{result.get('command', 'python -m bench.int8_noise')}`: logit SNR against FP32 on the "
        f"{result['test_images']:,} test images with only some tensors quantized (the others float), for the "
        "graphs of section 6. A tensor's share is its error power over the sum of all tensors' (they add: "
        "the sum predicts the all-INT8 SNR).\n",
        "| graph | all INT8 (predicted from the sum) | activations only | weights only | largest shares |",
        "|---|---|---|---|---|",
    ]
    for budget_ in result["variants"]:
        name = budget_["graph"]
        top = sorted(budget_["tensors"], key=lambda row: -row["share"])[:4]
        shares = ", ".join(f"{row['tensor']} {100 * row['share']:.0f}% ({row['snr_db']:.1f} dB)" for row in top)
        lines.append(
            f"| {name} | {budget_['all_int8']['snr_db']:.1f} dB, {budget_['all_int8']['agreement']:.2f}% "
            f"({budget_['predicted_all_int8_snr_db']:.1f} dB) | {budget_['activations_only']['snr_db']:.1f} dB, "
            f"{budget_['activations_only']['agreement']:.2f}% | {budget_['weights_only']['snr_db']:.1f} dB, "
            f"{budget_['weights_only']['agreement']:.2f}% | {shares} |")
    plain = result["variants"][0]
    if plain.get("channel_spread"):
        spreads = plain["channel_spread"]

        def span(suffix):
            values = [value for name, value in spreads.items() if name.endswith(suffix)]
            return f"{min(values):.1f}-{max(values):.1f}"

        lines.append(
            f"\nChannel spread of each MatMul's input in the FP32 graph (widest channel's half-range over the median "
            f"channel's, on the calibration sample): post-GELU fc2 inputs {span('.fc2')}, LayerNorm-output fc1 inputs "
            f"{span('.fc1')}. Outlier channels appear only in fc2 inputs, and `--smooth-gelu` evens out those at "
            f"{SMOOTHING_SPREAD:g} or more; the LayerNorm outputs leave scales folded into the LayerNorms "
            "(SmoothQuant's usual place) nothing to move, so ffx has no option for them.")
    smoothed = next((budget_ for budget_ in result["variants"] if budget_["graph"] == "--smooth-gelu"), None)
    if smoothed:
        activations = [row for row in smoothed["tensors"] if row["kind"] == "activation"]
        median = float(np.median([row["snr_db"] for row in activations]))
        lines.append(
            f"\nWith `--smooth-gelu`, no tensor dominates: the {len(activations)} activation tensors each cost "
            f"{min(row['snr_db'] for row in activations):.1f}-{max(row['snr_db'] for row in activations):.1f} dB "
            f"alone (median {median:.1f} dB); together they leave {smoothed['activations_only']['snr_db']:.1f} dB "
            "even with float weights. With the error spread this evenly, keeping a layer in float buys back only "
            "that layer's share.")
    lines += _speed_lines(result)
    return "\n".join(lines) + "\n"


def _speed_lines(result):
    variants = [budget_ for budget_ in result["variants"] if budget_.get("speed_budget")]
    if not variants:
        return []
    lines = [
        f"\nWhat float layers cost (onnxruntime CPU, 1 thread): the FP32 graph runs longer than the all-INT8 one by "
        "the slowdown below, and a layer kept in float costs its share of the FLOPs of that. Over all subsets of "
        f"layers, the most error float layers can buy back with the graph at {SPEED_BAR:.2f}x of all-INT8 speed or "
        "faster, and the SNR that leaves:\n",
        "| graph | batch | FP32 slowdown | most error bought at the speed bar | float FLOPs | layers | SNR left |",
        "|---|---|---|---|---|---|---|",
    ]
    for budget_ in variants:
        for batch, row in budget_["speed_budget"].items():
            snr = f"{row['predicted_snr_db']:.1f} dB" if row["predicted_snr_db"] is not None else "no error left"
            lines.append(f"| {budget_['graph']} | {batch} | +{100 * row['fp32_slowdown']:.0f}% | {100 * row['share']:.0f}% "
                         f"({row['ratio']:.2f}x) | {100 * row['float_flops_share']:.0f}% | "
                         f"{', '.join(row['keep_fp']) or 'none'} | {snr} |")
    section_6 = json.loads(INT8_ACCURACY.read_text())["rows"] if INT8_ACCURACY.is_file() else []
    lines += _cost_model_check(variants, section_6)
    needed = _least_snr_at_target(section_6)
    if needed:
        # The bar holds at every batch size: the batch with the larger slowdown decides.
        best = max(min(row["predicted_snr_db"] or float("inf") for row in budget_["speed_budget"].values())
                   for budget_ in variants)
        lines.append(f"\nThe least SNR among section 6's graphs that agreed with FP32 on at least 99.9% of the test images "
                     f"was {needed:.1f} dB; at batch {' and '.join(variants[0]['speed_budget'])} alike, the speed bar "
                     f"leaves room for {best:.1f} dB at most.")
    return lines


def _cost_model_check(variants, section_6):
    """Section 6's autopilot graphs (`section_6`: the rows of bench/int8_accuracy.json): the speed the
    FLOPs cost model predicts for their float layers against the speed `ffx bench` measured."""
    plain = next((budget_ for budget_ in variants if budget_["graph"] == "plain INT8"), variants[0])["speed_budget"]
    checks = []
    for row in section_6:
        share = (row.get("search") or {}).get("float_flops_share")
        if not row.get("autopilot") or share is None or not row.get("speed_vs_plain_int8"):
            continue
        predicted = "/".join(f"{1 / (1 + share * plain[batch]['fp32_slowdown']):.2f}" for batch in plain)
        measured = "/".join(f"{row['speed_vs_plain_int8'][batch]:.2f}" for batch in plain if batch in row["speed_vs_plain_int8"])
        checks.append(f"`{row['flags']}` ({100 * share:.0f}% of the FLOPs in float): predicted {predicted}x, "
                      f"measured {measured}x")
    if not checks:
        return []
    return [f"\nThe cost model against section 6's autopilot graphs (batch {'/'.join(plain)}): " + "; ".join(checks) + "."]


def _least_snr_at_target(section_6, agreement=99.9):
    """The lowest logit SNR of a section-6 graph whose test-set agreement reached `agreement` (None when
    there is none, or no bench/int8_accuracy.json)."""
    reached = [row["snr_db"] for row in section_6 if row.get("snr_db") is not None and row["agreement"] >= agreement]
    return min(reached) if reached else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(FIXTURE_CHECKPOINT))
    parser.add_argument("--fashion", help="folder with the Fashion-MNIST train/ and val/ PNG folders")
    parser.add_argument("--workdir", default="int8-noise-work")
    parser.add_argument("--out", default="bench/int8_noise.json")
    args = parser.parse_args(argv)
    result = run(args)
    result["command"] = "python -m bench.int8_noise " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(section(result))


if __name__ == "__main__":
    main()
