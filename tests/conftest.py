
import pytest

import helpers


def pytest_report_header(config):
    lines = []
    for module, label in (("tensorrt", "TensorRT"), ("tensorrt_rtx_bindings", "TensorRT-RTX")):
        try:
            mod = __import__(module)
            lines.append(f"{label}: {getattr(mod, '__version__', '?')}")
        except Exception:
            lines.append(f"{label}: not installed (its tests are skipped)")
    return lines


@pytest.fixture
def cli_runner():
    from click.testing import CliRunner

    return CliRunner()


# Small real models and image folders shared by the runtime, bench and inspect tests; each is
# made once per session (tests/helpers.py).
@pytest.fixture(scope="session")
def mini(tmp_path_factory):
    return helpers.mini_model(tmp_path_factory)


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    return helpers.labelled_images(tmp_path_factory)


@pytest.fixture(scope="session")
def qdq(tmp_path_factory):
    return helpers.qdq_model(tmp_path_factory)


@pytest.fixture(scope="session")
def ff_tiny_random(tmp_path_factory):
    return helpers.ff_tiny_random_export(tmp_path_factory)
