"""The `ffx` command line: a lazy Click group over one module per command.

Commands are imported only when run, so `ffx predict` on a Jetson never imports torch, and
`ffx --help` is instant. Each command module in ffx/commands/ parses options and calls one
library function; errors the user can fix arrive as FfxError and leave as one line on stderr
with exit code 2 (1 for a failed accuracy gate), never as a traceback.
"""

import errno
import importlib
import importlib.util
import json
import math
import os
import signal
import sys

import click

from ffx import __version__
from ffx.errors import TERMINATING_SIGNALS, FfxError

COMMANDS = {
    "export": ("ffx.commands.export", "PyTorch checkpoint -> ONNX with metadata and a parity check."),
    "calibrate": ("ffx.commands.calibrate", "FP32 ONNX -> INT8 (Q/DQ) or FP16 ONNX for TensorRT."),
    "sensitivity": ("ffx.commands.sensitivity", "Which layers cost INT8 accuracy, ranked, on held-out images."),
    "compare": ("ffx.commands.compare", "Block by block: where a quantized graph's error enters and grows."),
    "build-engine": ("ffx.commands.build_engine", "ONNX -> TensorRT / TensorRT-RTX engine + sidecar."),
    "verify": ("ffx.commands.verify", "Accuracy gate: candidate vs reference on labelled images."),
    "bench": ("ffx.commands.bench", "Latency and throughput of engines, ONNX models, checkpoints."),
    "predict": ("ffx.commands.predict", "Top-k classes for images."),
    "inspect": ("ffx.commands.inspect", "Show what an ONNX model or engine contains."),
    "deploy": ("ffx.commands.deploy", "Triton model repository or DeepStream config for a model."),
    "serve": ("ffx.commands.serve", "Serve a model over HTTP and gRPC with Triton Inference Server."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name in COMMANDS if _module_exists(COMMANDS[name][0])]

    def get_command(self, ctx, name):
        if name not in COMMANDS or not _module_exists(COMMANDS[name][0]):
            return None
        return importlib.import_module(COMMANDS[name][0]).command

    def format_commands(self, ctx, formatter):
        # Short help without importing every command module (and torch with them).
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        from ffx.artifacts import command_inputs
        from ffx.reporting import warnings_printed_by

        try:
            # command_inputs: filled by the InputPath arguments as they are parsed.
            with command_inputs(), warnings_printed_by(warn):
                return super().invoke(ctx)
        except FfxError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(e.exit_code)
        except OSError as e:
            if e.errno != errno.ENAMETOOLONG:
                raise
            # Only a path given on the command line gets this long (ffx's own names are short).
            click.echo(f"Error: {e.filename}: {e.strerror}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as e:
            click.echo("Interrupted; no partial output was written.", err=True)
            ctx.exit(128 + (e.signum if isinstance(e, Terminated) else signal.SIGINT))


def _module_exists(module_name):
    return importlib.util.find_spec(module_name) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ffx")
def cli():
    """ffx: take a feed-forward-only vision transformer from a PyTorch checkpoint to a fast,
    verified TensorRT engine.

    \b
    The flow:
      ffx export --checkpoint model.pth -o model.onnx
      ffx calibrate model.onnx --data calib_images/ -o model.int8.onnx
      ffx build-engine model.int8.onnx -o model.engine
      ffx verify model.engine --reference model.pth --data val/
      ffx bench model.pth model.onnx model.int8.onnx
    """


class FiniteFloat(click.FloatRange):
    """A float option that, unlike click's FloatRange, refuses nan (every comparison with it is
    false, so a target or limit of nan would be met or failed by anything) and inf."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class Count(click.IntRange):
    """A whole-number option with both bounds always given, the type of every count ffx takes:
    click's IntRange without a maximum lets `--warmup 1000000000` (a loop that never ends),
    `--threads 20000` (20,000 threads that also hold off SIGTERM) or a queue delay past 64 bits
    through to the library. `what` says where the maximum comes from, for the message."""

    def __init__(self, minimum, maximum, what=None):
        super().__init__(minimum, maximum)
        self.what = what

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            if self.what is None or not _is_whole_number(value):
                raise
            self.fail(f"{value} is not in the range {self.min}<=x<={self.max} ({self.what}).", param, ctx)


def _is_whole_number(value):
    return isinstance(value, int) or str(value).strip().lstrip("+-").isdigit()


def cpu_count():
    """CPUs this process may run on: the most threads or decoding processes a count may ask for."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# The shared counts. Threads and decoding processes beyond the CPUs only contend; a batching delay
# beyond 10 s is no longer online serving; warm-up and timed calls beyond these are a typo.
THREADS = Count(1, max(cpu_count(), 1), "this machine's CPUs")
WORKERS = Count(0, max(cpu_count(), 2), "this machine's CPUs")
MAX_QUEUE_DELAY_US = 10_000_000
QUEUE_DELAY_US = Count(0, MAX_QUEUE_DELAY_US, "10 s")
class InputPath(click.Path):
    """A path the command reads (a model, checkpoint, image, data folder or list file): recorded so
    that no output of the same command is written over it (ffx.artifacts.check_output_path). A
    device, FIFO or socket (/dev/zero, /dev/fd/N, a named pipe) is refused here: reading it would
    hang or never end."""

    def convert(self, value, param, ctx):
        import os
        import stat

        from ffx.artifacts import add_command_input, file_kind

        path = super().convert(value, param, ctx)
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = None  # missing, or a symlink loop: the command's own check says so
        if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise FfxError(f"{path}: is a {file_kind(mode)}, not a file or folder ffx can read")
        add_command_input(path)
        return path


def print_json(obj):
    """The one JSON object (or list) a `--json` command prints on stdout."""
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def warn(message):
    click.echo(f"Warning: {message}", err=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, SIGHUP (the terminal went away) or SIGQUIT (Ctrl-\\), raised like Ctrl-C so that the
    same cleanup runs: decoding workers are shut down, temporary folders and partial outputs
    removed (the default action would kill the process with none of that and leave the workers
    holding the caller's stdout). The exit code is 128 + the signal's number, as a shell reports it."""

    def __init__(self, signum=signal.SIGTERM):
        super().__init__()
        self.signum = int(signum)


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def main():
    for signum in TERMINATING_SIGNALS:
        signal.signal(signum, _raise_terminated)
    sys.exit(cli.main(prog_name="ffx"))
