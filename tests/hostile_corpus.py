"""A corpus of hostile and careless inputs for every `ffx` command, generated small in a folder.

`build_corpus(root, mini)` writes the files and returns the cases: each is a command line, the
exit code it must end with and the files it must leave untouched. tests/test_hostile_inputs.py
runs them all; the README's Reliability section lists the categories and counts.
"""

import dataclasses
import json
import os
import socket
import stat
import struct
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from helpers import sidecar_dict


@dataclasses.dataclass
class Case:
    category: str
    name: str
    args: list
    expect: int = 2  # exit code
    inputs: tuple = ()  # files (or device nodes, FIFOs, folders) that must stay as they are: same bytes, same inode
    outputs: tuple = ()  # files that must not exist afterwards
    stderr_has: str = ""  # a word the one-line message must contain (lower case)
    alone: bool = False  # the Error line is all there is on stderr (besides click's usage lines): no warning first
    skip: str = ""  # why this case cannot run here (e.g. device nodes need root)
    max_stderr_lines: int = 0  # at most this many lines on stderr (0: no limit)


# -- files --------------------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this would create a marker file: the payload a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _mini_state(mini):
    import torch

    checkpoint = torch.load(mini.checkpoint, weights_only=True)
    return checkpoint


def _save(path, obj):
    import torch

    torch.save(obj, path)
    return path


def _broken_files(folder, good):
    """{garbage, empty, truncated: path} with the suffix of the good file `good`."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = Path(good).suffix
    data = Path(good).read_bytes()
    contents = {"garbage": np.random.default_rng(0).bytes(4096), "empty": b"", "truncated": data[: len(data) // 2]}
    files = {}
    for name, content in contents.items():
        files[name] = folder / f"{name}{suffix}"
        files[name].write_bytes(content)
    return files


def checkpoints(folder, mini):
    """{name: path} of hostile checkpoints."""
    import torch

    good = _mini_state(mini)
    files = _broken_files(folder, mini.checkpoint)
    files["malicious"] = _save(folder / "malicious.pth", {"model": _RunsCode(folder / "PAYLOAD_RAN")})
    files["list"] = _save(folder / "list.pth", [1, 2, 3])
    files["no_weights"] = _save(folder / "no_weights.pth", {"epoch": 3, "args": None})
    files["not_tensors"] = _save(folder / "not_tensors.pth", {"model": {"head.weight": "abc", "x": 1}})

    def variant(name, edit):
        checkpoint = {"model": {k: v.clone() for k, v in good["model"].items()}, "ffx": json.loads(json.dumps(good["ffx"]))}
        edit(checkpoint)
        files[name] = _save(folder / f"{name}.pth", checkpoint)

    variant("nan_weight", lambda c: c["model"]["head.weight"].__setitem__((0, 0), float("nan")))
    variant("inf_weight", lambda c: c["model"]["blocks.0.mlp1.fc1.weight"].__setitem__((1, 1), float("inf")))
    variant("stray_block", lambda c: c["model"].__setitem__("blocks.99999999.norm1.weight", torch.ones(32)))
    variant("bad_preprocess", lambda c: c["ffx"].__setitem__("preprocess", {"input_size": "abc"}))
    variant("std_zero", lambda c: c["ffx"]["preprocess"].__setitem__("std", [0.0, 0.0, 0.0]))
    variant("class_names_ints", lambda c: c["ffx"].__setitem__("class_names", list(range(10))))
    variant("class_names_count", lambda c: c["ffx"].__setitem__("class_names", ["a", "b"]))

    def expanded(c):
        # A few KB on disk, hundreds of GB once materialised: every tensor a stride-0 view.
        embed, tokens = 1 << 16, 50
        shapes = {"patch_embed.proj.weight": (embed, 3, 32, 32), "blocks.0.norm2.weight": (tokens,),
                  "blocks.0.mlp1.fc1.weight": (4 * embed, embed), "head.weight": (1000, embed),
                  "pos_encoding.pos_embed": (1, embed, 14, 14)}
        c["model"] = {k: torch.zeros(1).expand(*shape) for k, shape in shapes.items()}
        c.pop("ffx")

    variant("expanded_tensors", expanded)

    def expanded_within_bound(c):
        # Stride-0 views of a network that matches its own shapes and stays under the 2e9-value
        # bound (embed dim 8192, depth 3: 1.6e9 values): a few KB that become 6.5 GB of float32.
        from ffx.export.configs import FFConfig
        from ffx.export.model import FFVisionTransformer

        with torch.device("meta"):
            shapes = FFVisionTransformer(FFConfig(patch_size=4, embed_dim=8192, depth=3, num_classes=10, img_size=28,
                                                  pos_grid=7)).state_dict()
        c["model"] = {k: torch.zeros(1).expand(*v.shape) for k, v in shapes.items()}
        c.pop("ffx")

    variant("expanded_within_bound", expanded_within_bound)

    def replace_head(make):
        return lambda c: c["model"].__setitem__("head.weight", make(c["model"]["head.weight"]))

    # Not weights a training run saves: every one used to be cast, crash in the middle, or both.
    variant("int_key", lambda c: c["model"].__setitem__(7, torch.ones(3)))
    variant("int_key_among_module_keys", lambda c: c.__setitem__("model", {
        **{f"module.{k}": v for k, v in c["model"].items()}, 7: torch.ones(3)}))
    variant("meta_tensor", replace_head(lambda w: w.to("meta")))
    variant("sparse_tensor", replace_head(lambda w: w.to_sparse()))
    variant("nested_weights", replace_head(lambda w: {"weight": w}))
    with warnings.catch_warnings():  # torch deprecates making quantized tensors, not loading them
        warnings.simplefilter("ignore", UserWarning)
        variant("quantized_tensor", replace_head(lambda w: torch.quantize_per_tensor(w, 0.1, 0, torch.qint8)))
    variant("int8_weight", replace_head(lambda w: w.to(torch.int8)))
    variant("bool_weight", replace_head(lambda w: w.bool()))
    variant("complex_weight", replace_head(lambda w: w.to(torch.complex64)))
    files["zip_bomb"] = _zip_bomb(folder / "zip_bomb.pth")
    (folder / "garbage.safetensors").write_bytes(b"\xff" * 64)
    files["safetensors_garbage"] = folder / "garbage.safetensors"
    # A safetensors header claiming to be a petabyte long.
    (folder / "header_bomb.safetensors").write_bytes(struct.pack("<Q", 1 << 50) + b"{}")
    files["safetensors_header_bomb"] = folder / "header_bomb.safetensors"
    return files


def _zip_bomb(path):
    """A zip (torch's checkpoint container) whose one entry inflates 1000x: 96 MB from ~100 KB."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data.pkl", b"\0" * (96 << 20))
    return path


def _foreign_graph(input_name="x", dtype=TensorProto.FLOAT, shape=("N", 3, 8, 8), inputs=1, classes=10):
    """A small classifier ffx did not export: mean over H, W then a MatMul to `classes` logits."""
    nodes, graph_inputs = [], []
    for i in range(inputs):
        name = input_name if i == 0 else f"{input_name}{i}"
        graph_inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
    source = graph_inputs[0].name
    if dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [source], ["as_float"], to=TensorProto.FLOAT))
        source = "as_float"
    nodes.append(helper.make_node("ReduceMean", [source], ["pooled"], axes=[2, 3], keepdims=0))
    nodes.append(helper.make_node("MatMul", ["pooled", "weight"], ["logits"]))
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, classes)).astype(np.float32), "weight")
    graph = helper.make_graph(nodes, "foreign", graph_inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _graph_that_fails_when_run():
    """A foreign graph onnxruntime loads but cannot run: it reshapes [N, 3] to [-1, 4], which only
    the batch size decides (not a multiple of 4: onnxruntime fails in the middle of run())."""
    model = _foreign_graph()
    graph = model.graph
    graph.node[-1].input[0] = "regrouped"
    graph.node.insert(len(graph.node) - 1, helper.make_node("Reshape", ["pooled", "groups"], ["regrouped"]))
    graph.initializer.append(numpy_helper.from_array(np.array([-1, 4], np.int64), "groups"))
    graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((4, 10), np.float32), "weight"))
    return model


