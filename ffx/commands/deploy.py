import dataclasses

import click

from ffx.cli import print_json, warn
from ffx.runtime.triton_repository import DEFAULT_QUEUE_DELAY_US


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
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "repository", required=True, type=click.Path(file_okay=False), help="Model repository folder (created if needed; REPO/NAME must not exist).")
@click.option("--name", help="Triton model name [default: from the file name].")
@click.option("--max-batch", type=click.IntRange(min=1), help="max_batch_size [default: the engine profile's max batch; 32 for ONNX].")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Model instances (instance_group count).")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=DEFAULT_QUEUE_DELAY_US, show_default=True, help="Dynamic batching: longest wait for more requests.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
def triton(model, repository, name, max_batch, instances, max_queue_delay_us, as_json):
    """Triton Inference Server model repository for MODEL (engine + sidecar, or ffx ONNX).

    Writes REPO/NAME/config.pbtxt (names, dtypes and dims from the model; max_batch_size and
    dynamic batching from the engine's batch profile), 1/model.plan (backend tensorrt) or
    1/model.onnx (backend onnxruntime), labels.txt attached to the output, ffx.json
    (provenance) and README.txt (the tritonserver command and a client example).

    \b
    Examples:
      ffx deploy triton model.onnx -o model_repository
      ffx deploy triton model.engine -o model_repository --name classifier --max-batch 8
      tritonserver --model-repository=model_repository
    """
    from ffx.runtime.triton_repository import write_triton_repository

    report = write_triton_repository(model, repository, name=name, max_batch=max_batch, instances=instances,
                                     queue_delay_us=max_queue_delay_us)
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    for message in report.warnings:
        warn(message)
    click.echo(f"{report.model_dir}: backend {report.backend}, {report.model_file}, max_batch_size {report.max_batch_size}, "
               f"preferred batch {report.preferred_batch_sizes}, {report.instances} instance(s)")
    click.echo(f"start it: tritonserver --model-repository={report.repository}   (see {report.model_dir}/README.txt)")
