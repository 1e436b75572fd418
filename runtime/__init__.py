"""Stage 3: engines and runners (installed as ffx.runtime).

Imports without torch and without TensorRT (a Jetson runs engines with neither PyTorch nor the
export stage): backends are imported by the runner that needs them, when it is opened.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys

from ffx.runtime.backends.runner import Runner, open_runner, runner_kind
from ffx.runtime.engines.sidecar import EngineSidecar, compatibility_problem, read_sidecar, sidecar_path

# The module paths the README's Python API named before runtime/ had subpackages
# (`from ffx.runtime.verify import verify`, `ffx.runtime.engine_file.write_engine`) stay importable:
# each is the moved module itself, imported when asked for (not with ffx.runtime).
MOVED_MODULES = {"ffx.runtime.engine_file": "ffx.runtime.engines.engine_file",
                 "ffx.runtime.verify": "ffx.runtime.tasks.verify"}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Gives each old name the moved module itself (one module object, not a second copy)."""

    def find_spec(self, name, path=None, target=None):
        if name not in MOVED_MODULES:
            return None
        module = importlib.import_module(MOVED_MODULES[name])
        return importlib.machinery.ModuleSpec(name, self, loader_state=(module, module.__spec__))

    def create_module(self, spec):
        return spec.loader_state[0]

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state[1]  # the import system gave it the old name's


sys.meta_path.append(_MovedModules())

__all__ = ["Runner", "open_runner", "runner_kind", "EngineSidecar", "read_sidecar", "sidecar_path",
           "compatibility_problem"]
