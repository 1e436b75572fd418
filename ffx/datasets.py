"""Labelled and unlabelled image collections, and decoding them into network batches.

Used by calibration here and by verify / bench / predict in the runtime, so it imports neither
torch nor onnxruntime (the runtime runs on Jetsons without them). Layouts `open_dataset` reads:

- ImageNet class folders: ``DIR/n01440764/*.JPEG`` (``train/`` or ``val/``); WordNet ids map to
  ImageNet-1k indices.
- Class-name folders: ``DIR/<class>/*``; folder names are matched to the model's class names
  after normalising both (lowercase, runs of other characters -> ``_``), so ``t-shirt_top`` and
  ``0_t-shirt_top`` both match ``T-shirt/top``. Numeric folders (``0``, ``1``, ...) are indices.
  Anything else falls back to sorted folder order (the ImageFolder convention), with a warning.
- A flat ImageNet validation folder with ``LOC_val_solution.csv`` in it, or Kaggle's
  ``ILSVRC/Data/CLS-LOC/val`` with the file at the top of the download (``../../../../``).
- A list file: ``path label`` per line, paths relative to the file, ``#`` comments.
- Any other folder of images: unlabelled (enough for calibration and predict).

`load_batches` decodes in worker processes, in order, with back-pressure, and skips unreadable
files: they are counted and listed (the first few) in one warning, never raised.
"""

import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import hashlib
import multiprocessing
import os
import re
import signal
import stat
import sys
import threading
from pathlib import Path

import numpy as np

from ffx.artifacts import file_kind, sha256_file
from ffx.errors import TERMINATING_SIGNALS, FfxError
from ffx.images import (IMAGE_EXTENSIONS, UnreadableImage, decode_files, find_images, is_image_file, normalize_pixels,
                        open_regular_file)
from ffx.metadata import MAX_CLASSES, Preprocess, imagenet_class_names, imagenet_wnids

LOC_SOLUTION_FILE = "LOC_val_solution.csv"
# Kaggle's ImageNet download: LOC_val_solution.csv at the top, the images in this folder under it.
KAGGLE_VAL_FOLDER = ("ILSVRC", "Data", "CLS-LOC", "val")
SPLIT_FOLDER_NAMES = {"train", "val", "valid", "validation", "test"}
WNID_PATTERN = re.compile(r"^n\d{8}$")
# How many unreadable files a warning names before "and N more".
SKIPPED_NAMED_IN_WARNING = 5
# Decoding fewer images than this in worker processes costs more (their start-up) than it saves.
MIN_IMAGES_FOR_WORKERS = 16


def print_warning(message):
    print(f"Warning: {message}", file=sys.stderr)


@dataclasses.dataclass(frozen=True)
class ImageItem:
    """One image file and its class index (None when unknown)."""

    path: Path
    label: int | None = None


@dataclasses.dataclass
class ImageDataset:
    """What `open_dataset` found: the items in a stable order and how their labels were read."""

    root: Path  # the folder, or the list file
    layout: str  # imagenet-folders, class-folders, loc-csv, list-file, unlabelled
    items: list
    class_names: list | None  # name of each label index, when known
    label_source: str  # one line for people: how labels were assigned
    warnings: list = dataclasses.field(default_factory=list)

    @property
    def labelled(self):
        return bool(self.items) and all(item.label is not None for item in self.items)

    def relative_path(self, item):
        """`item.path` relative to the dataset (for manifests and messages)."""
        base = self.root.parent if self.root.is_file() else self.root
        try:
            return Path(item.path).relative_to(base).as_posix()
        except ValueError:
            return Path(item.path).as_posix()


def normalise_class_name(name):
    """`T-shirt/top` -> `t_shirt_top`: lowercase, runs of non-alphanumerics -> `_`."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def check_data_path(path):
    """FfxError unless `path` is a folder or a regular file (a list file): a device, FIFO or
    socket (/dev/zero, /dev/fd/N, a named pipe) would hang or never end when read."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FfxError(f"{path}: no such file or directory") from None
    except OSError as e:  # a symlink loop, a path too long, ...
        raise FfxError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise FfxError(f"{path}: is a {file_kind(mode)}; give a folder of images or a list file")


