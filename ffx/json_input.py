"""Reading JSON that ffx did not necessarily write: ONNX metadata, calibration manifests, engine
sidecars, `--preprocess`, statistics-cache entries.

Python's json module parses what it is given, however large: a 5,000-digit integer raises
ValueError from deep inside the parser (Python 3.11's int conversion limit), 10**1000 parses into a
number no field can hold, and a few KB of brackets exhaust the recursion limit. `parse_json` bounds
all of it before any field is read, so every reader sees either plain, bounded data or one
`InvalidJson` with a short reason; each reader still checks its own fields' types and ranges.
"""

import json
from pathlib import Path

# Far above anything ffx writes: a calibration manifest lists ~150 bytes per image, its metadata and
# sidecars nest 5 levels deep, and its integers (counts, sizes, shapes) fit in 64 bits.
MAX_JSON_BYTES = 64 << 20
MAX_JSON_DEPTH = 64
MAX_INTEGER_DIGITS = 20


class InvalidJson(ValueError):
    """Text that is not JSON (`syntax`), or JSON beyond ffx's bounds; str() is a short reason."""

    def __init__(self, reason, syntax=False):
        super().__init__(reason)
        self.syntax = syntax


def parse_json(text):
    """The value of JSON `text` (str or bytes); InvalidJson when it is not JSON or exceeds the
    bounds above (size, nesting, integer digits)."""
    if len(text) > MAX_JSON_BYTES:
        raise InvalidJson(f"{len(text):,} bytes of JSON, more than the {MAX_JSON_BYTES:,} ffx reads")
    try:
        value = json.loads(text, parse_int=_bounded_int)
    except InvalidJson:
        raise
    except RecursionError:
        raise InvalidJson(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    except json.JSONDecodeError as e:
        raise InvalidJson(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", syntax=True) from None
    except (ValueError, UnicodeDecodeError) as e:  # bytes that are not UTF-8
        raise InvalidJson(f"not valid JSON ({type(e).__name__})", syntax=True) from None
    _check_depth(value)
    return value


def read_json_file(path):
    """parse_json of a file's contents, read no further than the size bound; InvalidJson as
    parse_json, OSError when the file cannot be read."""
    with open(path, "rb") as file:
        data = file.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise InvalidJson(f"{Path(path).name} is longer than the {MAX_JSON_BYTES:,} bytes of JSON ffx reads")
    return parse_json(data)


def _bounded_int(text):
    digits = len(text.lstrip("-"))
    if digits > MAX_INTEGER_DIGITS:
        raise InvalidJson(f"an integer of {digits:,} digits (ffx reads at most {MAX_INTEGER_DIGITS})")
    return int(text)


def _check_depth(value):
    """InvalidJson when lists and objects nest deeper than MAX_JSON_DEPTH (without recursing)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > MAX_JSON_DEPTH:
                    raise InvalidJson(f"nested more than {MAX_JSON_DEPTH} levels deep")
                pending.append((child, depth + 1))
