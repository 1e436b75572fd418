"""`ffx serve` with the real Triton Inference Server (NVIDIA PyTriton's tritonserver) on loopback:
tritonclient over HTTP and gRPC, logits against ONNX Runtime run directly, a bounded concurrent
burst with dynamic batching seen in Triton's own statistics, malformed requests, health, metrics,
a port in use, and a clean SIGTERM shutdown. One server for the whole module."""

import concurrent.futures
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from ffx.images import find_images, load_image
from ffx.metadata import Preprocess, read_onnx_metadata
from ffx.runtime.serving import free_loopback_ports
from helpers import FASHION, fashion_onnx

pytest.importorskip("pytriton.triton", reason="needs NVIDIA PyTriton (pip install 'ffx[serve]')")
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (pip install 'ffx[serve]')")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc] (pip install 'ffx[serve]')")
from tritonclient.utils import InferenceServerException  # noqa: E402

FFX = [str(Path(sys.executable).with_name("ffx"))]  # the installed console script, as a user runs it
MODEL = "fashion"
STARTUP_SECONDS = 120
QUEUE_DELAY_US = 5000  # long enough that concurrent requests visibly share batches on a busy machine


def _tritonserver_runs():
    """Whether the tritonserver binary PyTriton ships executes on this machine at all."""
    from pytriton.utils.distribution import get_root_module_path

    binary = get_root_module_path() / "tritonserver" / "bin" / "tritonserver"
    try:
        return subprocess.run([str(binary), "--help"], capture_output=True, timeout=60).returncode in (0, 1)
    except OSError:
        return False


class Server:
    def __init__(self, process, ports, stderr_path):
        self.process, self.stderr_path = process, stderr_path
        self.http_port, self.grpc_port, self.metrics_port = ports

    def http(self):
        return httpclient.InferenceServerClient(f"127.0.0.1:{self.http_port}")

    def grpc(self):
        return grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return fashion_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    if not _tritonserver_runs():
        pytest.skip("PyTriton's tritonserver binary cannot run on this machine")
    ports = free_loopback_ports(3)
    stderr_path = tmp_path_factory.mktemp("serve") / "stderr.txt"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [*FFX, "serve", str(model_path), "--name", MODEL, "--port", str(ports[0]), "--grpc-port", str(ports[1]),
             "--metrics-port", str(ports[2]), "--max-batch", "16", "--max-queue-delay-us", str(QUEUE_DELAY_US), "--json"],
            stdout=subprocess.PIPE, stderr=stderr, text=True)
    server = Server(process, ports, stderr_path)
    try:
        ready_line = _read_ready_json(process)
        assert ready_line["model_name"] == MODEL and ready_line["max_batch_size"] == 16
        server.info = ready_line
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    # Teardown checks the shutdown itself: SIGTERM -> exit 0, "stopped".
    assert process.returncode == 0, stderr_path.read_text()[-2000:]
    assert "stopped" in stderr_path.read_text()


def _read_ready_json(process):
    """The JSON object `ffx serve --json` prints once the models are loaded."""
    deadline = time.monotonic() + STARTUP_SECONDS
    text = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"ffx serve exited ({process.poll()}) before it was ready")
        if not line.startswith(("{", " ", "}")) and not text:
            continue  # a stray line from the server process
        text += line
        if line.startswith("}"):
            return json.loads(text)
    raise AssertionError("ffx serve was not ready in time")


@pytest.fixture(scope="module")
def reference(model_path):
    """(preprocessed real images, their files, logits from ONNX Runtime directly)."""
    preprocess = Preprocess.from_dict(read_onnx_metadata(model_path)["preprocess"])
    files = find_images(FASHION / "val")[::25][:40]
    images = np.stack([load_image(path, preprocess) for path in files])
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return images, files, session.run(None, {"images": images})[0]


def _infer(client, module, images, model=MODEL, name="images", datatype="FP32"):
    request = module.InferInput(name, list(images.shape), datatype)
    request.set_data_from_numpy(images)
    return client.infer(model, [request]).as_numpy("logits")


@pytest.mark.slow
def test_http_and_grpc_logits_match_onnxruntime(server, reference):
    images, _, expected = reference
    http, grpc = server.http(), server.grpc()
    try:
        np.testing.assert_allclose(_infer(http, httpclient, images[:8]), expected[:8], atol=1e-5, rtol=0)
        np.testing.assert_allclose(_infer(grpc, grpcclient, images[8:12]), expected[8:12], atol=1e-5, rtol=0)
        np.testing.assert_allclose(_infer(grpc, grpcclient, images[12:13]), expected[12:13], atol=1e-5, rtol=0)
    finally:
        http.close()
        grpc.close()


