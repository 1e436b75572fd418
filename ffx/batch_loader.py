"""Decoding images into network batches: in worker processes, in order, with back-pressure.

`load_batches` takes the items `ffx.datasets.open_dataset` found (or any objects with a `path`
and a `label`) and yields preprocessed batches; unreadable files are skipped, counted and listed
(the first few) in one warning (`ffx.reporting`), never raised. Used by calibration and by verify / bench /
predict, so it imports neither torch nor onnxruntime.
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from ffx.errors import TERMINATING_SIGNALS
from ffx.images import decode_files, normalize_pixels
from ffx.metadata import Preprocess
from ffx.reporting import warn

# How many unreadable files a warning names before "and N more".
SKIPPED_NAMED_IN_WARNING = 5
# Decoding fewer images than this in worker processes costs more (their start-up) than it saves.
MIN_IMAGES_FOR_WORKERS = 16


@dataclasses.dataclass
class Batch:
    images: np.ndarray  # float32 (N, C, H, W)
    labels: list  # int or None per image
    items: list  # the ImageItem of each image
    sha256: list  # content hash of each file
    pixels: np.ndarray = None  # uint8 (N, H, W, 3) resized and cropped, before normalization


@dataclasses.dataclass(frozen=True)
class SkippedImage:
    item: object  # the ffx.datasets.ImageItem that could not be read
    reason: str


class BatchLoader:
    """Iterate over batches of decoded images; after iterating, `skipped` lists the unreadable ones.

    Decoding runs in `workers` processes (0: in this process), a bounded number of images ahead
    of the consumer, and keeps the order of `items`.
    """

    def __init__(self, items, preprocess, batch_size, workers=2, progress=None, description="images"):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.items = list(items)
        self.preprocess = preprocess if isinstance(preprocess, Preprocess) else Preprocess.from_dict(preprocess)
        self.batch_size = int(batch_size)
        self.workers = int(workers) if len(self.items) >= MIN_IMAGES_FOR_WORKERS else 0
        self.progress = progress
        self.description = description
        self.skipped = []

    @property
    def num_skipped(self):
        return len(self.skipped)

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        from ffx.progress import Progress

        self.skipped = []
        # Shown only after 2 s, so quick runs stay quiet: a bar on a terminal, lines in a log.
        bar = Progress(len(self.items), self.description, enabled=self.progress)
        pending = []
        try:
            for item, result in self._decoded():
                bar.update(1)
                if isinstance(result, str):
                    self.skipped.append(SkippedImage(item, result))
                    continue
                pending.append((item, *result))
                if len(pending) == self.batch_size:
                    yield _make_batch(pending, self.preprocess)
                    pending = []
            if pending:
                yield _make_batch(pending, self.preprocess)
        except BaseException:
            bar.close(finished=False)
            raise
        bar.close()
        if self.skipped:
            warn(describe_skipped(self.skipped))

    def _decoded(self):
        """(item, (pixels, sha256)) or (item, reason) for every item, in order."""
        preprocess = self.preprocess.to_dict()  # a dict: workers need not import ffx.metadata (onnx)
        done = 0
        if self.workers > 0:
            try:
                for pair in self._decoded_in_workers(preprocess):
                    yield pair
                    done += 1
            except concurrent.futures.process.BrokenProcessPool:
                warn("image decoding processes failed to start or died; decoding in this process instead")
            else:
                return
        for item in self.items[done:]:
            yield item, decode_files([item.path], preprocess)[0]

    def _decoded_in_workers(self, preprocess):
        chunk = max(1, min(8, self.batch_size))
        chunks = [self.items[i:i + chunk] for i in range(0, len(self.items), chunk)]
        # Deferred here too: the pool's queues start multiprocessing's resource tracker, which
        # inherits the mask and so outlives a SIGHUP or SIGQUIT sent to the whole process group
        # (killed, it is restarted during the shutdown and prints a traceback).
        with _interrupts_deferred():
            executor = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=_process_context(),
                                                              initializer=_ignore_interrupts)
        in_flight = collections.deque()
        try:
            next_chunk = 0
            # Keep a few chunks per worker queued: enough to hide latency, bounded memory.
            while next_chunk < len(chunks) or in_flight:
                while next_chunk < len(chunks) and len(in_flight) < 3 * self.workers:
                    paths = [str(item.path) for item in chunks[next_chunk]]
                    with _main_module_hidden(), _interrupts_deferred():  # a submit may start a worker
                        future = executor.submit(decode_files, paths, preprocess)
                    in_flight.append((chunks[next_chunk], future))
                    next_chunk += 1
                chunk_items, future = in_flight.popleft()
                yield from zip(chunk_items, future.result())
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _interrupts_deferred():
    """Hold SIGINT and the TERMINATING_SIGNALS while a submit may be starting a worker: interrupted half-way, the
    parent would tear the pool down while the new worker still unpickles its queues, and the
    worker would print a traceback. The signal is delivered as soon as the submit returns."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, *TERMINATING_SIGNALS}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _ignore_interrupts():
    # Ctrl-C, Ctrl-\ and a closed terminal's SIGHUP reach the whole process group: the parent stops
    # the pool and reports once; the workers must neither each print a KeyboardInterrupt traceback
    # nor die on their own (the pool would break mid-batch).
    for signum in (signal.SIGINT, *TERMINATING_SIGNALS):
        if signum != signal.SIGTERM:
            signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def _main_module_hidden():
    """While the workers start: multiprocessing's spawn and forkserver re-run the main script in
    each worker so that functions defined there can be unpickled. The decoder lives in
    ffx.images, so the workers need nothing from it, and re-running it would repeat a user script's
    work in every worker when it lacks an `if __name__ == "__main__"` guard (and fails outright
    for a script read from stdin)."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _process_context():
    # forkserver: workers start clean (no copy of onnxruntime's threads, unlike fork) and cheaper
    # than spawn; the server imports the decoder's module (numpy and PIL, not onnx) once, so each
    # worker forks with it loaded.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([decode_files.__module__])
        return context
    return multiprocessing.get_context("spawn")


def _make_batch(pending, preprocess):
    items, pixels, hashes = zip(*pending)
    # Workers return uint8 pixels; normalizing the whole batch here is cheap and bit-identical.
    pixels = np.stack(pixels)
    images = normalize_pixels(pixels, preprocess)
    return Batch(images=images, labels=[item.label for item in items], items=list(items), sha256=list(hashes),
                 pixels=pixels)


def load_batches(items, preprocess, batch_size, workers=2, progress=None, description="images"):
    """Batches of decoded, preprocessed images (see BatchLoader); `preprocess` is a Preprocess or
    its dict. Read `.skipped` / `.num_skipped` on the returned loader after iterating."""
    return BatchLoader(items, preprocess, batch_size, workers=workers, progress=progress, description=description)


def describe_skipped(skipped):
    """One line naming the first few unreadable images and why."""
    shown = [f"{Path(s.item.path).name} ({s.reason})" for s in skipped[:SKIPPED_NAMED_IN_WARNING]]
    more = len(skipped) - len(shown)
    return (
        f"skipped {len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''}: "
        + "; ".join(shown) + (f"; and {more} more" if more else "")
    )
