import dataclasses
import time
from pathlib import Path

import click

from ffx.cli import Count, FiniteFloat, InputPath, print_json, warn
from ffx.commands.output_options import json_option
from ffx.commands.runner_options import RunnerOptionGroup, parse_batches
from ffx.progress import Progress, stderr_is_terminal
from ffx.runtime.tasks.bench import UNSTABLE_CV

RUNNER = RunnerOptionGroup(models=".onnx targets", threads=True)


@click.command("bench")
@click.argument("targets", nargs=-1, required=True, type=InputPath(dir_okay=False))
@RUNNER.batch_sizes
@click.option("--iterations", type=Count(5, 1_000_000), default=50, show_default=True, help="Timed calls per measurement.")
@click.option("--warmup", type=Count(0, 10_000), default=5, show_default=True, help="Untimed calls first.")
@click.option("--max-seconds", type=FiniteFloat(min=0.1, max=3600), default=10.0, show_default=True, help="Stop a measurement early after this long (at least 5 calls).")
@RUNNER
@click.option("--cuda-graph", is_flag=True, help="Engines: replay captured CUDA graphs (one per batch size) instead of enqueuing each call; full TensorRT captures through cuda-python (pycuda has no graph capture).")
@json_option("a JSON list")
def command(targets, batch_text, iterations, warmup, max_seconds, provider, threads, cuda_graph, as_json):
    """Latency and throughput of engines, ONNX models and checkpoints, side by side.

    Per target and batch size: warm-up calls, then timed end-to-end calls on a random-normal
    batch (p50/p90/p99 latency, images/s). A warning flags timings whose coefficient of
    variation exceeds 10%.

    \b
    Examples:
      ffx bench model.pth model.onnx model.int8.onnx --batch 1,8
      ffx bench model.engine --batch 1,8,32 --cuda-graph --json
    """
    from ffx.runtime.tasks.bench import bench

    batches = parse_batches(batch_text)
    started = time.perf_counter()
    interactive_stderr = stderr_is_terminal()
    interactive = not as_json and interactive_stderr
    if interactive:
        click.echo(f"benchmarking {len(targets)} target(s) x {len(batches)} batch size(s), "
                   f"up to {max_seconds:g} s each ...", err=True)
    echo_row = None if as_json else _row_printer()
    # Each measurement takes up to --max-seconds: a log shows how far the run got (on a terminal
    # the table's rows, printed as they come, already do).
    with Progress(len(targets) * len(batches), "bench", unit="measurements",
                  enabled=as_json or not interactive_stderr) as progress:
        def on_result(result):
            progress.note(f"{Path(result.target).name} batch {result.batch}")
            progress.update(1)
            if echo_row is not None:
                echo_row(result)

        results = bench(targets, batches, iterations=iterations, warmup=warmup, max_seconds=max_seconds,
                        provider=provider, cuda_graph=cuda_graph, threads=threads, on_result=on_result, on_skip=warn)
    for result in results:
        if result.compute_ms is not None and not as_json:
            click.echo(f"{result.target} batch {result.batch}: host-to-device {result.h2d_ms:.3f} ms, "
                       f"compute {result.compute_ms:.3f} ms, device-to-host {result.d2h_ms:.3f} ms (CUDA events, median)")
    for result in results:
        if not result.stable:
            warn(f"{result.target} batch {result.batch}: timings vary (CV {result.cv:.0%} > {UNSTABLE_CV:.0%}); "
                 "close other programs or raise --iterations")
    if interactive:
        click.echo(f"{len(results)} measurement(s) in {time.perf_counter() - started:.1f} s", err=True)
    if as_json:
        print_json([dataclasses.asdict(r) for r in results])


def _row_printer():
    header = f"{'target':<28} {'backend':<16} {'precision':<9} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'images/s':>10} {'CV':>5}"
    state = {"printed": False}

    def echo(result):
        if not state["printed"]:
            click.echo(header)
            state["printed"] = True
        target = result.target if len(result.target) <= 28 else "..." + result.target[-25:]
        click.echo(f"{target:<28} {result.backend:<16} {result.precision:<9} {result.batch:>5} {result.p50_ms:>9.2f} "
                   f"{result.p90_ms:>9.2f} {result.p99_ms:>9.2f} {result.images_per_s:>10.1f} {result.cv:>5.0%}")

    return echo
