"""Every command against a corpus of hostile and careless inputs (tests/hostile_corpus.py).

For each case: the documented exit code (2 for a refusal, 0 where the input is handled or bad
images are skipped and counted), no traceback, no output file left behind, every input byte for
byte unchanged, and a bounded time. Commands run in-process through Click's CliRunner.
"""

import collections
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import hostile_corpus
from ffx.cli import cli
from helpers import needs_rtx

# No single case may take longer than this (the slowest real work, a small calibration, takes a
# few seconds; an allocation blow-up or a hang takes far longer).
CASE_SECONDS = 60
# Nor grow this process's peak resident memory by more than this (a few KB of stride-0 tensors
# once reached 6.5 GB).
CASE_BYTES = 2 << 30


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, mini, images):
    root = tmp_path_factory.mktemp("hostile")
    yield root, hostile_corpus.build_corpus(root, mini, images)
    hostile_corpus.remove_deep_folders()


def _identity(path):
    """What must not change about an input: its type, inode and device numbers, and a regular file's bytes."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    data = Path(path).read_bytes() if stat.S_ISREG(info.st_mode) else None
    return stat.S_IFMT(info.st_mode), info.st_ino, info.st_rdev, data


def _partial_files(case):
    """Temporary files (.NAME.XXXXXXXX.partial) left in the folders of the case's inputs and outputs."""
    folders = {Path(p).parent for p in (*case.inputs, *case.outputs)}
    return [entry.name for folder in folders if folder.is_dir() for entry in os.scandir(folder)
            if entry.name.endswith(".partial")]


def _run(case):
    before = {Path(p): _identity(p) for p in case.inputs}
    resident = _reset_peak_memory()
    started = time.perf_counter()
    result = CliRunner().invoke(cli, case.args)
    seconds = time.perf_counter() - started
    problems = []
    if resident is not None and _memory_kib("VmHWM") * 1024 - resident > CASE_BYTES:
        problems.append(f"peak memory grew by {(_memory_kib('VmHWM') * 1024 - resident) / 2**30:.1f} GiB")
    if result.exc_info and not isinstance(result.exc_info[1], SystemExit):
        problems.append(f"traceback: {result.exc_info[1]!r}")
    if result.exit_code != case.expect:
        problems.append(f"exit {result.exit_code}, expected {case.expect}: {result.stderr.strip()[-300:]}")
    if "Traceback" in result.stderr:
        problems.append("'Traceback' on stderr")
    if case.expect == 2 and len([line for line in result.stderr.splitlines() if line.startswith("Error:")]) != 1:
        problems.append(f"not one 'Error:' line: {result.stderr.strip()[-300:]}")
    said = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("Usage:", "Try "))]
    if case.alone and len(said) != 1:
        problems.append(f"more than the Error line on stderr: {said}")
    if case.stderr_has and case.stderr_has not in result.stderr.lower():
        problems.append(f"stderr lacks {case.stderr_has!r}: {result.stderr.strip()[-300:]}")
    for path, identity in before.items():
        if _identity(path) != identity:
            problems.append(f"input {path.name} was modified or replaced")
    for path in case.outputs:
        if os.path.lexists(path):
            problems.append(f"output {Path(path).name} was left behind")
    if partial := _partial_files(case):
        problems.append(f"temporary files left: {partial[:3]}")
    if case.max_stderr_lines and len(result.stderr.splitlines()) > case.max_stderr_lines:
        problems.append(f"{len(result.stderr.splitlines())} lines on stderr, at most {case.max_stderr_lines} expected")
    if seconds > CASE_SECONDS:
        problems.append(f"took {seconds:.0f} s")
    return problems


