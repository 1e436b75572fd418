"""Choosing the calibration images and fingerprinting the choice."""

import dataclasses

import numpy as np

from ffx.artifacts import sha256_bytes
from ffx.datasets import ImageDataset, file_sha256, load_batches, open_dataset, select_images
from ffx.errors import FfxError
from ffx.reporting import silenced, warn

# Fewer calibration images than this gives noisy ranges (Ultralytics warns below about 300,
# NVIDIA ModelOpt recommends 500+ for CNNs and ViTs).
RECOMMENDED_MIN_IMAGES = 300


@dataclasses.dataclass
class CalibrationImages:
    dataset: ImageDataset
    data_path: str  # as the user gave it
    items: list  # the chosen ImageItems, in path order
    sha256: list  # content hash per item ("unreadable" when the file cannot be read)
    list_sha256: str  # hash of the ordered content hashes: the image list's fingerprint

    def manifest_entries(self):
        return [
            {"path": self.dataset.relative_path(item), "sha256": digest, "label": item.label}
            for item, digest in zip(self.items, self.sha256)
        ]


def choose_calibration_images(data, num_images, seed, class_names):
    """Open `data` (a path or an ImageDataset) and choose `num_images` of its images."""
    if num_images < 1:
        raise FfxError(f"--num-images must be at least 1, got {num_images}")
    # Labels only stratify the choice here, so how folders map to classes needs no warning.
    with silenced():
        dataset = data if isinstance(data, ImageDataset) else open_dataset(data, class_names=class_names)
    items = select_images(dataset.items, num_images, seed)
    if len(items) < num_images:
        warn(f"{dataset.root} has only {len(items)} images; calibrating on all of them instead of {num_images}")
    if len(items) < RECOMMENDED_MIN_IMAGES:
        warn(f"calibrating on {len(items)} images; {RECOMMENDED_MIN_IMAGES} or more give steadier ranges")
    hashes = [file_sha256(item.path) or "unreadable" for item in items]
    return CalibrationImages(
        dataset=dataset,
        data_path=str(data.root if isinstance(data, ImageDataset) else data),
        items=items,
        sha256=hashes,
        list_sha256=sha256_bytes("\n".join(hashes).encode()),
    )


def decode_reference_images(images, indices, preprocess):
    """The preprocessed images at `indices` of the selection (for the agreement check), or None
    when one of them no longer decodes."""
    if not indices:
        return None
    loader = load_batches([images.items[i] for i in indices], preprocess, batch_size=len(indices), workers=0,
                          progress=False)
    with silenced():
        batches = list(loader)
    if loader.num_skipped or not batches:
        return None
    return np.concatenate([batch.images for batch in batches])
