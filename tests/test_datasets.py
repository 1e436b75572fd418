"""ffx.datasets: data-set layouts, label mapping, selection and parallel decoding, on real
image files written at test time."""

import collections
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ffx.datasets import load_batches, normalise_class_name, open_dataset, select_images
from ffx.errors import FfxError
from ffx.metadata import Preprocess, imagenet_wnids
from ffx.reporting import collect_warnings
from helpers import write_awkward_images, write_broken_images

SMALL = Preprocess(input_size=(3, 32, 32), resize=36)
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _image(path, value=0, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def _class_folders(root, names, per_class=3):
    for index, name in enumerate(names):
        for i in range(per_class):
            _image(root / name / f"img{i}.png", value=index * 20 + i)
    return root


def test_the_module_imports_without_torch_or_onnxruntime():
    code = "import sys, ffx.datasets; print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_imagenet_wordnet_folders_map_to_imagenet_indices(tmp_path):
    wnids = imagenet_wnids()
    root = _class_folders(tmp_path / "val", [wnids[0], wnids[1], wnids[999]], per_class=2)
    dataset = open_dataset(root)
    assert dataset.layout == "imagenet-folders" and dataset.labelled
    assert sorted({item.label for item in dataset.items}) == [0, 1, 999]
    assert dataset.class_names[0] == "tench"


def test_class_name_folders_match_the_models_names_after_normalising(tmp_path):
    assert normalise_class_name("T-shirt/top") == normalise_class_name("t-shirt_top") == "t_shirt_top"
    folders = ["ankle_boot", "t-shirt_top", "Trouser", "SANDAL"]
    dataset = open_dataset(_class_folders(tmp_path, folders), class_names=FASHION_NAMES)
    labels = {item.path.parent.name: item.label for item in dataset.items}
    assert labels == {"ankle_boot": 9, "t-shirt_top": 0, "Trouser": 1, "SANDAL": 5}
    assert dataset.label_source.startswith("folder names matched")


def test_index_prefixed_and_numeric_folders(tmp_path):
    prefixed = [f"{i}_{n.lower().replace('/', '_').replace(' ', '_')}" for i, n in enumerate(FASHION_NAMES)]
    dataset = open_dataset(_class_folders(tmp_path / "a", prefixed, per_class=1), class_names=FASHION_NAMES)
    assert [item.label for item in dataset.items] == list(range(10))
    numeric = open_dataset(_class_folders(tmp_path / "b", ["0", "2", "10"], per_class=1))
    assert sorted(item.label for item in numeric.items) == [0, 2, 10]  # not sorted-string order


def test_unmatched_folders_fall_back_to_sorted_order_with_a_warning(tmp_path):
    with collect_warnings() as seen:
        dataset = open_dataset(_class_folders(tmp_path, ["zebra", "apple"]), class_names=FASHION_NAMES)
    assert {item.path.parent.name: item.label for item in dataset.items} == {"apple": 0, "zebra": 1}
    assert len(seen) == 1 and "sorted folder order" in seen[0] and "zebra" in seen[0]
    with collect_warnings() as seen:
        open_dataset(_class_folders(tmp_path / "b", ["x", "y"]))
    assert "sorted folder order" in seen[0]


def test_loc_val_solution_csv(tmp_path):
    wnids = imagenet_wnids()
    val = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    for i in range(1, 4):
        _image(val / f"ILSVRC2012_val_0000000{i}.JPEG")
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        f"ILSVRC2012_val_00000001,{wnids[65]} 1 2 3 4 {wnids[65]} 5 6 7 8\n"
        f"ILSVRC2012_val_00000002,{wnids[970]} 1 2 3 4\n"
    )
    with collect_warnings() as seen:
        dataset = open_dataset(val)
    assert dataset.layout == "loc-csv"
    assert [item.label for item in dataset.items] == [65, 970, None]
    assert not dataset.labelled and "not listed" in seen[0]


def test_list_file_paths_are_relative_to_the_file(tmp_path):
    _image(tmp_path / "imgs" / "a.png")
    _image(tmp_path / "imgs" / "b c.png")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "val.txt").write_text(
        "# path label\n../imgs/a.png 3\n\n../imgs/b c.png Ankle boot\n../imgs/missing.png 1\n"
    )
    dataset = open_dataset(tmp_path / "lists" / "val.txt", class_names=FASHION_NAMES)
    assert dataset.layout == "list-file" and dataset.labelled
    assert [(item.path.name, item.label) for item in dataset.items] == [("a.png", 3), ("b c.png", 9), ("missing.png", 1)]
    loader = load_batches(dataset.items, SMALL, batch_size=4, workers=0)
    with collect_warnings() as seen:
        assert sum(len(batch.items) for batch in loader) == 2 and loader.num_skipped == 1
    assert seen == ["skipped 1 unreadable image: missing.png (No such file or directory)"]


