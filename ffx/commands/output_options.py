"""The output option group: where a command writes (-o/--output) and what it prints for scripts
(--json), declared once so that every command spells them, names their parameters and checks
them the same way.

    @click.command("export")
    @output_file_option("Where to write the ONNX model.")          # -o/--output FILE -> output
    @json_option()                                                  # --json -> as_json
    def command(..., output, as_json):

The help says what the command writes or prints; the rest is the group's.
"""

import click


def output_file_option(help, required=True):
    """-o/--output (parameter `output`): the file the command writes; a folder is refused."""
    return click.option("-o", "--output", required=required, type=click.Path(dir_okay=False), help=help)


def output_folder_option(parameter, help):
    """-o/--output (parameter `parameter`): the folder the command writes into; a file is refused."""
    return click.option("-o", "--output", parameter, required=True, type=click.Path(file_okay=False), help=help)


def json_option(prints="one JSON object", help=None):
    """--json (parameter `as_json`): print `prints` on stdout for scripts (`help`: the whole help
    instead, for a command whose JSON comes at another moment)."""
    return click.option("--json", "as_json", is_flag=True, help=help or f"Print {prints} for scripts.")
