"""Time `ffx export` (with its parity check) for each paper configuration on this machine.

    python -m bench.export_time [--archs ff_tiny,ff_base,ff_large] [--json]

Each export runs in a fresh `ffx export` process, as a user would run it, with random weights;
the reported seconds are wall-clock for the whole command (import, trace, optimise, check,
parity on batch 1 and 3, write) and peak resident memory.
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="ff_tiny,ff_base,ff_large")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            out = Path(tmp) / f"{arch}.onnx"
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            started = time.perf_counter()
            done = subprocess.run(["ffx", "export", "--arch", arch, "-o", str(out), "--json"],
                                  capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if done.returncode != 0:
                sys.exit(f"{arch}: export failed: {done.stderr.strip()}")
            report = json.loads(done.stdout)
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            rows.append({
                "arch": arch,
                "parameters": report["parameters"],
                "onnx_mb": round(out.stat().st_size / 1e6, 1),
                "export_seconds": round(seconds, 1),
                "max_abs_diff": report["max_abs_diff"],
                "peak_rss_gb": round(max(peak, before) / 1e6, 2),
            })
    if args.json:
        print(json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=2))
        return
    print(f"{'arch':<10} {'parameters':>12} {'ONNX MB':>8} {'export s':>9} {'max abs diff':>13} {'peak GB':>8}")
    for r in rows:
        print(f"{r['arch']:<10} {r['parameters']:>12,} {r['onnx_mb']:>8} {r['export_seconds']:>9} "
              f"{r['max_abs_diff']:>13.2e} {r['peak_rss_gb']:>8}")


if __name__ == "__main__":
    main()
