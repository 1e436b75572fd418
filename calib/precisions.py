"""The precisions `ffx calibrate` writes, one row each: what the one calibration entry
(`ffx.calib.calibrate`) dispatches on. A new precision is one module with its `calibrate_<name>`
function and one row here; Q/DQ precisions share their flow (calib/qdq.py) and differ by a recipe.

Kept light (numpy at most): options validation and the CLI read it before any model is loaded.
"""

import dataclasses

from ffx.calib.ranges import METHODS


@dataclasses.dataclass(frozen=True)
class Precision:
    name: str  # "int8": CalibrationOptions.precision, manifests, MODEL.<name>.onnx
    label: str  # "INT8" in messages
    methods: tuple  # the range methods it takes, default first (empty: it has no activation ranges)
    module: str  # the module that writes it
    function: str  # its calibrate(onnx_path, data=, output=, options=, ...) function
    needs_data: bool  # whether calibration images are required (FP16: only for the overflow preflight)
    recipe: str | None = None  # Q/DQ precisions: the module's QdqRecipe (sensitivity and the search build with it)

    @property
    def default_method(self):
        return self.methods[0] if self.methods else None


PRECISIONS = {
    "int8": Precision("int8", "INT8", METHODS, "ffx.calib.int8", "calibrate_int8", True, "INT8"),
    # FP8 E4M3 keeps 3 mantissa bits at any magnitude: clipping buys no resolution, so no entropy (see calib/fp8.py).
    "fp8": Precision("fp8", "FP8", ("max", "percentile", "mse"), "ffx.calib.fp8", "calibrate_fp8", True, "FP8"),
    "fp16": Precision("fp16", "FP16", (), "ffx.calib.fp16", "convert_fp16", False),
}


def qdq_recipe(precision):
    """The QdqRecipe that writes `precision` ("int8", "fp8"); ValueError for a precision without Q/DQ."""
    import importlib

    row = PRECISIONS[precision]
    if row.recipe is None:
        raise ValueError(f"{row.label} has no Q/DQ recipe")
    return getattr(importlib.import_module(row.module), row.recipe)
