"""FLOPs per image of each paper configuration and the resulting GPU roofline, on paper.

These are computed, not measured: a roofline says how fast an engine could possibly run
(compute-bound or weight-bandwidth-bound, whichever is slower), which is the yardstick for any
measured TensorRT number. Peak figures are the vendors' published dense (non-sparse) numbers.

    python -m bench.roofline [--json] [--fp8]

`--fp8` prints what FP8 would buy ff_base on Hopper (H100/H200) on paper, beside the GEMM speeds
measured on an H200 in issue 19 (`fp8_on_paper`; BENCHMARKS.md section 6d).
"""

import argparse
import json

from ffx.export.configs import ARCHITECTURES, FFConfig
from ffx.export.model import FFVisionTransformer, count_parameters

# Published dense tensor-core peaks and DRAM bandwidth (NVIDIA's H100 and H200 datasheets give FP8
# and INT8 at twice FP16's dense rate on both, with sparsity doubling each again; Orin has no FP8).
DEVICES = {
    "H100 SXM5": {"fp16_tflops": 989.4, "int8_tops": 1978.9, "fp8_tflops": 1978.9, "bandwidth_gbs": 3350.0},
    "Jetson AGX Orin 64GB (GPU)": {"fp16_tflops": 42.5, "int8_tops": 85.0, "bandwidth_gbs": 204.8},
    "H200 SXM": {"fp16_tflops": 989.4, "int8_tops": 1978.9, "fp8_tflops": 1978.9, "bandwidth_gbs": 4800.0},
}
ROOFLINE_DEVICES = ("H100 SXM5", "Jetson AGX Orin 64GB (GPU)")  # section 5's table
BYTES_PER_WEIGHT = {"fp16": 2, "int8": 1, "fp8": 1}
PEAK_KEY = {"fp16": "fp16_tflops", "int8": "int8_tops", "fp8": "fp8_tflops"}

# Issue 19's measurement, not this repository's (no GPU here): TFLOP/s of ff_base's own GEMM shapes at
# batch 64 on an NVIDIA H200 (torch 2.11, CUDA 13; FP16 torch.matmul, INT8 torch._int_mm, FP8 E4M3
# torch._scaled_mm with the token GEMMs padded to 208/800 for FP8). Quoted, with their source, beside
# the roofline; `ffx` cannot re-measure them without a GPU.
ISSUE_19_H200_GEMMS = [
    {"gemm": "feature fc1", "shape": "12608x768x3072", "fp16": 646, "int8": 118, "fp8": 967},
    {"gemm": "feature fc2", "shape": "12608x3072x768", "fp16": 719, "int8": 113, "fp8": 1183},
    {"gemm": "token fc1", "shape": "49152x197x788", "fp16": 83, "int8": 90, "fp8": 371},
    {"gemm": "token fc2", "shape": "49152x788x197", "fp16": 95, "int8": 100, "fp8": 551},
]


def flops_per_image(config: FFConfig):
    """Multiply-adds x 2 of the matrix products (stem conv, both MLPs of every block, head);
    LayerNorm, GELU and residual adds are a few percent and omitted."""
    patches = config.grid**2
    tokens, dim = config.num_tokens, config.embed_dim
    stem = 2 * patches * dim * config.in_chans * config.patch_size**2
    feature_mlp = 2 * tokens * 2 * dim * config.feature_hidden  # fc1 and fc2 over every token
    token_mlp = 2 * dim * 2 * tokens * config.token_hidden  # fc1 and fc2 over every channel
    head = 2 * dim * config.num_classes
    return stem + config.depth * (feature_mlp + token_mlp) + head


def activation_bytes_per_image(config, bytes_per_value):
    """Reads + writes of the largest intermediate tensors per block (hidden layers dominate)."""
    per_block = 2 * (config.num_tokens * config.feature_hidden + config.embed_dim * config.token_hidden)
    return config.depth * per_block * bytes_per_value


def roofline_images_per_second(config, parameters, device, precision, batch):
    peak = DEVICES[device][PEAK_KEY[precision]] * 1e12
    bandwidth = DEVICES[device]["bandwidth_gbs"] * 1e9
    compute_s = batch * flops_per_image(config) / peak
    memory_s = (parameters * BYTES_PER_WEIGHT[precision]
                + batch * activation_bytes_per_image(config, BYTES_PER_WEIGHT[precision])) / bandwidth
    seconds = max(compute_s, memory_s)
    return batch / seconds, "compute" if compute_s >= memory_s else "memory"


