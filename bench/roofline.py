"""FLOPs per image of each paper configuration and the resulting GPU roofline, on paper.

These are computed, not measured: a roofline says how fast an engine could possibly run
(compute-bound or weight-bandwidth-bound, whichever is slower), which is the yardstick for any
measured TensorRT number. Peak figures are the vendors' published dense (non-sparse) numbers.

    python -m bench.roofline [--json]
"""

import argparse
import json

from ffx.export.configs import ARCHITECTURES, FFConfig
from ffx.export.model import FFVisionTransformer, count_parameters

# Published dense tensor-core peaks and DRAM bandwidth.
DEVICES = {
    "H100 SXM5": {"fp16_tflops": 989.4, "int8_tops": 1978.9, "bandwidth_gbs": 3350.0},
    "Jetson AGX Orin 64GB (GPU)": {"fp16_tflops": 42.5, "int8_tops": 85.0, "bandwidth_gbs": 204.8},
}
BYTES_PER_WEIGHT = {"fp16": 2, "int8": 1}


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
    peak = DEVICES[device]["fp16_tflops" if precision == "fp16" else "int8_tops"] * 1e12
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
        for device in DEVICES:
            for precision in ("fp16", "int8"):
                for batch in batches:
                    ips, bound = roofline_images_per_second(arch.config, parameters, device, precision, batch)
                    out.append({"arch": name, "gflops_per_image": round(gflops, 2), "device": device,
                                "precision": precision, "batch": batch,
                                "images_per_s_bound": round(ips), "bound_by": bound})
    return out


def main():
    parser = argparse.ArgumentParser(description="On-paper GPU roofline of the FF-only configs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = rows()
    if args.json:
        print(json.dumps(table, indent=2))
        return
    for r in table:
        print(f"{r['arch']:<9} {r['gflops_per_image']:>7} GFLOP  {r['device']:<27} {r['precision']:<5} "
              f"b{r['batch']:<3} <= {r['images_per_s_bound']:>8} img/s ({r['bound_by']}-bound)")


if __name__ == "__main__":
    main()
