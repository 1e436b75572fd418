"""Errors a user can act on, and the exit codes the CLI maps them to.

Library code raises these; the Click layer turns them into a one-line message and an exit
code. Anything else that escapes is a bug in ffx and keeps its traceback.
"""

import signal

# Signals that end ffx through the same cleanup as Ctrl-C (SIGINT), exit code 128 + the signal's
# number: SIGTERM, a closed terminal's SIGHUP and Ctrl-\'s SIGQUIT (whose default actions would
# skip the cleanup and orphan decoding workers).
TERMINATING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, name))


# How to install what a command lacks. ffx installs from its own folder (a clone): `pip install
# ffx` would fetch an unrelated package of that name from PyPI. torch from PyPI is its several-GB
# CUDA build; PyTorch's own index has the CPU one.
TORCH_CPU_INSTALL = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


def install_hint(extra):
    """What to run for one of ffx's optional extras (setup.cfg), e.g. `pip install '.[serve]'`."""
    return f"`pip install '.[{extra}]'` in ffx's folder"


class FfxError(Exception):
    """Bad input or an environment problem the user can fix: exit code 2."""

    exit_code = 2


class MissingPreprocess(FfxError):
    """A model that carries no preprocessing (not exported by ffx): commands say how to give it."""


class GateFailed(FfxError):
    """An accuracy or parity gate failed: exit code 1."""

    exit_code = 1


class BackendUnavailable(FfxError):
    """A required optional backend (TensorRT, pycuda, ...) is not installed or has no GPU."""

    exit_code = 2


class InvalidOption(FfxError):
    """A wrong value for one field of an options object (BuildOptions, ...). The library names the
    field, not a CLI flag; the command that set the field maps it to its flag for the message."""

    def __init__(self, option, message):
        super().__init__(message)
        self.option = option


def from_onnxruntime(error):
    """The first line of an onnxruntime exception without its '[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :'
    prefix, or None when `error` did not come from onnxruntime (whose exception types are its own)."""
    import re

    if not type(error).__module__.startswith("onnxruntime"):
        return None
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", line)


def reraise_onnxruntime(error, source, doing):
    """Raise an onnxruntime `error` as an FfxError "SOURCE: ONNX Runtime cannot DOING the model: ...";
    anything else (a bug in ffx) as it is."""
    message = from_onnxruntime(error)
    if message is None:
        raise error
    raise FfxError(f"{f'{source}: ' if source else ''}ONNX Runtime cannot {doing} the model: {message}") from None
