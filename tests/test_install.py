"""What a user gets from `pip install .`: every package, no torch, and Python 3.10.

The editable install the other tests run under finds modules in the source tree, so it hides a
package missing from setup.cfg; the fresh-venv tests below install a built wheel, without torch,
the way a Jetson or a serving host would, and run the commands there: once on this Python and
once on Python 3.10 (JetPack 6's) when the machine has one.
"""

import configparser
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import FASHION, FASHION_CHECKPOINT, fashion_folded_onnx, fashion_onnx

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ["ffx", "export", "calib", "runtime"]
# What a wheel is built from: everything else in the repository is for development.
DISTRIBUTED = ["setup.cfg", "pyproject.toml", "README.md", *PACKAGE_FOLDERS]
PIP_SECONDS = 600


def setup_cfg_options():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config["options"]


def declared_packages():
    return {name.strip() for name in setup_cfg_options()["packages"].split(",") if name.strip()}


def package_dirs():
    """{package name: folder} from setup.cfg's package_dir."""
    lines = [line.strip() for line in setup_cfg_options()["package_dir"].splitlines() if line.strip()]
    return dict((part.strip() for part in line.split("=", 1)) for line in lines)


def packages_on_disk():
    """Dotted names of every folder with an __init__.py, as setup.cfg's package_dir installs them."""
    folder_to_package = {folder: package for package, folder in package_dirs().items()}
    found = set()
    for top in PACKAGE_FOLDERS:
        for init in (ROOT / top).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((folder_to_package[top], *relative)))
    return found


def test_setup_cfg_lists_every_package_and_only_real_ones():
    declared, on_disk = declared_packages(), packages_on_disk()
    assert on_disk - declared == set(), "folders with __init__.py missing from setup.cfg's packages"
    assert declared - on_disk == set(), "setup.cfg lists packages that do not exist"


def test_base_requirements_leave_out_what_only_export_needs():
    base = setup_cfg_options()["install_requires"].lower()
    for export_only in ("torch", "onnxscript", "safetensors"):
        assert export_only not in base


@pytest.mark.slow
def test_code_is_python_3_10_compatible():
    """vermin (a dev requirement) reads the syntax and standard library each file needs."""
    pytest.importorskip("vermin", reason="vermin is not installed (pip install -e '.[dev]')")
    folders = [str(ROOT / name) for name in (*PACKAGE_FOLDERS, "bench", "scripts", "tests")]
    result = _vermin(*folders)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_python_3_10_check_catches_a_3_11_feature(tmp_path):
    pytest.importorskip("vermin", reason="vermin is not installed (pip install -e '.[dev]')")
    (tmp_path / "new.py").write_text("import tomllib\n")
    result = _vermin(str(tmp_path))
    assert result.returncode != 0 and "tomllib" in result.stdout


