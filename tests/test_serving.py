"""`ffx serve` with the real Triton Inference Server (NVIDIA PyTriton's tritonserver) on loopback:
tritonclient over HTTP and gRPC, logits against ONNX Runtime run directly, a bounded concurrent
burst with dynamic batching seen in Triton's own statistics, malformed requests and hostile
uploads (400, one line, no helper program started), class names for `class_count`, readiness,
metrics, a port in use, and a clean SIGTERM shutdown that leaves no log behind. One server for the
whole module, plus one short-lived server for --log-file and SIGHUP."""

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from ffx.images import find_images, load_image
from ffx.metadata import Preprocess, read_onnx_metadata
from ffx.runtime.deploy.serving import free_loopback_ports, processes_started_from
import hostile_corpus
from helpers import FASHION, FASHION_CLASSES, fashion_onnx, stop_with_sigterm, tritonserver_runs

pytest.importorskip("pytriton.triton", reason="needs NVIDIA PyTriton (pip install '.[serve]' in ffx's folder)")
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (pip install '.[serve]' in ffx's folder)")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc] (pip install '.[serve]' in ffx's folder)")
from tritonclient.utils import InferenceServerException  # noqa: E402

FFX = [str(Path(sys.executable).with_name("ffx"))]  # the installed console script, as a user runs it
MODEL = "fashion"
STARTUP_SECONDS = 120
QUEUE_DELAY_US = 5000  # long enough that concurrent requests visibly share batches on a busy machine


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
    """The module's server, started with fake Ghostscript and image tools first on its PATH (none
    may run), its readiness polled while it starts."""
    if not tritonserver_runs():
        pytest.skip("PyTriton's tritonserver binary cannot run on this machine")
    ports = free_loopback_ports(3)
    folder = tmp_path_factory.mktemp("serve")
    stderr_path = folder / "stderr.txt"
    fake_bin, ran = hostile_corpus.fake_helper_programs(folder)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [*FFX, "serve", str(model_path), "--name", MODEL, "--port", str(ports[0]), "--grpc-port", str(ports[1]),
             "--metrics-port", str(ports[2]), "--max-batch", "16", "--max-queue-delay-us", str(QUEUE_DELAY_US), "--json"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    server = Server(process, ports, stderr_path)
    server.ran = ran
    server.folder = None  # set by the test that plants a program there
    poller = _ReadinessPoller(ports[0])
    try:
        ready_line = _read_ready_json(process)
        poller.finish()
        assert ready_line["model_name"] == MODEL and ready_line["max_batch_size"] == 16
        server.info, server.readiness = ready_line, poller.seen
        yield server
    finally:
        poller.finish()
        stop_with_sigterm(process)
    # Teardown checks the shutdown itself: SIGTERM -> exit 0, "stopped", and the temporary log (with
    # the folder holding it) removed; and that no helper program ran all along.
    assert process.returncode == 0, stderr_path.read_text()[-2000:]
    assert "stopped" in stderr_path.read_text()
    log = Path(server.info["log_file"])
    assert not log.exists() and not log.parent.exists(), log
    assert not list(ran.iterdir()), [p.name for p in ran.iterdir()]
    if server.folder is not None:  # nothing runs from the server's folder any more, the planted program included
        assert not processes_started_from(server.folder)


class _ReadinessPoller:
    """Polls /v2/health/ready and both models' ready endpoints from the server's start until
    `finish()`, recording each distinct (server, model, image model) state seen."""

    def __init__(self, port):
        self.port, self.seen, self._stop = port, [], threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _status(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None  # not listening yet

    def _poll(self):
        while not self._stop.is_set():
            state = tuple(self._status(path) for path in ("/v2/health/ready", f"/v2/models/{MODEL}/ready",
                                                           f"/v2/models/{MODEL}_image/ready"))
            if not self.seen or self.seen[-1] != state:
                self.seen.append(state)
            self._stop.wait(0.05)

    def finish(self):
        self._stop.set()
        self._thread.join()


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
    from ffx.runtime.tasks.predict import predict

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
def test_hostile_uploads_are_a_400_line_and_start_no_program(server, tmp_path):
    """PostScript and PDF named .png (Ghostscript, if they reached Pillow's EPS plugin), a Targa,
    3,000,000 x 1 pixels in 443 bytes, empty and text: each fails its own request with HTTP 400
    (gRPC INVALID_ARGUMENT) and one line naming the image, no traceback, no server path; the fake
    helpers on the server's PATH never run (checked again at teardown), and the server serves on."""
    pictures = hostile_corpus.images(tmp_path)
    http, grpc = server.http(), server.grpc()
    try:
        for name, path in pictures.items():
            if name == "good":
                continue
            encoded = np.array([[path.read_bytes()]], dtype=object)
            for client, module, expected in ((http, httpclient, "400"), (grpc, grpcclient, "StatusCode.INVALID_ARGUMENT")):
                with pytest.raises(InferenceServerException) as error:
                    _infer(client, module, encoded, model=f"{MODEL}_image", name="image", datatype="BYTES")
                message = error.value.message()
                assert str(error.value.status()) == expected, (name, error.value.status(), message)
                assert message.startswith("image 0: ") and "\n" not in message, (name, message)
                assert "Traceback" not in message and "/" not in message, (name, message)
        good = np.array([[pictures["good"].read_bytes()]], dtype=object)
        assert _infer(http, httpclient, good, model=f"{MODEL}_image", name="image", datatype="BYTES").shape == (1, 10)
    finally:
        http.close()
        grpc.close()
    assert not list(server.ran.iterdir()), [p.name for p in server.ran.iterdir()]


@pytest.mark.slow
def test_class_count_requests_return_class_names(server, reference):
    """Triton's classification extension on both models: "score:index:name", as a `deploy triton`
    repository with labels.txt answers."""
    images, files, expected = reference
    client = server.http()
    try:
        tensors = httpclient.InferInput("images", [1, 3, 28, 28], "FP32")
        tensors.set_data_from_numpy(images[:1])
        encoded = httpclient.InferInput("image", [1, 1], "BYTES")
        encoded.set_data_from_numpy(np.array([[Path(files[0]).read_bytes()]], dtype=object))
        for model, request in ((MODEL, tensors), (f"{MODEL}_image", encoded)):
            top = client.infer(model, [request], outputs=[httpclient.InferRequestedOutput("logits", class_count=3)])
            entries = [entry.decode().split(":") for entry in top.as_numpy("logits")[0]]
            best = np.argsort(-expected[0])[:3]
            assert [int(index) for _, index, _ in entries] == best.tolist(), model
            assert [name for _, _, name in entries] == [FASHION_CLASSES[i] for i in best], model
    finally:
        client.close()


@pytest.mark.slow
def test_ready_only_once_both_models_serve(server):
    """Polled from the server's start: /v2/health/ready never said 200 while a model was not ready
    (with PyTriton's default store, filled after start, it did for seconds)."""
    assert server.readiness[-1] == (200, 200, 200), server.readiness
    early = [state for state in server.readiness if state[0] == 200 and state != (200, 200, 200)]
    assert not early, server.readiness


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


def test_a_program_left_running_in_the_servers_folder_is_ended_at_shutdown(server):
    """Triton and its Python backend stubs run from the server's folder; a stub once outlived its
    server (orphaned, 20 minutes). Here an orphaned program is planted there: the shutdown the
    fixture's teardown checks must end it too."""
    folder = Path(server.info["log_file"]).parent
    assert sorted(processes_started_from(folder))  # tritonserver and the stubs, seen where they run from
    sleeper = folder / "workspace" / "leftover-sleep"
    shutil.copy2(shutil.which("sleep"), sleeper)
    # Started by a shell that exits at once, so it is orphaned like a stub whose server died.
    pid = int(subprocess.run(["sh", "-c", '"$0" 600 <&- >&- 2>&- & echo $!', str(sleeper)],
                             capture_output=True, text=True, check=True, timeout=30).stdout)
    assert pid in processes_started_from(folder)
    server.folder = folder


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
    (["--host", ""], "give an address to listen on"),  # hung
    (["--port", "65535"], "the gRPC port defaults to --port + 1, past 65535"),  # a traceback from Triton
    (["--name", "n" * 120], "more than the 107 Unix sockets allow"),
    ([], "set TMPDIR to a shorter folder"),  # with a TMPDIR too long for socket paths (below)
])
def test_bad_name_or_host_is_one_line_before_any_server_starts(model_path, tmp_path, args, message):
    env = dict(os.environ)
    if not args:
        env["TMPDIR"] = str(tmp_path / ("t" * 100))
        Path(env["TMPDIR"]).mkdir()
    result = subprocess.run([*FFX, "serve", str(model_path), *args], capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr


@pytest.mark.slow
def test_log_file_is_kept_a_long_home_works_and_sighup_stops_cleanly(model_path, tmp_path):
    """--log-file keeps Triton's log where asked (appended to, never replaced); a HOME whose socket
    paths would be too long (PyTriton's default workspace is under it) does not matter, since the
    server's folder is under TMPDIR; SIGHUP (a closed terminal) stops like SIGTERM: exit 0."""
    if not tritonserver_runs():
        pytest.skip("PyTriton's tritonserver binary cannot run on this machine")
    log = tmp_path / "triton.log"
    log.write_text("kept line\n")
    home = tmp_path / ("h" * 120)
    home.mkdir()
    port = free_loopback_ports(3)
    process = subprocess.Popen([*FFX, "serve", str(model_path), "--port", str(port[0]), "--grpc-port", str(port[1]),
                                "--metrics-port", str(port[2]), "--log-file", str(log), "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "HOME": str(home)})
    try:
        assert _read_ready_json(process)["log_file"] == str(log)
        process.send_signal(signal.SIGHUP)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0 and "stopped" in stderr, stderr[-2000:]
    text = log.read_text()
    assert text.startswith("kept line\n") and len(text.splitlines()) > 5