def test_unlabelled_folder_and_stray_files(tmp_path):
    write_awkward_images(tmp_path / "photos")
    (tmp_path / "photos" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "photos" / "readme.txt").write_text("not an image")
    dataset = open_dataset(tmp_path / "photos")
    assert dataset.layout == "unlabelled" and not dataset.labelled and len(dataset.items) == 9


def test_unusable_data_paths_are_ffx_errors(tmp_path):
    with pytest.raises(FfxError, match="no such file"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(FfxError, match="no images"):
        open_dataset(tmp_path / "empty")
    _class_folders(tmp_path / "imagenet" / "train", ["cat", "dog"], per_class=1)
    _class_folders(tmp_path / "imagenet" / "val", ["cat", "dog"], per_class=1)
    with pytest.raises(FfxError, match="splits"):
        open_dataset(tmp_path / "imagenet")
    with pytest.raises(FfxError, match="is an image"):
        open_dataset(_image(tmp_path / "one.png"))
    (tmp_path / "binary.txt").write_bytes(b"a.png 0\n\x00\x01\x02")  # a NUL in a path reached os.stat as ValueError
    with pytest.raises(FfxError, match="binary content"):
        open_dataset(tmp_path / "binary.txt")


def test_selection_is_stratified_seeded_and_in_path_order(tmp_path):
    names = [f"class{i}" for i in range(5)]
    dataset = open_dataset(_class_folders(tmp_path, names, per_class=8), class_names=names)
    chosen = select_images(dataset.items, 12, seed=1)
    assert chosen == select_images(list(reversed(dataset.items)), 12, seed=1)
    assert sorted(collections.Counter(item.label for item in chosen).values()) == [2, 2, 2, 3, 3]
    assert [str(item.path) for item in chosen] == sorted(str(item.path) for item in chosen)
    assert chosen != select_images(dataset.items, 12, seed=2)
    assert len(select_images(dataset.items, 1000)) == 40


def test_load_batches_keeps_order_and_skips_broken_files_with_one_warning(tmp_path):
    paths = list(write_awkward_images(tmp_path / "mixed").values()) + list(write_broken_images(tmp_path / "mixed").values())
    paths += [_image(tmp_path / "mixed" / f"plain{i:02d}.png", value=i * 10) for i in range(10)]
    dataset = open_dataset(tmp_path / "mixed")
    results = {}
    for workers in (0, 2):
        loader = load_batches(dataset.items, SMALL, batch_size=4, workers=workers, progress=False)
        with collect_warnings() as seen:
            batches = list(loader)
        assert all(batch.images.dtype == np.float32 and batch.images.shape[1:] == (3, 32, 32) for batch in batches)
        assert all(len(batch.items) == 4 for batch in batches[:-1])
        assert loader.num_skipped == 5
        assert {s.item.path.name for s in loader.skipped} == set(write_broken_images(tmp_path / "b"))
        assert len(seen) == 1 and seen[0].startswith("skipped 5 unreadable images: empty.jpg (empty file); ")
        assert all(name in seen[0] for name in write_broken_images(tmp_path / "b")) and "0x" not in seen[0]
        results[workers] = (np.concatenate([b.images for b in batches]), [i.path for b in batches for i in b.items],
                            [h for b in batches for h in b.sha256])
    np.testing.assert_array_equal(results[0][0], results[2][0])
    assert results[0][1:] == results[2][1:]
    readable = [item.path for item in dataset.items if item.path.suffix != ".jpeg" and item.path.name not in write_broken_images(tmp_path / "c")]
    assert results[2][1] == readable


def test_worker_processes_do_not_rerun_an_unguarded_script(tmp_path):
    """multiprocessing re-runs the main script in spawn/forkserver workers; a user script without
    `if __name__ == "__main__"` (or one piped on stdin) must still decode in parallel, once."""
    for i in range(20):
        _image(tmp_path / "imgs" / f"{i:02d}.png", value=i)
    script = (
        "from ffx.datasets import load_batches, open_dataset\n"
        "from ffx.metadata import Preprocess\n"
        "print('body', flush=True)\n"
        f"items = open_dataset({str(tmp_path / 'imgs')!r}).items\n"
        "loader = load_batches(items, Preprocess(input_size=(3, 32, 32), resize=36), 8, workers=2, progress=False)\n"
        "print(sum(len(b.items) for b in loader), loader.num_skipped)\n"
    )
    (tmp_path / "unguarded.py").write_text(script)
    for args, stdin in (([str(tmp_path / "unguarded.py")], None), (["-"], script)):
        result = subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["body", "20", "0"] and result.stderr == ""
