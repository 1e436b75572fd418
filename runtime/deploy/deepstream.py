"""A DeepStream `nvinfer` classifier config whose preprocessing is the model's own, exactly.

nvinfer feeds the network `net-scale-factor * (pixel - offsets[c])` for 8-bit RGB pixels: one
scale for all channels, one offset per channel. ffx's transform is `(pixel / 255 - mean[c]) / std[c]`,
which that form expresses exactly only when std is the same in every channel:

    net-scale-factor = 1 / (255 * std)      offsets = 255 * mean[c]

A model with its normalization folded into the first layer (`ffx export --fold-normalization`)
takes `pixel * input_scale / 255`: net-scale-factor = input_scale / 255, offsets = 0. ImageNet's
per-channel std cannot be written; the config is then refused, or, when forced, written with the
closest single scale and the accuracy this costs measured on labelled images.
"""

import dataclasses
import filecmp
import os
import shutil
from pathlib import Path

import numpy as np

from ffx.artifacts import atomic_outputs, check_output_path, output_target
from ffx.errors import FfxError
from ffx.metadata import escape_text
from ffx.model_file import recorded_file
from ffx.onnx_file import external_data_files
from ffx.reporting import iterate_with_warnings_to, silenced
from ffx.runtime.deploy.model_interface import read_model_interface

# nvinfer's network-mode values. It has none for FP8 (its config parser takes 0 FP32, 1 INT8, 2 FP16):
# an FP8 graph or engine gets 2, which matters only when nvinfer builds an engine itself (see _warnings).
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2, "fp8": 2}


class PerChannelNormalization(FfxError):
    """The model normalizes with a different std per channel, which nvinfer cannot express."""


@dataclasses.dataclass
class NvinferScaling:
    net_scale_factor: float
    offsets: tuple  # per channel, RGB
    exact: bool


@dataclasses.dataclass
class ApproximationCost:
    images: int
    exact_top1: float  # percent, the model's own preprocessing
    approximate_top1: float  # percent, the single-scale preprocessing written into the config
    top1_drop: float  # percentage points
    agreement: float  # percent of images with the same top-1 class
    measured_with: str  # the model file run (an engine's source ONNX on machines without a GPU)


@dataclasses.dataclass
class DeepStreamReport:
    config: str
    labels: str
    files: list
    net_scale_factor: float
    offsets: list
    exact: bool
    network_mode: int
    batch_size: int
    approximation: ApproximationCost | None
    warnings: list


def nvinfer_scaling(preprocess, allow_approximation=False):
    """The NvinferScaling that reproduces `preprocess`; PerChannelNormalization when the std
    differs per channel and `allow_approximation` is False (else the mean std is used)."""
    if preprocess.normalization_folded:
        return NvinferScaling(preprocess.input_scale / 255.0, (0.0,) * len(preprocess.mean), True)
    std = [float(s) for s in preprocess.std]
    exact = max(std) == min(std)
    if not exact and not allow_approximation:
        raise PerChannelNormalization(
            f"the model normalizes with a different std per channel ({', '.join(f'{s:g}' for s in std)}); "
            "nvinfer has one net-scale-factor for all channels")
    scale = 1.0 / (255.0 * float(np.mean(std)))
    return NvinferScaling(scale, tuple(255.0 * float(m) for m in preprocess.mean), exact)


def apply_nvinfer_scaling(pixels, scaling):
    """What nvinfer feeds the network for uint8 RGB `pixels` (..., H, W, 3): float32 (..., 3, H, W)."""
    array = np.asarray(pixels, np.float32)
    array = np.float32(scaling.net_scale_factor) * (array - np.asarray(scaling.offsets, np.float32))
    return np.ascontiguousarray(np.moveaxis(array, -1, -3))


