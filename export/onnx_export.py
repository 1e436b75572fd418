"""PyTorch network -> ONNX: a fixed-size, dynamic-batch graph that TensorRT builds as is.

The graph has one input `images` [batch, C, H, W] and one output `logits` [batch, classes],
opset >= 17 so LayerNorm stays the fused `LayerNormalization` op (a decomposed LayerNorm
overflows in FP16), no Dropout and no Resize: the position-embedding resize the original code
does on every forward is computed once here and stored as a constant.
"""

import contextlib
import dataclasses
import io
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from ffx import __version__
from ffx.artifacts import check_output_path, sha256_bytes, sha256_file, write_bytes_atomic
from ffx.errors import FfxError, GateFailed
from ffx.export.checkpoint import ResolvedModel
from ffx.export.limits import MAX_OPSET, MIN_OPSET, PARITY_ATOL, PARITY_RTOL
from ffx.metadata import MAX_BATCH, METADATA_FORMAT_VERSION, set_onnx_metadata

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


class _FoldedPositions(torch.nn.Module):
    """The network with its (1, T, E) position embedding precomputed as a constant buffer."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        grid = model.config.grid
        with torch.no_grad():
            self.register_buffer("pos_embed", model.pos_encoding.token_embedding(grid, grid).detach().clone())

    def forward(self, images):
        return self.model(images, pos_embed=self.pos_embed)


@dataclasses.dataclass
class ExportReport:
    output: str
    arch: str
    parameters: int
    opset: int
    input_shape: list
    max_abs_diff: float
    max_rel_diff: float
    check_images: int
    sha256: str
    seconds: float
    weights: str


def export_onnx(resolved: ResolvedModel, output: str | Path, opset: int = MIN_OPSET,
                source_path: str | Path | None = None, check_images_dir: str | Path | None = None,
                fold_normalization: bool = False, input_scale: float = 1.0) -> ExportReport:
    """Export a network to ONNX with ffx metadata, after a parity check against PyTorch.

    Nothing is written unless every check passes.

    Args:
        resolved: the network and its metadata, from `ffx.export.checkpoint.resolve_model`.
        output: where to write the ONNX model.
        opset: ONNX opset, at least MIN_OPSET (17, which keeps LayerNormalization fused).
        source_path: the checkpoint the weights came from; its sha256 goes into the metadata.
        check_images_dir: a folder of images; up to 32 of them join the parity check.
        fold_normalization: fold mean/std into the first convolution, so that the graph takes
            RGB in [0, input_scale]; parity is then checked against PyTorch fed the normalized input.
        input_scale: 1.0 or 255.0, with fold_normalization.

    Returns:
        ExportReport: output path, sha256, parameters, opset, input shape, parity differences.

    Raises:
        FfxError: bad arguments or an unwritable output (exit 2 in the CLI).
        GateFailed: ONNX Runtime does not reproduce PyTorch within tolerance (exit 1).
    """
    _check_opset(opset)
    check_output_path(output, [source_path, check_images_dir])
    started = time.perf_counter()
    model, config = resolved.model, resolved.config
    graph = _trace_to_onnx(_FoldedPositions(model).eval(), config, opset)
    preprocess = resolved.preprocess
    if fold_normalization:
        from ffx.export.normalization import fold_normalization_into_graph

        preprocess = fold_normalization_into_graph(graph, preprocess, input_scale)
    set_onnx_metadata(graph, _onnx_metadata(resolved, preprocess, source_path))
    _check_graph(graph)
    data = graph.SerializeToString()

    inputs = _parity_inputs(config, preprocess, check_images_dir)
    max_abs, max_rel = _parity(model, data, inputs, preprocess)
    _judge_parity(max_abs, max_rel, output)
    write_bytes_atomic(output, data)
    return ExportReport(
        output=str(output),
        arch=resolved.arch,
        parameters=sum(p.numel() for p in model.parameters()),
        opset=opset,
        input_shape=["batch", config.in_chans, config.img_size, config.img_size],
        max_abs_diff=max_abs,
        max_rel_diff=max_rel[0],
        check_images=len(inputs[-1]) if check_images_dir else 0,
        sha256=sha256_bytes(data),
        seconds=time.perf_counter() - started,
        weights=resolved.weights,
    )


def _check_opset(opset):
    if opset < MIN_OPSET:
        raise FfxError(f"--opset {opset}: ffx needs opset >= {MIN_OPSET} for the fused LayerNormalization op")
    if opset > MAX_OPSET:
        raise FfxError(f"--opset {opset}: torch's ONNX exporter writes opsets {MIN_OPSET} to {MAX_OPSET}")


def _onnx_metadata(resolved, preprocess, source_path):
    """The metadata the graph carries: what the next stages read instead of asking for flags."""
    config = resolved.config
    return {
        "arch": resolved.arch,
        "config": config.to_dict(),
        "num_classes": config.num_classes,
        "preprocess": preprocess.to_dict(),
        "preprocess_recorded": resolved.preprocess_recorded,  # False: ImageNet default assumed
        "format_version": METADATA_FORMAT_VERSION,
        "class_names": resolved.class_names,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "precision": "fp32",
        "weights": resolved.weights,
        "source_sha256": sha256_file(source_path) if source_path else None,
        "source_file": Path(source_path).name if source_path else None,
        "ffx_version": __version__,
        # The graph's exact nodes depend on these (onnxscript 0.7.0 and 0.7.2 write different graphs).
        "exporter": {"torch": torch.__version__, "onnxscript": _version_of("onnxscript"), "onnx": onnx.__version__},
    }


def _judge_parity(max_abs, max_rel, output):
    """Raise GateFailed unless ONNX Runtime reproduced PyTorch within tolerance."""
    if not (np.isfinite(max_abs) and np.isfinite(max_rel[1])):
        raise GateFailed(f"parity check failed: PyTorch or ONNX Runtime produced NaN or Inf logits; {output} was not written")
    if not max_abs <= PARITY_ATOL + PARITY_RTOL * max_rel[1]:
        raise GateFailed(
            f"parity check failed: ONNX Runtime differs from PyTorch by up to {max_abs:.3g} "
            f"(tolerance {PARITY_ATOL + PARITY_RTOL * max_rel[1]:.3g}); {output} was not written"
        )


def _version_of(package):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _trace_to_onnx(module, config, opset):
    # Batch 2 as the example: batch 1 would let torch.export specialize the batch dimension.
    example = torch.zeros(2, config.in_chans, config.img_size, config.img_size)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    # The exporter narrates on stdout and warns about its own internals; keep the CLI clean.
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:
            logger.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"images": {0: batch}},
                opset_version=opset,
                dynamo=True,
                optimize=True,  # onnxscript's optimizer: constant folding, dead-code removal
                verbose=False,
            )
    except ImportError as e:  # torch's exporter is written against a range of onnxscript releases
        raise FfxError(f"torch {torch.__version__}'s ONNX exporter cannot use onnxscript {_version_of('onnxscript')} "
                       f"({e}); install a matching one: pip install -U onnxscript") from None
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    graph = program.model_proto
    _canonicalize_gelu(graph)
    # Fixed H and W, symbolic batch named "batch" on both ends.
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    graph.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    graph.producer_name = "ffx"
    graph.producer_version = __version__
    return graph


def _canonicalize_gelu(graph):
    """Reorder each exact GELU to `(x * (1 + erf(x / sqrt 2))) * 0.5`, the form onnxruntime's
    GeluFusion recognises (the exporter emits `x * (0.5 * (1 + erf(...)))`, which it does not).
    Multiplying by 0.5 is exact, so the result is bit-identical; unfused, the four elementwise
    ops per GELU cost a large share of CPU inference time. TensorRT fuses either form."""
    halves = {init.name for init in graph.graph.initializer
              if init.data_type == onnx.TensorProto.FLOAT and not init.dims
              and onnx.numpy_helper.to_array(init).item() == 0.5}
    producer = {output: node for node in graph.graph.node for output in node.output}

    def made_by(name, op_type):
        node = producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    rewritten = 0
    for outer in graph.graph.node:  # outer = Mul(x, inner), inner = Mul(0.5, 1 + erf(x / sqrt 2))
        if outer.op_type != "Mul":
            continue
        for slot in (0, 1):
            inner, x = made_by(outer.input[slot], "Mul"), outer.input[1 - slot]
            if inner is None or not halves & set(inner.input):
                continue
            half = next(name for name in inner.input if name in halves)
            one_plus_erf = next((n for n in (made_by(i, "Add") for i in inner.input) if n is not None), None)
            erf = one_plus_erf and next((n for n in (made_by(i, "Erf") for i in one_plus_erf.input) if n), None)
            scaled = erf and made_by(erf.input[0], "Div")
            if scaled is None or scaled.input[0] != x:
                continue
            inner.input[:] = [x, one_plus_erf.output[0]]
            outer.input[:] = [inner.output[0], half]
            rewritten += 1
            break
    return rewritten


def _check_graph(graph):
    forbidden = {"Resize", "Dropout", "Pow"} & {node.op_type for node in graph.graph.node}
    if forbidden:
        raise RuntimeError(f"exported graph contains {sorted(forbidden)}; the export path is broken")
    onnx.checker.check_model(graph, full_check=True)  # full_check runs strict shape inference too
    output_shape = graph.graph.output[0].type.tensor_type.shape.dim
    if len(output_shape) != 2:
        raise RuntimeError(f"exported graph's output has rank {len(output_shape)}, expected 2")


def _parity_inputs(config, preprocess, check_images_dir):
    generator = np.random.default_rng(0)
    shape = (config.in_chans, config.img_size, config.img_size)
    if preprocess.normalization_folded:
        from ffx.export.normalization import random_pixels

        batches = random_pixels(preprocess)
    else:
        batches = [generator.standard_normal((n, *shape), dtype=np.float32) for n in (1, 3)]
    if check_images_dir:
        from ffx.images import UnreadableImage, find_images, load_image

        paths = find_images(check_images_dir)[:32]
        arrays = []
        for path in paths:
            with contextlib.suppress(UnreadableImage):
                arrays.append(load_image(path, preprocess))
        if not arrays:
            raise FfxError(f"--check-images {check_images_dir}: no readable images found")
        batches.append(np.stack(arrays))
    return batches


def _parity(model, onnx_bytes, batches, preprocess):
    """(max abs diff, (max rel diff, max |torch logit|)) between PyTorch and ONNX Runtime. A graph
    with folded normalization is compared with PyTorch fed the normalized input."""
    from ffx.export.normalization import normalize_network_input

    import onnxruntime

    options = onnxruntime.SessionOptions()
    # Basic (constant folding, redundancy removal) is enough to run the graph as written; the
    # extended fusions only cost session-creation time here.
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    max_abs = max_rel = max_ref = 0.0
    for batch in batches:
        with torch.no_grad():
            reference_input = normalize_network_input(batch, preprocess) if preprocess.normalization_folded else batch
            expected = model(torch.from_numpy(reference_input)).numpy()
        actual = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        diff = np.abs(actual.astype(np.float64) - expected)
        # np.max, not max(): Python's max() silently drops a NaN that comes second.
        max_abs = float(np.max([max_abs, diff.max()]))
        max_rel = float(np.max([max_rel, (diff / (np.abs(expected) + 1e-6)).max()]))
        max_ref = float(np.max([max_ref, np.abs(expected).max()]))
    return max_abs, (max_rel, max_ref)
