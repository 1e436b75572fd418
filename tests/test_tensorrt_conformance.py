"""Every TensorRT name ffx uses exists where it is used: in the installed TensorRT-RTX bindings and
in NVIDIA's TensorRT 10.3 (JetPack 6), 10.16 (the last 10.x), 11.1 and 11.4 (the first 11.x for Jetson,
JetPack 7.2.2+) Python bindings. Runs without a GPU, so a typo or an API a release removed fails CI
instead of a user's first run on a GPU.

The TensorRT names are committed lists (tests/tensorrt_api/*.txt, each citing the repository,
branch, commit and files it was taken from; regenerate with scripts/tensorrt_api_names.py). The
TensorRT-RTX names are read from the installed module.

The convention this checks (stated in ffx/tensorrt/__init__.py's docstring), in every file of the
ffx/tensorrt/ package and every other source file that binds the name `trt`:
- the TensorRT module is always called `trt`, and TensorRT objects live in variables or attributes
  named after their class (TYPED_NAMES below): `config.set_flag` is IBuilderConfig.set_flag;
- a name must exist in every flavour, unless it is used inside a function whose name ends in
  `_rtx` (TensorRT-RTX only) or `_full_tensorrt` (TensorRT 10.3 and 11.x only);
- `getattr(obj, "name", default)` / `hasattr(obj, "name")` marks an API some versions lack: the
  name must exist in at least one flavour the code runs on (so a typo still fails).
"""

import ast
import dataclasses
import shutil
from pathlib import Path

import pytest

from helpers import TENSORRT_RTX_MISSING

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("ffx", "export", "calib", "runtime")
TENSORRT_PACKAGE = ROOT / "ffx" / "tensorrt"
# 10.3: JetPack 6. 10.16: the last 10.x. 11.1 and 11.4 (the first 11.x for Jetson: JetPack 7.2.2+).
NAME_LISTS = {"TensorRT 10.3": "tensorrt-10.3.txt", "TensorRT 10.16": "tensorrt-10.16.txt",
              "TensorRT 11.1": "tensorrt-11.1.txt", "TensorRT 11.4": "tensorrt-11.4.txt"}
RTX = "TensorRT-RTX"

# variable / attribute name -> the TensorRT class it holds
TYPED_NAMES = {
    "builder": "Builder",
    "network": "INetworkDefinition",
    "tensor": "ITensor",
    "parser": "OnnxParser",
    "parser_error": "ParserError",
    "config": "IBuilderConfig",
    "profile": "IOptimizationProfile",
    "timing_cache": "ITimingCache",
    "disk_timing_cache": "ITimingCache",
    "runtime": "Runtime",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
    "runtime_config": "IRuntimeConfig",
    "inspector": "EngineInspector",
}
GUARDS = {"_rtx": {RTX}, "_full_tensorrt": set(NAME_LISTS)}


@dataclasses.dataclass(frozen=True)
class Use:
    name: str  # "IBuilderConfig.set_flag", "BuilderFlag.TF32" or a module-level "nptype"
    where: str  # file:line
    optional: bool  # looked up with getattr/hasattr
    flavours: frozenset  # where it must exist (any of them when optional)


def _guard(function_stack):
    for function in reversed(function_stack):
        for suffix, flavours in GUARDS.items():
            if function.endswith(suffix):
                return frozenset(flavours)
    return frozenset({RTX, *NAME_LISTS})


def _owner(node):
    """The TensorRT class (or "" for the module) that `node` evaluates to, or None."""
    if isinstance(node, ast.Name):
        key = node.id
    elif isinstance(node, ast.Attribute):
        if _owner(node.value) == "":  # trt.Enum: a class of the module
            return node.attr
        key = node.attr
    else:
        return None
    return "" if key == "trt" else TYPED_NAMES.get(key)


def _qualified(owner, attr):
    return f"{owner}.{attr}" if owner else attr


