import dataclasses

import click

from ffx.cli import QUEUE_DELAY_US, Count, InputPath, print_json, warn
from ffx.commands.output_options import json_option, output_folder_option
from ffx.metadata import MAX_BATCH
from ffx.runtime.deploy.triton_repository import DEFAULT_QUEUE_DELAY_US


@click.group("deploy")
def command():
    """Write what a serving system needs to run MODEL, preprocessing included.

    \b
    Examples:
      ffx deploy triton model.onnx -o model_repository
      ffx deploy triton model.engine -o model_repository --name classifier --instances 2
      ffx deploy deepstream model.engine -o deepstream/
    """


@command.command("triton")
@click.argument("model", type=InputPath(dir_okay=False))
@output_folder_option("repository", "Model repository folder (created if needed; REPO/NAME must not exist).")
@click.option("--name", help="Triton model name [default: from the file name].")
@click.option("--max-batch", type=click.IntRange(min=1, max=MAX_BATCH), help="max_batch_size [default: the engine profile's max batch; 32 for ONNX].")
@click.option("--instances", type=Count(1, 1024), default=1, show_default=True, help="Model instances (instance_group count).")
@click.option("--max-queue-delay-us", type=QUEUE_DELAY_US, default=DEFAULT_QUEUE_DELAY_US, show_default=True, help="Dynamic batching: longest wait for more requests.")
@click.option("--image-input", is_flag=True, help="Also write NAME_preprocess (Python backend: ffx's own decoder and preprocessing, numpy and Pillow only) and the ensemble NAME_image, which takes image files.")
@json_option()
def triton(model, repository, name, max_batch, instances, max_queue_delay_us, image_input, as_json):
    """Triton Inference Server model repository for MODEL (engine + sidecar, or ffx ONNX).

    Writes REPO/NAME/config.pbtxt (names, dtypes and dims from the model; max_batch_size and
    dynamic batching from the engine's batch profile), 1/model.plan (backend tensorrt) or
    1/model.onnx (backend onnxruntime), labels.txt attached to the output, ffx.json
    (provenance) and README.txt (the tritonserver command and a client example).

    \b
    With --image-input, clients send image files: NAME_image (an ensemble) runs NAME_preprocess
    (Triton's Python backend with ffx's own decoder and preprocessing, copied verbatim, the same
    code as `ffx predict`) and then NAME; NAME_image/README.txt shows a client.

    \b
    Examples:
      ffx deploy triton model.onnx -o model_repository
      ffx deploy triton model.engine -o model_repository --name classifier --max-batch 8
      ffx deploy triton model.engine -o model_repository --name classifier --image-input
      tritonserver --model-repository=model_repository
    """
    from ffx.runtime.deploy.triton_repository import write_triton_repository

    report = write_triton_repository(model, repository, name=name, max_batch=max_batch, instances=instances,
                                     queue_delay_us=max_queue_delay_us, image_input=image_input)
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    for message in report.warnings:
        warn(message)
    click.echo(f"{report.model_dir}: backend {report.backend}, {report.model_file}, max_batch_size {report.max_batch_size}, "
               f"preferred batch {report.preferred_batch_sizes}, {report.instances} instance(s)")
    if image_input:
        click.echo(f"image input: {report.model_name}_image (ensemble) -> {report.model_name}_preprocess (Python backend, "
                   f"ffx's preprocessing) -> {report.model_name}; see {report.model_name}_image/README.txt")
    click.echo(f"start it: tritonserver --model-repository={report.repository}   (see {report.model_dir}/README.txt)")


@command.command("deepstream")
@click.argument("model", type=InputPath(dir_okay=False))
@output_folder_option("output_dir", "Folder for the config, labels and model files.")
@click.option("--approximate-normalization", is_flag=True, help="Write a config for a model with per-channel std anyway (mean std as the one scale); needs --data to measure the accuracy this costs.")
@click.option("--data", type=InputPath(exists=True), help="Labelled images (one folder per class) for --approximate-normalization.")
@click.option("--num-images", type=click.IntRange(min=1), default=500, show_default=True, help="Images measured with --approximate-normalization.")
@json_option()
def deepstream(model, output_dir, approximate_normalization, data, num_images, as_json):
    """DeepStream nvinfer classifier config for MODEL (engine + sidecar, or ffx ONNX).

    Writes config_infer_<name>.txt (network-type, batch size, network-mode from the precision,
    model-engine-file, onnx-file, infer-dims, RGB color format, net-scale-factor and offsets),
    a DeepStream classifier label file and the model files. nvinfer has one scale for all
    channels: a model with a different std per channel (ImageNet) is refused; export it with
    `ffx export --fold-normalization` and the config is exact.

    \b
    Examples:
      ffx export --checkpoint model.pth --fold-normalization -o folded.onnx
      ffx build-engine folded.onnx -o folded.engine
      ffx deploy deepstream folded.engine -o deepstream/
      ffx deploy deepstream model.engine -o ds/ --approximate-normalization --data val/
    """
    from ffx.errors import FfxError
    from ffx.runtime.deploy.deepstream import PerChannelNormalization, write_deepstream_config

    if data and not approximate_normalization:
        raise click.UsageError("--data is only used with --approximate-normalization")
    if approximate_normalization and not data:
        raise click.UsageError("--approximate-normalization needs --data: labelled images to measure its accuracy cost")
    try:
        report = write_deepstream_config(model, output_dir, approximate=approximate_normalization, data=data,
                                         num_images=num_images)
    except PerChannelNormalization as e:
        raise FfxError(f"{e}: re-export with `ffx export --fold-normalization` (exact), or pass "
                       "--approximate-normalization --data DIR to measure and accept the accuracy cost") from None
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    for message in report.warnings:
        warn(message)
    offsets = ";".join(f"{o:g}" for o in report.offsets)
    click.echo(f"{report.config}: net-scale-factor {report.net_scale_factor:.9g}, offsets {offsets}, "
               f"network-mode {report.network_mode}, batch-size {report.batch_size}"
               + ("" if report.exact else " (APPROXIMATE normalization)"))
    if report.approximation:
        a = report.approximation
        click.echo(f"accuracy cost on {a.images} images ({a.measured_with}): top-1 {a.exact_top1:.2f}% -> "
                   f"{a.approximate_top1:.2f}% ({a.top1_drop:+.2f} points), top-1 agreement {a.agreement:.2f}%")