def write_deepstream_config(model_path, output_dir, approximate=False, data=None, num_images=500, progress=None):
    """Write OUTPUT_DIR/config_infer_<name>.txt, labels.txt and the model file(s) for `model_path`
    (an engine with its sidecar, or an ffx ONNX from which nvinfer builds its own engine)."""
    interface = read_model_interface(model_path)
    preprocess = interface.preprocess
    scaling = nvinfer_scaling(preprocess, allow_approximation=approximate)
    if interface.precision not in NETWORK_MODES:
        raise FfxError(f"{interface.path.name}: precision {interface.precision} has no nvinfer network-mode")
    output_dir = Path(output_dir)
    name = interface.path.name.split(".")[0] or "model"
    config_path = output_dir / f"config_infer_{name}.txt"
    model_files = _model_files(interface)
    labels = ";".join(escape_text(n).replace(";", ",") for n in interface.class_names) if interface.class_names else None
    targets = [output_dir / target_name for target_name in model_files.values()]
    targets += [output_dir / "labels.txt"] * (labels is not None) + [config_path]
    for target in targets:  # before measuring: a device, FIFO or folder there, a name too long, ...
        if os.path.lexists(target):
            output_target(target)  # an identical file stays, another is refused below
        else:
            check_output_path(target)
    approximation = None
    if not scaling.exact:
        if data is None:
            raise FfxError("an approximate normalization needs labelled images to measure what it costs")
        approximation = measure_approximation(interface, scaling, data, num_images, progress)
    warnings = _warnings(interface, preprocess)
    if interface.class_names and any(escape_text(n) != n for n in interface.class_names):
        warnings.append("class names with line breaks or control characters are written escaped to labels.txt")
    batch_size = interface.max_batch or 1
    text = _config_text(interface, scaling, model_files, batch_size, labels is not None, approximation, warnings)
    outputs = {output_dir / target_name: source for source, target_name in model_files.items()}
    if labels is not None:
        outputs[output_dir / "labels.txt"] = (labels + "\n").encode()  # classifiers: one line, ';'-separated
    outputs[config_path] = text.encode()
    for target, content in outputs.items():  # never replace a different file the user has there
        if target.exists() and not _same_contents(target, content):
            raise FfxError(f"{target}: already exists with other contents; choose another output folder")
    # A file already there with the same bytes (a model deployed into its own folder, a second run) stays as it is.
    changed = {target: content for target, content in outputs.items() if not target.exists()}
    with atomic_outputs(*changed) as temporaries:
        for tmp, content in zip(temporaries, changed.values()):
            if isinstance(content, Path):  # model files are copied, not read whole (external data can be GBs)
                shutil.copyfile(content, tmp)
            else:
                tmp.write_bytes(content)
    written = [str(target) for target in outputs]
    return DeepStreamReport(
        config=str(config_path), labels=str(output_dir / "labels.txt") if labels else None, files=written,
        net_scale_factor=scaling.net_scale_factor, offsets=list(scaling.offsets), exact=scaling.exact,
        network_mode=NETWORK_MODES[interface.precision], batch_size=batch_size, approximation=approximation,
        warnings=warnings,
    )


def _same_contents(target, content):
    """Whether the existing file `target` holds `content` (bytes, or the contents of a Path)."""
    if not target.is_file():
        return False
    if isinstance(content, Path):
        return filecmp.cmp(target, content, shallow=False)
    return target.read_bytes() == content


def _model_files(interface):
    """{source path: file name in the output folder}: the engine and the ONNX it came from (nvinfer
    rebuilds from the ONNX when the engine does not load), or the ONNX alone."""
    files = {interface.path: interface.path.name}
    source_onnx = interface.path if interface.kind == "onnx" else recorded_file(interface.path, interface.sidecar.onnx)
    if source_onnx is not None:
        files[source_onnx] = source_onnx.name
        for location in external_data_files(source_onnx):  # its external weights, where its graph names them
            files[source_onnx.parent / location] = location
    return files


def _warnings(interface, preprocess):
    warnings = []
    _, height, width = preprocess.input_size
    if preprocess.resize != min(height, width):
        warnings.append(
            f"ffx resizes the shorter side to {preprocess.resize} and center-crops {height}x{width}; nvinfer scales "
            f"each frame or object to {height}x{width} without cropping: crop upstream (e.g. nvdspreprocess) "
            "for inputs identical to verification")
    if interface.sidecar is not None and interface.sidecar.backend == "tensorrt-rtx":
        warnings.append(f"{interface.path.name} was built by TensorRT-RTX, which DeepStream does not run; nvinfer "
                        "will build its own engine from the ONNX (onnx-file) on first start")
    if interface.precision == "fp8":
        warnings.append("nvinfer's network-mode has no FP8 value (0 FP32, 1 INT8, 2 FP16): FP8 is in the graph's "
                        "Q/DQ nodes and in an engine nvinfer loads as built; network-mode=2 (FP16) applies only when "
                        "nvinfer builds an engine itself, to the layers left in float; FP8 needs compute capability "
                        "8.9 or newer (not Jetson Orin): ship an engine from `ffx build-engine --fp8` built on the "
                        "target GPU")
    return warnings


