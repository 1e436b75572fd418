import dataclasses
import sys

import click

from ffx.cli import QUEUE_DELAY_US, InputPath, print_json
from ffx.commands.output_options import json_option
from ffx.commands.runner_options import RunnerOptionGroup
from ffx.errors import FfxError
from ffx.metadata import MAX_BATCH
from ffx.runtime.deploy.serving import DEFAULT_PORT
from ffx.runtime.deploy.triton_repository import DEFAULT_QUEUE_DELAY_US

RUNNER = RunnerOptionGroup()


@click.command("serve")
@click.argument("model", type=InputPath(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True, help="HTTP port.")
@click.option("--grpc-port", type=click.IntRange(1, 65535), help="gRPC port [default: --port + 1].")
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="Prometheus metrics port [default: --port + 2].")
@click.option("--name", help="Model name clients use [default: from the file name].")
@click.option("--max-batch", type=click.IntRange(min=1, max=MAX_BATCH), help="Largest batch Triton forms [default: the engine profile's max batch; 32 for ONNX].")
@click.option("--max-queue-delay-us", type=QUEUE_DELAY_US, default=DEFAULT_QUEUE_DELAY_US, show_default=True, help="Dynamic batching: longest wait for more requests.")
@RUNNER
@click.option("--log-file", type=click.Path(dir_okay=False), help="Keep Triton's log in this file [default: a temporary log, removed when the server stops cleanly].")
@json_option(help="Print the endpoints as one JSON object once ready.")
def command(model, host, port, grpc_port, metrics_port, name, max_batch, max_queue_delay_us, provider, log_file, as_json):
    """Serve MODEL (ffx ONNX, or engine on a GPU machine) with Triton Inference Server.

    HTTP and gRPC (KServe v2 protocol), dynamic batching, health (/v2/health/ready) and
    Prometheus metrics. Two models: NAME takes preprocessed float tensors [N, C, H, W];
    NAME_image takes encoded image files (BYTES [N, 1]) and preprocesses them with the
    model's metadata. Ctrl-C, SIGTERM, SIGHUP or SIGQUIT shuts down cleanly.

    \b
    Examples:
      ffx serve model.onnx
      ffx serve model.onnx --port 9000 --max-batch 16 --max-queue-delay-us 500
      curl -s localhost:8000/v2/health/ready && curl -s localhost:8002/metrics | head
    """
    from ffx.runtime.deploy.serving import PortInUse, ServeSettings, serve_until_stopped

    settings = ServeSettings(host=host, http_port=port, grpc_port=grpc_port, metrics_port=metrics_port,
                             max_batch=max_batch, max_queue_delay_us=max_queue_delay_us, name=name, provider=provider,
                             log_file=log_file)

    def ready(info):
        if as_json:
            print_json(dataclasses.asdict(info))
        else:
            click.echo(f"serving {info.model_name} ({info.backend}, {info.precision}): input {info.input_name!r} "
                       f"float32 {info.input_shape}, batch up to {info.max_batch_size}, dynamic batching "
                       f"(preferred {info.preferred_batch_sizes}, queue delay {max_queue_delay_us} us)")
            click.echo(f"  and {info.image_model_name}: encoded images (BYTES 'image' [N, 1]), preprocessed here")
            click.echo(f"  HTTP {info.http_url}   gRPC {info.grpc_url}   metrics {info.metrics_url}")
            click.echo(f"  server log {info.log_file}{'' if log_file else ' (removed on a clean stop)'}; Ctrl-C stops")
        sys.stdout.flush()

    try:
        serve_until_stopped(model, settings, on_ready=ready)
    except PortInUse as e:
        flag = {"HTTP": "--port", "gRPC": "--grpc-port", "metrics": "--metrics-port"}[e.role]
        raise FfxError(f"{e}; stop what uses it or choose another {flag}") from None
    click.echo("stopped", err=True)
