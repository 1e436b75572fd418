"""PyTorch checkpoint runner: the reference every engine is measured against.

torch is imported here only, when a checkpoint is actually opened; the network is built by the
export stage's `resolve_model`, exactly as `ffx export` builds it.
"""

from ffx.errors import TORCH_CPU_INSTALL, BackendUnavailable, install_hint
from ffx.metadata import ModelMetadata
from ffx.runtime.backends.runner import Runner


class CheckpointRunner(Runner):
    """A PyTorch checkpoint, built as `ffx export` builds it (needs torch).

    Args:
        path: the checkpoint (DeiT training checkpoint, state dict or .safetensors).
        arch: the architecture when it cannot be inferred from the tensors.
        ema: use the checkpoint's model_ema weights.
        device: torch device ("cpu", "cuda").
        threads: torch CPU threads while active (None: torch's default).
    """

    backend = "pytorch"

    def __init__(self, path, arch=None, ema=False, device="cpu", threads=None):
        super().__init__(path)
        try:
            import torch  # noqa: F401
        except ImportError:
            raise BackendUnavailable(
                f"{self.path}: running a PyTorch checkpoint needs torch (CPU-only: `{TORCH_CPU_INSTALL}`, "
                f"then {install_hint('export')}); engines and ONNX models run without it"
            ) from None
        from ffx.export.checkpoint import resolve_model

        self.device = device
        self.threads = threads
        self._saved_threads = None
        self.resolved = resolve_model(arch, str(self.path), use_ema=ema)
        config = self.resolved.config
        self.metadata = ModelMetadata.from_dict({
            "arch": self.resolved.arch,
            "config": config.to_dict(),
            "num_classes": config.num_classes,
            "preprocess": self.resolved.preprocess.to_dict(),
            "class_names": self.resolved.class_names,
            "precision": "fp32",
            "weights": self.resolved.weights,
            "preprocess_recorded": self.resolved.preprocess_recorded,
        }, self.path)
        self.input_shape = (config.in_chans, config.img_size, config.img_size)
        self.model = None

    def _activate(self):
        import torch

        if self.device != "cpu" and not torch.cuda.is_available():
            raise BackendUnavailable(f"--device {self.device}: this torch build has no CUDA GPU")
        self.model = self.resolved.model.to(self.device).eval()
        if self.threads:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(int(self.threads))

    def _infer(self, images):
        import torch

        with torch.inference_mode():
            logits = self.model(torch.from_numpy(images).to(self.device))
        return logits.float().cpu().numpy()

    def _deactivate(self):
        self.model = None
        if self._saved_threads:
            import torch

            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None
