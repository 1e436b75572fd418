"""Stage 3: engines and runners (installed as ffx.runtime).

Imports without torch and without TensorRT (a Jetson runs engines with neither PyTorch nor the
export stage): backends are imported by the runner that needs them, when it is opened.
"""

from ffx.runtime.runner import Runner, open_runner, runner_kind
from ffx.runtime.sidecar import EngineSidecar, compatibility_problem, read_sidecar, sidecar_path

__all__ = ["Runner", "open_runner", "runner_kind", "EngineSidecar", "read_sidecar", "sidecar_path",
           "compatibility_problem"]
