"""How to build an engine: `BuildOptions`, validated on construction, and its defaults."""

import dataclasses

from ffx.compute_capability import RTX_DEFAULT_TARGETS, capability_label, rtx_supports, rtx_unsupported_reason
from ffx.errors import FfxError, InvalidOption
from ffx.metadata import MAX_BATCH

# CLI spelling -> HardwareCompatibilityLevel member (full TensorRT only).
HARDWARE_COMPATIBILITY = {
    "none": "NONE",
    "ampere-plus": "AMPERE_PLUS",
    "same-compute-capability": "SAME_COMPUTE_CAPABILITY",
}

DEFAULT_MAX_BATCH = 32
DEFAULT_OPT_BATCH = 8  # capped by the max batch
CURRENT_GPU = "current"  # as a target: the GPU of the building machine


# The largest builder workspace BuildOptions accepts: 1 TiB, beyond the memory of any GPU (TensorRT
# takes the limit as a 64-bit size; 10^35 bytes was a TypeError from its bindings).
MAX_WORKSPACE_BYTES = 1 << 40


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """How to build an engine, validated on construction (InvalidOption names the field).

    min/opt/max_batch: the batch profile; None takes the default (opt = min(8, max), max = 32).
    workspace_bytes: builder workspace limit. timing_cache: file read before and merged back
    after the build (full TensorRT). optimization_level: 0..5. hardware_compatibility: a key of
    HARDWARE_COMPATIBILITY (full TensorRT). version_compatible: loadable by newer TensorRT of the
    same major (full TensorRT). compute_capabilities: TensorRT-RTX targets, replacing its default
    (8.0, 8.6, 8.9, 12.0, 12.1); "current" alone means this machine's GPU and must be resolved with
    `with_current_gpu` before building. tf32: allow TF32 for FP32 layers (TensorRT's default).
    """

    min_batch: int = 1
    opt_batch: int | None = None
    max_batch: int | None = None
    workspace_bytes: int | None = None
    timing_cache: str | None = None
    optimization_level: int | None = None
    hardware_compatibility: str | None = None
    version_compatible: bool = False
    compute_capabilities: tuple = ()
    tf32: bool = True

    def __post_init__(self):
        for field in ("min_batch", "opt_batch", "max_batch", "workspace_bytes"):
            value = getattr(self, field)
            if (value is not None or field == "min_batch") and not _positive_int(value):
                raise InvalidOption(field, f"must be a positive whole number, got {value!r}")
        if self.workspace_bytes is not None and self.workspace_bytes > MAX_WORKSPACE_BYTES:
            raise InvalidOption("workspace_bytes", f"at most {MAX_WORKSPACE_BYTES >> 30:,} GiB (more than any GPU "
                                f"holds), got {self.workspace_bytes:,} bytes")
        given = [b for b in (self.min_batch, self.opt_batch, self.max_batch) if b is not None]
        if max(given) > MAX_BATCH:
            raise InvalidOption("max_batch", f"batches go up to {MAX_BATCH:,} (what an exported graph declares), "
                                f"got {max(given):,}")
        if given != sorted(given):
            raise InvalidOption("min_batch", "batch profile must satisfy 1 <= min <= opt <= max, got "
                                f"{self.min_batch}, {self.opt_batch or 'default'}, {self.max_batch or 'default'}")
        if self.optimization_level is not None and (not _whole(self.optimization_level) or not 0 <= self.optimization_level <= 5):
            raise InvalidOption("optimization_level", f"builder optimization level must be 0..5, got {self.optimization_level!r}")
        if self.hardware_compatibility is not None and self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise InvalidOption("hardware_compatibility", f"unknown hardware compatibility {self.hardware_compatibility!r}; "
                                f"choose {', '.join(HARDWARE_COMPATIBILITY)}")
        for field in ("version_compatible", "tf32"):
            if not isinstance(getattr(self, field), bool):
                raise InvalidOption(field, f"must be true or false, got {getattr(self, field)!r}")
        object.__setattr__(self, "compute_capabilities", _rtx_targets(self.compute_capabilities))
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", str(self.timing_cache))

    @property
    def wants_current_gpu(self):
        return self.compute_capabilities == (CURRENT_GPU,)

    def with_current_gpu(self, capability):
        """These options with the target "current" replaced by `capability` (the building GPU's,
        so the sidecar records the real one); `capability` None: no GPU visible, InvalidOption."""
        if not self.wants_current_gpu:
            return self
        if capability is None:
            raise InvalidOption("compute_capabilities", "target 'current' means this machine's GPU and none is visible; "
                                f"name the targets instead (e.g. {RTX_DEFAULT_TARGETS[0]})")
        return dataclasses.replace(self, compute_capabilities=(capability_label(capability),))

    def profile_batches(self):
        """(min, opt, max) with the defaults filled in."""
        maximum = self.max_batch or max(DEFAULT_MAX_BATCH, self.min_batch, self.opt_batch or 0)
        optimum = self.opt_batch or min(maximum, max(self.min_batch, DEFAULT_OPT_BATCH))
        return self.min_batch, optimum, maximum


def _whole(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value):
    return _whole(value) and value > 0


def _rtx_targets(values):
    """Validated, normalized TensorRT-RTX targets: a tuple of "8.6"-style labels, or ("current",)."""
    if isinstance(values, str):
        values = (values,)
    labels = []
    for value in values:
        text = str(value).strip().lower()
        if text == CURRENT_GPU:
            labels.append(CURRENT_GPU)
            continue
        if text in ("none", ""):
            raise InvalidOption("compute_capabilities", f"{value!r} is not a target; leave the targets out for "
                                f"TensorRT-RTX's default ({', '.join(RTX_DEFAULT_TARGETS)})")
        try:
            label = capability_label(value)
        except FfxError as e:
            raise InvalidOption("compute_capabilities", str(e)) from None
        if not rtx_supports(label):
            raise InvalidOption("compute_capabilities", rtx_unsupported_reason(label))
        if label not in labels:
            labels.append(label)
    if CURRENT_GPU in labels and len(labels) > 1:
        raise InvalidOption("compute_capabilities", "target 'current' cannot be combined with other targets")
    return tuple(labels)
