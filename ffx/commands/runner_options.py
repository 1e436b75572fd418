"""The runner option group: how a command runs its models, declared once.

`ffx verify`, `ffx bench`, `ffx predict` and `ffx serve` run models through the runners of
runtime/backends/runner.py. The flags that say how are declared here: ONNX Runtime's execution provider for
.onnx models (--provider), the CPU threads of ONNX Runtime and PyTorch (--threads), and the
batches the runners are called with (verify's --batch-size; bench's --batch 1,8,32, with
`parse_batches`). Each command declares a `RunnerOptionGroup` with the flags it takes and
decorates itself with it, as with the calibration group (calibration_options.py).

    RUNNER = RunnerOptionGroup(threads=True, batch_size=32)

    @click.command("verify")
    @RUNNER                            # --batch-size --provider --threads
    def command(..., batch_size, provider, threads, ...):
"""

import click

from ffx.cli import THREADS, Count
from ffx.errors import FfxError
from ffx.runtime.backends.runner import ONNX_PROVIDERS

# Larger batches only measure the machine's memory; 4096 ViT inputs at 224x224 are 2.3 GiB.
MAX_BATCH = 4096


class RunnerOptionGroup:
    """The runner flags of one command.

    Args:
        models: what --provider applies to, as its help says (".onnx models", or bench's ".onnx targets").
        threads: whether the command takes --threads.
        batch_size: the default of --batch-size (the batch every call runs), or None: no --batch-size.
    """

    def __init__(self, models=".onnx models", threads=False, batch_size=None):
        self.models = models
        self.threads = threads
        self.batch_size = batch_size

    def __call__(self, command):
        """Add --batch-size (when the group has one), --provider and --threads (when it has it)."""
        options = []
        if self.batch_size is not None:
            options.append(click.option("--batch-size", type=Count(1, MAX_BATCH), default=self.batch_size,
                                        show_default=True))
        options.append(click.option("--provider", type=click.Choice(ONNX_PROVIDERS), default="cpu", show_default=True,
                                    help=f"ONNX Runtime execution provider for {self.models}."))
        if self.threads:
            options.append(click.option("--threads", type=THREADS,
                                        help="CPU threads for ONNX Runtime and PyTorch [default: each library's own]."))
        for option in reversed(options):
            command = option(command)
        return command

    @staticmethod
    def batch_sizes(command):
        """Add --batch (parameter `batch_text`): several batch sizes, each measured; read with `parse_batches`."""
        return click.option("--batch", "batch_text", default="1", show_default=True,
                            help="Comma-separated batch sizes, e.g. 1,8,32.")(command)


def parse_batches(text):
    """The batch sizes of --batch TEXT, each once, in the order given; FfxError naming the flag."""
    try:
        batches = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise FfxError(f"--batch {text!r}: give comma-separated sizes such as 1,8,32") from None
    if not batches or min(batches) < 1 or max(batches) > MAX_BATCH:
        raise FfxError(f"--batch {text!r}: sizes must be from 1 to {MAX_BATCH}")
    return list(dict.fromkeys(batches))  # each size measured once, in the order given
