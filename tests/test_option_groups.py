"""The runner and output option groups (ffx/commands/runner_options.py, output_options.py): each
flag is declared once, in its group, and every command that takes it takes it alike."""

import ast
from pathlib import Path

import click
import pytest

from ffx.cli import THREADS, cli
from ffx.errors import FfxError

ROOT = Path(__file__).resolve().parents[1]
COMMANDS_DIR = ROOT / "ffx" / "commands"
GROUP_FLAGS = {"runner_options.py": {"--provider", "--threads", "--batch-size", "--batch"},
               "output_options.py": {"-o", "--output", "--json"}}


def _click_option_flags(path):
    """(line, flag) of every flag (a string argument starting with -) of a click.option(...) call in `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "option"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "click"):
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("-"):
                    yield node.lineno, arg.value


def test_the_group_flags_are_declared_only_in_their_groups():
    owned = {flag: group for group, flags in GROUP_FLAGS.items() for flag in flags}
    found = {flag for group in GROUP_FLAGS for _, flag in _click_option_flags(COMMANDS_DIR / group)}
    assert found == set(owned), "the walk must see each group's own declarations"
    typed_out = [f"{path.name}:{line}: {flag} (declare it with {owned[flag]})"
                 for path in sorted(COMMANDS_DIR.glob("*.py")) if path.name not in GROUP_FLAGS
                 for line, flag in _click_option_flags(path) if flag in owned]
    assert typed_out == []


def _every_command():
    context = click.Context(cli)
    for name in cli.list_commands(context):
        command = cli.get_command(context, name)
        if isinstance(command, click.Group):
            yield from ((f"{name} {sub}", command.commands[sub]) for sub in command.commands)
        else:
            yield name, command


def _params(flag):
    return [(name, param) for name, command in _every_command() for param in command.params if flag in param.opts]


def test_every_command_takes_the_runner_flags_alike():
    from ffx.runtime.backends.runner import ONNX_PROVIDERS

    providers = _params("--provider")
    assert {name for name, _ in providers} == {"bench", "predict", "serve", "verify"}
    for name, param in providers:
        assert (param.name, tuple(param.type.choices), param.default) == ("provider", ONNX_PROVIDERS, "cpu"), name
    threads = _params("--threads")
    assert {name for name, _ in threads} == {"bench", "verify"}
    assert all(param.type is THREADS and not param.required for _, param in threads)


def test_every_command_takes_the_output_flags_alike():
    jsons = _params("--json")
    assert len(jsons) == 12  # every command and deploy's two
    assert all(param.opts == ["--json"] and param.name == "as_json" and param.is_flag for _, param in jsons)
    outputs = _params("--output")
    assert {name for name, _ in outputs} == {"export", "calibrate", "build-engine", "deploy triton", "deploy deepstream"}
    for name, param in outputs:
        assert param.opts == ["-o", "--output"] and isinstance(param.type, click.Path), name
        assert param.required == (name != "calibrate"), name  # calibrate names its output after the model
        # A file command refuses a folder and a folder command a file.
        assert param.type.dir_okay != param.type.file_okay, name


@pytest.mark.parametrize("text, batches", [("1", [1]), ("1,8,8,32", [1, 8, 32]), ("32, 1,", [32, 1]), ("4096", [4096])])
def test_batch_sizes_are_read_once_each_in_order(text, batches):
    from ffx.commands.runner_options import parse_batches

    assert parse_batches(text) == batches


@pytest.mark.parametrize("text, message", [("1,x", "give comma-separated sizes"), ("", "sizes must be from 1 to 4096"),
                                           ("0,8", "sizes must be from 1 to 4096"), ("4097", "from 1 to 4096")])
def test_bad_batch_sizes_name_the_flag(text, message):
    from ffx.commands.runner_options import parse_batches

    with pytest.raises(FfxError, match=f"^--batch {text!r}: .*{message}"):
        parse_batches(text)
