"""An FP8 (E4M3 Q/DQ) graph of the trained Fashion-MNIST fixture, written by `ffx calibrate --fp8`,
through every command that takes INT8 graphs: verify, compare, bench, predict, deploy triton,
deploy deepstream and serve (the real tritonserver PyTriton ships, on loopback). Real onnxruntime,
real images; nothing stands in for the FP8 graph."""

import configparser
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from ffx.cli import cli
from ffx.images import find_images, load_image
from ffx.metadata import Preprocess, read_onnx_metadata
from helpers import (FASHION, fashion_fp8_onnx, fashion_onnx, needs_fashion_model, stop_with_sigterm,
                     tritonserver_runs)

pytestmark = needs_fashion_model


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return fashion_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def fp8(tmp_path_factory):
    return fashion_fp8_onnx(tmp_path_factory)


def _run(cli_runner, *args):
    result = cli_runner.invoke(cli, [*map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _sample(preprocess, count=40):
    files = find_images(FASHION / "val")[::25][:count]
    return files, np.stack([load_image(path, preprocess) for path in files])


def test_verify_measures_the_fp8_graph_against_fp32(cli_runner, fp32, fp8):
    report = json.loads(_run(cli_runner, "verify", fp8, "--reference", fp32, "--data", FASHION / "val",
                             "--limit", "300", "--json").stdout)
    assert report["candidate"]["precision"] == "fp8" and report["candidate"]["backend"] == "onnxruntime"
    assert report["images"] == 300 and report["agreement"] >= 97 and report["passed"] is True


def test_compare_shows_the_fp8_error_block_by_block(cli_runner, fp32, fp8):
    report = json.loads(_run(cli_runner, "compare", fp32, fp8, "--data", FASHION / "val", "--num-images", "40",
                             "--json").stdout)
    points = [point["point"] for point in report["points"]]
    assert points[0] == "embedding" and points[-1] == "logits" and len(points) == 2 + 2 * 4
    errors = [point["relative_error"] for point in report["points"]]
    assert errors[0] == 0  # patch_embed stays in float by default: the embedding is exact
    assert all(0 < error < 0.2 for error in errors[1:])  # E4M3: a few % per tensor
    assert report["agreement"] >= 90


def test_bench_and_predict_run_the_fp8_graph(cli_runner, fp32, fp8):
    rows = json.loads(_run(cli_runner, "bench", fp8, "--batch", "1,4", "--iterations", "5", "--warmup", "1",
                           "--threads", "1", "--json").stdout)
    assert [(row["backend"], row["precision"], row["batch"]) for row in rows] == [
        ("onnxruntime", "fp8", 1), ("onnxruntime", "fp8", 4)]
    assert all(row["images_per_s"] > 0 for row in rows)
    files = find_images(FASHION / "val")[::100][:10]
    fp8_top = json.loads(_run(cli_runner, "predict", fp8, *files, "--topk", "1", "--json").stdout)
    fp32_top = json.loads(_run(cli_runner, "predict", fp32, *files, "--topk", "1", "--json").stdout)
    assert len(fp8_top) == len(files)
    same = sum(a["top"][0]["class"] == b["top"][0]["class"] for a, b in zip(fp8_top, fp32_top))
    assert same >= 9


def test_deploy_triton_writes_an_onnxruntime_repository_for_the_fp8_graph(cli_runner, fp8, tmp_path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc]")
    from google.protobuf import text_format

    report = json.loads(_run(cli_runner, "deploy", "triton", fp8, "-o", tmp_path / "repo", "--json").stdout)
    folder = Path(report["model_dir"])
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert report["model_name"] == "fashion_fp8" == config.name and config.backend == "onnxruntime"
    assert [(i.name, i.data_type) for i in config.input] == [("images", model_config_pb2.TYPE_FP32)]
    assert (folder / "1" / "model.onnx").read_bytes() == Path(fp8).read_bytes()
    assert json.loads((folder / "ffx.json").read_text())["metadata"]["precision"] == "fp8"


def test_deploy_deepstream_says_nvinfer_has_no_fp8_network_mode(cli_runner, fp8, tmp_path):
    report = json.loads(_run(cli_runner, "deploy", "deepstream", fp8, "-o", tmp_path, "--json").stdout)
    text = (tmp_path / "config_infer_fashion.txt").read_text()
    parser = configparser.ConfigParser()
    parser.read_string(text)
    assert parser["property"]["network-mode"] == "2" == str(report["network_mode"])
    assert parser["property"]["onnx-file"] == Path(fp8).name
    assert "# Model: fashion.fp8.onnx, fp8" in text
    assert any("no FP8 value" in warning for warning in report["warnings"])
    assert "# Note: nvinfer's network-mode has no FP8 value (0 FP32, 1 INT8, 2 FP16)" in text


def test_serve_answers_with_the_fp8_graphs_logits(fp8, tmp_path):
    httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (pip install 'ffx[serve]')")
    if not tritonserver_runs():
        pytest.skip("PyTriton's tritonserver binary cannot run on this machine")
    from ffx.runtime.deploy.serving import free_loopback_ports, processes_started_from

    ports = free_loopback_ports(3)
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("ffx")), "serve", str(fp8), "--name", "fp8", "--port", str(ports[0]),
             "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--max-batch", "8", "--json"],
            stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        text, deadline = "", time.monotonic() + 120
        while time.monotonic() < deadline and not text.rstrip().endswith("}"):
            line = process.stdout.readline()
            assert line, f"ffx serve exited before it was ready: {stderr_path.read_text()[-1000:]}"
            if line.startswith(("{", " ", "}")) or text:
                text += line
        ready = json.loads(text)
        assert ready["precision"] == "fp8"
        preprocess = Preprocess.from_dict(read_onnx_metadata(fp8)["preprocess"])
        _, images = _sample(preprocess, 8)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        request = httpclient.InferInput("images", list(images.shape), "FP32")
        request.set_data_from_numpy(images)
        served = client.infer("fp8", [request]).as_numpy("logits")
        direct = onnxruntime.InferenceSession(str(fp8), providers=["CPUExecutionProvider"]).run(
            None, {"images": images})[0]
        np.testing.assert_allclose(served, direct, rtol=1e-5, atol=1e-5)
    finally:
        stop_with_sigterm(process)
    assert process.returncode == 0, stderr_path.read_text()[-2000:]
    assert not processes_started_from(Path(ready["log_file"]).parent)  # Triton and its stubs ended with it