def _reset_peak_memory():
    """Reset this process's peak resident size (Linux: /proc/self/clear_refs) and return the
    resident bytes now, or None where that cannot be done."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _memory_kib("VmRSS") * 1024
    except (OSError, ValueError):
        return None


def _memory_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise ValueError(field)


def _check_category(corpus, category):
    _root, cases = corpus
    selected = [case for case in cases if case.category == category]
    assert selected
    failures = {case.name: problems for case in selected if not case.skip and (problems := _run(case))}
    assert not failures, "\n".join(f"{name}: {'; '.join(problems)}" for name, problems in failures.items())
    skipped = sorted({case.skip for case in selected if case.skip})
    if skipped:
        pytest.skip(f"{sum(bool(case.skip) for case in selected)} of {len(selected)} cases could not run here: "
                    f"{'; '.join(skipped)} (the others passed)")
    return selected


def test_hostile_checkpoints(corpus):
    root, _cases = corpus
    _check_category(corpus, "checkpoint")
    assert not (root / "checkpoints" / "PAYLOAD_RAN").exists()  # the malicious pickle never ran


@pytest.mark.slow
def test_onnx_models_ffx_did_not_write_or_that_were_edited(corpus):
    _check_category(corpus, "onnx")


def test_engines_with_broken_sidecars(corpus):
    _check_category(corpus, "engine")


def test_invalid_calibration_manifest_is_shown_not_fatal(corpus):
    _check_category(corpus, "manifest")


def test_hostile_images_are_skipped_and_counted(corpus, tmp_path, monkeypatch):
    """...and none of them makes ffx start another program: fakes of Ghostscript and the other
    helpers Pillow knows sit first on PATH and would leave a marker."""
    fake_bin, ran = hostile_corpus.fake_helper_programs(tmp_path)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    _check_category(corpus, "image")
    assert not list(ran.iterdir()), f"ran {[p.name for p in ran.iterdir()]}"


def test_usage_errors_come_alone(corpus):
    _check_category(corpus, "messages")


def test_counts_and_settings_past_any_machine(corpus):
    _check_category(corpus, "options")


def test_classifiers_whose_output_is_not_logits(corpus):
    _check_category(corpus, "logits")


def test_hostile_json_in_metadata_sidecars_manifests_and_flags(corpus):
    _check_category(corpus, "json")


def test_outputs_never_replace_inputs(corpus):
    _check_category(corpus, "lost-data")


@pytest.mark.slow
def test_absurd_counts_are_bounded(corpus):
    _check_category(corpus, "bounds")


def test_outputs_that_are_not_regular_files_are_refused(corpus):
    _check_category(corpus, "output")


def test_data_arguments_that_are_not_folders_or_files(corpus):
    _check_category(corpus, "data")


def test_corpus_size_matches_readme(corpus):
    """The README's Reliability section lists the corpus per category: keep it true."""
    counts = collections.Counter(case.category for case in corpus[1])
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for category, count in counts.items():
        assert f"| {category} | {count} |" in readme, f"README reliability table: {category} should list {count} cases"
    assert f"{sum(counts.values())} cases" in readme


# -- single behaviours the corpus cannot show through exit codes ------------------------------------


@pytest.mark.slow
def test_parity_check_fails_on_nan_logits(mini, tmp_path):
    """Python's max() drops a NaN that comes second; the parity gate must not."""
    import torch

    from ffx.errors import GateFailed
    from ffx.export.checkpoint import resolve_model
    from ffx.export.onnx_export import export_onnx

    resolved = resolve_model(None, str(mini.checkpoint))
    with torch.no_grad():
        resolved.model.head.bias[0] = float("nan")
    with pytest.raises(GateFailed, match="NaN"):
        export_onnx(resolved, tmp_path / "nan.onnx")
    assert not (tmp_path / "nan.onnx").exists()


@pytest.mark.parametrize("damage", ["nan", "shape", "negative", "truncated", "index_past_images", "duplicate_index",
                                    "skipped_without_path", "count_as_float", "counts_disagree", "huge_integer",
                                    "deep_nesting", "meta_not_object"])
def test_damaged_statistics_cache_entry_is_a_miss(tmp_path, damage):
    """A damaged entry, or one planted under the right key by someone else, is recomputed: never a
    traceback, never statistics for other images."""
    import io
    import json

    from ffx.calib import statistics

    tensors = ["a", "b"]
    stats = statistics.ActivationStatistics(
        kind="histogram", tensors=tensors, absmax=np.ones(2), hist_range=np.full(2, 2.0),
        histograms=np.ones((2, statistics.HISTOGRAM_BINS), np.int64), images_used=4, skipped=[],
        reference_indices=[0], reference_logits=np.zeros((1, 10), np.float32))
    statistics._save_cache(tmp_path, "key", stats)
    assert statistics._load_cache(tmp_path, "key", tensors, 4) is not None
    path = statistics._cache_file(tmp_path, "key")

    def rewrite_meta(edit):
        with np.load(path) as data:
            arrays = {name: data[name] for name in data.files}
        text = edit(str(arrays["meta"]))
        buffer = io.BytesIO()
        np.savez(buffer, **{**arrays, "meta": np.array(text)})
        path.write_bytes(buffer.getvalue())

    def edit_meta(**fields):
        rewrite_meta(lambda text: json.dumps({**json.loads(text), **fields}))

    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage in ("nan", "shape", "negative"):
        if damage == "nan":
            stats.absmax = np.array([1.0, np.nan])
        elif damage == "shape":
            stats.histograms = np.ones((2, 7), np.int64)
        else:
            stats.histograms = -np.ones((2, statistics.HISTOGRAM_BINS), np.int64)
        statistics._save_cache(tmp_path, "key", stats)
    elif damage == "index_past_images":
        edit_meta(reference_indices=[4])  # the selection holds 4 images: indices 0..3
    elif damage == "duplicate_index":
        edit_meta(reference_indices=[0, 0])
    elif damage == "skipped_without_path":
        edit_meta(skipped=[{"reason": "x"}], images_used=3)
    elif damage == "count_as_float":
        edit_meta(images_used=4.0)
    elif damage == "counts_disagree":
        edit_meta(images_used=3)
    elif damage == "huge_integer":
        rewrite_meta(lambda text: text.replace('"images_used": 4', '"images_used": ' + "9" * 5000))
    elif damage == "deep_nesting":
        rewrite_meta(lambda text: text.replace('"skipped": []', '"skipped": ' + "[" * 100000 + "]" * 100000))
    else:
        rewrite_meta(lambda text: "[1, 2]")
    assert statistics._load_cache(tmp_path, "key", tensors, 4) is None


