"""`ffx deploy triton`: model repositories whose config.pbtxt parses strictly against Triton's own
ModelConfig protobuf (tritonclient ships it), for an ffx ONNX and a real TensorRT-RTX engine."""

import json

import pytest

from ffx.cli import cli
from ffx.metadata import read_onnx_metadata
from helpers import FASHION_CLASSES, TENSORRT_RTX_MISSING, fashion_onnx

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="needs tritonclient[grpc] (pip install '.[serve]' in ffx's folder)")
from google.protobuf import text_format  # noqa: E402  (tritonclient brings protobuf)


def parse_strictly(path):
    # text_format.Parse rejects any field the schema does not define.
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def fashion_engine(tmp_path_factory):
    if TENSORRT_RTX_MISSING:  # a fixture: the needs_rtx mark does not apply here
        pytest.skip(TENSORRT_RTX_MISSING)
    from click.testing import CliRunner

    engine = tmp_path_factory.mktemp("triton-engine") / "fashion.engine"
    result = CliRunner().invoke(cli, ["build-engine", str(fashion_onnx(tmp_path_factory)), "-o", str(engine),
                                      "--backend", "tensorrt-rtx", "--max-batch", "16", "--opt-batch", "4"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return engine


def _deploy(cli_runner, *args):
    return cli_runner.invoke(cli, ["deploy", "triton", *map(str, args)], catch_exceptions=False)


def test_onnx_repository(cli_runner, tmp_path_factory, tmp_path):
    model = fashion_onnx(tmp_path_factory)
    result = _deploy(cli_runner, model, "-o", tmp_path / "repo", "--name", "fashion", "--instances", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    folder = tmp_path / "repo" / "fashion"
    config = parse_strictly(folder / "config.pbtxt")
    assert config.name == "fashion" and config.backend == "onnxruntime"
    assert config.max_batch_size == 32 == report["max_batch_size"]
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("images", model_config_pb2.TYPE_FP32, [3, 28, 28])]
    assert [(o.name, o.data_type, list(o.dims), o.label_filename) for o in config.output] == [
        ("logits", model_config_pb2.TYPE_FP32, [10], "labels.txt")]
    assert config.HasField("dynamic_batching") and list(config.dynamic_batching.preferred_batch_size) == [32]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.instance_group[0].count == 2
    assert (folder / "1" / "model.onnx").read_bytes() == model.read_bytes()
    assert (folder / "labels.txt").read_text().splitlines() == FASHION_CLASSES
    readme = (folder / "README.txt").read_text()
    assert "tritonserver --model-repository" in readme and 'client.infer("fashion"' in readme
    provenance = json.loads((folder / "ffx.json").read_text())
    assert provenance["metadata"] == read_onnx_metadata(model)
    assert report["warnings"] == [] and not [p for p in (tmp_path / "repo").iterdir() if p.name.startswith(".")]


def test_class_names_with_line_breaks_keep_one_label_per_class(cli_runner, tmp_path_factory, tmp_path):
    """labels.txt is one name per line: a name with a line break would shift every label after it."""
    import onnx

    from ffx.metadata import onnx_metadata, set_onnx_metadata

    model = onnx.load(str(fashion_onnx(tmp_path_factory)))
    info = onnx_metadata(model)
    info["class_names"] = [f"line\nbreak {i}" if i % 2 else name for i, name in enumerate(FASHION_CLASSES)]
    set_onnx_metadata(model, info)
    onnx.save(model, tmp_path / "names.onnx")
    result = _deploy(cli_runner, tmp_path / "names.onnx", "-o", tmp_path / "repo", "--json")
    assert result.exit_code == 0, result.output
    labels = (tmp_path / "repo" / "names" / "labels.txt").read_text().splitlines()
    assert len(labels) == 10 and labels[0] == FASHION_CLASSES[0] and labels[1] == "line\\nbreak 1"
    assert any("escaped" in warning for warning in json.loads(result.stdout)["warnings"])


def test_engine_repository_takes_its_batch_profile(cli_runner, fashion_engine, tmp_path):
    result = _deploy(cli_runner, fashion_engine, "-o", tmp_path / "repo", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    folder = tmp_path / "repo" / "fashion"  # name from the file
    config = parse_strictly(folder / "config.pbtxt")
    assert config.backend == "tensorrt" and report["model_file"] == "1/model.plan"
    assert config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]  # the profile's opt and max
    assert list(config.input[0].dims) == [3, 28, 28] and list(config.output[0].dims) == [10]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (folder / "1" / "model.plan").read_bytes() == fashion_engine.read_bytes()
    assert json.loads((folder / "ffx.json").read_text())["sidecar"]["backend"] == "tensorrt-rtx"
    # Triton runs full TensorRT: an RTX engine is written, but the user is told it will not load there.
    assert any("TensorRT-RTX" in w for w in report["warnings"])

    smaller = _deploy(cli_runner, fashion_engine, "-o", tmp_path / "repo", "--name", "small", "--max-batch", "2", "--json")
    assert parse_strictly(tmp_path / "repo" / "small" / "config.pbtxt").max_batch_size == 2
    assert json.loads(smaller.stdout)["preferred_batch_sizes"] == [2]


def test_strict_parsing_rejects_unknown_fields(tmp_path):
    config = tmp_path / "config.pbtxt"
    config.write_text('name: "m"\nbackend: "onnxruntime"\nmax_batch_sizes: 4\n')
    with pytest.raises(text_format.ParseError):
        parse_strictly(config)


def test_mistakes_exit_2_and_leave_nothing(cli_runner, fashion_engine, tmp_path_factory, tmp_path):
    repo = tmp_path / "repo"
    too_big = _deploy(cli_runner, fashion_engine, "-o", repo, "--max-batch", "64")
    assert too_big.exit_code == 2 and "up to 16" in too_big.output
    assert not (repo / "fashion").exists()
    assert _deploy(cli_runner, fashion_onnx(tmp_path_factory), "-o", repo, "--name", "m").exit_code == 0
    again = _deploy(cli_runner, fashion_onnx(tmp_path_factory), "-o", repo, "--name", "m")
    assert again.exit_code == 2 and "already exists" in again.output
    checkpoint = _deploy(cli_runner, tmp_path_factory.getbasetemp() / "nope.pth", "-o", repo)
    assert checkpoint.exit_code == 2 and checkpoint.output.startswith("Error: ")
    assert sorted(p.name for p in repo.iterdir()) == ["m"]


def test_external_weights_travel_with_the_model(cli_runner, mini, tmp_path):
    """A model whose weights lie in a data file beside it (what exports above 2 GB do): the
    repository and the DeepStream folder get the data file too, where the graph names it, and
    the copies run (the repository written before lacked it and could not load)."""
    import numpy as np
    import onnx
    import onnxruntime

    source = tmp_path / "model" / "net.onnx"
    (source.parent / "weights").mkdir(parents=True)
    onnx.save(onnx.load(str(mini.onnx)), source, save_as_external_data=True, location="weights/net.bin")
    images = np.random.default_rng(0).standard_normal((2, 3, 28, 28), dtype=np.float32)
    expected = onnxruntime.InferenceSession(str(source)).run(None, {"images": images})[0]
    assert _deploy(cli_runner, source, "-o", tmp_path / "repo").exit_code == 0
    result = cli_runner.invoke(cli, ["deploy", "deepstream", str(source), "-o", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    for copy in (tmp_path / "repo" / "net" / "1" / "model.onnx", tmp_path / "ds" / "net.onnx"):
        assert (copy.parent / "weights" / "net.bin").read_bytes() == (source.parent / "weights" / "net.bin").read_bytes()
        np.testing.assert_array_equal(onnxruntime.InferenceSession(str(copy)).run(None, {"images": images})[0], expected)