def open_dataset(path, class_names=None, warn=print_warning):
    """Open a folder or list file of images; `class_names` (from the model's metadata) name the
    label indices. Raises FfxError when nothing usable is there."""
    root = Path(path)
    warnings = []

    def note(message):
        warnings.append(message)
        if warn is not None:
            warn(message)

    check_data_path(root)
    if root.is_file():
        if root.suffix.lower() in IMAGE_EXTENSIONS:
            raise FfxError(f"{root}: is an image; pass the folder that holds it, or a list file")
        dataset = _open_list_file(root, class_names, note)
    else:
        dataset = _open_folder(root, class_names, note)
    if not dataset.items:
        raise FfxError(f"{root}: no images found (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    dataset.warnings = warnings
    return dataset


def _open_folder(root, class_names, note):
    try:
        entries = sorted(root.iterdir())
    except OSError as e:
        raise FfxError(f"{root}: cannot read it ({e.strerror or e})") from None
    loose_images = [p for p in entries if p.is_file() and is_image_file(p)]
    # Each folder is walked once: the images found decide whether it is a class folder and are its items.
    found = {p: find_images(p) for p in entries if p.is_dir() and not p.name.startswith(".")}
    class_dirs = [d for d, images in found.items() if images]

    solution = _find_loc_solution(root) if loose_images else None
    if solution is not None:
        return _open_loc_folder(root, loose_images, solution, class_names, note)
    if class_dirs and not loose_images:
        split_dirs = [d.name for d in class_dirs if d.name.lower() in SPLIT_FOLDER_NAMES]
        if split_dirs and len(split_dirs) == len(class_dirs) and all(_has_subfolders(d) for d in class_dirs):
            raise FfxError(
                f"{root}: holds data-set splits ({', '.join(split_dirs)}), not classes; "
                f"pass one of them, e.g. {root / split_dirs[0]}"
            )
        return _open_class_folders(root, class_dirs, found, class_names, note)
    return ImageDataset(
        root=root,
        layout="unlabelled",
        items=[ImageItem(p) for p in find_images(root)],
        class_names=list(class_names) if class_names else None,
        label_source="unlabelled images",
    )


def _has_subfolders(folder):
    return any(p.is_dir() for p in folder.iterdir())


def _open_class_folders(root, class_dirs, found, class_names, note):
    names = [d.name for d in class_dirs]
    labels, class_list, source = _folder_labels(names, class_names, note, root)
    items = []
    for folder, label in zip(class_dirs, labels):
        items.extend(ImageItem(p, label) for p in found[folder])
    layout = "imagenet-folders" if source.startswith("ImageNet") else "class-folders"
    return ImageDataset(root=root, layout=layout, items=items, class_names=class_list, label_source=source)


def _folder_labels(names, class_names, note, root):
    """(label of each folder, class names by index, how the labels were assigned)."""
    if all(WNID_PATTERN.match(name) for name in names):
        index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
        unknown = [name for name in names if name not in index]
        if not unknown:
            if class_names is not None and len(class_names) != len(index):
                note(
                    f"{root}: WordNet-id folders give ImageNet-1k labels (0..999) but the model has "
                    f"{len(class_names)} classes"
                )
            return [index[name] for name in names], imagenet_class_names(), "ImageNet-1k WordNet ids"
        note(f"{root}: {len(unknown)} WordNet id(s) are not ImageNet-1k classes (e.g. {unknown[0]})")

    if class_names:
        by_name = {}
        for index, name in enumerate(class_names):
            by_name.setdefault(normalise_class_name(name), index)
        labels, unmatched = [], []
        for name in names:
            label = _match_folder(name, by_name, len(class_names))
            labels.append(label)
            if label is None:
                unmatched.append(name)
        duplicated = [label for label, count in collections.Counter(labels).items() if label is not None and count > 1]
        if not unmatched and not duplicated:
            return labels, list(class_names), "folder names matched to the model's class names"
        if unmatched:
            shown = ", ".join(unmatched[:3]) + (f" and {len(unmatched) - 3} more" if len(unmatched) > 3 else "")
            why = f"folder(s) {shown} match no class name of the model"
        else:
            why = f"several folders match class {class_names[duplicated[0]]!r}"
        note(f"{root}: {why}; labels follow sorted folder order instead (check them)")
    elif all(class_index(name) is not None for name in names):
        return [class_index(name) for name in names], None, "numeric folder names are class indices"
    else:
        note(f"{root}: the model has no class names; labels follow sorted folder order (ImageFolder convention)")
    return list(range(len(names))), list(names), "sorted folder order"


def _match_folder(folder_name, by_name, num_classes):
    normalised = normalise_class_name(folder_name)
    if normalised in by_name:
        return by_name[normalised]
    index = class_index(folder_name)
    if index is not None and index < num_classes:
        return index
    prefixed = re.match(r"^(\d+)_(.+)$", normalised)  # "0_t-shirt_top": index, then the name
    if prefixed and prefixed.group(2) in by_name:
        return by_name[prefixed.group(2)]
    return None


def class_index(text):
    """The class index written in `text` (ASCII digits, below MAX_CLASSES), else None: '²' is a
    digit to str.isdigit but not to int(), and a 30-digit label is no class."""
    if re.fullmatch(r"[0-9]{1,7}", text) and int(text) < MAX_CLASSES:
        return int(text)
    return None


def _find_loc_solution(root):
    """LOC_val_solution.csv where the README says: in the folder itself, or at the top of Kaggle's
    download when the folder is its ILSVRC/Data/CLS-LOC/val (nowhere else above it)."""
    folders = [root]
    resolved = root.resolve()
    if resolved.parts[-len(KAGGLE_VAL_FOLDER):] == KAGGLE_VAL_FOLDER:
        folders.append(resolved.parents[len(KAGGLE_VAL_FOLDER) - 1])
    for folder in folders:
        candidate = folder / LOC_SOLUTION_FILE
        if candidate.is_file():
            return candidate
    return None


def _open_loc_folder(root, images, solution, class_names, note):
    index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    labels = {}
    try:
        with open(solution, newline="") as f:
            for row in csv.DictReader(f):
                fields = (row.get("PredictionString") or "").split()
                if row.get("ImageId") and fields and fields[0] in index:
                    labels[row["ImageId"]] = index[fields[0]]
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise FfxError(f"{solution}: cannot read it ({e})") from None
    if not labels:
        raise FfxError(f"{solution}: no `ImageId,PredictionString` rows with ImageNet WordNet ids")
    items = [ImageItem(p, labels.get(p.stem)) for p in images]
    missing = sum(item.label is None for item in items)
    if missing:
        note(f"{root}: {missing} image(s) are not listed in {solution.name}; they have no label")
    if class_names is not None and len(class_names) != len(index):
        note(f"{solution.name} gives ImageNet-1k labels but the model has {len(class_names)} classes")
    return ImageDataset(
        root=root, layout="loc-csv", items=items, class_names=imagenet_class_names(),
        label_source=f"ImageNet-1k labels from {solution}",
    )


def _open_list_file(path, class_names, note):
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FfxError(f"{path}: not a readable list file ({e})") from None
    if "\x00" in "".join(lines):
        raise FfxError(f"{path}: not a list file (binary content); give a folder of images or a text file of `path label` lines")
    by_name = {normalise_class_name(n): i for i, n in reversed(list(enumerate(class_names or [])))}
    items = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts, label = [line], None
        for words in range(1, len(line.split())):  # the label may be a class name with spaces
            candidate = line.rsplit(maxsplit=words)
            try:
                label = _parse_label(" ".join(candidate[1:]), by_name)
            except FfxError as e:
                raise FfxError(f"{path}: line {number}: {e}") from None
            if label is not None:
                parts = candidate
                break
        file_path = Path(parts[0])
        if not file_path.is_absolute():
            file_path = path.parent / file_path
        items.append(ImageItem(file_path, label))
    if not items:
        raise FfxError(f"{path}: the list file names no images (expected `path label` per line)")
    unlabelled = sum(item.label is None for item in items)
    if 0 < unlabelled < len(items):
        note(f"{path}: {unlabelled} of {len(items)} lines have no label")
    return ImageDataset(
        root=path, layout="list-file", items=items, class_names=list(class_names) if class_names else None,
        label_source=f"labels from {path.name}" if unlabelled < len(items) else "unlabelled list",
    )


def _parse_label(text, by_name):
    if re.fullmatch(r"[0-9]+", text):
        index = class_index(text)
        if index is None:
            raise FfxError(f"label {text[:30]}{'...' if len(text) > 30 else ''} is not a class index "
                           f"(0 to {MAX_CLASSES - 1:,})")
        return index
    return by_name.get(normalise_class_name(text))


# --- selecting images ------------------------------------------------------------------------


def select_images(items, count, seed=0):
    """`count` items chosen reproducibly: stratified across labels when there are labels (each
    class gives the same number, give or take one), shuffled with `seed`, returned in path order."""
    items = sorted(items, key=lambda item: str(item.path))
    if count >= len(items):
        return items
    rng = np.random.default_rng(seed)
    groups = collections.defaultdict(list)
    for item in items:
        groups[item.label].append(item)
    queues = []
    for label in sorted(groups, key=lambda label: (label is None, label if label is not None else 0)):
        group = groups[label]
        queues.append(collections.deque(group[i] for i in rng.permutation(len(group))))
    order = [queues[i] for i in rng.permutation(len(queues))]
    chosen = []
    while len(chosen) < count:  # round robin over the classes, in a seeded class order
        for queue in order:
            if queue and len(chosen) < count:
                chosen.append(queue.popleft())
    return sorted(chosen, key=lambda item: str(item.path))


# --- decoding batches ------------------------------------------------------------------------


@dataclasses.dataclass
class Batch:
    images: np.ndarray  # float32 (N, C, H, W)
    labels: list  # int or None per image
    items: list  # the ImageItem of each image
    sha256: list  # content hash of each file
    pixels: np.ndarray = None  # uint8 (N, H, W, 3) resized and cropped, before normalization


@dataclasses.dataclass(frozen=True)
class SkippedImage:
    item: ImageItem
    reason: str


class BatchLoader:
    """Iterate over batches of decoded images; after iterating, `skipped` lists the unreadable ones.

    Decoding runs in `workers` processes (0: in this process), a bounded number of images ahead
    of the consumer, and keeps the order of `items`.
    """

    def __init__(self, items, preprocess, batch_size, workers=2, progress=None, warn=print_warning, description="images"):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.items = list(items)
        self.preprocess = preprocess if isinstance(preprocess, Preprocess) else Preprocess.from_dict(preprocess)
        self.batch_size = int(batch_size)
        self.workers = int(workers) if len(self.items) >= MIN_IMAGES_FOR_WORKERS else 0
        self.progress = progress
        self.warn = warn
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
        if self.skipped and self.warn is not None:
            self.warn(describe_skipped(self.skipped))

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
                if self.warn is not None:
                    self.warn("image decoding processes failed to start or died; decoding in this process instead")
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
    each worker so that functions defined there can be unpickled. The decoder lives in this
    module, so the workers need nothing from it, and re-running it would repeat a user script's
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


def load_batches(items, preprocess, batch_size, workers=2, progress=None, warn=print_warning, description="images"):
    """Batches of decoded, preprocessed images (see BatchLoader); `preprocess` is a Preprocess or
    its dict. Read `.skipped` / `.num_skipped` on the returned loader after iterating."""
    return BatchLoader(items, preprocess, batch_size, workers=workers, progress=progress, warn=warn, description=description)


def describe_skipped(skipped):
    """One line naming the first few unreadable images and why."""
    shown = [f"{Path(s.item.path).name} ({s.reason})" for s in skipped[:SKIPPED_NAMED_IN_WARNING]]
    more = len(skipped) - len(shown)
    return (
        f"skipped {len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''}: "
        + "; ".join(shown) + (f"; and {more} more" if more else "")
    )


def file_sha256(path):
    """sha256 of a file's bytes, or None when it cannot be read or is not a regular file (it will
    be skipped later; a FIFO would block the read)."""
    try:
        with open_regular_file(path) as file:
            digest = hashlib.sha256()
            while block := file.read(1 << 20):
                digest.update(block)
            return digest.hexdigest()
    except (OSError, UnreadableImage):
        return None
