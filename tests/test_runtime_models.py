"""The shared test helpers (tests/helpers.py) produce what they promise."""

from helpers import FASHION_CLASSES, labelled_images, mini_model


def test_mini_model_is_a_real_export(tmp_path_factory):
    from ffx.metadata import read_onnx_metadata

    mini = mini_model(tmp_path_factory)
    info = read_onnx_metadata(mini.onnx)
    assert info["num_classes"] == 10
    assert info["class_names"] == FASHION_CLASSES
    assert info["preprocess"]["input_size"] == [3, 28, 28]


def test_labelled_images_are_class_folders_of_pngs(tmp_path_factory):
    folder = labelled_images(tmp_path_factory)
    folders = sorted(p.name for p in folder.iterdir())
    assert len(folders) == 10 and folders[0].startswith("0_t-shirt")
    assert all(len(list((folder / f).glob("*.png"))) == 3 for f in folders)
