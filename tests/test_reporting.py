"""ffx.reporting: warnings go through the `ffx` logger; the caller collects, silences or redirects
them around a call, and a library user sees each one once on stderr."""

import subprocess
import sys

from ffx.reporting import (collect_warnings, iterate_with_warnings_to, silenced, warn, warnings_printed_by,
                           warnings_to)


def _warning_steps():
    warn("first")
    yield 1
    warn("second")
    yield 2


def test_collect_silence_and_redirect_nest_innermost_first(capsys):
    redirected = []
    with collect_warnings() as outer:
        warn("a")
        with silenced():
            warn("dropped")
            with warnings_to(redirected.append):
                warn("b")
        warn("c")
    assert outer == ["a", "c"] and redirected == ["b"]
    assert capsys.readouterr().err == ""


def test_the_cli_prints_a_warning_logged_outside_any_sink_once(caplog):
    printed = []
    with warnings_printed_by(printed.append):
        warn("50% of the images")
        with silenced():
            warn("dropped")
    assert printed == ["50% of the images"] and caplog.records == []


def test_a_generator_step_warns_into_its_own_sink_not_the_consumers():
    inner = []
    with collect_warnings() as consumer:
        for step in iterate_with_warnings_to(inner.append, _warning_steps()):
            warn(f"consumer {step}")
    assert inner == ["first", "second"] and consumer == ["consumer 1", "consumer 2"]


def test_library_users_see_each_warning_once_on_stderr_with_or_without_logging_configured():
    script = ("import logging, sys\n"
              "if sys.argv[1:]: logging.basicConfig(format='%(levelname)s %(name)s %(message)s')\n"
              "from ffx.reporting import warn\n"
              "warn('skipped 1 unreadable image')\n")
    plain = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    configured = subprocess.run([sys.executable, "-c", script, "x"], capture_output=True, text=True, timeout=60)
    assert plain.stderr == "Warning: skipped 1 unreadable image\n"
    assert configured.stderr == "WARNING ffx skipped 1 unreadable image\n"