def test_unwritable_cache_folder_is_a_warning(mini, images, tmp_path, cli_runner):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    output = tmp_path / "mini.int8.onnx"
    result = cli_runner.invoke(cli, ["calibrate", str(mini.onnx), "--data", str(images), "--workers", "0",
                                     "--no-tensorrt-check", "--cache-dir", str(blocker / "calib"), "-o", str(output)])
    assert result.exit_code == 0, result.stderr
    assert "continuing without it" in result.stderr
    assert output.is_file()


@needs_rtx
def test_build_engine_keeps_a_calibrated_model_the_user_made(mini, images, tmp_path, cli_runner):
    mine = tmp_path / "net.fp16.onnx"
    mine.write_bytes(b"the user's own fp16 model")
    engine = tmp_path / "net.engine"
    result = cli_runner.invoke(cli, ["build-engine", str(mini.onnx), "--fp16", "--backend", "tensorrt-rtx", "-o", str(engine)])
    assert result.exit_code == 0, result.stderr
    assert mine.read_bytes() == b"the user's own fp16 model"
    assert (tmp_path / "net.engine.fp16.onnx").is_file()


def test_control_characters_in_class_names_are_escaped(mini, tmp_path, cli_runner):
    import json

    import onnx

    from ffx.metadata import onnx_metadata, set_onnx_metadata

    model = onnx.load(str(mini.onnx))
    info = onnx_metadata(model)
    info["class_names"] = ["\x1b[2J\x1b[31mred"] * 10
    set_onnx_metadata(model, info)
    path = tmp_path / "escapes.onnx"
    onnx.save(model, path)
    image = hostile_corpus.images(tmp_path / "images")["good"]
    for args in (["predict", str(path), str(image)], ["inspect", str(path)]):
        result = cli_runner.invoke(cli, args)
        assert result.exit_code == 0, result.stderr
        assert "\x1b" not in result.stdout and "\\x1b" in result.stdout
    assert json.loads(json.dumps(info))  # the JSON output keeps the names as they are


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from Linux /proc")
@pytest.mark.parametrize("signal_name, to_group", [("SIGTERM", False), ("SIGHUP", True), ("SIGQUIT", True)])
def test_sigterm_stops_workers_and_removes_temporary_files(mini, tmp_path, signal_name, to_group):
    """SIGTERM mid-calibration (the workers decoding): ffx exits promptly, its decoding workers with it (nothing holds
    the caller's stdout afterwards), no temporary folder and no output are left. The same for SIGHUP and SIGQUIT,
    sent to the whole process group as a closed terminal and Ctrl-\\ send them (they orphaned the workers)."""
    import os
    import shutil
    import signal
    import subprocess
    import sys

    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    # Large photos (hard links of one file: cheap to make, seconds to decode) so that a quiet machine is still
    # decoding when the signal arrives.
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)).save(data / "0.jpg", quality=95)
    for i in range(1, 600):
        os.link(data / "0.jpg", data / f"{i}.jpg")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    output = tmp_path / "out.int8.onnx"
    ffx = shutil.which("ffx", path=str(Path(sys.executable).parent)) or "ffx"
    process = subprocess.Popen([ffx, "calibrate", str(mini.onnx), "--data", str(data), "--num-images", "600",
                                "--workers", "2", "--no-cache", "--no-tensorrt-check", "-o", str(output)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(scratch)},
                               start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None and len(_descendants(process.pid)) < 3:
        time.sleep(0.05)  # the forkserver and two decoding workers
    assert process.poll() is None, "calibration ended before its workers started"
    time.sleep(0.3)
    assert process.poll() is None, "calibration ended before the signal: give it more work"
    workers = _descendants(process.pid)
    signum = getattr(signal, signal_name)
    if to_group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=30)  # returns only once every holder of the pipes is gone
    assert process.returncode == 128 + signum, stderr.decode()[-500:]
    assert b"Traceback" not in stderr
    assert not output.exists() and not output.with_suffix(".json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert not [p for p in scratch.iterdir() if p.name.startswith(("ffx-", "tmp"))], list(scratch.iterdir())
    time.sleep(0.5)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]


def _descendants(pid):
    """Process ids below `pid` (Linux /proc)."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(children)
            queue.extend(children)
    return found


def _state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """Writing into a "full" device (/dev/full's numbers, made here: never the real one) fails with
    ENOSPC, as a full disk does: the partial file is removed and the error names the output."""
    from ffx.artifacts import atomic_output
    from ffx.errors import FfxError

    full = tmp_path / "devices" / "full"
    full.parent.mkdir()
    try:
        os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except PermissionError:
        pytest.skip(hostile_corpus.NO_MKNOD)
    output = tmp_path / "out" / "model.onnx"
    with pytest.raises(FfxError, match="model.onnx: No space left on device"):
        with atomic_output(output) as tmp:
            tmp.write_bytes(b"part")
            with open(full, "wb") as device:
                device.write(b"x" * 65536)
                device.flush()
    assert list(tmp_path.iterdir()) == [full.parent]  # no partial file, and no folder made for it