def tensorrt_uses(path, label=None):
    """Every TensorRT name `path` uses, with where and on which flavours it must exist."""
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    label = label or str(Path(path).relative_to(ROOT))
    uses = []

    def visit(node, functions):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions = [*functions, node.name]
        if isinstance(node, ast.Attribute) and not node.attr.startswith("__"):
            owner = _owner(node.value)
            if owner is not None:
                uses.append(Use(_qualified(owner, node.attr), f"{label}:{node.lineno}", False, _guard(functions)))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            owner = _owner(node.args[0])
            if owner is not None:
                uses.append(Use(_qualified(owner, node.args[1].value), f"{label}:{node.lineno}", True, _guard(functions)))
                node = ast.Call(func=node.func, args=node.args[2:], keywords=node.keywords)  # not also as a direct use
        for child in ast.iter_child_nodes(node):
            visit(child, functions)

    visit(tree, [])
    return uses


def tensorrt_files():
    """The source files that touch TensorRT: every file of the ffx/tensorrt/ package (TensorRT's own
    room, whether or not a file binds `trt` today), and every other file that binds the name `trt`."""
    files = sorted(TENSORRT_PACKAGE.rglob("*.py"))
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path in files:
                continue
            tree = ast.parse(path.read_text())
            if any(isinstance(n, (ast.Name, ast.arg)) and getattr(n, "id", getattr(n, "arg", None)) == "trt"
                   for n in ast.walk(tree)):
                files.append(path)
    return files


def listed_names(filename):
    lines = (ROOT / "tests" / "tensorrt_api" / filename).read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def installed_rtx_names():
    import tensorrt_rtx_bindings as trt

    names = set()
    for name in dir(trt):
        names.add(name)
        value = getattr(trt, name)
        if isinstance(value, type):
            names.update(f"{name}.{member}" for member in dir(value))
    return names


@pytest.fixture(scope="module")
def flavours():
    if TENSORRT_RTX_MISSING:
        pytest.skip(TENSORRT_RTX_MISSING)
    return {RTX: installed_rtx_names(), **{label: listed_names(f) for label, f in NAME_LISTS.items()}}


def problems(uses, flavours):
    found = []
    for use in uses:
        having = {label for label, names in flavours.items() if use.name in names}
        if use.optional:
            if not having & use.flavours:
                found.append(f"{use.where}: {use.name} exists in none of {', '.join(sorted(use.flavours))} (a typo?)")
            continue
        missing = use.flavours - having
        if missing:
            hint = ""
            if having:
                hint = (f"; only {', '.join(sorted(having))} has it: use it in a function named *_rtx or "
                        "*_full_tensorrt, or look it up with getattr(obj, name, None)")
            found.append(f"{use.where}: {use.name} is missing from {', '.join(sorted(missing))}{hint}")
    return found


def test_the_name_lists_cite_their_source():
    for filename in NAME_LISTS.values():
        header = (ROOT / "tests" / "tensorrt_api" / filename).read_text().splitlines()[:2]
        assert "github.com/NVIDIA/TensorRT release/" in header[0] and "(commit " in header[0]
        assert "python/src/infer/pyCore.cpp" in header[1]
        assert len(listed_names(filename)) > 1000


def test_the_lists_differ_where_the_releases_do():
    """Each list is its release's, not a copy of another's."""
    lists = {label: listed_names(f) for label, f in NAME_LISTS.items()}
    # Weak typing (builder precision flags, calibrators) is in every 10.x and gone from 11.x.
    for label, names in lists.items():
        assert ("BuilderFlag.FP16" in names) == label.startswith("TensorRT 10."), label
        assert ("IInt8EntropyCalibrator2" in names) == label.startswith("TensorRT 10."), label
    # 10.16 has what came after 10.3 (the runtime config of 10.11), 11.4 what came after 11.1 (DLA is back).
    assert "ICudaEngine.create_runtime_config" in lists["TensorRT 10.16"] - lists["TensorRT 10.3"]
    assert "Runtime.dla_workspace_allocation_strategy" in lists["TensorRT 11.4"] - lists["TensorRT 11.1"]


def test_the_tensorrt_files_are_found():
    names = {path.relative_to(ROOT).as_posix() for path in tensorrt_files()}
    package = {path.relative_to(ROOT).as_posix() for path in TENSORRT_PACKAGE.glob("*.py")}
    assert {"ffx/tensorrt/__init__.py", "ffx/tensorrt/backend.py", "ffx/tensorrt/build.py",
            "ffx/tensorrt/options.py"} <= package
    assert package | {"runtime/backends/engine.py"} <= names