def _vermin(*paths):
    command = [sys.executable, "-c", "import sys; from vermin import main; sys.exit(main())",
               "--target=3.10-", "--no-tips", "--violations", *paths]
    return subprocess.run(command, capture_output=True, text=True)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The ffx wheel, built from the distributed files only."""
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"
    for name in DISTRIBUTED:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy(path, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(folder / "wheel"), str(source)])
    return next((folder / "wheel").glob("ffx-*.whl"))


def _venv_with(python, wheel, folder, pip_options=()):
    """bin/ of a fresh venv of `python` (no system site packages) with `wheel` installed, no extras.

    The venv gets no pip of its own (installing one costs about 4 s of CPU per venv, of the four
    made here): this interpreter's pip installs into it with `--python`, which runs pip under the
    venv's interpreter (the same resolution, markers evaluated for its Python). pip does not
    byte-compile what it installs (--no-compile): compiling every file, sympy's 1,500 (an
    onnxruntime dependency) among them, was half of each venv's set-up. The commands run in the
    venv with _venv_env(), which lets Python write the bytecode of what they import, once."""
    _run([python, "-m", "venv", "--without-pip", str(folder / "venv")])
    bin_dir = folder / "venv" / "bin"
    _run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "-q", "--no-compile",
          "--disable-pip-version-check", *pip_options, str(wheel)])
    return bin_dir


def _venv_env():
    """The environment for commands run in the fresh venvs: this one without PYTHONDONTWRITEBYTECODE
    (set on the shared machine), so that the first command to import a module writes its bytecode in
    the venv and the later ones read it, as in a user's shell. Only for the fresh venvs: elsewhere
    it would write bytecode into the folders of the interpreter running the tests."""
    return {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


@pytest.fixture(scope="module", params=["newest", "lowest declared"])
def plain_install(request, tmp_path_factory, wheel):
    """bin/ of a fresh venv of this Python with ffx installed from the wheel, no extras: with the
    newest dependencies pip finds, or with the lowest versions setup.cfg declares."""
    folder = tmp_path_factory.mktemp("plain-install")
    this_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return _venv_with(sys.executable, wheel, folder, _lowest_constraints(request.param, folder, this_python))


def _lowest_constraints(variant, folder, python_version):
    """pip options pinning the lowest declared versions when `variant` asks for them."""
    if variant != "lowest declared":
        return []
    (folder / "lowest.txt").write_text("\n".join(lowest_declared(python_version)) + "\n")
    return ["-c", str(folder / "lowest.txt")]


def python310():
    """A Python 3.10 interpreter (JetPack 6's), on PATH or installed by pyenv; None when there is none."""
    candidates = [shutil.which("python3.10"), *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == "True":  # pyenv's shim exists but fails when 3.10 is not selected
            return candidate
    return None


def lowest_declared(python_version, extra=None):
    """pip constraints pinning each base requirement (or each of `extra`'s) to the lowest version
    setup.cfg allows on `python_version` ("3.10"): the claim a `>=` makes, tested."""
    from packaging.requirements import Requirement  # pytest's own dependency

    if extra is None:
        lines = setup_cfg_options()["install_requires"].splitlines()
    else:
        config = configparser.ConfigParser()
        config.read(ROOT / "setup.cfg")
        lines = config["options.extras_require"][extra].split(";")
    pins = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate({"python_version": python_version}):
            continue
        pins += [f"{requirement.name}=={spec.version}" for spec in requirement.specifier if spec.operator == ">="]
    return pins


@pytest.fixture(scope="module", params=["newest", "lowest declared"])
def py310_install(request, tmp_path_factory, wheel):
    """(bin/, pins) of a Python 3.10 venv with the wheel: the newest dependencies pip finds, or
    (pins True) the lowest versions setup.cfg declares."""
    python = python310()
    if python is None:
        pytest.skip("no Python 3.10 interpreter here (python3.10 on PATH or pyenv's 3.10.x)")
    folder = tmp_path_factory.mktemp("py310-install")
    constraints = _lowest_constraints(request.param, folder, "3.10")
    return SimpleNamespace(bin=_venv_with(python, wheel, folder, constraints), pins=request.param == "lowest declared")


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_SECONDS, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_plain_install_has_no_torch(plain_install):
    result = subprocess.run([str(plain_install / "python"), "-c", "import torch"], capture_output=True, text=True,
                            env=_venv_env())
    assert "No module named 'torch'" in result.stderr


@pytest.mark.slow
def test_plain_install_runs_calibrate_verify_and_predict(plain_install, tmp_path_factory, tmp_path):
    model = fashion_onnx(tmp_path_factory)  # exported here, with torch: the plain install has none
    ffx = str(plain_install / "ffx")
    int8 = tmp_path / "fashion.int8.onnx"
    calibrated = _run([ffx, "calibrate", str(model), "--data", str(FASHION / "train"), "--num-images", "50",
                       "--workers", "0", "--no-cache", "-o", str(int8)], cwd=tmp_path, env=_venv_env())
    assert "INT8 Q/DQ, entropy ranges from 50 images" in calibrated.stdout
    verified = _run([ffx, "verify", str(int8), "--reference", str(model), "--data", str(FASHION / "val"), "--json"],
                    cwd=tmp_path, env=_venv_env())
    assert '"passed": true' in verified.stdout
    bag = sorted((FASHION / "val" / "8_bag").glob("*.png"))[0]
    predicted = _run([ffx, "predict", str(int8), str(bag), "--topk", "1"], cwd=tmp_path, env=_venv_env())
    assert predicted.stdout.startswith(f"{bag}: Bag ")


@pytest.fixture(scope="module")
def fashion_int8_from_this_python(tmp_path_factory):
    """The fixture's INT8 graph, calibrated on this Python (3.10 cannot): made once for both 3.10 venvs."""
    from ffx.calib import CalibrationOptions, calibrate_int8

    int8 = tmp_path_factory.mktemp("int8-for-py310") / "fashion.int8.onnx"
    calibrate_int8(fashion_onnx(tmp_path_factory), FASHION / "train", int8,
                   CalibrationOptions(num_images=50, workers=0, use_cache=False), tensorrt_check=False)
    return int8


@pytest.mark.slow
def test_python_310_runs_the_deployment_commands_and_refuses_int8_calibration(py310_install, tmp_path_factory,
                                                                           fashion_int8_from_this_python, tmp_path):
    """JetPack 6's Python: pip finds no onnxruntime past 1.23 there, so everything but INT8
    calibration works (README, Install), and INT8 calibration stops in one line before reading images."""
    python, ffx = str(py310_install.bin / "python"), str(py310_install.bin / "ffx")
    model, int8 = fashion_onnx(tmp_path_factory), fashion_int8_from_this_python
    version = _run([python, "-c", "import sys, onnxruntime; print(sys.version_info[:2], "
                    "onnxruntime.__version__)"], env=_venv_env()).stdout
    assert version.startswith("(3, 10)"), version
    installed = _run([python, "-c", "import importlib.metadata as m; "
                      "print('\\n'.join(f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions()))"],
                     env=_venv_env()).stdout.lower()
    if py310_install.pins:
        assert all(pin.lower() in installed for pin in lowest_declared("3.10")), installed
    verified = _run([ffx, "verify", str(int8), "--reference", str(model), "--data", str(FASHION / "val"), "--json"],
                    cwd=tmp_path, env=_venv_env())
    assert '"passed": true' in verified.stdout
    bag = sorted((FASHION / "val" / "8_bag").glob("*.png"))[0]
    assert _run([ffx, "predict", str(int8), str(bag), "--topk", "1"], cwd=tmp_path,
                env=_venv_env()).stdout.startswith(f"{bag}: Bag ")
    _run([ffx, "calibrate", str(model), "--fp16", "-o", str(tmp_path / "fashion.fp16.onnx")], cwd=tmp_path,
         env=_venv_env())
    _run([ffx, "deploy", "triton", str(int8), "-o", str(tmp_path / "repository")], cwd=tmp_path, env=_venv_env())
    onnxruntime_version = tuple(int(part) for part in version.split()[-1].split(".")[:2])
    if onnxruntime_version >= (1, 27):  # pip found a newer onnxruntime for 3.10 than exists today
        _run([ffx, "calibrate", str(model), "--data", str(FASHION / "train"), "--num-images", "50", "--workers", "0",
              "-o", str(tmp_path / "py310.int8.onnx")], cwd=tmp_path, env=_venv_env())
        return
    for command in (["calibrate", str(model), "-o", str(tmp_path / "py310.int8.onnx")], ["sensitivity", str(model)]):
        result = subprocess.run([ffx, *command, "--data", str(FASHION / "train")], capture_output=True, text=True,
                                cwd=tmp_path, env=_venv_env())
        assert result.returncode == 2 and result.stderr.startswith("Error: INT8 calibration needs onnxruntime 1.27")
        assert result.stderr.count("\n") == 1 and not (tmp_path / "py310.int8.onnx").exists()


@pytest.mark.slow
def test_export_runs_with_the_lowest_onnxscript_and_safetensors_declared(tmp_path):
    """The export extra's floors, with this machine's torch (pip cannot swap torch here: PyPI's is
    the CUDA build): a venv that sees this torch and ffx, with onnxscript and safetensors pinned low.
    Runs from the system Python and from the README's venv alike (see _venv_seeing_this_interpreter)."""
    from packaging.version import Version
    from safetensors.torch import save_file

    from ffx.export.checkpoint import load_checkpoint

    pins = dict(pin.split("==") for pin in lowest_declared(f"{sys.version_info.major}.{sys.version_info.minor}", "export"))
    pins.pop("torch")
    assert set(pins) == {"onnxscript", "safetensors"}
    python = str(_venv_seeing_this_interpreter(tmp_path / "venv"))
    _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *(f"{k}=={v}" for k, v in pins.items())])
    versions = _run([python, "-c", "import onnxscript, safetensors; print(onnxscript.__version__, safetensors.__version__)"])
    assert [Version(v) for v in versions.stdout.split()] == [Version(pins["onnxscript"]), Version(pins["safetensors"])]
    weights = tmp_path / "fixture.safetensors"  # the safetensors loader is what its floor could break
    save_file({k: v.contiguous() for k, v in load_checkpoint(FASHION_CHECKPOINT).state_dict.items()}, str(weights))
    exported = _run([python, "-c", "from ffx.cli import main; main()", "export", "--checkpoint", str(weights),
                     "-o", str(tmp_path / "low.onnx")], cwd=tmp_path)
    assert "ONNX sha256" in exported.stdout and (tmp_path / "low.onnx").is_file()


