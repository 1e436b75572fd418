
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
