"""`--preprocess`: the preprocessing of a model that does not carry it (exported by another tool).

The value is a JSON file, or JSON text, with the fields of the `ffx` metadata's `preprocess`
object, e.g. {"input_size": [3, 224, 224], "resize": 256, "interpolation": "bicubic",
"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}.
"""

import contextlib
from pathlib import Path

import click

from ffx.errors import FfxError, MissingPreprocess
from ffx.json_input import InvalidJson, parse_json, read_json_file
from ffx.metadata import Preprocess

preprocess_option = click.option(
    "--preprocess", "preprocess_text", metavar="JSON",
    help="Preprocessing for a model that carries none: a JSON file or text with input_size, resize, "
         "interpolation, mean, std (as in the ffx metadata). Overrides the model's own.")


def parse_preprocess(text):
    """The validated Preprocess of `--preprocess` (a file path or JSON text), or None."""
    if text is None:
        return None
    path = Path(text)
    source = f"--preprocess {text}"
    try:
        fields = read_json_file(path) if path.is_file() else parse_json(text)
    except OSError as e:
        raise FfxError(f"{source}: cannot read it ({e.strerror or e})") from None
    except InvalidJson as e:
        raise FfxError(f"{source}: {'neither a JSON file nor JSON text' if e.syntax else e}") from None
    return Preprocess.from_dict(fields, source)


@contextlib.contextmanager
def naming_the_flag():
    """Add the flag to a missing-preprocessing error raised by the library."""
    try:
        yield
    except MissingPreprocess as e:
        raise FfxError(f"{e} with --preprocess FILE.json") from None