def _with_output(model, op_type, attributes, output_type, output_shape, extra_inputs=()):
    """`model` with one more node after its output, which becomes the graph's output `result`."""
    graph = model.graph
    inputs = [graph.output[0].name]
    for name, value in extra_inputs:
        graph.initializer.append(numpy_helper.from_array(value, name))
        inputs.append(name)
    graph.node.append(helper.make_node(op_type, inputs, ["result"], **attributes))
    graph.output[0].CopyFrom(helper.make_tensor_value_info("result", output_type, output_shape))
    return model


def foreign_outputs(folder, mini):
    """({name: path} of classifiers from other tools whose output is not logits [N, classes],
    {name: path} of the mini model with its output edited the same way)."""
    folder.mkdir(parents=True, exist_ok=True)
    axis = [("axis", np.array([1], np.int64))]
    edits = {
        "rank3": ("Unsqueeze", {}, TensorProto.FLOAT, ["N", 1, "C"], axis),
        "rank3_undeclared": ("Unsqueeze", {}, TensorProto.FLOAT, None, axis),
        "int64_logits": ("Cast", {"to": TensorProto.INT64}, TensorProto.INT64, ["N", "C"], ()),
        "class_indices": ("ArgMax", {"axis": 1, "keepdims": 0}, TensorProto.INT64, ["N"], ()),
        "two_million_classes": ("Tile", {}, TensorProto.FLOAT, ["N", 2_000_000], [("repeats", np.array([1, 200_000], np.int64))]),
    }
    foreign, edited = {}, {}
    for name, (op, attributes, dtype, shape, extra) in edits.items():
        onnx.save(_with_output(_foreign_graph(), op, attributes, dtype, shape, extra), folder / f"foreign_{name}.onnx")
        foreign[name] = folder / f"foreign_{name}.onnx"
        if shape is not None:
            onnx.save(_with_output(onnx.load(str(mini.onnx)), op, attributes, dtype, shape, extra), folder / f"mini_{name}.onnx")
            edited[name] = folder / f"mini_{name}.onnx"
    onnx.save(_foreign_graph(classes=0), folder / "foreign_zero_classes.onnx")
    foreign["zero_classes"] = folder / "foreign_zero_classes.onnx"
    return foreign, edited


