"""Which precisions a GPU runs, and which ffx recommends there: one table, by compute capability.

TensorRT takes precision from the graph (typed FP16, INT8 or FP8 Q/DQ), but the GPU decides what
is fast or possible at all: FP8 E4M3 tensor cores exist from compute capability 8.9 (Ada) on, so
an FP8 graph cannot be built for Turing, Ampere or Jetson Orin. The rows below come from NVIDIA's
support matrices (README, "Which precision for which GPU", lists the sources). ffx's recommendation
is the fastest precision ffx writes that the GPU runs in tensor cores: FP8 where it exists (on
Hopper, measured on an H200, FP8 GEMMs ran 1.5-1.6x FP16's at ff_base's feature-MLP shapes and
INT8 through cuBLAS did not beat FP16), INT8 elsewhere; FP16 when the accuracy budget has no room
for 8 bits (`ffx verify` measures it). NVFP4 and MXFP8 (Blackwell) are named, not written by ffx.
"""

import dataclasses

from ffx.compute_capability import capability_label


@dataclasses.dataclass(frozen=True)
class GpuPrecisions:
    capability: str  # "8.9"
    architecture: str
    examples: str
    int8: bool
    fp8: bool
    fp16: bool
    recommended: str  # "int8" or "fp8"
    blackwell_formats: str = ""  # the 4-bit and block-scaled formats ffx does not write (NVFP4, MXFP8)
    note: str = ""
    slow_int8: bool = False  # INT8 tensor cores far slower than FP8's: an FP8 graph's INT8 layers cost there

    def supported(self):
        return [name for name, has in (("int8", self.int8), ("fp8", self.fp8), ("fp16", self.fp16)) if has]

    def describe(self):
        """One line: 'compute capability 8.9 (Ada Lovelace: L4, L40S, RTX 40): INT8, FP8, FP16; ffx recommends FP8'."""
        extra = f"; {self.blackwell_formats} (not written by ffx)" if self.blackwell_formats else ""
        note = f"; {self.note}" if self.note else ""
        return (f"compute capability {self.capability} ({self.architecture}: {self.examples}): "
                f"{', '.join(p.upper() for p in self.supported())}{extra}; ffx recommends {self.recommended.upper()}{note}")


# Blackwell Ultra's datasheet: INT8 0.15 POPS dense against FP8's 4.5 PFLOPS (B200: 4.5 and 4.5).
SLOW_INT8_NOTE = ("its INT8 tensor cores run at 1/30 of FP8's rate: FP8 graphs without INT8 layers "
                  "(`ffx calibrate --fp8 --int8-layers none`)")

GPU_PRECISIONS = {row.capability: row for row in (
    GpuPrecisions("7.5", "Turing", "T4, RTX 20", True, False, True, "int8",
                  note="TensorRT-RTX has no INT8 GEMMs there: FP16 with --backend tensorrt-rtx"),
    GpuPrecisions("8.0", "Ampere", "A100, A30", True, False, True, "int8"),
    GpuPrecisions("8.6", "Ampere", "A10, A40, RTX 30", True, False, True, "int8"),
    GpuPrecisions("8.7", "Ampere, Jetson", "Jetson AGX Orin, Orin NX, Orin Nano", True, False, True, "int8",
                  note="DLA runs INT8 and FP16 too"),
    GpuPrecisions("8.9", "Ada Lovelace", "L4, L40S, RTX 40", True, True, True, "fp8"),
    GpuPrecisions("9.0", "Hopper", "H100, H200, GH200", True, True, True, "fp8"),
    GpuPrecisions("10.0", "Blackwell", "B200, GB200", True, True, True, "fp8", "NVFP4, MXFP8"),
    GpuPrecisions("10.3", "Blackwell Ultra", "B300, GB300", True, True, True, "fp8", "NVFP4, MXFP8",
                  note=SLOW_INT8_NOTE, slow_int8=True),
    GpuPrecisions("11.0", "Blackwell, Jetson", "Jetson AGX Thor (10.1 before CUDA 13)", True, True, True, "fp8"),
    GpuPrecisions("12.0", "Blackwell", "RTX 50, RTX PRO 6000", True, True, True, "fp8", "NVFP4"),
    GpuPrecisions("12.1", "Blackwell", "DGX Spark (GB10)", True, True, True, "fp8", "NVFP4"),
)}
GPU_PRECISIONS["10.1"] = dataclasses.replace(GPU_PRECISIONS["11.0"], capability="10.1",
                                             examples="Jetson AGX Thor (11.0 from CUDA 13)")

FP8_MIN_CAPABILITY = (8, 9)


def gpu_precisions(capability):
    """The GpuPrecisions of a compute capability ("8.9", "SM89", (8, 9)); a capability not in the table
    gets a row inferred from FP8's threshold (8.9), marked as such."""
    label = capability_label(capability)
    if label in GPU_PRECISIONS:
        return GPU_PRECISIONS[label]
    fp8 = supports_fp8(label)
    return GpuPrecisions(label, "not in ffx's table", "unknown GPU", True, fp8, True, "fp8" if fp8 else "int8",
                         note="inferred: FP8 needs compute capability 8.9 or newer")


def supports_fp8(capability):
    """Whether a GPU of this compute capability has FP8 (E4M3) tensor cores: 8.9 and newer."""
    label = capability_label(capability)
    major, minor = (int(part) for part in label.split("."))
    return (major, minor) >= FP8_MIN_CAPABILITY


def fp8_refusal(capability, gpu_name=None):
    """Why an FP8 graph cannot be built for `capability`, naming the GPU and what to use instead."""
    row = gpu_precisions(capability)
    name = f"{gpu_name} (compute capability {row.capability})" if gpu_name else \
        f"compute capability {row.capability} ({row.architecture}: {row.examples})"
    return (f"{name} has no FP8 tensor cores (FP8 needs 8.9 or newer: Ada, "
            f"Hopper, Blackwell, Thor); build INT8 there (`ffx build-engine MODEL.onnx --int8 --calib-data DIR`, "
            f"or a graph from `ffx calibrate` without --fp8) or FP16 (--fp16)")