def rows(batches=(1, 8, 32)):
    out = []
    for name, arch in ARCHITECTURES.items():
        parameters = count_parameters(FFVisionTransformer(arch.config))
        gflops = flops_per_image(arch.config) / 1e9
        for device in ROOFLINE_DEVICES:
            for precision in ("fp16", "int8"):
                for batch in batches:
                    ips, bound = roofline_images_per_second(arch.config, parameters, device, precision, batch)
                    out.append({"arch": name, "gflops_per_image": round(gflops, 2), "device": device,
                                "precision": precision, "batch": batch,
                                "images_per_s_bound": round(ips), "bound_by": bound})
    return out


def fp8_on_paper(arch="ff_base", batches=(1, 8, 64), devices=("H100 SXM5", "H200 SXM")):
    """What FP8 would buy `arch` on Hopper on paper: the roofline bound of FP16, INT8 and FP8 per
    device and batch, FP8's ratio to FP16, and issue 19's measured GEMM speeds with their ratios."""
    config = ARCHITECTURES[arch].config
    parameters = count_parameters(FFVisionTransformer(config))
    bounds = []
    for device in devices:
        for batch in batches:
            row = {"device": device, "batch": batch}
            for precision in ("fp16", "int8", "fp8"):
                ips, bound = roofline_images_per_second(config, parameters, device, precision, batch)
                row[precision] = {"images_per_s_bound": round(ips), "bound_by": bound}
            row["fp8_vs_fp16"] = round(row["fp8"]["images_per_s_bound"] / row["fp16"]["images_per_s_bound"], 2)
            bounds.append(row)
    gemms = [dict(gemm, fp8_vs_fp16=round(gemm["fp8"] / gemm["fp16"], 2), int8_vs_fp16=round(gemm["int8"] / gemm["fp16"], 2))
             for gemm in ISSUE_19_H200_GEMMS]
    # The four GEMMs of every block at those measured rates: the block's matrix-product time per precision.
    block_us = {precision: sum(2 * _shape_product(gemm["shape"]) / (gemm[precision] * 1e12) * 1e6
                               for gemm in ISSUE_19_H200_GEMMS) for precision in ("fp16", "int8", "fp8")}
    at_measured_rates = {"batch": 64, "block_gemm_us": {p: round(t, 1) for p, t in block_us.items()},
                         "model_gemm_ms": {p: round(t * config.depth / 1000, 2) for p, t in block_us.items()},
                         "fp8_vs_fp16": round(block_us["fp16"] / block_us["fp8"], 2),
                         "int8_vs_fp16": round(block_us["fp16"] / block_us["int8"], 2)}
    return {"arch": arch, "gflops_per_image": round(flops_per_image(config) / 1e9, 2), "parameters": parameters,
            "bounds": bounds, "issue_19_h200_gemms": gemms, "gemms_at_measured_rates": at_measured_rates,
            "peaks": {device: {key: DEVICES[device][key] for key in ("fp16_tflops", "int8_tops", "fp8_tflops",
                                                                     "bandwidth_gbs")} for device in devices}}


def _shape_product(shape):
    m, k, n = (int(d) for d in shape.split("x"))
    return m * k * n


def main():
    parser = argparse.ArgumentParser(description="On-paper GPU roofline of the FF-only configs")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--fp8", action="store_true", help="what FP8 would buy ff_base on H100/H200, on paper")
    args = parser.parse_args()
    if args.fp8:
        paper = fp8_on_paper()
        if args.json:
            print(json.dumps(paper, indent=2))
            return
        for r in paper["bounds"]:
            print(f"{paper['arch']} {r['device']:<10} b{r['batch']:<3} " + "  ".join(
                f"{p} <= {r[p]['images_per_s_bound']:>7} ({r[p]['bound_by']})" for p in ("fp16", "int8", "fp8"))
                + f"  FP8/FP16 {r['fp8_vs_fp16']:.2f}x")
        for g in paper["issue_19_h200_gemms"]:
            print(f"issue 19, H200 {g['gemm']:<12} {g['shape']:<15} FP16 {g['fp16']} INT8 {g['int8']} FP8 {g['fp8']} "
                  f"TFLOP/s: FP8/FP16 {g['fp8_vs_fp16']:.2f}x")
        rates = paper["gemms_at_measured_rates"]
        print(f"{paper['arch']} GEMMs at those rates, batch {rates['batch']}: " + ", ".join(
            f"{p} {ms} ms" for p, ms in rates["model_gemm_ms"].items())
            + f"; FP8 {rates['fp8_vs_fp16']:.2f}x FP16, INT8 {rates['int8_vs_fp16']:.2f}x FP16")
        return
    table = rows()
    if args.json:
        print(json.dumps(table, indent=2))
        return
    for r in table:
        print(f"{r['arch']:<9} {r['gflops_per_image']:>7} GFLOP  {r['device']:<27} {r['precision']:<5} "
              f"b{r['batch']:<3} <= {r['images_per_s_bound']:>8} img/s ({r['bound_by']}-bound)")


if __name__ == "__main__":
    main()