def onnx_models(folder, mini):
    """{name: path} of ONNX files ffx did not write, or wrote and someone then edited."""
    from ffx.metadata import onnx_metadata, set_onnx_metadata

    files = _broken_files(folder, mini.onnx)

    foreign = {
        "foreign_no_metadata": _foreign_graph(),
        "foreign_two_inputs": _foreign_graph(inputs=2),
        "foreign_float16_input": _foreign_graph(dtype=TensorProto.FLOAT16),
        "foreign_uint8_input": _foreign_graph(dtype=TensorProto.UINT8),
        "foreign_dynamic_spatial": _foreign_graph(shape=("N", 3, "H", "W")),
        "foreign_rank2_input": _foreign_graph(shape=("N", 3)),
    }
    for name, model in foreign.items():
        onnx.save(model, folder / f"{name}.onnx")
        files[name] = folder / f"{name}.onnx"

    good = onnx.load(str(mini.onnx))
    info = onnx_metadata(good)

    def metadata_variant(name, edit):
        model = onnx.ModelProto()
        model.CopyFrom(good)
        changed = json.loads(json.dumps(info))
        edit(changed)
        set_onnx_metadata(model, changed)
        onnx.save(model, folder / f"{name}.onnx")
        files[name] = folder / f"{name}.onnx"

    def set_pre(key, value):
        return lambda d: d["preprocess"].__setitem__(key, value)

    metadata_variant("meta_input_size_text", set_pre("input_size", "abc"))
    metadata_variant("meta_input_size_negative", set_pre("input_size", [3, -28, 28]))
    metadata_variant("meta_input_size_absurd", set_pre("input_size", [3, 1 << 20, 1 << 20]))
    metadata_variant("meta_resize_zero", set_pre("resize", 0))
    metadata_variant("meta_resize_absurd", set_pre("resize", 10 ** 9))
    metadata_variant("meta_mean_length", set_pre("mean", [0.5, 0.5]))
    metadata_variant("meta_std_zero", set_pre("std", [0.3, 0.0, 0.3]))
    metadata_variant("meta_std_nan", set_pre("std", ["nan", 0.3, 0.3]))
    metadata_variant("meta_interpolation", set_pre("interpolation", "magic"))
    metadata_variant("meta_missing_field", lambda d: d["preprocess"].pop("mean"))
    metadata_variant("meta_preprocess_list", lambda d: d.__setitem__("preprocess", [1, 2]))
    metadata_variant("meta_not_object", lambda d: (d.clear()))
    metadata_variant("meta_class_names_ints", lambda d: d.__setitem__("class_names", list(range(10))))
    metadata_variant("meta_class_names_count", lambda d: d.__setitem__("class_names", ["a", "b"]))
    metadata_variant("meta_class_names_dict", lambda d: d.__setitem__("class_names", {"a": 1}))
    metadata_variant("meta_num_classes_text", lambda d: d.__setitem__("num_classes", "ten"))
    metadata_variant("meta_format_version_future", lambda d: d.__setitem__("format_version", 99))
    # Valid metadata on a graph onnxruntime refuses to load (an operator no runtime knows).
    unknown = onnx.ModelProto()
    unknown.CopyFrom(good)
    next(node for node in unknown.graph.node if node.op_type == "Transpose").op_type = "NoSuchOp"
    onnx.save(unknown, folder / "unknown_operator.onnx")
    files["unknown_operator"] = folder / "unknown_operator.onnx"
    # Well-formed metadata that disagrees with the graph: it preprocesses to half the graph's width.
    channels, height, width = info["preprocess"]["input_size"]
    metadata_variant("meta_input_size_other", set_pre("input_size", [channels, height, width // 2]))
    # Metadata that is not JSON at all.
    model = onnx.ModelProto()
    model.CopyFrom(good)
    for prop in model.metadata_props:
        if prop.key == "ffx":
            prop.value = "{not json"
    onnx.save(model, folder / "meta_not_json.onnx")
    files["meta_not_json"] = folder / "meta_not_json.onnx"

    # External data: the mini model's largest weight stored outside the model's folder (absolute
    # path, `..`, a symlink leading out) or missing.
    outside = folder.parent / "outside.bin"
    largest = max(good.graph.initializer, key=lambda t: len(t.raw_data))
    outside.write_bytes(largest.raw_data)
    (folder / "escape.bin").symlink_to(outside)
    for name, location in (("external_absolute", str(outside)), ("external_dotdot", "../outside.bin"),
                           ("external_symlink", "escape.bin"), ("external_missing", "missing.bin")):
        model = onnx.ModelProto()
        model.CopyFrom(good)
        weight = next(t for t in model.graph.initializer if t.name == largest.name)
        length = len(weight.raw_data)
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
        onnx.save(model, folder / f"{name}.onnx")
        files[name] = folder / f"{name}.onnx"
    return files


def nan_output_model(folder, mini):
    """The mini model with its classifier (the final Gemm) weights edited to NaN: every output is NaN."""
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(mini.onnx))
    head = [node for node in model.graph.node if node.op_type == "Gemm"][-1]
    weight = next(t for t in model.graph.initializer if t.name == head.input[1])
    nan = np.full(numpy_helper.to_array(weight).shape, np.nan, np.float32)
    weight.CopyFrom(numpy_helper.from_array(nan, weight.name))
    path = folder / "nan_output.onnx"
    onnx.save(model, path)
    return path


def external_data_model(folder, mini):
    """The mini model saved with its weights in a data file beside it (what big exports do)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(mini.onnx))
    path = folder / "external.onnx"
    onnx.save(model, path, save_as_external_data=True, location="external.onnx.data")
    return path


# Programs Pillow (or a library under it) could start on an image's bytes: Ghostscript for EPS and
# PostScript, the IJG tools, image viewers. Tests put fakes of them first on PATH; each fake leaves
# a marker file, which must never appear.
HELPER_PROGRAMS = ("gs", "gsx", "gswin64c", "djpeg", "cjpeg", "display", "xdg-open", "eog", "convert", "magick")


def fake_helper_programs(folder):
    """(folder to put first on PATH, marker folder): executables named HELPER_PROGRAMS that each
    leave a file named after themselves in the marker folder when run."""
    bin_folder, markers = Path(folder) / "fake-bin", Path(folder) / "ran"
    bin_folder.mkdir(parents=True, exist_ok=True)
    markers.mkdir(parents=True, exist_ok=True)
    for name in HELPER_PROGRAMS:
        program = bin_folder / name
        program.write_text(f"#!/bin/sh\ntouch '{markers / name}'\nexit 1\n")
        program.chmod(0o755)
    return bin_folder, markers


# An Encapsulated PostScript file: Pillow's EPS plugin rasterises it by running Ghostscript.
POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n0 0 moveto 28 28 lineto stroke\nshowpage\n%%EOF\n"


def images(folder):
    """{name: path}: one good image and hostile ones: a decompression bomb, empty, truncated, text,
    PostScript and PDF under image names, other formats Pillow knows (not photos), and headers
    declaring absurd sizes or aspect ratios in a few hundred bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    Image.fromarray(np.full((28, 28, 3), 128, np.uint8)).save(folder / "good.png")
    files["good"] = folder / "good.png"
    files["bomb"] = _png(folder / "bomb.png", 20000, 20000)  # 400 Mpx, > PIL's 179 Mpx bomb limit, ~50 KB
    (folder / "empty.png").write_bytes(b"")
    files["empty"] = folder / "empty.png"
    data = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    files["truncated"] = folder / "truncated.png"
    (folder / "text.jpg").write_text("not an image")
    files["text"] = folder / "text.jpg"
    for name, content in (("postscript.png", POSTSCRIPT), ("postscript.jpg", b"%!PS-Adobe-3.0\nshowpage\n"),
                          ("pdf.png", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")):
        (folder / name).write_bytes(content)
        files[name.replace(".", "_")] = folder / name
    Image.fromarray(np.full((28, 28, 3), 90, np.uint8)).save(folder / "targa.png", format="TGA")
    files["targa_png"] = folder / "targa.png"
    files["wide"] = _png(folder / "wide.png", 3_000_000, 1)  # 443 bytes; shorter side 1 -> billions of pixels
    files["tall"] = _png(folder / "tall.png", 28, 40_000)
    files["aspect"] = _png(folder / "aspect.png", 28 * 60, 28)  # within every side bound, but 60:1
    return files


def _fifo(path):
    if not path.exists():
        os.mkfifo(path)
    return path


def _png(path, width, height):
    """A 1-bit all-black PNG of width x height pixels, a few hundred bytes to ~50 KB."""
    row = b"\0" + b"\0" * ((width + 7) // 8)
    compressed = zlib.compress(row * height, 9)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", compressed) + chunk(b"IEND", b""))
    return path


def engines(folder, mini):
    """{name: path} of engine files with missing, broken or hostile sidecars (no GPU needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}

    def engine(name, sidecar_text):
        path = folder / f"{name}.engine"
        path.write_bytes(b"not a real plan")
        if sidecar_text is not None:
            (folder / f"{name}.engine.json").write_text(sidecar_text)
        files[name] = path

    engine("engine_no_sidecar", None)
    engine("engine_sidecar_not_json", "{broken")
    engine("engine_sidecar_list", "[1, 2]")
    engine("engine_sidecar_wrong_format", json.dumps({"format": "something-else"}))
    engine("engine_sidecar_wrong_types", json.dumps({"format": "ffx-engine-sidecar", "version": 1, "backend": 5,
                                                     "profile": "x", "metadata": "y", "gpu": 3}))
    return files


def calibrated_with_bad_manifest(folder, mini):
    """A copy of the mini model named as a calibrated model, beside a manifest that is garbage."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "mini.int8.onnx"
    model.write_bytes(Path(mini.onnx).read_bytes())
    (folder / "mini.int8.json").write_text('{"images": [1, {"path": 5}], "data": {"path": 7}')
    return model


# JSON that parses into what no field can hold: a 5,000-digit integer (Python 3.11 refuses to
# convert it), 1e1000 (infinity), brackets 100,000 deep (RecursionError), and valid JSON with the
# wrong type inside a valid key (a float where an integer belongs, a number where text belongs).
HUGE_INTEGER = "9" * 5000
DEEP_LIST = "[" * 100_000 + "]" * 100_000


def json_documents(folder, mini, foreign):
    """[Case] of ONNX metadata, engine sidecars, calibration manifests and --preprocess JSON that
    is hostile in the ways above."""
    from ffx.metadata import onnx_metadata

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "out"
    out.mkdir()
    good = onnx.load(str(mini.onnx))
    info = onnx_metadata(good)
    cases = []

    def metadata_text(name, text):
        model = onnx.ModelProto()
        model.CopyFrom(good)
        next(prop for prop in model.metadata_props if prop.key == "ffx").value = text
        onnx.save(model, folder / f"{name}.onnx")
        return folder / f"{name}.onnx"

    def edited(**fields):
        return json.dumps({**info, **fields})

    documents = {
        "huge_integer": json.dumps(info).replace('"resize": 28', f'"resize": {HUGE_INTEGER}'),
        "huge_exponent": json.dumps(info).replace('"resize": 28', '"resize": 1e1000'),
        "deep_nesting": edited(class_names="@").replace('"@"', DEEP_LIST),
        "num_classes_float": edited(num_classes=10.0),
        "input_size_float": edited(preprocess={**info["preprocess"], "input_size": [3, 28.0, 28]}),
        "source_sha256_number": edited(source_sha256=5),
        "preprocess_recorded_text": edited(preprocess_recorded="no"),
        "config_depth_huge": edited(config={**info["config"], "depth": 10 ** 18}),
        "config_list": edited(config=[1, 2]),
    }
    for name, text in documents.items():
        path = metadata_text(f"meta_{name}", text)
        cases.append(Case("json", f"predict/meta_{name}", ["predict", str(path), str(mini.good_image)], inputs=(path,)))
        cases.append(Case("json", f"inspect/meta_{name}", ["inspect", str(path)], expect=0, inputs=(path,)))
    depth = folder / "meta_config_depth_huge.onnx"
    target = out / "depth.int8.onnx"
    cases.append(Case("json", "calibrate/meta_config_depth_huge",
                      ["calibrate", str(depth), "--data", str(mini.labelled), "--no-cache", "--no-tensorrt-check",
                       "-o", str(target)], inputs=(depth,), outputs=(target, target.with_suffix(".json")),
                      stderr_has="config.depth"))

    # Engine sidecars: a complete, valid one (as build-engine writes it), then each defect.
    sidecar = sidecar_dict(engine={"file": "e.engine", "sha256": "a" * 64, "bytes": 15}, precision="fp32",
                           onnx={"file": "mini.onnx", "sha256": "b" * 64}, metadata=info)
    sidecars = {
        "huge_integer": json.dumps(sidecar).replace('"bytes": 15', f'"bytes": {HUGE_INTEGER}'),
        "deep_nesting": json.dumps({**sidecar, "notes": "@"}).replace('"@"', DEEP_LIST),
        "profile_float": json.dumps({**sidecar, "profile": {**sidecar["profile"], "min": [1.0, 3, 28, 28]}}),
        "num_classes_text": json.dumps({**sidecar, "metadata": {**info, "num_classes": "ten"}}),
        "metadata_preprocess_float": json.dumps({**sidecar, "metadata": {
            **info, "preprocess": {**info["preprocess"], "resize": 28.5}}}),
    }
    for name, text in sidecars.items():
        engine = folder / f"sidecar_{name}.engine"
        engine.write_bytes(b"not a real plan")
        Path(str(engine) + ".json").write_text(text)
        repository = out / f"repository-{name}"
        cases.append(Case("json", f"inspect/sidecar_{name}", ["inspect", str(engine)], inputs=(engine,)))
        cases.append(Case("json", f"deploy-triton/sidecar_{name}", ["deploy", "triton", str(engine), "-o", str(repository)],
                          inputs=(engine, Path(str(engine) + ".json")), outputs=(repository,)))

    # Calibration manifests beside a calibrated model: inspect shows the model anyway (exit 0).
    for name, text in (("huge_integer", f'{{"images": [{{"path": "a.png", "label": {HUGE_INTEGER}}}]}}'),
                       ("deep_nesting", f'{{"images": {DEEP_LIST}}}'), ("images_not_list", '{"images": 5e300}'),
                       ("nul_in_path", '{"images": [{"path": "a\\u0000b.png", "sha256": 5}]}')):
        model = folder / f"manifest_{name}.int8.onnx"
        model.write_bytes(Path(mini.onnx).read_bytes())
        model.with_suffix(".json").write_text(text)
        cases.append(Case("json", f"inspect/manifest_{name}", ["inspect", str(model)], expect=0,
                          inputs=(model, model.with_suffix(".json"))))
    # verify reads the manifest to count calibration images among its own (a ValueError on the NUL).
    nul = folder / "manifest_nul_in_path.int8.onnx"
    cases.append(Case("json", "verify/manifest_nul_in_path", ["verify", str(nul), "--reference", str(mini.onnx), "--data",
                                                              str(mini.labelled)], expect=0, inputs=(nul, nul.with_suffix(".json"))))

    # --preprocess for a model that carries none.
    preprocess = {"input_size": [3, 8, 8], "resize": 8, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.25] * 3}
    flags = {
        "huge_integer": json.dumps(preprocess).replace('"resize": 8', f'"resize": {HUGE_INTEGER}'),
        "deep_nesting": json.dumps({**preprocess, "mean": "@"}).replace('"@"', DEEP_LIST),
        "input_size_float": json.dumps({**preprocess, "input_size": [3, 8.0, 8]}),
        "mean_text": json.dumps({**preprocess, "mean": "gray"}),
    }
    for name, text in flags.items():
        path = folder / f"preprocess_{name}.json"
        path.write_text(text)
        cases.append(Case("json", f"predict/preprocess_{name}", ["predict", str(foreign), str(mini.good_image),
                                                                 "--preprocess", str(path)], inputs=(path,)))
    return cases


# Valid graphs whose metadata is absent or empty: bench (random inputs) and build-engine need none.
RUNNABLE_WITHOUT_METADATA = {"foreign_no_metadata", "foreign_float16_input", "meta_not_object"}


# -- cases ----------------------------------------------------------------------------------------


def build_corpus(root, mini, labelled):
    """Write the corpus under `root` and return [Case]."""
    root = Path(root)
    out = root / "out"
    out.mkdir(parents=True, exist_ok=True)
    ckpts = checkpoints(root / "checkpoints", mini)
    models = onnx_models(root / "onnx" / "models", mini)
    external = external_data_model(root / "external", mini)
    pictures = images(root / "images")
    plans = engines(root / "engines", mini)
    calibrated = calibrated_with_bad_manifest(root / "calibrated", mini)
    good_image = str(pictures["good"])
    cases = []

    for name, path in ckpts.items():
        target = out / f"{name}.onnx"
        cases.append(Case("checkpoint", f"export/{name}", ["export", "--checkpoint", str(path), "-o", str(target)],
                          inputs=(path,), outputs=(target,)))
        cases.append(Case("checkpoint", f"predict/{name}", ["predict", str(path), good_image], inputs=(path,)))
        cases.append(Case("checkpoint", f"inspect/{name}", ["inspect", str(path)], inputs=(path,)))
    cases.append(Case("checkpoint", "verify/nan_weight", ["verify", str(mini.onnx), "--reference", str(ckpts["nan_weight"]),
                                                          "--data", str(labelled)], inputs=(ckpts["nan_weight"],)))
    cases.append(Case("checkpoint", "export/wrong_arch_with_preprocess",
                      ["export", "--arch", "ff_tiny", "--checkpoint", str(mini.checkpoint), "-o", str(out / "arch.onnx")],
                      inputs=(mini.checkpoint,), outputs=(out / "arch.onnx",), stderr_has="missing"))

    for name, path in models.items():
        int8 = out / f"{name}.int8.onnx"
        # A valid graph without (usable) preprocessing still benchmarks (random inputs) and
        # builds; every other command needs the preprocessing and refuses.
        handled = {"bench": name in RUNNABLE_WITHOUT_METADATA,
                   "build-engine": name in RUNNABLE_WITHOUT_METADATA or name == "foreign_uint8_input"}
        cases.append(Case("onnx", f"calibrate/{name}", ["calibrate", str(path), "--data", str(labelled), "--no-cache",
                                                        "--workers", "0", "--no-tensorrt-check", "-o", str(int8)],
                          inputs=(path,), outputs=(int8, int8.with_suffix(".json"))))
        cases.append(Case("onnx", f"predict/{name}", ["predict", str(path), good_image], inputs=(path,)))
        # Empty metadata: verify prepares the images as the reference says (both see the same).
        cases.append(Case("onnx", f"verify/{name}", ["verify", str(path), "--reference", str(mini.onnx), "--data", str(labelled)],
                          expect=0 if name == "meta_not_object" else 2, inputs=(path,)))
        cases.append(Case("onnx", f"bench/{name}", ["bench", str(path), "--iterations", "5", "--warmup", "0"],
                          expect=0 if handled["bench"] else 2, inputs=(path,)))
        engine = out / f"{name}.engine"
        if handled["build-engine"]:
            cases.append(Case("onnx", f"build-engine/{name}", ["build-engine", str(path), "--backend", "tensorrt-rtx",
                                                               "-o", str(engine)], expect=0, inputs=(path,)))
        else:
            cases.append(Case("onnx", f"build-engine/{name}", ["build-engine", str(path), "-o", str(engine)],
                              inputs=(path,), outputs=(engine, Path(str(engine) + ".json"))))
        # inspect shows what it can of a readable model and flags what is invalid (exit 0).
        unreadable = name in ("garbage", "empty", "truncated") or name.startswith("external_")
        cases.append(Case("onnx", f"inspect/{name}", ["inspect", str(path)], expect=2 if unreadable else 0, inputs=(path,)))

    # A model from another tool runs once its preprocessing is given; without, the flag is named.
    preprocess = root / "preprocess.json"
    preprocess.write_text(json.dumps({"input_size": [3, 8, 8], "resize": 8, "interpolation": "bilinear",
                                      "mean": [0.5] * 3, "std": [0.25] * 3}))
    foreign = str(models["foreign_no_metadata"])
    cases.append(Case("onnx", "predict/foreign_with_preprocess_flag", ["predict", foreign, good_image, "--preprocess",
                                                                       str(preprocess)], expect=0, inputs=(preprocess,)))
    cases.append(Case("onnx", "predict/foreign_names_the_flag", ["predict", foreign, good_image], stderr_has="--preprocess"))
    cases.append(Case("onnx", "verify/foreign_with_preprocess_flag",
                      ["verify", foreign, "--reference", foreign, "--data", str(labelled), "--preprocess", str(preprocess)],
                      expect=0))
    fails = root / "onnx" / "fails_when_run.onnx"
    onnx.save(_graph_that_fails_when_run(), fails)
    cases.append(Case("onnx", "bench/fails_when_run", ["bench", str(fails), "--batch", "1", "--iterations", "5",
                                                       "--warmup", "0"], inputs=(fails,), stderr_has="cannot run"))
    cases.append(Case("onnx", "predict/fails_when_run", ["predict", str(fails), good_image, "--preprocess", str(preprocess)],
                      inputs=(fails,), stderr_has="cannot run"))
    cases.append(Case("onnx", "predict/preprocess_flag_invalid", ["predict", foreign, good_image, "--preprocess",
                                                                  '{"input_size": [3, 8, 8], "resize": 8}']))

    # The layer tools refuse the same files before measuring anything; compare names the file at fault.
    for name in ("garbage", "foreign_no_metadata", "meta_input_size_other", "meta_not_json"):
        path = models[name]
        cases.append(Case("onnx", f"sensitivity/{name}", ["sensitivity", str(path), "--data", str(labelled), "--no-cache",
                                                          "--workers", "0"], inputs=(path,)))
        cases.append(Case("onnx", f"compare/candidate_{name}", ["compare", str(mini.onnx), str(path), "--data",
                                                                str(labelled)], inputs=(path,), stderr_has=name))
    for target in ("triton", "deepstream"):  # a serving config must not promise an input the graph cannot take
        repository = out / f"{target}-input-size-other"
        cases.append(Case("onnx", f"deploy-{target}/meta_input_size_other",
                          ["deploy", target, str(models["meta_input_size_other"]), "-o", str(repository)],
                          inputs=(models["meta_input_size_other"],), outputs=(repository,)))
    plot = out / "sensitivity.txt"
    cases.append(Case("onnx", "sensitivity/plot_format", ["sensitivity", str(mini.onnx), "--data", str(labelled),
                                                          "--plot", str(plot)], outputs=(plot,), stderr_has="--plot"))

    nan_model = nan_output_model(root / "nan", mini)
    for flags in ([], ["--fp16"]):
        target = out / f"nan_output{'.fp16' if flags else '.int8'}.onnx"
        cases.append(Case("onnx", f"calibrate/nan_output{''.join(flags)}",
                          ["calibrate", str(nan_model), *flags, "--data", str(labelled), "--no-cache", "--workers", "0",
                           "--no-tensorrt-check", "-o", str(target)],
                          inputs=(nan_model,), outputs=(target, target.with_suffix(".json")), stderr_has="not finite"))

    ext_int8 = out / "external.int8.onnx"
    cases.append(Case("onnx", "calibrate/external_data_in_folder",
                      ["calibrate", str(external), "--data", str(labelled), "--no-cache", "--workers", "0",
                       "--no-tensorrt-check", "-o", str(ext_int8)], expect=0, inputs=(external, Path(str(external) + ".data"))))
    cases.append(Case("onnx", "predict/external_data_in_folder", ["predict", str(external), good_image], expect=0,
                      inputs=(external,)))

    for name, path in plans.items():
        cases.append(Case("engine", f"predict/{name}", ["predict", str(path), good_image], inputs=(path,)))
        cases.append(Case("engine", f"verify/{name}", ["verify", str(path), "--reference", str(mini.onnx), "--data", str(labelled)],
                          inputs=(path,)))
        cases.append(Case("engine", f"inspect/{name}", ["inspect", str(path)], expect=0 if name == "engine_no_sidecar" else 2,
                          inputs=(path,)))
        sidecar = Path(str(path) + ".json")
        if sidecar.is_file():
            cases.append(Case("engine", f"inspect-sidecar/{name}", ["inspect", str(sidecar)], inputs=(sidecar,)))
    cases.append(Case("manifest", "inspect/calibrated_bad_manifest", ["inspect", str(calibrated)], expect=0,
                      inputs=(calibrated, calibrated.with_suffix(".json"))))

    # Images: the hostile ones are skipped and counted; with no readable image left, exit 2.
    for name, path in pictures.items():
        if name == "good":
            continue
        cases.append(Case("image", f"predict/{name}+good", ["predict", str(mini.onnx), str(path), good_image], expect=0,
                          inputs=(path,), stderr_has="skipped"))
        cases.append(Case("image", f"predict/{name}", ["predict", str(mini.onnx), str(path)], inputs=(path,)))
    # The same files as a labelled data set (one class folder): calibrate and verify decode through
    # the batch loader, not predict's path; nothing readable is left, so both refuse.
    hostile_data = root / "hostile-data"
    (hostile_data / "0_t-shirt_top").mkdir(parents=True)
    for name, path in pictures.items():
        if name != "good":
            (hostile_data / "0_t-shirt_top" / path.name).write_bytes(path.read_bytes())
    target = out / "hostile-data.int8.onnx"
    cases.append(Case("image", "calibrate/all_hostile", ["calibrate", str(mini.onnx), "--data", str(hostile_data), "--no-cache",
                                                         "--no-tensorrt-check", "-o", str(target)],
                      outputs=(target, target.with_suffix(".json")), stderr_has="could be read"))
    cases.append(Case("image", "verify/all_hostile", ["verify", str(mini.onnx), "--reference", str(mini.onnx), "--data",
                                                      str(hostile_data)]))

    # Classifiers whose output is not float logits [N, classes]: one line before any image is read
    # (or on the first call, where the graph does not declare its output).
    foreign_outs, edited_outs = foreign_outputs(root / "outputs", mini)
    for name, path in foreign_outs.items():
        for command, extra in (("predict", [good_image]), ("verify", ["--reference", str(path), "--data", str(labelled)]),
                               ("bench", ["--iterations", "5", "--warmup", "0"])):
            flags = ["--preprocess", str(preprocess)] if command != "bench" else []
            cases.append(Case("logits", f"{command}/foreign_{name}", [command, str(path), *extra, *flags], inputs=(path,),
                              stderr_has="logits"))
    for name, path in edited_outs.items():
        target = out / f"mini_{name}.int8.onnx"
        cases.append(Case("logits", f"calibrate/mini_{name}", ["calibrate", str(path), "--data", str(labelled), "--no-cache",
                                                               "--no-tensorrt-check", "-o", str(target)],
                          inputs=(path,), outputs=(target, target.with_suffix(".json")), stderr_has="logits"))
        repository = out / f"repository-mini-{name}"
        cases.append(Case("logits", f"deploy-triton/mini_{name}", ["deploy", "triton", str(path), "-o", str(repository)],
                          inputs=(path,), outputs=(repository,), stderr_has="logits"))

    cases += json_documents(root / "json", SimpleNamespace(onnx=mini.onnx, good_image=good_image, labelled=labelled),
                            models["foreign_no_metadata"])

    # Counts and settings past what any machine or server takes: refused in one line before work.
    model = str(mini.onnx)
    for name, args in (
        ("bench/warmup_1e9", ["bench", model, "--warmup", str(10 ** 9)]),
        ("bench/iterations_1e12", ["bench", model, "--iterations", str(10 ** 12)]),
        ("bench/max_seconds_1e9", ["bench", model, "--max-seconds", "1e9"]),
        ("bench/threads_20000", ["bench", model, "--threads", "20000"]),
        ("verify/threads_20000", ["verify", model, "--reference", model, "--data", str(labelled), "--threads", "20000"]),
        ("verify/max_top1_drop_negative", ["verify", model, "--reference", model, "--data", str(labelled),
                                           "--max-top1-drop", "-5"]),
        ("verify/batch_size_1e9", ["verify", model, "--reference", model, "--data", str(labelled), "--batch-size",
                                   str(10 ** 9)]),
        ("calibrate/workers_5000", ["calibrate", model, "--data", str(labelled), "--workers", "5000", "-o",
                                    str(out / "workers.int8.onnx")]),
        ("sensitivity/workers_5000", ["sensitivity", model, "--data", str(labelled), "--workers", "5000"]),
        ("build-engine/workspace_huge", ["build-engine", model, "--workspace", "9" * 30 + "G", "-o", str(out / "w.engine")]),
        ("deploy-triton/queue_delay_1e20", ["deploy", "triton", model, "--max-queue-delay-us", str(10 ** 20), "-o",
                                            str(out / "repository-delay")]),
        ("deploy-triton/instances_1e9", ["deploy", "triton", model, "--instances", str(10 ** 9), "-o",
                                         str(out / "repository-instances")]),
        ("serve/host_empty", ["serve", model, "--host", ""]),
        ("serve/host_space", ["serve", model, "--host", " "]),
        ("serve/port_65535", ["serve", model, "--port", "65535"]),
        ("serve/queue_delay_1e20", ["serve", model, "--max-queue-delay-us", str(10 ** 20)]),
        ("serve/name_300", ["serve", model, "--name", "n" * 300]),
        # Names past what a file system takes (255 bytes): a traceback (ENAMETOOLONG) before.
        ("deploy-triton/name_300", ["deploy", "triton", model, "--name", "n" * 300, "-o", str(out / "repository-name")]),
        ("deploy-triton/output_300", ["deploy", "triton", model, "-o", str(out / ("r" * 300))]),
        ("deploy-deepstream/output_300", ["deploy", "deepstream", model, "-o", str(out / ("d" * 300))]),
        ("serve/log_file_no_folder", ["serve", model, "--log-file", str(out / "no-such-folder" / "triton.log")]),
        ("serve/log_file_fifo", ["serve", model, "--log-file", str(_fifo(out / "triton.fifo"))]),
    ):
        cases.append(Case("options", name, args, inputs=(mini.onnx,),
                          outputs=(out / "workers.int8.onnx", out / "w.engine", out / "repository-delay",
                                   out / "repository-instances", out / "repository-name")))

    # Usage errors and refusals come alone: no warning about what would have happened first.
    for name, args, word in (
        ("export/no_arch_no_checkpoint", ["export", "-o", str(out / "random.onnx")], "give --arch"),
        ("export/unknown_arch", ["export", "--arch", "ff_nope", "-o", str(out / "random.onnx")], "unknown architecture"),
        ("inspect/quantized_checkpoint", ["inspect", str(ckpts["quantized_tensor"])], "quantized"),
        ("export/sparse_checkpoint", ["export", "--checkpoint", str(ckpts["sparse_tensor"]), "-o", str(out / "s.onnx")],
         "sparse"),
        ("calibrate/fp16_with_percentile", ["calibrate", str(mini.onnx), "--fp16", "--percentile", "99", "--data",
                                            str(labelled), "-o", str(out / "p.fp16.onnx")], "--percentile"),
    ):
        cases.append(Case("messages", name, args, outputs=(out / "random.onnx", out / "s.onnx", out / "p.fp16.onnx"),
                          stderr_has=word, alone=True))

    # Outputs that would destroy an input.
    cases.append(Case("lost-data", "export/output_is_checkpoint",
                      ["export", "--checkpoint", str(mini.checkpoint), "-o", str(mini.checkpoint)], inputs=(mini.checkpoint,)))
    cases.append(Case("lost-data", "calibrate/output_is_model",
                      ["calibrate", str(mini.onnx), "--data", str(labelled), "--no-cache", "-o", str(mini.onnx)],
                      inputs=(mini.onnx,)))
    cases.append(Case("lost-data", "build-engine/output_is_model",
                      ["build-engine", str(mini.onnx), "-o", str(mini.onnx)], inputs=(mini.onnx,)))

    # Absurd counts are bounded, not allocated.
    cases.append(Case("bounds", "calibrate/num_images_huge",
                      ["calibrate", str(mini.onnx), "--data", str(labelled), "--num-images", str(10 ** 15), "--no-cache",
                       "--workers", "0", "--no-tensorrt-check", "-o", str(out / "huge.int8.onnx")],
                      expect=0, outputs=()))
    cases.append(Case("bounds", "verify/limit_huge",
                      ["verify", str(mini.onnx), "--reference", str(mini.onnx), "--data", str(labelled), "--limit", str(10 ** 15)],
                      expect=0))
    cases.append(Case("bounds", "bench/batch_huge", ["bench", str(mini.onnx), "--batch", str(10 ** 9)]))
    # nan passes click's FloatRange, and every comparison with it is false: a target nobody can miss.
    cases.append(Case("bounds", "calibrate/target_agreement_nan",
                      ["calibrate", str(mini.onnx), "--data", str(labelled), "--target-agreement", "nan", "--no-cache",
                       "--no-tensorrt-check", "-o", str(out / "nan.int8.onnx")], outputs=(out / "nan.int8.onnx",)))
    cases.append(Case("bounds", "verify/max_top1_drop_nan",
                      ["verify", str(mini.onnx), "--reference", str(mini.onnx), "--data", str(labelled), "--max-top1-drop",
                       "nan"]))
    cases.append(Case("bounds", "calibrate/seed_negative",
                      ["calibrate", str(mini.onnx), "--data", str(labelled), "--seed", "-5", "--no-cache",
                       "--no-tensorrt-check", "-o", str(out / "seed.int8.onnx")], outputs=(out / "seed.int8.onnx",)))
    cases += output_cases(root / "outputs", mini, labelled)
    cases += lost_data_cases(root / "lost-data", mini, labelled)
    cases += data_cases(root / "data", mini, labelled)
    return cases


# -- outputs that are not regular files, and data arguments that are not folders or files -----------


NO_MKNOD = "making a device node (mknod) needs root"
_KEPT_OPEN = []  # pipes behind /dev/fd/N cases: open for as long as the corpus is used


def special_file(path, kind):
    """A `kind` node at `path`, made here (never the real /dev files): "null" and "zero" are
    character devices with /dev/null's and /dev/zero's numbers, "fifo" a named pipe, "socket" a
    UNIX socket, "directory" a folder. None where this user may not make device nodes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("null", "zero"):
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3 if kind == "null" else 5))
        except PermissionError:
            return None
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":  # bound by a relative name: an AF_UNIX path is at most 107 bytes
        here = os.getcwd()
        os.chdir(path.parent)
        try:
            with socket.socket(socket.AF_UNIX) as server:
                server.bind(path.name)
        finally:
            os.chdir(here)
    else:
        raise ValueError(kind)
    return path


def pipe_path():
    """/dev/fd/N of the read end of a pipe this process holds open (nobody ever writes to it)."""
    read, write = os.pipe()
    _KEPT_OPEN.extend((read, write))
    return Path(f"/dev/fd/{read}")


def _node_case(category, name, node, args, **fields):
    """A case on a special file: skipped (with the reason) where it could not be made."""
    inputs = tuple(fields.pop("inputs", ())) + ((node,) if node is not None else ())
    return Case(category, name, [str(a) for a in args], inputs=inputs, skip="" if node is not None else NO_MKNOD,
                **fields)


def _calibrate(mini, output, *flags, data=None):
    data_flags = ["--data", str(data)] if data is not None else []
    return ["calibrate", str(mini.onnx), *flags, *data_flags, "--no-cache", "--workers", "0", "--no-tensorrt-check",
            "-o", str(output)]


def output_cases(folder, mini, labelled):
    """Every command that writes, with an output path that is a device, FIFO, socket or folder
    (or has one where OUT.json or the sidecar goes), a name too long, or a file where its folder
    should be: refused before any work, the node left as it was, nothing written."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = []

    def case(name, node, args, **fields):
        cases.append(_node_case("output", name, node, args, **fields))

    checkpoint = ["--checkpoint", mini.checkpoint]
    for kind in ("null", "fifo", "socket"):
        node = special_file(folder / f"export.{kind}.onnx", kind)
        case(f"export/-o_{kind}", node, ["export", *checkpoint, "-o", folder / f"export.{kind}.onnx"],
             inputs=(mini.checkpoint,))
    long_name = folder / ("x" * 252 + ".onnx")  # 257 bytes: longer than a file name may be
    case("export/-o_name_too_long", folder, ["export", *checkpoint, "-o", long_name], stderr_has="255")
    node = special_file(folder / "folded.fifo.onnx", "fifo")
    case("export-from-onnx/-o_fifo", node, ["export", "--from-onnx", mini.onnx, "--fold-normalization", "-o", node],
         inputs=(mini.onnx,))

    for kind in ("null", "fifo", "socket"):
        node = special_file(folder / f"calib.{kind}.onnx", kind)
        case(f"calibrate/-o_{kind}", node, _calibrate(mini, folder / f"calib.{kind}.onnx", data=labelled),
             outputs=(folder / f"calib.{kind}.json",))
    node = special_file(folder / "calib.dir.onnx", "directory")
    case("calibrate/-o_directory", node, _calibrate(mini, node, data=labelled))
    for kind in ("directory", "null"):
        node = special_file(folder / f"manifest-{kind}.int8.json", kind)
        target = folder / f"manifest-{kind}.int8.onnx"
        case(f"calibrate/manifest_is_a_{kind}", node, _calibrate(mini, target, data=labelled), outputs=(target,))
    blocker = folder / "a-file"
    blocker.write_text("a file where the output's folder should be")
    case("calibrate/-o_under_a_file", blocker, _calibrate(mini, blocker / "m.int8.onnx", data=labelled),
         stderr_has="not a folder")
    long_output = folder / ("m" * 250 + ".q")  # the manifest, OUT.q.json, is 259 bytes
    case("calibrate/manifest_name_too_long", folder, _calibrate(mini, long_output, data=labelled), stderr_has="255")
    link = folder / "link-to-device.onnx"
    node = special_file(folder / "behind-link.null", "null")
    if node is not None:
        link.symlink_to(node)
    case("calibrate/-o_symlink_to_a_device", node, _calibrate(mini, link, data=labelled), inputs=(link,))
    loop = folder / "loop.onnx"
    loop.symlink_to(loop.name)
    case("calibrate/-o_symlink_loop", loop, _calibrate(mini, loop, data=labelled), outputs=(folder / "loop.json",))
    node = special_file(folder / "fp16.null.onnx", "null")
    case("calibrate-fp16/-o_null", node, _calibrate(mini, folder / "fp16.null.onnx", "--fp16"),
         outputs=(folder / "fp16.null.json",))
    node = special_file(folder / "fp16.fifo.json", "fifo")
    case("calibrate-fp16/manifest_fifo", node, _calibrate(mini, folder / "fp16.fifo.onnx", "--fp16"),
         outputs=(folder / "fp16.fifo.onnx",))

    build = ["build-engine", mini.onnx, "--backend", "tensorrt-rtx"]
    node = special_file(folder / "device.engine", "null")
    case("build-engine/-o_null", node, [*build, "-o", folder / "device.engine"], outputs=(folder / "device.engine.json",))
    node = special_file(folder / "sidecar.engine.json", "fifo")
    case("build-engine/sidecar_fifo", node, [*build, "-o", folder / "sidecar.engine"], outputs=(folder / "sidecar.engine",))
    long_engine = folder / ("e" * 245 + ".engine")  # 252 bytes; its sidecar OUT.engine.json 257
    case("build-engine/sidecar_name_too_long", folder, [*build, "-o", long_engine], stderr_has="255")
    node = special_file(folder / "timing.null.cache", "null")
    case("build-engine/--timing-cache_null", node, [*build, "--timing-cache", folder / "timing.null.cache", "-o",
                                                     folder / "timing.engine"],
         outputs=(folder / "timing.engine", folder / "timing.engine.json"))
    # --int8 from an FP32 model: its own Q/DQ graph goes to OUT.int8.onnx, else OUT.engine.int8.onnx; both devices.
    node = special_file(folder / "derived.int8.onnx", "null")
    second = special_file(folder / "derived.engine.int8.onnx", "fifo")
    case("build-engine-int8/derived_graphs_not_files", node,
         ["build-engine", mini.onnx, "--int8", "--calib-data", labelled, "--backend", "tensorrt-rtx", "-o",
          folder / "derived.engine"], inputs=(second,), outputs=(folder / "derived.engine", folder / "derived.engine.json"))

    sensitivity = ["sensitivity", mini.onnx, "--data", labelled, "--no-cache", "--workers", "0"]
    for kind, suffix in (("null", "png"), ("fifo", "svg"), ("directory", "pdf")):
        node = special_file(folder / f"plot.{kind}.{suffix}", kind)
        case(f"sensitivity/--plot_{kind}", node, [*sensitivity, "--plot", folder / f"plot.{kind}.{suffix}"])

    node = special_file(folder / "repository.null", "null")
    case("deploy-triton/-o_null", node, ["deploy", "triton", mini.onnx, "-o", folder / "repository.null"])
    node = special_file(folder / "repository" / "mini", "fifo")
    case("deploy-triton/model_folder_is_a_fifo", node, ["deploy", "triton", mini.onnx, "-o", folder / "repository"],
         stderr_has="already exists")
    node = special_file(folder / "deepstream.null", "null")
    case("deploy-deepstream/-o_null", node, ["deploy", "deepstream", mini.onnx, "-o", folder / "deepstream.null"])
    node = special_file(folder / "deepstream" / "config_infer_mini.txt", "fifo")
    case("deploy-deepstream/config_is_a_fifo", node, ["deploy", "deepstream", mini.onnx, "-o", folder / "deepstream"],
         outputs=(folder / "deepstream" / "mini.onnx", folder / "deepstream" / "labels.txt"))
    return cases


def _list_file(path, images):
    """A list file of `path label` lines for `images` (paths relative to the list's folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{os.path.relpath(image, path.parent)} {label}" for image, label in images]
    path.write_text("\n".join(lines) + "\n")
    return path


def _labelled_pairs(labelled):
    return [(image, index) for index, folder in enumerate(sorted(p for p in Path(labelled).iterdir() if p.is_dir()))
            for image in sorted(folder.glob("*.png"))]


def lost_data_cases(folder, mini, labelled):
    """Outputs that are inputs of the same command under another name (a data list, a held-out
    list, a hard link, a symlink, a manifest named like the list) or that land among its images."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = _labelled_pairs(labelled)
    cases = []

    def case(name, args, **fields):
        cases.append(Case("lost-data", name, [str(a) for a in args], **fields))

    listed = _list_file(folder / "calib.txt", pairs)
    case("calibrate/output_is_data_list", _calibrate(mini, listed, data=listed), inputs=(listed,))
    case("calibrate-fp16/output_is_data_list", _calibrate(mini, listed, "--fp16", data=listed), inputs=(listed,))
    as_json = _list_file(folder / "calib.json", pairs)  # OUT.json of -o calib.onnx
    case("calibrate/manifest_is_data_list", _calibrate(mini, folder / "calib.onnx", data=as_json), inputs=(as_json,),
         outputs=(folder / "calib.onnx",))
    held = _list_file(folder / "held.txt", pairs)
    case("calibrate/output_is_held_out_list", _calibrate(mini, held, "--target-agreement", "90", "--held-out", held,
                                                         data=labelled), inputs=(held,))
    hard = folder / "hard-link.onnx"
    os.link(mini.onnx, hard)
    case("calibrate/output_is_a_hard_link_of_the_model", _calibrate(mini, hard, data=labelled), inputs=(mini.onnx, hard))
    soft = folder / "symlink.onnx"
    soft.symlink_to(mini.onnx)
    case("calibrate/output_is_a_symlink_to_the_model", _calibrate(mini, soft, data=labelled), inputs=(mini.onnx, soft))
    manifest_link = folder / "manifest-link.int8.json"
    os.link(mini.onnx, manifest_link)
    case("calibrate/manifest_is_a_hard_link_of_the_model", _calibrate(mini, folder / "manifest-link.int8.onnx",
                                                                      data=labelled),
         inputs=(mini.onnx,), outputs=(folder / "manifest-link.int8.onnx",))
    image = pairs[0][0]
    case("calibrate/output_is_a_data_image", _calibrate(mini, image, data=labelled), inputs=(image,))

    checkpoint_link = folder / "checkpoint-link.pth"
    os.link(mini.checkpoint, checkpoint_link)
    case("export/output_is_a_hard_link_of_the_checkpoint", ["export", "--checkpoint", mini.checkpoint, "-o",
                                                            checkpoint_link], inputs=(mini.checkpoint,))
    checkpoint_symlink = folder / "checkpoint-symlink.onnx"
    checkpoint_symlink.symlink_to(mini.checkpoint)
    case("export/output_is_a_symlink_to_the_checkpoint", ["export", "--checkpoint", mini.checkpoint, "-o",
                                                          checkpoint_symlink], inputs=(mini.checkpoint, checkpoint_symlink))
    model_link = folder / "model-link.onnx"
    os.link(mini.onnx, model_link)
    case("export-from-onnx/output_is_the_model", ["export", "--from-onnx", mini.onnx, "--fold-normalization", "-o",
                                                  model_link], inputs=(mini.onnx,))

    engine_link = folder / "model-link.engine"
    os.link(mini.onnx, engine_link)
    build = ["build-engine", mini.onnx, "--backend", "tensorrt-rtx"]
    case("build-engine/output_is_a_hard_link_of_the_model", [*build, "-o", engine_link], inputs=(mini.onnx,))
    sidecar_link = folder / "sidecar-link.engine.json"
    os.link(mini.onnx, sidecar_link)
    case("build-engine/sidecar_is_the_model", [*build, "-o", folder / "sidecar-link.engine"], inputs=(mini.onnx,),
         outputs=(folder / "sidecar-link.engine",))
    case("build-engine/timing_cache_is_the_model", [*build, "--timing-cache", mini.onnx, "-o", folder / "tc.engine"],
         inputs=(mini.onnx,), outputs=(folder / "tc.engine",))

    sensitivity = ["sensitivity", mini.onnx, "--data", labelled, "--no-cache", "--workers", "0"]
    inside = Path(labelled) / "sensitivity.png"
    case("sensitivity/plot_inside_the_data_folder", [*sensitivity, "--plot", inside], outputs=(inside,),
         stderr_has="reads images from")
    case("sensitivity/plot_is_a_data_image", [*sensitivity, "--plot", image], inputs=(image,))

    own = folder / "own-folder"
    own.mkdir()
    model = own / "mini.onnx"
    model.write_bytes(Path(mini.onnx).read_bytes())
    case("deploy-deepstream/into_the_models_own_folder", ["deploy", "deepstream", model, "-o", own], expect=0,
         inputs=(model,))
    return cases


_DEEP_TREES = []  # made outside pytest's folders, removed by remove_deep_folders()


def deep_folder(name, levels=1400, image=None):
    """`levels` nested folders `d/d/.../d` in a new temporary folder (made through folder
    descriptors: os.makedirs recurses once per level), with `image`'s bytes at the bottom as x.png
    when given. Outside pytest's base folder: shutil.rmtree recurses once per level too, so
    pytest's own clean-up of an old base folder would fail on it."""
    top = Path(tempfile.mkdtemp(prefix=f"ffx-hostile-{name}-"))
    _DEEP_TREES.append(top)
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        if image is not None:
            out = os.open("x.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(out, Path(image).read_bytes())
            os.close(out)
    finally:
        os.close(fd)
    return top


def remove_deep_folders():
    """Remove the trees `deep_folder` made, innermost first."""
    while _DEEP_TREES:
        chain = [_DEEP_TREES.pop()]
        while (chain[-1] / "d").is_dir():
            chain.append(chain[-1] / "d")
        for folder in reversed(chain):
            for entry in folder.iterdir():
                if not entry.is_dir():
                    entry.unlink()
            folder.rmdir()


def _without_class_names(folder, mini):
    from ffx.metadata import onnx_metadata, set_onnx_metadata

    model = onnx.load(str(mini.onnx))
    info = onnx_metadata(model)
    info.pop("class_names")
    set_onnx_metadata(model, info)
    path = folder / "no-class-names.onnx"
    onnx.save(model, path)
    return path


def data_cases(folder, mini, labelled):
    """Data arguments that are devices, FIFOs, sockets, pipes or symlink loops (one line, before any
    work), list entries that are (skipped and counted), trees 1400 folders deep, class folders named
    with non-ASCII digits or numbers past 64 bits, 2,000 unreadable files (one warning line) and a
    LOC_val_solution.csv above the folder (not read)."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = _labelled_pairs(labelled)
    good = pairs[0][0]
    cases = []

    def case(name, node, args, **fields):
        cases.append(_node_case("data", name, node, args, **fields))

    zero, fifo = special_file(folder / "zero", "zero"), special_file(folder / "fifo", "fifo")
    sock = special_file(folder / "socket", "socket")
    pipe = pipe_path()
    out = folder / "out"
    for name, node in (("zero", zero), ("fifo", fifo), ("socket", sock), ("dev_fd_pipe", pipe)):
        case(f"calibrate/--data_{name}", node, _calibrate(mini, out / f"{name}.int8.onnx", data=node),
             outputs=(out / f"{name}.int8.onnx",))
    case("calibrate-fp16/--data_fifo", fifo, _calibrate(mini, out / "f.fp16.onnx", "--fp16", data=fifo))
    case("calibrate/--held-out_fifo", fifo, _calibrate(mini, out / "h.int8.onnx", "--target-agreement", "90",
                                                       "--held-out", fifo, data=labelled))
    case("sensitivity/--data_zero", zero, ["sensitivity", mini.onnx, "--data", zero, "--no-cache"])
    case("sensitivity/--held-out_fifo", fifo, ["sensitivity", mini.onnx, "--data", labelled, "--held-out", fifo,
                                               "--no-cache"])
    case("verify/--data_fifo", fifo, ["verify", mini.onnx, "--reference", mini.onnx, "--data", fifo])
    case("verify/--data_dev_fd_pipe", pipe, ["verify", mini.onnx, "--reference", mini.onnx, "--data", pipe])
    case("compare/--data_zero", zero, ["compare", mini.onnx, mini.onnx, "--data", zero])
    case("build-engine/--calib-data_fifo", fifo, ["build-engine", mini.onnx, "--int8", "--calib-data", fifo,
                                                  "--backend", "tensorrt-rtx", "-o", out / "c.engine"])
    case("deploy-deepstream/--data_fifo", fifo, ["deploy", "deepstream", mini.onnx, "-o", out / "ds",
                                                 "--approximate-normalization", "--data", fifo],
         outputs=(out / "ds",))
    case("export/--check-images_fifo", fifo, ["export", "--checkpoint", mini.checkpoint, "--check-images", fifo, "-o",
                                              out / "e.onnx"], outputs=(out / "e.onnx",))
    for name, node in (("fifo", fifo), ("zero", zero), ("dev_fd_pipe", pipe)):
        case(f"predict/image_{name}", node, ["predict", mini.onnx, node])
    loop = folder / "self-loop"
    loop.symlink_to(loop.name)
    case("calibrate/--data_symlink_loop", loop, _calibrate(mini, out / "l.int8.onnx", data=loop))

    entries = folder / "entries"
    listed = _list_file(entries / "list.txt", [(fifo, 0), (zero, 1) if zero else (fifo, 1), (good, 2)])
    case("calibrate/list_entries_fifo_and_device", listed, _calibrate(mini, out / "entries.int8.onnx", data=listed),
         expect=0, stderr_has="not a regular file", inputs=(fifo,))
    only = _list_file(entries / "only.txt", [(fifo, 0)])
    case("calibrate/list_entries_only_a_fifo", only, _calibrate(mini, out / "only.int8.onnx", data=only),
         inputs=(fifo,), outputs=(out / "only.int8.onnx",))
    huge = entries / "huge-label.txt"
    huge.write_text(f"{os.path.relpath(good, entries)} 123456789012345678901234567890\n")
    case("verify/list_label_past_64_bits", huge, ["verify", mini.onnx, "--reference", mini.onnx, "--data", huge],
         stderr_has="not a class index")

    unnamed = _without_class_names(folder, mini)
    for name, folders in (("superscript_digit", ["²", "0"]), ("number_past_64_bits", ["0", "9" * 30])):
        data = folder / f"classes-{name}"
        for i, class_folder in enumerate(folders):
            (data / class_folder).mkdir(parents=True)
            (data / class_folder / "x.png").write_bytes(Path(pairs[i][0]).read_bytes())
        # A model without class names reads the folder names as indices; one with names matches them.
        case(f"verify/class_folders_{name}", data, ["verify", unnamed, "--reference", unnamed, "--data", data],
             expect=0, stderr_has="sorted folder order")
        case(f"verify-named/class_folders_{name}", data, ["verify", mini.onnx, "--reference", mini.onnx, "--data", data],
             expect=0, stderr_has="sorted folder order")

    deep = deep_folder("deep-image", image=good)
    case("verify/folder_1400_levels_deep", deep, ["verify", mini.onnx, "--reference", mini.onnx, "--data", deep], expect=0)
    case("predict/folder_1400_levels_deep", deep, ["predict", mini.onnx, deep], expect=0)
    empty_deep = deep_folder("deep-empty")
    case("verify/folder_1400_levels_deep_no_image", empty_deep, ["verify", mini.onnx, "--reference", mini.onnx,
                                                                 "--data", empty_deep], stderr_has="no images")
    loops = folder / "loops"
    (loops / "a").mkdir(parents=True)
    (loops / "a" / "x.png").write_bytes(Path(good).read_bytes())
    (loops / "a" / "up").symlink_to("..")
    (loops / "self").symlink_to("self")
    case("verify/folder_with_symlink_loops", loops, ["verify", mini.onnx, "--reference", mini.onnx, "--data", loops],
         expect=0)

    unreadable = folder / "unreadable"
    unreadable.mkdir()
    for i in range(2000):
        (unreadable / f"{i:04d}.png").write_bytes(b"")
    (unreadable / "good.png").write_bytes(Path(good).read_bytes())
    case("predict/2000_unreadable_files_one_line", unreadable, ["predict", mini.onnx, unreadable], expect=0,
         stderr_has="skipped 2000", max_stderr_lines=1)

    kaggle = folder / "kaggle"
    flat = kaggle / "images" / "val"
    flat.mkdir(parents=True)
    for i in range(3):
        (flat / f"ILSVRC2012_val_0000000{i + 1}.png").write_bytes(Path(pairs[i][0]).read_bytes())
    (kaggle / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n")
    case("verify/loc_csv_two_folders_up_is_not_read", flat, ["verify", mini.onnx, "--reference", mini.onnx, "--data", flat],
         stderr_has="labelled")
    return cases
