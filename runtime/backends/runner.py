"""One small runner interface over TensorRT engines, ONNX Runtime and PyTorch checkpoints.

After Polygraphy's runners: each backend has a runner with the same few members, so verify,
bench and predict never care which backend produced the logits.

    with open_runner("model.engine") as runner:      # activate() ... deactivate()
        logits = runner.infer(images)                 # float32 NCHW -> float32 [N, classes]
        runner.backend, runner.precision, runner.metadata, runner.preprocess

`open_runner` picks the runner from the file type; backends are imported only on use, so this
module (and `import ffx.runtime`) works without torch or TensorRT.
"""

from pathlib import Path

import numpy as np

from ffx.errors import FfxError, MissingPreprocess
from ffx.metadata import ModelMetadata
from ffx.model_file import ModelFile, open_onnx
from ffx.runtime.engines.sidecar import ENGINE_SUFFIXES, read_sidecar

ONNX_SUFFIXES = (".onnx",)
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")
ONNX_PROVIDERS = ("cpu", "cuda", "tensorrt")


class Runner:
    """One model behind one interface, whatever runs it (ONNX Runtime, TensorRT, PyTorch).

    Use it as a context manager, or activate()/deactivate(), and call infer() in between:

        with open_runner("model.engine") as runner:
            logits = runner.infer(images)    # float32 [N, C, H, W] -> float32 [N, classes]

    Subclasses set `backend`, `precision`, `metadata`, `input_shape` and the batch limits in
    __init__ (cheap, no heavy loading) and implement _activate/_infer/_deactivate. Every member
    callers read is declared here, so no caller needs hasattr.

    What the user should know about a run (an engine without a sidecar, a CUDA graph capture that
    failed) a runner says with ffx.reporting.warn when it happens, in __init__ or a call; a caller
    that reports it beside the run's results holds it there (ffx.reporting.warnings_to).
    """

    backend = "?"
    supports_phase_timing = False  # True: setting `phase_timing` fills `last_phases_ms` per call

    def __init__(self, path):
        self.path = path.path if isinstance(path, ModelFile) else Path(path)
        # The file as opened (graph, metadata, sidecar, manifest: ONNX and engine runners), for
        # callers that read more of it; None when the runner did not open it as a ModelFile.
        self.model_file = path if isinstance(path, ModelFile) else None
        self.precision = "fp32"
        self.metadata = ModelMetadata()  # what the model records about itself (empty: nothing)
        self.input_shape = None  # (C, H, W)
        self.min_batch = 1  # smallest batch one call can take; shorter batches are zero-padded
        self.max_batch = None  # largest batch one call can take; None = unlimited
        self.fixed_batch = None  # a graph with a fixed batch takes exactly this many images
        self.phase_timing = False
        self.last_phases_ms = None  # {"h2d_ms", "compute_ms", "d2h_ms"} of the last call when phase_timing
        self.active = False

    # -- what the runner is --------------------------------------------------------------------
    @property
    def name(self):
        return self.path.name

    def describe(self):
        return f"{self.path.name} ({self.backend}, {self.precision})"

    @property
    def preprocess(self):
        if not self.metadata.has_preprocess:
            raise MissingPreprocess(
                f"{self.path}: carries no preprocessing metadata; export it with `ffx export` or give its "
                "preprocessing (input size, resize, interpolation, mean, std) as JSON"
            )
        return self.metadata.checked_preprocess(self.path)

    @property
    def class_names(self):
        names = self.metadata.class_names
        return list(names) if names else None

    @property
    def num_classes(self):
        return self.metadata.num_classes

    # -- lifecycle -----------------------------------------------------------------------------
    def check_available(self):
        """Raise BackendUnavailable now if activate() would, without loading anything heavy."""

    def activate(self) -> "Runner":
        """Load the model (session, engine, network); returns the runner itself."""
        if not self.active:
            self._activate()
            self.active = True
        return self

    def deactivate(self) -> None:
        """Release what activate() loaded; the runner can be activated again."""
        if self.active:
            self.active = False
            self._deactivate()

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.deactivate()

    # -- inference -----------------------------------------------------------------------------
    def infer(self, images: np.ndarray) -> np.ndarray:
        """Logits for a batch of preprocessed images (see `preprocess`).

        Args:
            images: float32 [N, C, H, W]. Batches larger than the runner takes are split, and a
                chunk shorter than it takes (a fixed batch, an engine's minimum batch) is
                zero-padded, its padding rows dropped from the result.

        Returns:
            float32 logits [N, classes].
        """
        if not self.active:
            raise RuntimeError(f"{self.describe()}: call activate() (or use `with`) before infer()")
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or (self.input_shape is not None and tuple(images.shape[1:]) != tuple(self.input_shape)):
            raise FfxError(
                f"{self.describe()} takes images of shape [N, {', '.join(map(str, self.input_shape or ('C', 'H', 'W')))}], "
                f"got {list(images.shape)}"
            )
        step = self.fixed_batch or self.max_batch or len(images)
        smallest = self.fixed_batch or self.min_batch
        outputs = []
        for start in range(0, len(images), max(step, 1)):
            chunk = images[start:start + step]
            count = len(chunk)
            if count < smallest:
                pad = np.zeros((smallest - count, *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            outputs.append(self._logits(self._infer(chunk), len(chunk))[:count])
        if not outputs:
            return np.zeros((0, self.num_classes or 0), np.float32)
        return np.concatenate(outputs)

    def _logits(self, output, batch):
        """`output` of a batch of `batch` images as float32 [batch, classes]; FfxError for anything
        else (a graph from another tool may return class indices, [N, 1, classes] or no classes)."""
        output = np.asarray(output)
        if output.dtype.kind != "f" or output.ndim != 2 or output.shape[0] != batch or output.shape[1] < 1:
            raise FfxError(f"{self.describe()}: its output is {output.dtype} {list(output.shape)} for {batch} "
                           f"image{'s' if batch != 1 else ''}; ffx reads float logits [N, classes] (N = {batch}, "
                           "at least one class)")
        return output.astype(np.float32, copy=False)

    def _activate(self):
        raise NotImplementedError

    def _infer(self, images):
        raise NotImplementedError

    def _deactivate(self):
        pass


def runner_kind(path):
    """"engine", "onnx" or "checkpoint" from the file name; FfxError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    raise FfxError(
        f"{path}: unknown model type {suffix or '(no suffix)'}; expected an engine "
        f"({', '.join(ENGINE_SUFFIXES)}), an ONNX model (.onnx) or a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})"
    )


def existing_model_kind(path):
    """runner_kind of `path`, once it is known to exist; FfxError naming the file otherwise."""
    kind = runner_kind(path)
    if not Path(path).is_file():
        raise FfxError(f"{path}: no such file")
    return kind


def open_model(path):
    """The ModelFile of a model file ffx reads, opened once (a ModelFile given is returned as it
    is): an ONNX's graph and ffx metadata (ffx.model_file.open_onnx), an engine's sidecar (None when
    it has none), a checkpoint's path (its runner loads it, with torch). FfxError for a missing
    file or an unknown type; what the file holds is checked as each reader always has."""
    if isinstance(path, ModelFile):
        return path
    path = Path(path)
    kind = existing_model_kind(path)
    if kind == "onnx":
        return open_onnx(path)
    if kind == "engine":
        return ModelFile(path, "engine", sidecar=read_sidecar(path))
    return ModelFile(path, "checkpoint")


def open_runner(path: str | Path | ModelFile, provider: str = "cpu", cuda_graph: bool = False, cuda_library: str = "auto",
                arch: str | None = None, ema: bool = False, device: str = "cpu", threads: int | None = None,
                int8_kernels: bool = False) -> Runner:
    """The runner for a model file, picked by its type (not yet activated).

    Args:
        path: a TensorRT engine (ENGINE_SUFFIXES), an ONNX model (.onnx) or a PyTorch checkpoint
            (CHECKPOINT_SUFFIXES; needs torch), or its ModelFile when already opened (open_model).
        provider: ONNX Runtime execution provider for .onnx files: cpu, cuda or tensorrt.
        cuda_graph, cuda_library: for engines: CUDA graph capture; pycuda, cuda-python or auto.
        arch, ema, device: for checkpoints: the architecture when it cannot be inferred, the EMA
            weights, the torch device.
        threads: CPU threads for ONNX Runtime and PyTorch (None: each library's default).
        int8_kernels: for .onnx on the CPU: onnxruntime's fused int8 kernels (speed) instead of
            TensorRT's arithmetic (accuracy); see OnnxRuntimeRunner.

    Returns:
        Runner: an OnnxRuntimeRunner, EngineRunner or CheckpointRunner.

    Raises:
        FfxError: a missing file or an unknown type; BackendUnavailable when its backend is absent.
    """
    if isinstance(path, ModelFile):
        kind = path.kind
    else:
        path = Path(path)
        kind = existing_model_kind(path)
    if kind == "engine":
        from ffx.runtime.backends.engine import EngineRunner

        return EngineRunner(path, cuda_graph=cuda_graph, cuda_library=cuda_library)
    if kind == "onnx":
        from ffx.runtime.backends.onnxrt import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, provider=provider, threads=threads, int8_kernels=int8_kernels)
    from ffx.runtime.backends.pytorch import CheckpointRunner

    return CheckpointRunner(path, arch=arch, ema=ema, device=device, threads=threads)