@pytest.mark.slow
def test_encoded_images_are_preprocessed_like_ffx_predict(server, reference, model_path):
    from ffx.runtime.predict import predict

    images, files, expected = reference
    encoded = np.array([[Path(f).read_bytes()] for f in files[:6]], dtype=object)
    client = server.http()
    try:
        served = _infer(client, httpclient, encoded, model=f"{MODEL}_image", name="image", datatype="BYTES")
    finally:
        client.close()
    np.testing.assert_allclose(served, expected[:6], atol=1e-5, rtol=0)
    predicted = [p.top[0]["class"] for p in predict(model_path, [str(f) for f in files[:6]])]
    assert served.argmax(1).tolist() == predicted


@pytest.mark.slow
def test_concurrent_burst_is_batched_and_nothing_is_lost_or_mixed(server, reference):
    images, _, expected = reference
    clients, per_client = 8, 10  # 80 requests of 1-3 images
    statistics_before = _model_statistics(server)

    def one_client(index):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        rng = np.random.default_rng(index)
        answers = []
        try:
            for _ in range(per_client):
                start, count = int(rng.integers(0, len(images) - 3)), int(rng.integers(1, 4))
                answers.append((start, count, _infer(client, httpclient, images[start:start + count])))
        finally:
            client.close()
        return answers

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [answer for answers in pool.map(one_client, range(clients)) for answer in answers]
    assert len(results) == clients * per_client
    for start, count, logits in results:  # every answer belongs to its own request
        np.testing.assert_allclose(logits, expected[start:start + count], atol=1e-5, rtol=0)

    statistics_after = _model_statistics(server)
    requests = statistics_after["inference_count"] - statistics_before["inference_count"]
    executions = statistics_after["execution_count"] - statistics_before["execution_count"]
    assert requests == sum(count for _, count, _ in results)  # images counted by Triton
    assert executions < clients * per_client, "Triton never put two requests in one batch"


def _model_statistics(server):
    client = server.http()
    try:
        stats = client.get_inference_statistics(MODEL)["model_stats"][0]
    finally:
        client.close()
    return {"inference_count": int(stats["inference_count"]), "execution_count": int(stats["execution_count"])}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["wrong shape", "wrong dtype", "wrong input name", "garbage image bytes", "empty image bytes"])
def test_malformed_requests_get_an_error_and_the_server_keeps_serving(server, reference, case):
    images, _, expected = reference
    client = server.http()
    try:
        with pytest.raises(InferenceServerException) as error:
            if case == "wrong shape":
                _infer(client, httpclient, np.zeros((1, 3, 28, 27), np.float32))
            elif case == "wrong dtype":
                _infer(client, httpclient, images[:1].astype(np.float64), datatype="FP64")
            elif case == "wrong input name":
                _infer(client, httpclient, images[:1], name="pixels")
            else:
                data = b"\x89PNG not really" if case == "garbage image bytes" else b""
                _infer(client, httpclient, np.array([[data]], dtype=object), model=f"{MODEL}_image", name="image",
                       datatype="BYTES")
        if "image bytes" in case:
            assert "image 0" in str(error.value)
        np.testing.assert_allclose(_infer(client, httpclient, images[:2]), expected[:2], atol=1e-5, rtol=0)
    finally:
        client.close()
    assert server.process.poll() is None


@pytest.mark.slow
def test_health_and_metrics(server):
    client = server.http()
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(MODEL) and client.is_model_ready(f"{MODEL}_image")
        config = client.get_model_config(MODEL)
        assert config["max_batch_size"] == 16 and "dynamic_batching" in config
    finally:
        client.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert f'nv_inference_request_success{{model="{MODEL}"' in metrics


def test_port_in_use_is_one_line(model_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([*FFX, "serve", str(model_path), "--port", str(port)], capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: port {port} (HTTP) is already in use on 127.0.0.1; stop what uses it or choose another --port"]
    assert result.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["--name", "../escape"], "model name '../escape'"),  # it named the server's log file: a traceback before
    (["--host", "10.255.255.1"], "not an address of this machine"),  # was reported as a port in use
    (["--host", "no-such-host.invalid"], "not an address or host name"),
])
def test_bad_name_or_host_is_one_line_before_any_server_starts(model_path, args, message):
    result = subprocess.run([*FFX, "serve", str(model_path), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
