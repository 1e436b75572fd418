"""What a user gets from `pip install .`: every package, no torch, and Python 3.10 syntax.

The editable install the other tests run under finds modules in the source tree, so it hides a
package missing from setup.cfg; the fresh-venv test below installs a built wheel, without torch,
the way a Jetson or a serving host would, and runs the commands there.
"""

import configparser
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from helpers import FASHION, fashion_onnx

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
def plain_install(tmp_path_factory):
    """bin/ of a fresh venv (no system site packages) with ffx installed from a wheel, no extras."""
    folder = tmp_path_factory.mktemp("plain-install")
    source = folder / "source"
    for name in DISTRIBUTED:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy(path, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(folder / "wheel"), str(source)])
    wheel = next((folder / "wheel").glob("ffx-*.whl"))
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(folder / "venv")
    bin_dir = folder / "venv" / "bin"
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)])
    return bin_dir


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_SECONDS, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return result


def test_plain_install_has_no_torch(plain_install):
    result = subprocess.run([str(plain_install / "python"), "-c", "import torch"], capture_output=True, text=True)
    assert "No module named 'torch'" in result.stderr


def test_plain_install_runs_calibrate_verify_and_predict(plain_install, tmp_path_factory, tmp_path):
    model = fashion_onnx(tmp_path_factory)  # exported here, with torch: the plain install has none
    ffx = str(plain_install / "ffx")
    int8 = tmp_path / "fashion.int8.onnx"
    calibrated = _run([ffx, "calibrate", str(model), "--data", str(FASHION / "train"), "--num-images", "50",
                       "--workers", "0", "--no-cache", "-o", str(int8)], cwd=tmp_path)
    assert "INT8 Q/DQ, entropy ranges from 50 images" in calibrated.stdout
    verified = _run([ffx, "verify", str(int8), "--reference", str(model), "--data", str(FASHION / "val"), "--json"],
                    cwd=tmp_path)
    assert '"passed": true' in verified.stdout
    bag = sorted((FASHION / "val" / "8_bag").glob("*.png"))[0]
    predicted = _run([ffx, "predict", str(int8), str(bag), "--topk", "1"], cwd=tmp_path)
    assert predicted.stdout.startswith(f"{bag}: Bag ")


def test_plain_install_export_says_what_to_install(plain_install, tmp_path):
    result = subprocess.run([str(plain_install / "ffx"), "export", "--arch", "ff_tiny", "-o", "x.onnx"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ffx export needs torch")
    assert "pip install 'ffx[export]'" in result.stderr and "download.pytorch.org/whl/cpu" in result.stderr
    assert not (tmp_path / "x.onnx").exists()


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
