"""Accuracy vs images/s per precision (matplotlib, `pip install matplotlib`)."""

PRECISION_COLOURS = {"pytorch": "#444444", "fp32": "#1f77b4", "fp16": "#2ca02c", "int8": "#d62728"}
METHOD_MARKERS = {"entropy": "o", "max": "s", "percentile": "^", "mse": "D"}


def points(fidelity, speed, batch):
    """[(label, precision key, images/s, top-1, marker)]: the fixture's accuracy (full test set)
    against its own measured speed at `batch`. Every INT8 graph has the same structure, so each
    INT8 point uses the speed measured for the INT8 graph timed."""
    by_precision = {}
    for row in speed["rows"]:
        if row["batch"] == batch:
            key = "pytorch" if row["backend"] == "pytorch" else row["precision"]
            by_precision[key] = row["images_per_s"]
    largest = max(fidelity["counts"])
    out = []
    for row in fidelity["rows"]:
        if row["backend"] == "pytorch":
            key, marker, text = "pytorch", "*", "PyTorch eager FP32"
        elif row["precision"] == "int8":
            if row["calibration_images"] != largest:
                continue
            key, marker, text = "int8", METHOD_MARKERS.get(row["method"], "o"), f"INT8 {row['method']}"
        else:
            key, marker, text = row["precision"], "o", f"onnxruntime {row['precision'].upper()}"
        if key in by_precision:
            out.append((text, key, by_precision[key], row["top1"], marker))
    return out


def plot(fidelity, speed, path, batch=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = batch or max(row["batch"] for row in speed["rows"])
    figure, axis = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    reference = next((r["top1"] for r in fidelity["rows"] if r["backend"] == "pytorch"), None)
    if reference is not None:
        axis.axhline(reference, color=PRECISION_COLOURS["pytorch"], linestyle="--", linewidth=0.8, alpha=0.6,
                     label="PyTorch FP32 top-1")
    for text, key, images_per_s, top1, marker in points(fidelity, speed, batch):
        axis.scatter(images_per_s, top1, s=70, marker=marker, color=PRECISION_COLOURS[key], label=text, zorder=3)
    axis.set_xscale("log")
    axis.set_xlabel(f"images/s on this CPU, batch {batch} (log scale)")
    axis.set_ylabel(f"top-1 on the {fidelity['test_images']:,} Fashion-MNIST test images (%)")
    axis.set_title("Fixture model: accuracy vs CPU speed per precision", fontsize=11)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
