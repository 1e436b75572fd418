
import pytest



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
# made once per session (see tests/test_runtime_models.py).
@pytest.fixture(scope="session")
def mini(tmp_path_factory):
    from test_runtime_models import mini_model

    return mini_model(tmp_path_factory)


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    from test_runtime_models import labelled_images

    return labelled_images(tmp_path_factory)


@pytest.fixture(scope="session")
def qdq(tmp_path_factory):
    from test_runtime_models import qdq_model

    return qdq_model(tmp_path_factory)
