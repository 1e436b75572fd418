"""Served throughput and latency of `ffx serve` (Triton via PyTriton) vs ONNX Runtime called directly.

For each batch size: the same ffx runner the server uses is timed in-process (direct), then the
served model is timed through tritonclient over HTTP on loopback, first with one client sending
requests back to back (the per-request serving overhead), then with several concurrent clients
(what dynamic batching does with concurrent load). Requests carry preprocessed float32 images of
the fixture model (real Fashion-MNIST PNGs). Bounded: a fixed number of requests per measurement.

    python -m bench.serving                   # or: python bench/serving.py
    python -m bench.serving --model m.onnx --batch 1,8 --requests 200 --clients 4 --json out.json
"""

import argparse
import concurrent.futures
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "fashion"


def ffx_command():
    script = Path(sys.executable).with_name("ffx")
    return [str(script)] if script.is_file() else ["ffx"]


def fixture_model(folder):
    """The fixture checkpoint exported with `ffx export` into `folder`."""
    path = Path(folder) / "fashion.onnx"
    subprocess.run([*ffx_command(), "export", "--checkpoint", str(FIXTURE / "model.pth"), "-o", str(path)],
                   check=True, capture_output=True)
    return path


def real_images(model, count):
    from ffx.images import find_images, load_image
    from ffx.metadata import Preprocess, read_onnx_metadata

    preprocess = Preprocess.from_dict(read_onnx_metadata(model)["preprocess"])
    files = find_images(FIXTURE / "val")[:count]
    return np.stack([load_image(path, preprocess) for path in files])


def latency_summary(seconds, batch, wall=None):
    ms = np.asarray(seconds) * 1000.0
    wall = wall if wall is not None else float(np.sum(seconds))
    return {"requests": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "images_per_s": round(len(ms) * batch / wall, 1)}


def time_direct(model, images, batch, requests, warmup=10):
    from ffx.runtime.backends.runner import open_runner

    seconds = []
    with open_runner(model) as runner:
        for i in range(warmup + requests):
            chunk = _batch_at(images, i, batch)
            started = time.perf_counter()
            runner.infer(chunk)
            if i >= warmup:
                seconds.append(time.perf_counter() - started)
    return latency_summary(seconds, batch)


def _batch_at(images, index, batch):
    start = (index * batch) % (len(images) - batch + 1)
    return images[start:start + batch]


def _request(client, httpclient, name, chunk):
    request = httpclient.InferInput("images", list(chunk.shape), "FP32")
    request.set_data_from_numpy(chunk)
    return client.infer(name, [request]).as_numpy("logits")


def time_served(url, name, images, batch, requests, clients, warmup=10):
    """Latency per request and images/s over the wall time, with `clients` concurrent clients."""
    import tritonclient.http as httpclient

    def one_client(index):
        client = httpclient.InferenceServerClient(url)
        seconds = []
        try:
            for i in range(warmup):
                _request(client, httpclient, name, _batch_at(images, i, batch))
            for i in range(index, requests, clients):
                chunk = _batch_at(images, i, batch)
                started = time.perf_counter()
                _request(client, httpclient, name, chunk)
                seconds.append(time.perf_counter() - started)
        finally:
            client.close()
        return seconds

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        seconds = [s for per_client in pool.map(one_client, range(clients)) for s in per_client]
    # Warm-up requests are inside the wall time; subtract their share by timing only measured ones.
    wall = time.perf_counter() - started
    measured_wall = wall * len(seconds) / (len(seconds) + warmup * clients)
    return latency_summary(seconds, batch, wall=measured_wall)


def batching_statistics(url, name):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(name)["model_stats"][0]
    finally:
        client.close()
    return int(stats["inference_count"]), int(stats["execution_count"])


class ServedModel:
    """`ffx serve MODEL` on free loopback ports, stopped with SIGTERM."""

    def __init__(self, model, max_batch, queue_delay_us):
        from ffx.runtime.deploy.serving import free_loopback_ports

        ports = free_loopback_ports(3)
        self.url = f"127.0.0.1:{ports[0]}"
        self.command = [*ffx_command(), "serve", str(model), "--name", "bench", "--port", str(ports[0]),
                        "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--max-batch", str(max_batch),
                        "--max-queue-delay-us", str(queue_delay_us)]
        self.process = None

    def __enter__(self):
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"ffx serve exited with {self.process.wait()} before it was ready")
            if "Ctrl-C stops" in line:
                return self
        raise RuntimeError("ffx serve was not ready within 180 s")

    def __exit__(self, *exc):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run(model, batches, requests, clients, queue_delay_us, log=print):
    images = real_images(model, 256)
    rows = []
    load_before = os.getloadavg()
    with ServedModel(model, max_batch=max(max(batches) * clients, 8), queue_delay_us=queue_delay_us) as server:
        for batch in batches:
            direct = time_direct(model, images, batch, requests)
            log(f"batch {batch}: direct {direct}")
            single = time_served(server.url, "bench", images, batch, requests, clients=1)
            log(f"batch {batch}: served, 1 client {single}")
            before = batching_statistics(server.url, "bench")
            concurrent_load = time_served(server.url, "bench", images, batch, requests, clients=clients)
            after = batching_statistics(server.url, "bench")
            inferences, executions = after[0] - before[0], after[1] - before[1]
            concurrent_load["mean_images_per_execution"] = round(inferences / max(executions, 1), 2)
            log(f"batch {batch}: served, {clients} clients {concurrent_load}")
            rows.append({"batch": batch, "direct_onnxruntime": direct, "served_1_client": single,
                         f"served_{clients}_clients": concurrent_load})
    return {
        "model": Path(model).name,
        "requests_per_measurement": requests,
        "clients": clients,
        "max_queue_delay_us": queue_delay_us,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in os.getloadavg()]},
        "rows": rows,
    }


def markdown(result):
    clients = result["clients"]
    lines = [f"| batch | direct onnxruntime images/s | p50 / p99 ms | served, 1 client images/s | p50 / p99 ms | "
             f"served, {clients} clients images/s | p50 / p99 ms | images per execution |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        d, s, c = row["direct_onnxruntime"], row["served_1_client"], row[f"served_{clients}_clients"]
        lines.append(f"| {row['batch']} | {d['images_per_s']} | {d['p50_ms']} / {d['p99_ms']} | {s['images_per_s']} | "
                     f"{s['p50_ms']} / {s['p99_ms']} | {c['images_per_s']} | {c['p50_ms']} / {c['p99_ms']} | "
                     f"{c['mean_images_per_execution']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="ffx ONNX to serve [default: the fixture model, exported]")
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes per request")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per measurement")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients in the load measurement")
    parser.add_argument("--max-queue-delay-us", type=int, default=500)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        model = args.model or fixture_model(folder)
        result = run(model, batches, args.requests, args.clients, args.max_queue_delay_us,
                     log=lambda message: print(message, file=sys.stderr))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["machine"]))
    print(markdown(result))


if __name__ == "__main__":
    main()
