"""Warnings, through one reporter: the standard `logging`, under the `ffx` logger.

Library code says `warn(message)` (or logs a WARNING on `logger`) instead of taking a callback.
Where the warning goes is the caller's choice, made around the call rather than passed into it:

    with collect_warnings() as messages:   # gathered into a list (verify's report), not printed
        ...
    with silenced():                       # dropped (a probe whose findings are reported elsewhere)
        ...
    with warnings_to(callback):            # handed to a callable, as the `warn=` parameters were

The innermost context wins, and it holds in the thread and context that opened it (a generator
warns into the context of whoever iterates it). Outside any context a warning is logged: printed
by `warnings_printed_by` (the CLI: `Warning: <message>` on stderr), else printed on stderr as
`Warning: <message>` when nothing else handles the `ffx` logger or the root logger (what a plain
`import ffx.calib` shows), else handed to the handlers an application set up (printed by those
alone, never twice).
"""

import contextlib
import contextvars
import logging
import sys

logger = logging.getLogger("ffx")

# Where warnings go now: None (logged), or a callable taking the message.
_sink = contextvars.ContextVar("ffx_warning_sink", default=None)


def warn(message):
    logger.warning(message)


@contextlib.contextmanager
def warnings_to(sink):
    """Send the warnings logged inside the block to `sink(message)` instead of the log; `sink`
    None drops them."""
    token = _sink.set(sink if sink is not None else _drop)
    try:
        yield
    finally:
        _sink.reset(token)


def silenced():
    return warnings_to(None)


@contextlib.contextmanager
def collect_warnings():
    """The warnings logged inside the block, gathered in order into the list it yields."""
    messages = []
    with warnings_to(messages.append):
        yield messages


def iterate_with_warnings_to(sink, iterable):
    """Iterate `iterable` with each step's warnings sent to `sink` (None: dropped), leaving the
    consumer's own warnings between steps alone: for a loop inside a generator, where a `with`
    around its `yield` would hold the consumer's warnings too."""
    iterator = iter(iterable)
    try:
        while True:
            with warnings_to(sink):
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            with warnings_to(sink):
                close()


@contextlib.contextmanager
def warnings_printed_by(echo):
    """Inside the block, a warning logged outside any sink goes to `echo(message)` alone (the CLI's
    `Warning:` line on stderr), not also to the handlers of the root logger."""
    handler = _Echo(echo)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


class _Echo(logging.Handler):
    def __init__(self, echo):
        super().__init__()
        self.echo = echo

    def emit(self, record):
        self.echo(record.getMessage())


def _drop(message):
    pass


class _ToSink(logging.Filter):
    """On the `ffx` logger: a warning logged inside `warnings_to` goes to its sink, not to handlers."""

    def filter(self, record):
        sink = _sink.get()
        if sink is None:
            return True
        sink(record.getMessage())
        return False


class _PrintedWhenUnhandled(logging.Handler):
    """`Warning: <message>` on the stderr of the moment (as print does: a test's captured stderr
    too), unless another handler on the `ffx` logger or the root logger takes the record."""

    def emit(self, record):
        if any(handler is not self for handler in logger.handlers) or logging.getLogger().handlers:
            return
        print(f"Warning: {record.getMessage()}", file=sys.stderr)


logger.setLevel(logging.WARNING)
logger.addFilter(_ToSink())
if not any(isinstance(handler, _PrintedWhenUnhandled) for handler in logger.handlers):
    logger.addHandler(_PrintedWhenUnhandled())