def _venv_seeing_this_interpreter(folder):
    """python of a new venv whose own packages come first, then every package the running
    interpreter sees (torch, ffx installed editable, ...). `venv --system-site-packages` gives that
    only from a system Python: run from inside a venv (the README's set-up), it exposes the base
    interpreter's site-packages, not the venv's, and ffx and torch are missing there. So the new
    venv gets a .pth file that adds this interpreter's site folders (site.addsitedir, which also
    reads their .pth files, such as an editable install's) after its own."""
    import site

    _run([sys.executable, "-m", "venv", "--without-pip", str(folder)])  # pip, too, comes from this interpreter's site
    python = folder / "bin" / "python"
    own = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    seen = [path for path in site.getsitepackages() if os.path.isdir(path)]
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        seen.append(site.getusersitepackages())
    (Path(own) / "running-interpreter-site.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({path!r})" for path in seen) + "\n")
    return python


@pytest.mark.slow
def test_plain_install_export_says_what_to_install(plain_install, tmp_path):
    result = subprocess.run([str(plain_install / "ffx"), "export", "--arch", "ff_tiny", "-o", "x.onnx"],
                            capture_output=True, text=True, cwd=tmp_path, env=_venv_env())
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ffx export needs torch")
    assert "pip install '.[export]'" in result.stderr and "download.pytorch.org/whl/cpu" in result.stderr
    assert not (tmp_path / "x.onnx").exists()
    # build-engine from a checkpoint exports first: the same line, before anything else.
    (tmp_path / "m.pth").write_bytes(b"not read")
    result = subprocess.run([str(plain_install / "ffx"), "build-engine", "m.pth", "--int8", "--calib-data", ".",
                             "-o", "m.engine"], capture_output=True, text=True, cwd=tmp_path, env=_venv_env())
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: build-engine from a checkpoint (m.pth) needs torch")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth"]


@pytest.mark.slow
def test_plain_install_folds_an_existing_onnx_without_torch(plain_install, tmp_path_factory, tmp_path):
    """--from-onnx --fold-normalization reads no checkpoint: it runs without torch and writes the
    bytes the same fold writes where torch is installed."""
    folded = tmp_path / "fashion.folded.onnx"
    _run([str(plain_install / "ffx"), "export", "--from-onnx", str(fashion_onnx(tmp_path_factory)),
          "--fold-normalization", "-o", str(folded)], cwd=tmp_path, env=_venv_env())
    assert folded.read_bytes() == fashion_folded_onnx(tmp_path_factory).read_bytes()


@pytest.mark.slow
def test_readme_python_api_example_runs(tmp_path):
    """The README's Python API block, run as written (from a scratch folder, on the fixture)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace('fixture = "tests/fixtures/fashion"', f'fixture = "{FASHION}"')
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    drop, passed, predicted = result.stdout.split()[-3:]
    assert (passed, predicted) == ("True", "Bag") and abs(float(drop)) <= 0.5
    assert (tmp_path / "fashion.int8.onnx").is_file() and (tmp_path / "fashion.int8.json").is_file()
