"""Labelled and unlabelled image collections: finding the images, their labels, and choosing among them.

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

Decoding them into batches is ffx/batch_loader.py's (`load_batches`, imported here too, as before).
"""

import collections
import csv
import dataclasses
import hashlib
import os
import re
import stat
from pathlib import Path

import numpy as np

from ffx.artifacts import file_kind
# The batch loader was in this module: its names stay importable from here.
from ffx.batch_loader import Batch, BatchLoader, SkippedImage, describe_skipped, load_batches
from ffx.errors import FfxError
from ffx.images import IMAGE_EXTENSIONS, UnreadableImage, find_images, is_image_file, open_regular_file
from ffx.metadata import MAX_CLASSES, imagenet_class_names, imagenet_wnids
from ffx.reporting import warn

LOC_SOLUTION_FILE = "LOC_val_solution.csv"
# Kaggle's ImageNet download: LOC_val_solution.csv at the top, the images in this folder under it.
KAGGLE_VAL_FOLDER = ("ILSVRC", "Data", "CLS-LOC", "val")
SPLIT_FOLDER_NAMES = {"train", "val", "valid", "validation", "test"}
WNID_PATTERN = re.compile(r"^n\d{8}$")

__all__ = ["ImageItem", "ImageDataset", "open_dataset", "check_data_path", "select_images", "class_index",
           "normalise_class_name", "file_sha256", "LOC_SOLUTION_FILE", "KAGGLE_VAL_FOLDER", "SPLIT_FOLDER_NAMES",
           "WNID_PATTERN", "Batch", "BatchLoader", "SkippedImage", "load_batches", "describe_skipped"]


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


def open_dataset(path, class_names=None):
    """Open a folder or list file of images; `class_names` (from the model's metadata) name the
    label indices. Raises FfxError when nothing usable is there. What it warns about (labels
    guessed or missing) is logged (`ffx.reporting`) and kept in the dataset's `warnings`."""
    root = Path(path)
    warnings = []

    def note(message):
        warnings.append(message)
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