def test_every_tensorrt_name_ffx_uses_exists(flavours):
    uses = [use for path in tensorrt_files() for use in tensorrt_uses(path)]
    used = {use.name for use in uses}
    # The walk really sees the build and run paths (a broken walk would pass vacuously).
    assert {"IBuilderConfig.set_memory_pool_limit", "Builder.build_serialized_network", "BuilderFlag.TF32",
            "IExecutionContext.execute_async_v3", "ITimingCache.combine", "ITensor.shape", "nptype"} <= used
    assert problems(uses, flavours) == []


def test_enum_members_looked_up_by_value_exist(flavours):
    from ffx.compute_capability import RTX_SUPPORTED
    from ffx.tensorrt import HARDWARE_COMPATIBILITY
    from ffx.tensorrt.backend import _DTYPE_NAMES

    for member in HARDWARE_COMPATIBILITY.values():  # full TensorRT only, looked up with getattr
        assert any(f"HardwareCompatibilityLevel.{member}" in flavours[label] for label in NAME_LISTS), member
    # SAME_COMPUTE_CAPABILITY came after 10.3: ffx says so there instead of failing in the builder.
    assert "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY" not in flavours["TensorRT 10.3"]
    for capability in RTX_SUPPORTED:
        assert f"ComputeCapability.SM{capability.replace('.', '')}" in flavours[RTX], capability
    for member in _DTYPE_NAMES:
        assert any(f"DataType.{member}" in names for names in flavours.values()), member


def _copy_with(tmp_path, relative, old, new):
    copy = tmp_path / Path(relative).name
    shutil.copy(ROOT / relative, copy)
    text = copy.read_text()
    assert old in text, old
    copy.write_text(text.replace(old, new, 1))
    return tensorrt_uses(copy, label=copy.name)


def test_a_misspelled_attribute_in_a_copy_fails(flavours, tmp_path):
    uses = _copy_with(tmp_path, "ffx/tensorrt/build.py", "config.set_memory_pool_limit(", "config.set_memory_pool_limt(")
    found = problems(uses, flavours)
    assert len(found) == 1 and ("IBuilderConfig.set_memory_pool_limt is missing from "
                                "TensorRT 10.16, TensorRT 10.3, TensorRT 11.1, TensorRT 11.4, TensorRT-RTX") in found[0]


def test_a_misspelled_enum_member_and_optional_name_fail(flavours, tmp_path):
    uses = _copy_with(tmp_path, "ffx/tensorrt/build.py", "trt.BuilderFlag.TF32", "trt.BuilderFlag.TF23")
    assert any("BuilderFlag.TF23 is missing" in problem for problem in problems(uses, flavours))
    uses = _copy_with(tmp_path, "ffx/tensorrt/build.py", '"IProgressMonitor"', '"IProgresMonitor"')
    assert any("IProgresMonitor exists in none" in problem for problem in problems(uses, flavours))


def test_a_misspelling_in_the_backend_module_fails(flavours, tmp_path):
    # The package's other room: finding and importing TensorRT (the logger both building and running use).
    uses = _copy_with(tmp_path, "ffx/tensorrt/backend.py", "trt.ILogger.__init__(self)", "trt.ILoger.__init__(self)")
    assert any("ILoger is missing" in problem for problem in problems(uses, flavours))

def test_a_one_flavour_name_outside_its_guard_fails(flavours, tmp_path):
    # The runtime config's CUDA-graph strategy is TensorRT-RTX's: allowed in _create_context_rtx, not in a plain
    # function; create_runtime_config itself came in 10.11, after JetPack 6's 10.3.
    uses = _copy_with(tmp_path, "runtime/backends/engine.py", "def _create_context_rtx(self):", "def _create_context_any(self):")
    found = problems(uses, flavours)
    assert any("ICudaEngine.create_runtime_config is missing from TensorRT 10.3; "
               "only TensorRT 10.16, TensorRT 11.1, TensorRT 11.4, TensorRT-RTX has it" in problem for problem in found), found
    assert any("IRuntimeConfig.cuda_graph_strategy is missing from TensorRT 10.16, TensorRT 10.3, TensorRT 11.1, "
               "TensorRT 11.4; only TensorRT-RTX has it" in problem for problem in found), found
