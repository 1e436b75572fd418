"""The sensitivity ranking as a picture (matplotlib, an optional dependency: `pip install matplotlib`)."""

from pathlib import Path

from ffx.artifacts import atomic_output, check_output_path
from ffx.errors import FfxError


FORMATS = ("png", "svg", "pdf")


def check_plot_path(path):
    """FfxError now, before minutes of measuring, if `path` is not a plot draw_sensitivity can write."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise FfxError(f"--plot {path}: give a .png, .svg or .pdf file")
    check_output_path(path)  # a device, a folder, an input or a data folder of this command, ...
    _pyplot()


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FfxError("drawing the plot needs matplotlib (pip install matplotlib)") from None
    return plt


def draw_sensitivity(report, path):
    """Per layer, most harmful first: logit SNR with the layer alone in INT8 and the FLOPs share."""
    check_plot_path(path)
    plt = _pyplot()
    path = Path(path)
    names = [row.name for row in report.layers]
    figure, (snr_axis, flops_axis) = plt.subplots(1, 2, sharey=True, figsize=(10, 0.28 * len(names) + 1.8))
    positions = list(range(len(names)))[::-1]
    snr_axis.barh(positions, [row.quantized_alone.snr_db for row in report.layers], color="#d62728",
                  label="only this layer INT8")
    snr_axis.axvline(report.all_int8.snr_db, color="#444444", linestyle="--", label="every layer INT8")
    snr_axis.set_xlabel("logit SNR vs FP32 (dB, higher is better)")
    snr_axis.set_yticks(positions, names, fontsize=8)
    snr_axis.legend(fontsize=8, loc="lower right")
    flops_axis.barh(positions, [100 * row.flops_share for row in report.layers], color="#1f77b4")
    flops_axis.set_xlabel("share of matrix-product FLOPs (%)")
    figure.suptitle(f"INT8 sensitivity, {report.held_out_images} held-out images ({report.method} ranges)", fontsize=10)
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lower().lstrip("."), dpi=120)
    plt.close(figure)
