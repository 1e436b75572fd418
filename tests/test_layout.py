"""The package layout the project relies on: stage folders installed under ffx.*, and a stage
importing only from earlier stages or ffx/ (so the runtime never drags in export's torch)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGE_ORDER = ["export", "calib", "runtime"]


def imported_modules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


@pytest.mark.parametrize("stage", STAGE_ORDER)
def test_stage_imports_only_earlier_stages(stage):
    later = {f"ffx.{s}" for s in STAGE_ORDER[STAGE_ORDER.index(stage) + 1:]}
    offending = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in (ROOT / stage).rglob("*.py")
        for module in imported_modules(path)
        if any(module == s or module.startswith(s + ".") for s in later)
    ]
    assert not offending, offending


def test_shared_package_does_not_import_stages_except_the_cli():
    stages = tuple(f"ffx.{s}" for s in STAGE_ORDER)
    offending = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in (ROOT / "ffx").rglob("*.py")
        if "commands" not in path.parts
        for module in imported_modules(path)
        # ffx.calibration_manifest is ffx's own, not the ffx.calib stage: match whole module names.
        if any(module == s or module.startswith(s + ".") for s in stages)
    ]
    assert not offending, offending


def test_stage_folders_are_installed_under_ffx():
    import ffx.calib
    import ffx.export
    import ffx.runtime

    assert Path(ffx.export.__file__).parent == ROOT / "export"
    assert Path(ffx.calib.__file__).parent == ROOT / "calib"
    assert Path(ffx.runtime.__file__).parent == ROOT / "runtime"


def test_artefacts_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    import os

    from ffx.artifacts import write_bytes_atomic

    previous = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "model.onnx", b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "model.onnx").stat().st_mode & 0o777 == 0o644
    assert not list(tmp_path.glob("*.partial"))


def test_a_model_and_its_manifest_wait_for_another_run_writing_the_same_folder(tmp_path):
    """Two runs writing OUT.onnx and OUT.json at once: the second set is written only after the
    first is complete, so the pair on disk always comes from one run."""
    import threading

    from ffx.artifacts import written_together
    from ffx.calib.model_io import write_outputs

    written = threading.Event()

    def write():
        write_outputs(tmp_path / "m.onnx", b"model", tmp_path / "m.json", b"{}")
        written.set()

    with written_together(tmp_path):  # another run, in the middle of writing its set
        writer = threading.Thread(target=write)
        writer.start()
        assert not written.wait(0.5) and not (tmp_path / "m.onnx").exists()
    writer.join(10)
    assert written.is_set() and (tmp_path / "m.onnx").read_bytes() == b"model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx"]  # no lock file left


def test_unwritable_destination_is_a_user_error_not_a_traceback(tmp_path):
    from ffx.artifacts import write_bytes_atomic
    from ffx.errors import FfxError

    (tmp_path / "a-file").write_text("")
    with pytest.raises(FfxError, match="cannot write there"):
        write_bytes_atomic(tmp_path / "a-file" / "model.onnx", b"x")


def test_benchmarks_are_one_package_run_as_modules():
    """bench/ runs as `python -m bench.<module>`: no sys.path edits, no scripts loaded by file
    path; scripts/ keeps data preparation and training only."""
    assert (ROOT / "bench" / "__init__.py").is_file()
    offending = [
        f"{path.relative_to(ROOT)}: {needle}"
        for path in (ROOT / "bench").glob("*.py")
        for needle in ("sys.path", "spec_from_file_location")
        if needle in path.read_text()
    ]
    assert not offending, offending
    assert not list((ROOT / "scripts").glob("bench*")), "benchmarks belong in bench/"


def test_tests_import_scripts_as_a_package_not_by_file_path():
    assert (ROOT / "scripts" / "__init__.py").is_file()
    offending = [path.name for path in (ROOT / "tests").glob("*.py")
                 if path.name != Path(__file__).name and "spec_from_file_location(" in path.read_text()]
    assert not offending, offending


def test_module_paths_the_readme_named_before_runtime_had_subpackages_still_import():
    """`from ffx.runtime.verify import verify` and `ffx.runtime.engine_file.write_engine` (the
    README's Python API before runtime/ was split into subpackages) give the moved modules
    themselves, not second copies, and leave those modules their own names."""
    import importlib

    for old, new in [("ffx.runtime.verify", "ffx.runtime.tasks.verify"),
                     ("ffx.runtime.engine_file", "ffx.runtime.engines.engine_file")]:
        module = importlib.import_module(old)
        assert module is importlib.import_module(new)
        assert module.__name__ == module.__spec__.name == new
    from ffx.runtime.engine_file import write_engine
    from ffx.runtime.engines.engine_file import write_engine as moved_write_engine
    from ffx.runtime.tasks.verify import verify as moved_verify
    from ffx.runtime.verify import verify

    assert verify is moved_verify and write_engine is moved_write_engine