def test_sensitivity_and_the_target_search_measure_fp8(cli_runner, fp32, tmp_path):
    common = ["--cache-dir", tmp_path / "cache", "--workers", "0"]
    ranked = json.loads(_run(cli_runner, "sensitivity", fp32, "--fp8", "--data", FASHION / "train", "--calib-images",
                             "128", "--num-images", "200", "--json", *common).stdout)
    assert ranked["method"] == "max" and len(ranked["layers"]) == 2 + 4 * 4
    assert 0 < ranked["all_int8"]["snr_db"] < 60  # the all-FP8 graph (the report's field keeps its INT8 name)
    # FP8's errors are largest where a layer reads the image or feeds the logits (measured: patch_embed first)
    assert ranked["layers"][0]["name"] in ("patch_embed", "head")

    out = tmp_path / "auto.fp8.onnx"
    result = _run(cli_runner, "calibrate", fp32, "--fp8", "--data", FASHION / "train", "--num-images", "128",
                  "--target-agreement", "99.5", "--held-out-images", "300", "--point-estimate", "-o", out,
                  "--no-tensorrt-check", *common)  # 300 images cannot show 99.5% on the 95% bound: the point estimate
    manifest = json.loads(out.with_suffix(".json").read_text())
    search = manifest["keep_fp_search"]
    assert manifest["precision"] == "fp8" and search["measured"]["agreement"] >= 99.5
    assert [layer["name"] for layer in manifest["layers"] if layer["precision"] == "fp32"] == search["keep_fp"]
    # Each layer in whichever of FP8 and INT8 erred less alone (measured on the closest held-out calls)
    rows = {row["name"]: row for row in search["layers"]}
    assert sorted(rows) == sorted(layer["name"] for layer in manifest["layers"])
    chosen = [name for name, row in rows.items() if row["int8_error"] < row["fp8_error"]]
    assert sorted(search["int8_layers"]) == sorted(set(chosen) - set(search["keep_fp"])) and 0 < len(chosen) < len(rows)
    assert all(rows[name]["precision"] == ("int8" if name in chosen else "fp8") for name in rows)
    assert all(layer["precision"] == ("int8" if layer["name"] in chosen else "fp8")
               for layer in manifest["layers"] if layer["name"] not in search["keep_fp"])
    assert manifest["params"].get("int8_layers", {}).get("layers", []) == search["int8_layers"]
    # The graph kept is the cheapest of those measured that met the target (FP8 tries cheaper sets after one meets it)
    met = [step for step in search["steps"] if step["met"]]
    assert search["float_flops_share"] == min(step["float_flops_share"] for step in met)
    assert "target met at the point estimate on 300 held-out images" in result.stdout
    assert "of them in INT8, entropy ranges" in result.stdout and "search: choosing FP8 or INT8" in result.stderr

    # Without a target, --int8-layers auto makes the same choice on the same held-out images, and
    # keeps FP8's default float layers (patch_embed, head) in float
    chose = tmp_path / "chose.fp8.onnx"
    result = _run(cli_runner, "calibrate", fp32, "--fp8", "--data", FASHION / "train", "--num-images", "128",
                  "--int8-layers", "auto", "--held-out-images", "300", "-o", chose, "--no-tensorrt-check", *common)
    manifest = json.loads(chose.with_suffix(".json").read_text())
    choice = manifest["int8_choice"]
    assert "keep_fp_search" not in manifest and choice["held_out_images"] == 300 and choice["ranking_images"] == 64
    assert {row["name"]: (row["fp8_error"], row["int8_error"]) for row in choice["layers"]} == {
        name: (row["fp8_error"], row["int8_error"]) for name, row in rows.items()}
    assert sorted(choice["int8_layers"]) == sorted(set(chosen) - {"patch_embed", "head"})
    assert manifest["params"]["int8_layers"]["layers"] == choice["int8_layers"]
    assert [layer["name"] for layer in manifest["layers"] if layer["precision"] == "fp32"] == ["patch_embed", "head"]
    assert all(row["precision"] == "float" for row in choice["layers"] if row["name"] in ("patch_embed", "head"))
    assert f"{len(choice['int8_layers'])} of them in INT8" in result.stdout
    assert "int8-layers auto: choosing FP8 or INT8" in result.stderr
    assert "int8-layers auto: kept in float by --keep-fp (FP8 default; --keep-fp none quantizes them): patch_embed, head" in result.stderr
