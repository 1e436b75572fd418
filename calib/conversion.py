"""What INT8 calibration and FP16 conversion share: gathering activation statistics on the
chosen images, and the tail that checks the converted graph and writes it with its manifest."""

import dataclasses
import time

from ffx.artifacts import sha256_bytes
from ffx.calib.model_io import finish_model, write_outputs
from ffx.calib.selection import choose_calibration_images, decode_reference_images
from ffx.calib.statistics import collect_statistics, statistics_key
from ffx.calib.validate import check_onnxruntime, tensorrt_gate
from ffx.errors import FfxError
from ffx.reporting import warn


@dataclasses.dataclass
class ConversionReport:
    """What a conversion wrote and how it was checked (the fields INT8 and FP16 share)."""

    output: str
    manifest: str
    sha256: str
    precision: str  # "int8" or "fp16"
    method: str  # INT8 range method, or "fp16"
    num_images: int  # images whose activations were collected (0: none)
    skipped_images: int
    cache: str  # statistics cache: hit, miss or off
    onnxruntime: dict
    tensorrt: dict
    input_sha256: str
    image_list_sha256: str | None
    seconds: float


@dataclasses.dataclass
class Checks:
    """How the tail checks a converted graph before writing it."""

    label: str  # "INT8" or "FP16", in messages
    agreement_warning: float  # warn below this top-1 agreement with FP32 on the reference images
    advice: str  # appended to that warning
    tensorrt: bool = True
    tensorrt_backend: str = "auto"


def gather_statistics(kind, source, data, tensors, options, progress):
    """(CalibrationImages, ActivationStatistics) of `tensors` over the images chosen from `data`,
    read from or written to the statistics cache as `options` say."""
    images = choose_images(source, data, options)
    return images, image_statistics(kind, source, images, tensors, options, progress)


def choose_images(source, data, options):
    """The calibration images `options` choose from `data` (a path or an ImageDataset)."""
    return choose_calibration_images(data, options.num_images, options.seed, source.metadata.class_names)


def image_statistics(kind, source, images, tensors, options, progress):
    """ActivationStatistics of `tensors` in `source.model` over the chosen `images`."""
    key = statistics_key(kind, source.model_sha256, source.preprocess, images.sha256, tensors)
    stats = collect_statistics(
        kind, source.model, tensors, images.items, source.preprocess, key, cache_dir=options.statistics_cache,
        workers=options.workers, progress=progress, relative_path=images.dataset.relative_path,
    )
    if stats.images_used == 0:
        raise FfxError(f"none of the {len(images.items)} chosen images in {images.data_path} could be read")
    return stats


def check_and_write(model, source, output, manifest_path, manifest, calibration, images, stats, checks):
    """Stamp `model` with the source's metadata and `calibration` (which gains the manifest's
    name and hash), check it in onnxruntime against the FP32 reference logits and with TensorRT,
    then write the model and its manifest together. Returns (model bytes, onnxruntime check dict,
    TensorRT check dict). Raises FfxError/GateFailed before anything is written."""
    manifest_data = manifest.to_bytes()
    calibration = dict(calibration, manifest=manifest_path.name, manifest_sha256=sha256_bytes(manifest_data),
                       input_sha256=source.sha256)
    model_data = finish_model(model, source, manifest.precision, calibration)
    reference = decode_reference_images(images, stats.reference_indices, source.preprocess) if stats else None
    ort_check = check_onnxruntime(
        model_data, source.input_name, reference, stats.reference_logits if reference is not None else None,
        input_shape=source.input_shape,
    )
    agreement = ort_check.top1_agreement
    if agreement is not None and agreement < checks.agreement_warning:
        warn(f"{checks.label} agrees with FP32 on only {agreement:.1%} of {ort_check.images} calibration images{checks.advice}")
    trt_check = tensorrt_gate(model_data, checks.tensorrt_backend, checks.tensorrt, checks.label, output)
    write_outputs(output, model_data, manifest_path, manifest_data)
    return model_data, dataclasses.asdict(ort_check), trt_check


def report_fields(output, manifest_path, model_data, source, images, stats, ort_check, trt_check, started):
    """The ConversionReport fields every conversion fills the same way."""
    return {
        "output": str(output),
        "manifest": str(manifest_path),
        "sha256": sha256_bytes(model_data),
        "num_images": stats.images_used if stats else 0,
        "skipped_images": len(stats.skipped) if stats else 0,
        "cache": stats.cache if stats else "off",
        "onnxruntime": ort_check,
        "tensorrt": trt_check,
        "input_sha256": source.sha256,
        "image_list_sha256": images.list_sha256 if images else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