def _config_text(interface, scaling, model_files, batch_size, has_labels, approximation, warnings):
    c, h, w = interface.input_dims
    lines = ["# nvinfer classifier config written by ffx (ffx deploy deepstream).",
             f"# Model: {interface.path.name}, {interface.precision}, {interface.output_dims[0]} classes."]
    if scaling.exact:
        lines.append("# net-scale-factor and offsets reproduce the model's preprocessing exactly.")
    else:
        lines.append(f"# APPROXIMATE normalization: per-channel std replaced by its mean. Measured on "
                     f"{approximation.images} images: top-1 {approximation.exact_top1:.2f}% -> "
                     f"{approximation.approximate_top1:.2f}% ({approximation.top1_drop:+.2f} points), "
                     f"agreement {approximation.agreement:.2f}%.")
    lines += [f"# Note: {message}" for message in warnings]
    engine = next((n for n in model_files.values() if not n.endswith(".onnx")), None)
    onnx_file = next((n for n in model_files.values() if n.endswith(".onnx")), None)
    lines += ["[property]", "gpu-id=0", f"net-scale-factor={scaling.net_scale_factor!r}",
              f"offsets={';'.join(repr(o) for o in scaling.offsets)}",
              "model-color-format=0"]  # 0: RGB, the order ffx models take
    if onnx_file:
        lines.append(f"onnx-file={onnx_file}")
    if engine:
        lines.append(f"model-engine-file={engine}")
    if has_labels:
        lines.append("labelfile-path=labels.txt")
    lines += [f"infer-dims={c};{h};{w}", f"batch-size={batch_size}",
              f"network-mode={NETWORK_MODES[interface.precision]}",
              "network-type=1",  # classifier
              "process-mode=1",  # primary: whole frames
              f"output-blob-names={interface.output_name}",
              "classifier-threshold=0.0",
              "maintain-aspect-ratio=0", ""]
    return "\n".join(lines)


def measure_approximation(interface, scaling, data, num_images=500, progress=None):
    """Top-1 of the model on labelled images with its exact preprocessing and with `scaling`."""
    from ffx.datasets import load_batches, open_dataset, select_images
    from ffx.runtime.backends.runner import open_runner

    measured = interface.path
    if interface.kind == "engine":
        measured = recorded_file(interface.path, interface.sidecar.onnx) or measured  # runs anywhere; the engine needs a GPU
    with silenced():
        dataset = open_dataset(data, class_names=interface.class_names)
    if not dataset.labelled:
        raise FfxError(f"{data}: measuring the approximation needs labelled images, one folder per class")
    items = select_images(list(dataset.items), num_images)
    exact, approximate, labels = [], [], []
    with open_runner(measured) as runner:
        loader = load_batches(items, interface.preprocess, 64, progress=progress, description="measuring")
        for batch in iterate_with_warnings_to(None, loader):
            exact.append(runner.infer(batch.images).argmax(1))
            approximate.append(runner.infer(apply_nvinfer_scaling(batch.pixels, scaling)).argmax(1))
            labels.append(np.asarray(batch.labels))
    if not labels:
        raise FfxError(f"{data}: no readable images")
    exact, approximate, labels = map(np.concatenate, (exact, approximate, labels))
    exact_top1, approximate_top1 = 100.0 * np.mean(exact == labels), 100.0 * np.mean(approximate == labels)
    return ApproximationCost(images=len(labels), exact_top1=float(exact_top1), approximate_top1=float(approximate_top1),
                             top1_drop=float(exact_top1 - approximate_top1),
                             agreement=float(100.0 * np.mean(exact == approximate)), measured_with=measured.name)
