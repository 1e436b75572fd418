"""Progress of the steps that take more than a few seconds, for every command, in one place.

On a terminal a step shows a tqdm bar that appears after DELAY seconds and is removed when the
step ends. When stderr is not a terminal (CI logs, `2> log.txt`), where a bar would be one
unreadable line of carriage returns, the same step writes plain lines instead: the first after
DELAY seconds, then one whenever another tenth is done or LINE_INTERVAL seconds have passed,
and one when the step ends, so a log shows that a long step is alive and how far it got:

    held-out images: 2000/10000 (20%), 12 s, about 48 s left

`enabled`: None or True shows progress (a bar or lines, whichever stderr suits); False shows
nothing (callers that print machine-readable output on stderr, or steps inside another step).
"""

import sys
import time

DELAY = 2.0  # seconds before anything is shown: quick steps stay quiet
LINE_INTERVAL = 10.0  # seconds between two lines in a log, at most
LINE_FRACTION = 0.1  # or another tenth of the step done, whichever comes first
MIN_LINE_GAP = 1.0  # seconds between two lines at least, however fast the tenths go


def stderr_is_terminal():
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class Progress:
    """Progress of one step over `total` units (None: unknown); use as a context manager or call
    close(). update(n) counts n more units done; note(text) says what the step is doing now;
    `outcome`, when set, ends the last line of a log instead of "done"."""

    def __init__(self, total, description, unit="img", enabled=None, delay=None):
        self.total = total
        self.description = description
        self.unit = unit
        self.done = 0
        self.text = ""
        self.started = time.monotonic()
        self.delay = DELAY if delay is None else delay
        self.enabled = enabled is not False
        self.bar = None
        self.lines = self.enabled and not stderr_is_terminal()
        self.last_line = None  # (time, units done) of the last line written
        self.outcome = None  # how the step ended, for its last line (default "done")
        if self.enabled and not self.lines:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=description, unit=unit, file=sys.stderr, delay=self.delay, leave=False,
                            dynamic_ncols=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(finished=exc[0] is None)

    def update(self, n=1):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines:
            self._maybe_line()

    def note(self, text):
        """What the step does now (a layer's name, a phase): shown beside the count."""
        self.text = text
        if self.bar is not None:
            self.bar.set_postfix_str(text[:40], refresh=False)
        elif self.lines:
            self._maybe_line()

    def set_done(self, done):
        self.update(done - self.done)

    def close(self, finished=True):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.lines and self.last_line is not None and finished:
            self._line(final=True)
        self.lines = False

    def _maybe_line(self):
        now = time.monotonic()
        if now - self.started < self.delay or (self.total and self.done >= self.total):
            return  # too early to bother, or complete: close() writes the last line
        if self.last_line is None:
            self._line()
            return
        since, done_then = self.last_line
        fraction = (self.done - done_then) / self.total if self.total else 0.0
        if now - since >= LINE_INTERVAL or (fraction >= LINE_FRACTION and now - since >= MIN_LINE_GAP):
            self._line()

    def _line(self, final=False):
        now = time.monotonic()
        elapsed = now - self.started
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        parts = [f"{self.description}: {count} {self.unit}" if self.unit else f"{self.description}: {count}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"{elapsed:.0f} s")
        if not final and self.total and 0 < self.done < self.total:
            parts.append(f"about {elapsed * (self.total - self.done) / self.done:.0f} s left")
        if final:
            parts.append(self.outcome or "done")
        if self.text and not final:
            parts.append(self.text)
        try:
            print(", ".join(parts), file=sys.stderr, flush=True)
        except (OSError, ValueError):  # a closed or full stderr must not stop the work
            self.lines = False
        self.last_line = (now, self.done)
