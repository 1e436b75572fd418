"""Every layer in FP8 on the deep fixture: issue 19's first bar (every Conv/MatMul/Gemm input FP8,
>= 99.7% agreement with FP32 on the 10,000 test images, measured by `ffx verify`).

    python -m bench.fp8_every_layer --fashion DIR [--checkpoint PATH] [--workdir DIR] [--out FILE]
                                    [--modelopt-python PYTHON]

Rows: `ffx calibrate --fp8 --keep-fp none` (max ranges; a plateau value such as the normalized
black background put exactly on the E4M3 grid), and the same with `--bias-correction position`. Each is calibrated on the same 512 train images as bench.int8_accuracy's rows, scored
in-process on every test image against the FP32 ONNX (the reference logits are cached in the work
folder), checked by TensorRT-RTX, and the best row is then scored by `ffx verify` itself, whose
figure is the bar's. With --modelopt-python, NVIDIA ModelOpt's fp8 mode is asked for the same
thing (`--op_types_to_quantize Conv MatMul Gemm`, the same calibration images) and the layers it
put in FP8 are counted. Writes bench/fp8_every_layer.json (BENCHMARKS.md section 6e, after the table).
"""

import argparse
import json
import sys
from pathlib import Path

from bench.fidelity import decode_images
from bench.int8_accuracy import (FP8_AGREEMENT_BAR, _relative, calibrate, calibration_batch, ffx, float_layers,
                                 modelopt_int8, prepared_fixture, reference_logits, score_rows, tensorrt_acceptance,
                                 without_work_paths)

DEEP_CHECKPOINT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "fashion_tiny197" / "model.pth"
VARIANTS = {
    "ffx FP8, every layer (--keep-fp none)": ["--fp8", "--keep-fp", "none"],
    "ffx FP8, every layer + --bias-correction position": ["--fp8", "--keep-fp", "none", "--bias-correction", "position"],
}


def run(args, log=print):
    fx = prepared_fixture(args)
    images, labels, _ = decode_images(fx.test, fx.preprocess, fx.info.get("class_names"))
    reference = reference_logits(fx.fp32, images, fx.workdir, "pcall")
    rows = []
    for index, (name, flags) in enumerate(VARIANTS.items()):
        output = fx.workdir / f"every-layer.{index}.onnx"
        _, error = calibrate(fx.fp32, fx.train, output, flags, fx.cache)
        rows.append({"model": name, "flags": " ".join(flags), "path": str(output), "error": error,
                     "tensorrt_rtx": tensorrt_acceptance(output) if error is None else None})
        log(f"every layer: {name}: {error or 'calibrated'}")
    fp32_top1 = score_rows(rows, images, reference, labels, log, "every layer")
    best = max((row for row in rows if row["error"] is None), key=lambda row: row["agreement"])
    code, stdout, _ = ffx("verify", best["path"], "--reference", fx.fp32, "--data", fx.test, "--json", check=False)
    verified = json.loads(stdout)
    best["verify"] = {"exit_code": code, "agreement": verified["agreement"], "images": verified["images"],
                      "top1": verified["candidate"]["top1"], "reference_top1": verified["reference"]["top1"]}
    log(f"every layer: ffx verify {best['model']}: agreement {verified['agreement']:.2f}% on {verified['images']}")
    result = {"checkpoint": _relative(args.checkpoint), "test_images": int(len(labels)), "fp32_top1": round(fp32_top1, 4),
              "rows": rows}
    if args.modelopt_python:
        result["modelopt"] = modelopt_every_layer(args.modelopt_python, fx, rows[0]["path"], log)
    return result


def modelopt_every_layer(python, fx, ffx_graph, log):
    """ModelOpt's fp8 mode asked to quantize every Conv/MatMul/Gemm, calibrated on the images of
    `ffx_graph`'s manifest: how many of the layers it put in FP8 (its graph is not scored here)."""
    output = fx.workdir / "modelopt.fp8.every-layer.onnx"
    images = calibration_batch(Path(ffx_graph).with_suffix(".json"), fx.train, fx.preprocess)
    asked = ["--op_types_to_quantize", "Conv", "MatMul", "Gemm"]
    error = modelopt_int8(python, fx.fp32, output, images, fx.input_name, "max", fx.workdir, mode="fp8", extra=asked)
    record = {"command_options": "--quantize_mode fp8 --calibration_method max " + " ".join(asked), "error": error,
              "calibration_images": int(len(images))}
    if error is None:
        quantized, left = float_layers(output)
        record.update(quantized=quantized, layers=quantized + len(left), left_in_float=left)
        log(f"every layer: ModelOpt fp8 asked for Conv MatMul Gemm: {quantized} of {quantized + len(left)} layers "
            f"in FP8 (left in float: {', '.join(left) or 'none'})")
    return record


def section(result):
    """The paragraph and table BENCHMARKS.md shows after section 6e's table."""
    lines = [f"Every layer in FP8, on all {result['test_images']:,} test images (`{result['command']}`; after the plateau "
             "rule of calib/fp8.py, which the `every layer` row of the table above predates):\n",
             "| model | agreement with FP32 | top-1 | logit SNR | TensorRT-RTX |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        if row["error"] is not None:
            lines.append(f"| {row['model']} | not measured: {row['error']} | | | |")
        else:
            lines.append(f"| {row['model']} | {row['agreement']:.2f}% | {row['top1']:.2f}% | {row['snr_db']:.1f} dB | "
                         f"{row['tensorrt_rtx']} |")
    for row in result["rows"]:
        if row.get("verify"):
            verify = row["verify"]
            lines.append(f"\n`ffx verify` of `{row['model']}` on the {verify['images']:,} test images: agreement "
                         f"{verify['agreement']:.2f}% ({'meets' if verify['agreement'] >= FP8_AGREEMENT_BAR else 'does NOT meet'} "
                         f"issue 19's {FP8_AGREEMENT_BAR:g}% with every layer in FP8), top-1 {verify['top1']:.2f}% "
                         f"(FP32 {verify['reference_top1']:.2f}%), exit {verify['exit_code']}.")
    modelopt = result.get("modelopt")
    if modelopt and modelopt["error"] is None:
        left = modelopt["left_in_float"]
        lines.append(f"\nNVIDIA ModelOpt's fp8 mode asked for the same (`{modelopt['command_options']}`, the same "
                     f"{modelopt['calibration_images']} calibration images) put {modelopt['quantized']} of the {modelopt['layers']} layers in FP8 and left "
                     f"{len(left)} in float ({', '.join(left)}): it cannot write an every-layer FP8 graph of this model, "
                     "so its fp8 row in the table above, with the same two layers in float as ffx's default, is the "
                     "like-for-like comparison.")
    elif modelopt:
        lines.append(f"\nNVIDIA ModelOpt's fp8 mode asked for every layer: not measured ({modelopt['error']}).")
    return "\n".join(lines) + "\n\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEEP_CHECKPOINT))
    parser.add_argument("--fashion", required=True, help="folder with the Fashion-MNIST train/ and val/ PNG folders")
    parser.add_argument("--workdir", default="fp8-every-layer-work")
    parser.add_argument("--out", default="bench/fp8_every_layer.json")
    parser.add_argument("--modelopt-python", help="python of a virtual environment with nvidia-modelopt")
    args = parser.parse_args(argv)
    result = without_work_paths(run(args))
    result["command"] = "python -m bench.fp8_every_layer " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(section(result))


if __name__ == "__main__":
    main()
