"""Write the list of Python API names a TensorRT release's bindings define, from NVIDIA's sources.

tests/test_tensorrt_conformance.py checks every TensorRT name ffx uses against these lists
(tests/tensorrt_api/*.txt), so a typo or an API a release removed fails CI without a GPU.
The names come from the pybind11 binding sources in github.com/NVIDIA/TensorRT:
python/src/**/*.cpp (`py::class_` / `py::enum_` with their `.def*` and `.value` entries, and
module-level `m.def`) plus the functions the wheel's tensorrt/__init__.py adds (nptype, ...).

    python scripts/tensorrt_api_names.py GIT_DIR REF OUTPUT
    python scripts/tensorrt_api_names.py /path/to/TensorRT/.git release/10.3 tests/tensorrt_api/tensorrt-10.3.txt
    python scripts/tensorrt_api_names.py --tree DIR REF COMMIT OUTPUT [--wheel WHEEL]

GIT_DIR is a clone of NVIDIA/TensorRT (a bare one works); nothing is downloaded here.

--tree reads the same files from DIR, a folder laid out like the repository at REF, for a release
whose branch is not in the clone at hand (release/11.4: the files were read one by one from a copy
of the repository). DIR/SOURCES says where each file came from, one line each; its lines go into the
list's header. --wheel WHEEL checks the list against that release's tensorrt bindings wheel (from
PyPI; its tensorrt.so cannot be imported without the TensorRT libraries, but every name the
bindings define is a string in it): it prints the member names the .so lacks (none expected) and
the snake_case / UPPER_CASE strings of the .so that no binding source spells (what the sources
may miss).
"""

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

BINDING = re.compile(r"py::(class_|enum_)<")
MEMBER = re.compile(r"\.(?:def|def_property|def_property_readonly|def_readwrite|def_readonly|def_static|value)\s*\(\s*\"(\w+)\"")
NAMED_AS = re.compile(r"[({]\s*m\s*,\s*\"(\w+)\"")
DECLARED_AS = re.compile(r">\s*(\w+)\s*[({]\s*m\s*,\s*\"(\w+)\"")
MODULE_FUNCTION = re.compile(r"\bm\.def\s*\(\s*\"(\w+)\"")
PYTHON_FILE = "python/packaging/bindings_wheel/tensorrt/__init__.py"


def git(git_dir, *args):
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True, text=True).stdout


def without_comments(text):
    """C++ source with comments blanked, string and character literals kept."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif text[i] in "\"'":
            end = _literal_end(text, i)
            out.append(text[i:end])
            i = end
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _literal_end(text, start):
    quote, i = text[start], start + 1
    while i < len(text) and text[i] != quote:
        i += 2 if text[i] == "\\" else 1
    return i + 1


def statement_from(text, start):
    """text[start:] up to the `;` that ends the statement (brackets and literals balanced)."""
    depth, i = 0, start
    while i < len(text):
        char = text[i]
        if char in "\"'":
            i = _literal_end(text, i)
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == ";" and depth <= 0:
            return text[start:i]
        i += 1
    return text[start:]


def cpp_names(text):
    """{python class or enum name: member names} and module-level function names of one source."""
    text = without_comments(text)
    classes, variables = {}, {}
    for match in BINDING.finditer(text):
        statement = statement_from(text, match.start())
        declared = DECLARED_AS.search(statement[:400])
        named = declared.group(2) if declared else (NAMED_AS.search(statement).group(1) if NAMED_AS.search(statement) else None)
        if named is None:
            continue
        if declared:
            variables[declared.group(1)] = named
        classes.setdefault(named, set()).update(MEMBER.findall(statement))
    for variable, named in variables.items():  # `py::class_<X> var(m, "X"); var.def(...);`
        for match in re.finditer(rf"\b{re.escape(variable)}\s*\.", text):
            classes[named].update(MEMBER.findall(statement_from(text, match.start())))
    return classes, set(MODULE_FUNCTION.findall(text))


def python_names(text):
    """Top-level functions and assigned names of the wheel's tensorrt/__init__.py."""
    names = set()
    # The file is a template: ##TENSORRT_MODULE## and friends are filled in when the wheel is built.
    text = re.sub(r"##(\w+)##", lambda m: "tensorrt" if m.group(1) == "TENSORRT_MODULE" else "0", text)
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def git_sources(git_dir, ref):
    files = [f for f in git(git_dir, "ls-tree", "-r", "--name-only", ref, "python/src").split()
             if f.endswith(".cpp")]
    return files, lambda path: git(git_dir, "show", f"{ref}:{path}")


def tree_sources(folder):
    root = Path(folder)
    files = sorted(p.relative_to(root).as_posix() for p in (root / "python/src").rglob("*.cpp"))
    return files, lambda path: (root / path).read_text()


def api_names(files, read):
    classes, functions = {}, set()
    for path in files:
        found, module_functions = cpp_names(read(path))
        for name, members in found.items():
            classes.setdefault(name, set()).update(members)
        functions |= module_functions
    functions |= python_names(read(PYTHON_FILE))
    lines = sorted(functions | set(classes)) + sorted(f"{c}.{m}" for c, members in classes.items() for m in members)
    return lines


def write(output, ref, commit, files, lines, notes=()):
    header = [
        f"# TensorRT Python API names at github.com/NVIDIA/TensorRT {ref} (commit {commit})",
        f"# from {PYTHON_FILE} and the pybind11 sources {', '.join(files)}",
        *(f"# {note}" for note in notes),
        "# written by scripts/tensorrt_api_names.py; one name per line: Module-level, or Class.member",
    ]
    with open(output, "w") as f:
        f.write("\n".join(header + lines) + "\n")
    print(f"{output}: {len(lines)} names from {ref} ({commit[:12]})")


def wheel_check(lines, files, read, wheel):
    """Names of `lines` absent from the wheel's compiled bindings, and the wheel's API-like strings no source spells."""
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/tensorrt.so")))
    strings = set(data.split(b"\0"))
    # The linker stores a string that ends another one only once ("Builder" inside "IBuilder"): look for the tail.
    absent = sorted(name for name in {line.split(".")[-1] for line in lines} - python_names(read(PYTHON_FILE))
                    if name.encode() + b"\0" not in data)
    literals = set()
    for path in files:
        literals.update(re.findall(r'"(\w+)"', without_comments(read(path))))
    api_like = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")
    unspelled = sorted(s.decode("latin1") for s in strings
                       if api_like.fullmatch(s.decode("latin1")) and s.decode("latin1") not in literals)
    print(f"{wheel}: names of the list absent from the compiled bindings: {absent or 'none'}")
    print(f"{wheel}: API-like strings of the compiled bindings that no source spells: {unspelled}")


def main(argv):
    if len(argv) == 3 and not argv[0].startswith("--"):
        git_dir, ref, output = argv
        files, read = git_sources(git_dir, ref)
        write(output, ref, git(git_dir, "rev-parse", ref).strip(), files, api_names(files, read))
    elif len(argv) in (5, 7) and argv[0] == "--tree" and (len(argv) == 5 or argv[5] == "--wheel"):
        folder, ref, commit, output = argv[1:5]
        files, read = tree_sources(folder)
        notes = [line.strip() for line in (Path(folder) / "SOURCES").read_text().splitlines() if line.strip()]
        lines = api_names(files, read)
        write(output, ref, commit, files, lines, notes)
        if len(argv) == 7:
            wheel_check(lines, files, read, argv[6])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
