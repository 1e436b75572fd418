"""The paper's configurations (ff_tiny, ff_base, ff_large) through the whole flow, timed.

Each step runs as the user would run it, one `ffx` process per step, on a randomly initialised
checkpoint saved here (speed and sizes do not depend on the weights): `ffx export --checkpoint`,
`ffx calibrate` (INT8 entropy on ImageNet-sized JPEG photos, statistics cache off, and FP16), and
`ffx build-engine --backend tensorrt-rtx` for the FP32, FP16 and INT8 graphs (TensorRT-RTX builds
ahead of time on this GPU-less machine).
Seconds are wall clock of the whole command, process start and imports included.
"""

import json
import subprocess
import time
from pathlib import Path

ARCHS = ("ff_tiny", "ff_base", "ff_large")


def write_photos(folder, count):
    """`count` 500x375 JPEGs, the generator of bench/calibration.py (decoding cost like ImageNet's)."""
    from bench.calibration import write_photos

    return write_photos(Path(folder), count)


def write_checkpoint(arch, path, seed=0):
    """A randomly initialised state dict of `arch` (what `ffx export --checkpoint` and `ffx bench` read)."""
    import torch

    from ffx.export.configs import ARCHITECTURES
    from ffx.export.model import FFVisionTransformer

    torch.manual_seed(seed)
    torch.save(FFVisionTransformer(ARCHITECTURES[arch].config).state_dict(), path)
    return path


def ffx(*args):
    """(seconds, parsed --json output) of one `ffx` command."""
    started = time.perf_counter()
    done = subprocess.run(["ffx", *map(str, args), "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"ffx {' '.join(map(str, args))} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds, json.loads(done.stdout)


def run(workdir, archs=ARCHS, calibration_images=512, photos=None, build=True, log=print):
    workdir = Path(workdir)
    photos = Path(photos) if photos else write_photos(workdir / "photos", calibration_images)
    rows = []
    for arch in archs:
        row = {"arch": arch}
        checkpoint = write_checkpoint(arch, workdir / f"{arch}.pth")
        fp32 = workdir / f"{arch}.onnx"
        seconds, report = ffx("export", "--checkpoint", checkpoint, "-o", fp32)
        row.update(parameters=report["parameters"], export_seconds=round(seconds, 1), onnx_fp32_mb=_mb(fp32))
        log(f"configs: {arch} exported in {seconds:.1f} s ({row['onnx_fp32_mb']} MB)")

        int8 = workdir / f"{arch}.int8.onnx"
        seconds, report = ffx("calibrate", fp32, "--data", photos, "--num-images", calibration_images, "--method",
                              "entropy", "--no-cache", "--no-tensorrt-check", "-o", int8)
        row.update(calibrate_int8_seconds=round(seconds, 1), calibration_images=report["num_images"],
                   onnx_int8_mb=_mb(int8))
        log(f"configs: {arch} INT8 calibration ({report['num_images']} images) in {seconds:.1f} s")

        fp16 = workdir / f"{arch}.fp16.onnx"
        seconds, report = ffx("calibrate", fp32, "--fp16", "--no-tensorrt-check", "-o", fp16)
        row.update(convert_fp16_seconds=round(seconds, 1), onnx_fp16_mb=_mb(fp16))

        if build:
            for precision, source in (("fp32", fp32), ("fp16", fp16), ("int8", int8)):
                engine = workdir / f"{arch}.{precision}.engine"
                try:
                    seconds, report = ffx("build-engine", source, "-o", engine, "--backend", "tensorrt-rtx")
                except RuntimeError as e:
                    row[f"engine_{precision}_error"] = str(e).splitlines()[-1][:300]
                    log(f"configs: {arch} {precision} engine failed: {row[f'engine_{precision}_error']}")
                    continue
                row[f"engine_{precision}_mb"] = round(report["engine_bytes"] / 1e6, 1)
                row[f"build_{precision}_seconds"] = round(report["build_seconds"], 1)
                row[f"build_{precision}_command_seconds"] = round(seconds, 1)
                row["tensorrt"] = f"{report['backend']} {report['backend_version']}".strip()
                log(f"configs: {arch} {precision} engine {row[f'engine_{precision}_mb']} MB, built in "
                    f"{report['build_seconds']:.1f} s")
                engine.unlink()  # engines of ff_large are large; sizes are recorded
        row["files"] = {"checkpoint": str(checkpoint), "fp32": str(fp32), "fp16": str(fp16), "int8": str(int8)}
        rows.append(row)
    return {"rows": rows, "calibration_images": calibration_images,
            "photos": "synthetic 500x375 JPEG photos (the generator of bench/calibration.py)"}


def _mb(path):
    return round(Path(path).stat().st_size / 1e6, 1)
