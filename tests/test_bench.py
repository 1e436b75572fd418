"""`ffx bench`: real timings of ONNX Runtime and PyTorch on the mini model, the JSON contract,
and the statistics helper."""

import json

import pytest

from ffx.cli import cli
from ffx.runtime.tasks.bench import latency_stats
from helpers import needs_gpu_reason, needs_rtx, qdq_model, runners_that_warn

JSON_FIELDS = {"target", "backend", "precision", "batch", "p50_ms", "p90_ms", "p99_ms", "images_per_s"}


def test_json_has_every_field_for_every_target_and_batch(cli_runner, mini, tmp_path_factory):
    qdq = qdq_model(tmp_path_factory)
    # A size given twice is measured once.
    result = cli_runner.invoke(cli, ["bench", str(mini.checkpoint), str(mini.onnx), str(qdq), "--batch", "1,2,1",
                                     "--iterations", "5", "--warmup", "1", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["backend"], r["precision"], r["batch"]) for r in rows] == [
        ("pytorch", "fp32", 1), ("pytorch", "fp32", 2),
        ("onnxruntime", "fp32", 1), ("onnxruntime", "fp32", 2),
        ("onnxruntime", "int8", 1), ("onnxruntime", "int8", 2),
    ]
    for row in rows:
        assert JSON_FIELDS <= set(row)
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["images_per_s"] > 0 and row["iterations"] == 5
    assert rows[0]["target"] == str(mini.checkpoint)


def test_table_for_people(cli_runner, mini):
    result = cli_runner.invoke(cli, ["bench", str(mini.onnx), "--iterations", "5", "--warmup", "0"])
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()[:2]
    assert header.split() == ["target", "backend", "precision", "batch", "p50", "ms", "p90", "ms", "p99", "ms",
                              "images/s", "CV"]
    target, *cells = row.split()
    assert target.endswith("mini.onnx")  # long paths are shortened from the left
    assert cells[:3] == ["onnxruntime", "fp32", "1"] and len(cells) == 8


@pytest.mark.parametrize("args, message", [
    (["{onnx}", "--batch", "1,x"], "--batch"),
    (["{onnx}", "--batch", "0"], "from 1 to 4096"),
    (["{onnx}", "--batch", "1000000000"], "from 1 to 4096"),
    (["missing.onnx"], "no such file"),
    (["{onnx}", "notes.txt"], "unknown model type"),
    (["{onnx}", "--provider", "cuda"], "CUDAExecutionProvider"),
])
def test_bad_input_exits_2(cli_runner, mini, tmp_path, monkeypatch, args, message):
    import onnxruntime

    if "cuda" in args and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    result = cli_runner.invoke(cli, ["bench", *[a.format(onnx=mini.onnx) for a in args]])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_engine_batch_beyond_profile_is_skipped_not_failed(cli_runner, mini, tmp_path):
    if needs_gpu_reason():
        pytest.skip(needs_gpu_reason())
    engine = tmp_path / "mini.engine"
    assert cli_runner.invoke(cli, ["build-engine", str(mini.onnx), "-o", str(engine), "--max-batch", "2"]).exit_code == 0
    result = cli_runner.invoke(cli, ["bench", str(engine), "--batch", "1,4", "--iterations", "5", "--json"])
    assert result.exit_code == 0, result.output
    assert [row["batch"] for row in json.loads(result.stdout)] == [1]
    assert "beyond its profile" in result.stderr


def test_latency_stats():
    stats = latency_stats([0.010] * 98 + [0.020, 0.030], batch=4)
    assert stats["p50_ms"] == pytest.approx(10.0) and stats["min_ms"] == pytest.approx(10.0)
    # Linear interpolation between the 99th and 100th of 100 sorted calls: 20 + 0.01 * (30 - 20).
    assert stats["p99_ms"] == pytest.approx(20.1)
    assert stats["mean_ms"] == pytest.approx(10.3)
    assert stats["images_per_s"] == pytest.approx(400.0)  # 4 images per median call of 10 ms
    # Population std: sqrt((98 * 0.3**2 + 9.7**2 + 19.7**2) / 100) = sqrt(4.91), over the mean 10.3.
    assert stats["cv"] == pytest.approx(4.91 ** 0.5 / 10.3)
    assert latency_stats([0.01] * 10, 1)["cv"] == pytest.approx(0.0, abs=1e-9)


@needs_rtx
def test_engine_that_cannot_run_here_is_skipped_beside_other_targets(cli_runner, mini, tmp_path):
    """On a machine without a GPU an engine cannot run: with other targets it is skipped with a
    warning and the rest are measured; alone, it is an error (exit 2)."""

    if not needs_gpu_reason():
        pytest.skip("this machine can run engines")
    engine = tmp_path / "mini.engine"
    built = cli_runner.invoke(cli, ["build-engine", str(mini.onnx), "--backend", "tensorrt-rtx", "-o", str(engine)])
    assert built.exit_code == 0, built.stderr
    result = cli_runner.invoke(cli, ["bench", str(engine), str(mini.onnx), "--iterations", "5", "--warmup", "0", "--json"])
    assert result.exit_code == 0, result.stderr
    assert [row["target"] for row in json.loads(result.stdout)] == [str(mini.onnx)]
    assert "mini.engine skipped" in result.stderr
    alone = cli_runner.invoke(cli, ["bench", str(engine), "--iterations", "5"])
    assert alone.exit_code == 2 and "Traceback" not in alone.stderr


def test_each_runners_own_warnings_follow_its_measurements(mini, tmp_path, monkeypatch):
    """What a runner warns of while it is made or runs (an engine without a sidecar, a CUDA graph
    capture that failed: runners_that_warn says the same on the CPU) is reported after that
    runner's results, through ffx.reporting, once each."""
    import shutil

    import ffx.runtime.tasks.bench as bench_task
    from ffx.reporting import warnings_to

    other = tmp_path / "other.onnx"
    shutil.copyfile(mini.onnx, other)
    runners_that_warn(monkeypatch, bench_task)
    events = []
    with warnings_to(lambda message: events.append(message)):
        bench_task.bench([mini.onnx, other], batches=(1, 2), iterations=5, warmup=1,
                         on_result=lambda result: events.append((result.target, result.batch)))
    assert events == [(str(mini.onnx), 1), (str(mini.onnx), 2), "mini.onnx: made", "mini.onnx: first call",
                      (str(other), 1), (str(other), 2), "other.onnx: made", "other.onnx: first call"]
