"""A model file opened once: the ONNX graph (or an engine's sidecar) with the ffx metadata it
carries, validated once, and the calibration manifest that belongs to it.

Every stage that reads a model starts from a ModelFile instead of loading the graph, parsing its
metadata and checking its input size itself: export (folding the normalization), calib (the FP32
source, a converted candidate), runtime (runners, the serving interface, engine builds, verify).
`open_onnx` opens an ONNX file here; engines (whose sidecar format is the runtime's) are opened
by `ffx.runtime.backends.runner.open_model`, which gives back the same record for any model file.

What is read when: opening reads the graph (and its external weights when asked) and parses the
metadata JSON (FfxError for a file that is no model, external data outside its folder, metadata
that is not a JSON object), exactly as every reader did; `metadata` validates on first use (so a
caller keeps the order of its own checks and messages), the manifest is looked up and read only
when asked for. (onnx itself is imported on use: runtime modules import this one without it.)
"""

import functools
from pathlib import Path

from ffx.calibration_manifest import CalibrationManifest, calibration_manifest_path
from ffx.metadata import ModelMetadata, onnx_metadata


class ModelFile:
    """One model file as ffx reads it.

    Attributes:
        path: the file.
        kind: "onnx", "engine" or "checkpoint".
        graph: the ONNX ModelProto (ONNX only; its external weights in memory when opened with
            `weights=True`), else None.
        recorded: the ffx metadata JSON object as read (ONNX: None when the graph carries none).
        sidecar: an engine's EngineSidecar (ffx.runtime.engines.sidecar), None when it has none.
        external_weights: True when `weights=True` brought external weights into memory.
    """

    def __init__(self, path, kind, graph=None, recorded=None, sidecar=None, external_weights=False):
        self.path = Path(path)
        self.kind = kind
        self.graph = graph
        self.recorded = recorded
        self.sidecar = sidecar
        self.external_weights = external_weights

    @functools.cached_property
    def metadata(self):
        """The validated ModelMetadata (empty when the file carries none); FfxError naming the file
        and the first bad field. An engine's comes from its sidecar (validated when read)."""
        if self.kind == "engine":
            return self.sidecar.model_metadata if self.sidecar is not None else ModelMetadata()
        return ModelMetadata.from_dict(self.recorded or {}, self.path)

    @property
    def unchecked_metadata(self):
        """The metadata as recorded, not validated: for readers that never required valid
        metadata (following the records to a source, a manifest)."""
        if self.kind == "engine":
            return self.metadata
        return ModelMetadata.unchecked(self.recorded)

    def check_input_size(self):
        """FfxError when the graph's input disagrees with the size its metadata preprocesses to."""
        from ffx.onnx_file import check_input_size

        check_input_size(self.graph, self.metadata, self.path)

    def check_logits_output(self):
        """FfxError when the graph's first output is not declared as float logits [N, classes]."""
        from ffx.onnx_file import check_logits_output

        check_logits_output(self.graph, self.path)

    def check_graph(self):
        """Both checks every ONNX reader makes before any image is read: input size, then logits."""
        self.check_input_size()
        self.check_logits_output()

    @functools.cached_property
    def manifest_path(self):
        """The calibration manifest that belongs to the model, or None: an ONNX's is the file its
        metadata names (or MODEL.json beside it), an engine's the one its sidecar records."""
        if self.kind == "onnx":
            return calibration_manifest_path(self.path, self.unchecked_metadata)
        if self.kind == "engine" and self.sidecar is not None:
            return recorded_file(self.path, self.sidecar.calibration_manifest)
        return None

    @functools.cached_property
    def manifest(self):
        """The CalibrationManifest at `manifest_path`, or None (none there, or not a JSON object)."""
        return CalibrationManifest.read(self.manifest_path) if self.manifest_path is not None else None

    def without_graph(self):
        """The same record without the graph: what an object that lives long (a runner) keeps, so
        that the graph's memory goes once it is checked. What was already worked out is kept."""
        light = ModelFile(self.path, self.kind, recorded=self.recorded, sidecar=self.sidecar,
                          external_weights=self.external_weights)
        cached = ("metadata", "manifest_path", "manifest")  # the cached_property values, if computed
        light.__dict__.update({name: value for name, value in self.__dict__.items() if name in cached})
        return light


def open_onnx(path, weights=False):
    """The ModelFile of the ONNX at `path`: its graph (external weights brought into memory when
    `weights`, for sessions built from the model in memory) and its ffx metadata, parsed."""
    from ffx.onnx_file import load_external_weights, load_onnx

    path = Path(path)
    graph = load_onnx(path)  # checks that external data stays inside the model's folder
    external = load_external_weights(graph, path) if weights else False
    return ModelFile(path, "onnx", graph=graph, recorded=onnx_metadata(graph, path), external_weights=external)


def recorded_file(engine_path, record):
    """The file a sidecar record names (written relative to the engine's folder when it lies
    below it), or None without a record or when the file is gone."""
    if record is None:
        return None
    path = Path(engine_path).parent / record.file  # an absolute record stays absolute
    return path if path.is_file() else None
