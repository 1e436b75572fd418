"""Top-k classes for image files, with the class names the model carries."""

import dataclasses
from pathlib import Path

import numpy as np

from ffx.datasets import ImageItem, SkippedImage, describe_skipped
from ffx.errors import FfxError
from ffx.images import UnreadableImage, is_image_file, load_image
from ffx.reporting import silenced
from ffx.runtime.backends.runner import open_runner


@dataclasses.dataclass
class Prediction:
    image: str
    top: list  # [{"class": index, "name": str, "probability": float}], best first


def softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def expand_images(paths):
    """Files as given, folders expanded to the image files under them (sorted)."""
    from ffx.images import find_images

    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(find_images(path))
        elif path.is_file():
            files.append(path)
        else:
            raise FfxError(f"{path}: no such file or directory")
    return files


def predict(model, images, topk=5, batch_size=32, provider="cpu", on_skip=None, preprocess=None):
    """[Prediction] for every readable image; unreadable ones are counted and named (the first few)
    in one message to `on_skip`.
    `preprocess` (a Preprocess) overrides the model's own, for models exported by other tools."""
    files = expand_images(images)
    if not files:
        raise FfxError("no images given")
    with silenced():  # predict has never shown what a runner warns of (an engine without a sidecar)
        runner = open_runner(model, provider=provider)
    if preprocess is None:
        preprocess = runner.preprocess
    elif runner.input_shape and tuple(runner.input_shape) != tuple(preprocess.input_size):
        raise FfxError(f"the given preprocessing makes {tuple(preprocess.input_size)} inputs but {model} takes "
                       f"{tuple(runner.input_shape)}")
    names = runner.class_names
    predictions, skipped = [], []
    with runner:
        for start in range(0, len(files), batch_size):
            arrays, kept = [], []
            for path in files[start:start + batch_size]:
                try:
                    arrays.append(load_image(path, preprocess))
                    kept.append(path)
                except UnreadableImage as e:
                    reason = str(e).removeprefix(f"{path}: ") if is_image_file(path) else "not an image file"
                    skipped.append(SkippedImage(ImageItem(path), reason))
            if not arrays:
                continue
            probabilities = softmax(runner.infer(np.stack(arrays)).astype(np.float64))
            k = min(topk, probabilities.shape[1])
            for path, row in zip(kept, probabilities):
                best = np.argsort(-row, kind="stable")[:k]
                predictions.append(Prediction(str(path), [
                    {"class": int(i), "name": names[i] if names and i < len(names) else str(int(i)),
                     "probability": float(row[i])}
                    for i in best
                ]))
    if skipped and on_skip:  # one line, however many: 20,000 unreadable files are not 20,000 warnings
        on_skip(describe_skipped(skipped))
    if not predictions:
        raise FfxError("none of the images could be read")
    return predictions
