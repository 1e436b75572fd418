"""What ffx writes, and what it must never touch: the scratch names onnxruntime's quantizer and ffx
use, temporaries left by a killed run, a path that turns into a device before the rename, a
full disk or TMPDIR (ffx/artifacts.py). The hostile corpus (tests/hostile_corpus.py, categories
output, lost-data, data) covers the refusals one command line at a time."""

import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from ffx.artifacts import atomic_output, partial_folder, scratch_folder, write_bytes_atomic
from ffx.cli import cli
from ffx.errors import FfxError
from helpers import TENSORRT_RTX_MISSING

AN_HOUR_AGO = time.time() - 3600


def _plant(path, mode=0o644):
    """A user's file at `path`, an hour old (older than any stale-temporary threshold)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"the user's own {path.name}".encode())
    os.chmod(path, mode)
    os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    return path


def _plant_folder(path):
    path.mkdir(parents=True)
    _plant(path / "keep.txt")
    os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    return path


# Names written beside the model or in the working folder by onnxruntime's quantizer (read in
# onnxruntime/quantization: quant_utils.load_model_with_shape_infer writes MODEL-inferred.onnx and
# deletes it; the calibrators default to augmented_model.onnx; save_tensors_data writes
# .calibcache_*.tmp beside the cache; external data goes to OUT.onnx.data; older releases
# optimized to MODEL-opt.onnx), and the names ffx gives the files in its own scratch folder.
QUANTIZER_NAMES = ["{stem}-inferred.onnx", "{stem}-opt.onnx", "{stem}.onnx.data", "{stem}-inferred.onnx.data"]
FIXED_NAMES = ["augmented_model.onnx", "model.onnx", "model-inferred.onnx", "model.int8.onnx", "ranges.json",
               ".calibcache_abcdefgh.tmp", "sq_model.onnx", "model_input.onnx"]
# Scratch folders in TMPDIR: ffx's (ffx-calibrate-, ffx-trt-check-) and onnxruntime's, named as theirs would be.
TMPDIR_FOLDERS = ["ffx-calibrate-abcdefgh", "ffx-trt-check-abcdefgh", "ort.quant.abcdefgh", "pre.quant.abcdefgh"]


def test_a_user_file_at_every_scratch_name_survives_every_command_that_writes(mini, images, tmp_path, monkeypatch,
                                                                              cli_runner):
    work, scratch = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    model, checkpoint = work / "m.onnx", work / "m.pth"
    model.write_bytes(Path(mini.onnx).read_bytes())
    checkpoint.write_bytes(Path(mini.checkpoint).read_bytes())
    rtx = ["--backend", "tensorrt-rtx"]
    commands = {
        "export": ["export", "--checkpoint", checkpoint, "-o", work / "out.onnx"],
        "export --from-onnx": ["export", "--from-onnx", model, "--fold-normalization", "-o", work / "folded.onnx"],
        "calibrate": ["calibrate", model, "--data", images, "--workers", "0", "--no-cache", "-o", work / "m.int8.onnx"],
        "calibrate --smooth-gelu": ["calibrate", model, "--data", images, "--workers", "0", "--no-cache", "--smooth-gelu",
                                    "--no-tensorrt-check", "-o", work / "smooth.int8.onnx"],
        "calibrate --fp16": ["calibrate", model, "--fp16", "--data", images, "--workers", "0", "--no-cache",
                             "-o", work / "m.fp16.onnx"],
        "sensitivity --plot": ["sensitivity", model, "--data", images, "--calib-images", "10", "--held-out-images", "10",
                               "--workers", "0", "--no-cache", "--plot", work / "sensitivity.png"],
        "build-engine --int8": ["build-engine", model, "--int8", "--calib-data", images, "--calib-images", "10", *rtx,
                                "-o", work / "q.engine"],
        "build-engine --fp16": ["build-engine", model, "--fp16", *rtx, "-o", work / "h.engine"],
        "deploy triton": ["deploy", "triton", model, "-o", work / "repository"],
        "deploy deepstream": ["deploy", "deepstream", model, "-o", work / "deepstream"],
    }
    if TENSORRT_RTX_MISSING:
        commands = {name: args for name, args in commands.items() if "build-engine" not in name}
    outputs = [Path(args[-1]) for args in commands.values()] + [work / "sensitivity.png"]
    stems = {"m", "out", "folded", "m.int8", "smooth.int8", "m.fp16", "q.int8", "q.engine.int8", "h.fp16",
             "h.engine.fp16", "q", "h", "model", "model.int8"}
    planted = [_plant(work / name.format(stem=stem)) for stem in sorted(stems) for name in QUANTIZER_NAMES]
    planted += [_plant(work / name) for name in FIXED_NAMES]
    # ffx's own temporary names (.NAME.XXXXXXXX.partial) for each output, and for the manifests and
    # sidecars beside them: a user's file of that name (mode 0644, an hour old) is not one of ours.
    for output in outputs:
        for name in (output.name, output.with_suffix(".json").name, output.name + ".json"):
            planted.append(_plant(work / f".{name}.abcdefgh.partial"))
    planted += [_plant_folder(scratch / name) / "keep.txt" for name in TMPDIR_FOLDERS]
    before = {path: path.read_bytes() for path in planted}
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again

    for name, args in commands.items():
        result = cli_runner.invoke(cli, [str(a) for a in args])
        assert result.exit_code == 0, f"{name}: {result.stderr[-500:]}"
        changed = [path.name for path, data in before.items() if not path.is_file() or path.read_bytes() != data]
        assert not changed, f"{name} changed or removed: {changed}"
    assert model.read_bytes() == Path(mini.onnx).read_bytes()
    # Nothing of ffx's left in TMPDIR (onnxruntime keeps a session-id file, .ses, there: not ffx's).
    assert sorted(p.name for p in scratch.iterdir() if p.name != ".ses") == sorted(TMPDIR_FOLDERS)
    assert not [p.name for p in work.iterdir() if p.name.endswith(".partial") and p not in before]


def _killed_inside(tmp_path, code):
    """Run `code` in a fresh Python that kills itself (SIGKILL) where the code says `DIE`."""
    script = textwrap.dedent(code).replace("DIE", "os.kill(os.getpid(), signal.SIGKILL)")
    result = subprocess.run([sys.executable, "-c", "import os, signal\n" + script], cwd=tmp_path,
                            env={**os.environ, "TMPDIR": str(tmp_path / "tmp")}, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr


def _age(path):
    os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO), follow_symlinks=False)


def test_a_temporary_left_by_kill_9_is_removed_by_the_next_write_and_only_ours(tmp_path):
    (tmp_path / "tmp").mkdir()
    output = tmp_path / "out.onnx"
    _killed_inside(tmp_path, f"""
        from ffx.artifacts import atomic_output
        with atomic_output({str(output)!r}) as tmp:
            tmp.write_bytes(b"half a model")
            DIE
    """)
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert len(left) == 1 and left[0].name.startswith(".out.onnx.") and stat.S_IMODE(left[0].stat().st_mode) == 0o600
    user = _plant(tmp_path / ".out.onnx.zzzzzzzz.partial")  # named like ours, but the user's (0644)
    young = _plant(tmp_path / ".out.onnx.yyyyyyyy.partial", mode=0o600)
    os.utime(young)  # a writer that has not locked it yet looks like this: kept
    held = _plant(tmp_path / ".out.onnx.xxxxxxxx.partial", mode=0o600)
    import fcntl

    with open(held, "rb") as lock:  # a live writer holds its lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        write_bytes_atomic(output, b"model")  # the killed run's temporary is younger than STALE_SECONDS: kept
        assert left[0].exists()
        _age(left[0])
        write_bytes_atomic(output, b"model")
    assert output.read_bytes() == b"model"
    assert not left[0].exists()
    assert user.exists() and young.exists() and held.exists()


def test_a_staging_folder_and_a_scratch_folder_left_by_kill_9_are_removed_next_time(tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    repository = tmp_path / "repository"
    _killed_inside(tmp_path, f"""
        from ffx.artifacts import partial_folder, scratch_folder
        with scratch_folder("ffx-calibrate-") as scratch:
            (scratch / "model.onnx").write_bytes(b"copy")
            with partial_folder({str(repository / 'model')!r}) as staging:
                (staging / "config.pbtxt").write_text("half")
                DIE
    """)
    [staging] = [p for p in repository.iterdir() if p.name.endswith(".partial")]
    [scratch] = list((tmp_path / "tmp").iterdir())
    user_staging = _plant_folder(repository / ".model.zzzzzzzz.partial")  # mode 0755: a user's
    user_scratch = _plant_folder(tmp_path / "tmp" / "ffx-calibrate-zzzzzzzz")
    _age(staging)
    _age(scratch)
    with partial_folder(repository / "model") as fresh:
        (fresh / "config.pbtxt").write_text("complete")
    assert (repository / "model" / "config.pbtxt").read_text() == "complete"
    assert not staging.exists() and user_staging.is_dir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    with scratch_folder("ffx-calibrate-") as folder:
        assert folder.parent == tmp_path / "tmp"
    assert not scratch.exists() and user_scratch.is_dir()
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == ["ffx-calibrate-zzzzzzzz"]


def test_a_path_that_becomes_a_fifo_before_the_rename_is_left_alone(tmp_path):
    output = tmp_path / "out.onnx"
    with pytest.raises(FfxError, match="FIFO"):
        with atomic_output(output) as tmp:
            tmp.write_bytes(b"model")
            os.mkfifo(output)  # made while the model was being written
    assert stat.S_ISFIFO(os.lstat(output).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_folders_made_for_a_failed_write_are_removed(tmp_path):
    from ffx.calib.model_io import write_outputs

    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "new" / "deeper" / "out.onnx") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("the export failed")
    assert list(tmp_path.iterdir()) == []
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(FfxError, match="not a folder"):  # the folder cannot be made: nothing else is left
        write_outputs(tmp_path / "fifo" / "m.onnx", b"model", tmp_path / "fifo" / "m.json", b"{}")
    assert [p.name for p in tmp_path.iterdir()] == ["fifo"]


def test_a_temporary_name_fits_even_for_a_name_of_255_bytes(tmp_path):
    output = tmp_path / ("é" * 125 + ".onnx")  # 255 bytes of UTF-8
    write_bytes_atomic(output, b"model")
    assert output.read_bytes() == b"model" and len(list(tmp_path.iterdir())) == 1


def test_a_full_disk_in_tmpdir_is_one_line_and_leaves_nothing(mini, images, tmp_path):
    """calibrate with a file-size limit below the model's size (RLIMIT_FSIZE: writes fail with EFBIG,
    as a full disk fails them with ENOSPC): the copy handed to onnxruntime's quantizer, in ffx's
    TMPDIR folder, cannot be written. One line, exit 2, no scratch folder, no output."""
    import resource
    import shutil

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    output = tmp_path / "out.int8.onnx"
    limit = Path(mini.onnx).stat().st_size // 2

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    ffx = shutil.which("ffx", path=str(Path(sys.executable).parent)) or "ffx"
    result = subprocess.run([ffx, "calibrate", str(mini.onnx), "--data", str(images), "--workers", "0", "--no-cache",
                             "--no-tensorrt-check", "-o", str(output)], capture_output=True, text=True,
                            env={**os.environ, "TMPDIR": str(scratch)}, preexec_fn=limited, timeout=300)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "TMPDIR" in errors[0] and "Traceback" not in result.stderr
    assert [p.name for p in scratch.iterdir() if p.name != ".ses"] == []  # .ses: onnxruntime's session id
    assert list(tmp_path.iterdir()) == [scratch]

