"""ffx calibrate --fp8: E4M3 Q/DQ graphs from real exports and real images, checked with real
onnxruntime and the real TensorRT-RTX builder; the opset lift from 17 to 19; the one calibration
entry that dispatches on the precision; build-engine's FP8 targets and the precision guide."""

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime
import pytest
from PIL import Image

from ffx.calib import CalibrationOptions, calibrate, calibrate_fp8
from ffx.calib.fp8 import E4M3_MAX, FP8_OPSET, exact_threshold, to_e4m3, to_fp8_opset
from ffx.datasets import load_batches, open_dataset
from ffx.reporting import silenced
from ffx.cli import cli
from ffx.errors import FfxError, InvalidOption
from ffx.gpu_precisions import GPU_PRECISIONS, gpu_precisions, supports_fp8
from ffx.metadata import Preprocess, onnx_metadata
from ffx.runtime.engines.engine_file import slow_int8_notes
from ffx.runtime.engines.onnx_model import graph_precision, int8_layer_count
from helpers import needs_rtx
from test_calib import SMALL_CONFIG, _export, _photos, _small_checkpoint

FLOAT8 = onnx.TensorProto.FLOAT8E4M3FN


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("calib-fp8")


@pytest.fixture(scope="module")
def small_model(workdir):
    return _export(_small_checkpoint(workdir / "small.pth"), workdir / "small.onnx")


@pytest.fixture(scope="module")
def photos(workdir):
    return _photos(workdir / "photos")


def _fp8(model, data, output, tensorrt_check=False, **options):
    options.setdefault("workers", 0)
    options.setdefault("num_images", 12)
    return calibrate_fp8(model, data, output, CalibrationOptions(precision="fp8", **options),
                         tensorrt_check=tensorrt_check)


def _initializers(model):
    return {init.name: init for init in model.graph.initializer}


def test_every_layer_input_is_e4m3_qdq_and_nothing_else_is(small_model, photos, workdir):
    report = _fp8(small_model, photos, workdir / "placement.onnx", keep_fp=["none"], cache_dir=workdir / "cache")
    model = onnx.load(report.output)
    assert graph_precision(model) == "fp8" and onnx_metadata(model)["precision"] == "fp8" == report.precision
    assert next(e.version for e in model.opset_import if e.domain in ("", "ai.onnx")) == FP8_OPSET
    initializers = _initializers(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    layers = [node for node in model.graph.node if node.op_type in ("Conv", "MatMul", "Gemm")]
    assert len(layers) == len(report.quantized_layers) == 2 + 4 * SMALL_CONFIG["depth"]
    for node in layers:  # both inputs come from a DequantizeLinear of E4M3, the activation through a QuantizeLinear
        activation, weight = producers[node.input[0]], producers[node.input[1]]
        assert activation.op_type == weight.op_type == "DequantizeLinear"
        assert producers[activation.input[0]].op_type == "QuantizeLinear"
        assert initializers[weight.input[0]].data_type == FLOAT8
        assert onnx.numpy_helper.to_array(initializers[weight.input[1]]).size > 1  # per output channel
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = initializers[node.input[2]]
            assert zero_point.data_type == FLOAT8 and not any(zero_point.raw_data)  # E4M3 zeros, never INT8
    assert not any(init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.INT32) for init in model.graph.initializer)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QuantizeLinear") == len(layers) and "Pow" not in ops

    manifest = json.loads(Path(report.manifest).read_text())
    assert manifest["precision"] == "fp8" and manifest["params"]["method"] == "max"
    assert manifest["params"]["opset"] == {"source": 17, "output": 19} and manifest["params"]["keep_fp"] == []
    assert "keep_fp_default" not in manifest["params"]
    assert "scale_search" not in manifest["params"]
    for layer in manifest["layers"]:
        assert layer["precision"] == "fp8"
        assert layer["scale"] == pytest.approx(layer["threshold"] / E4M3_MAX, rel=1e-6)
        assert layer["threshold"] == layer["absmax"]  # max

    session = onnxruntime.InferenceSession(report.output, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": np.zeros((2, 3, 32, 32), np.float32)})[0]
    assert logits.shape == (2, 3) and np.all(np.isfinite(logits))


def test_by_default_the_first_and_last_layers_stay_float(small_model, photos, workdir, cli_runner):
    report = _fp8(small_model, photos, workdir / "default.onnx", cache_dir=workdir / "cache")
    assert report.kept_fp_layers == ["patch_embed", "head"] and len(report.quantized_layers) == 4 * SMALL_CONFIG["depth"]
    params = json.loads(Path(report.manifest).read_text())["params"]
    assert params["keep_fp"] == ["patch_embed", "head"] and params["keep_fp_default"] is True
    result = cli_runner.invoke(cli, ["calibrate", str(small_model), "--fp8", "--data", str(photos), "-o",
                                     str(workdir / "cli-default.onnx"), "--num-images", "12", "--workers", "0",
                                     "--no-tensorrt-check", "--cache-dir", str(workdir / "cache")])
    assert result.exit_code == 0 and "2 kept in float (patch_embed, head)" in result.stdout, result.output
    assert Path(workdir / "cli-default.onnx").read_bytes() != b""
    # INT8 keeps nothing in float unless asked, as before
    assert CalibrationOptions().keep_fp == () and CalibrationOptions(precision="fp8").keep_fp is None


def test_the_scale_search_moves_scales_up_by_less_than_an_octave(small_model, photos, workdir):
    report = _fp8(small_model, photos, workdir / "searched.onnx", keep_fp=["none"], scale_search=True,
                  cache_dir=workdir / "cache")
    manifest = json.loads(Path(report.manifest).read_text())
    assert manifest["params"]["scale_search"]["images"] == 32
    thresholds = [(layer["threshold"], layer["absmax"]) for layer in manifest["layers"]]
    assert all(absmax <= threshold < 2 * absmax for threshold, absmax in thresholds)  # never clips
    assert any(threshold > absmax for threshold, absmax in thresholds)  # and it does move some
    with pytest.raises(InvalidOption, match="applies to FP8"):
        CalibrationOptions(scale_search=True)


def test_weights_are_e4m3_with_a_per_channel_amax_scale(small_model, photos, workdir):
    report = _fp8(small_model, photos, workdir / "weights.onnx", keep_fp=["none"], cache_dir=workdir / "cache")
    model, source = onnx.load(report.output), onnx.load(small_model)
    initializers, float_weights = _initializers(model), _initializers(source)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers:
            name = node.input[0].removesuffix("_quantized")
            original = onnx.numpy_helper.to_array(float_weights[name]).astype(np.float32)
            stored = np.frombuffer(initializers[node.input[0]].raw_data, np.uint8).view(ml_dtypes.float8_e4m3fn)
            values = stored.astype(np.float32).reshape(original.shape)
            scale = onnx.numpy_helper.to_array(initializers[node.input[1]])
            axis = next(a.i for a in node.attribute if a.name == "axis")
            shape = [1] * original.ndim
            shape[axis] = -1
            assert np.abs(values).max(axis=tuple(i for i in range(values.ndim) if i != axis)) == pytest.approx(E4M3_MAX)
            np.testing.assert_array_equal(values, to_e4m3(original / scale.reshape(shape)))
            # E4M3 keeps 3 mantissa bits: every weight within half a step (1/16 relative) of the original
            error = np.abs(values * scale.reshape(shape) - original)
            assert np.all(error <= np.abs(original) / 16 + scale.reshape(shape) * 2.0 ** -10)


def test_reruns_are_byte_identical_and_share_the_int8_statistics(small_model, photos, workdir):
    cache = workdir / "shared-cache"
    int8 = calibrate(small_model, photos, workdir / "s.int8.onnx",
                     CalibrationOptions(num_images=12, workers=0, cache_dir=cache), tensorrt_check=False)
    first = _fp8(small_model, photos, workdir / "r1" / "m.onnx", cache_dir=cache)
    second = _fp8(small_model, photos, workdir / "r2" / "m.onnx", cache_dir=cache)
    uncached = _fp8(small_model, photos, workdir / "r3" / "m.onnx", use_cache=False)
    assert (int8.cache, first.cache, second.cache, uncached.cache) == ("miss", "hit", "hit", "off")
    assert Path(first.output).read_bytes() == Path(second.output).read_bytes() == Path(uncached.output).read_bytes()
    assert Path(first.manifest).read_bytes() == Path(second.manifest).read_bytes() == Path(uncached.manifest).read_bytes()


def test_range_methods_and_keep_fp(small_model, photos, workdir):
    cache = workdir / "cache"
    kept = _fp8(small_model, photos, workdir / "keep.onnx", keep_fp=["head,patch_embed"], cache_dir=cache)
    assert kept.kept_fp_layers == ["patch_embed", "head"]
    model = onnx.load(kept.output)
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert all(name not in producers or producers[name].op_type != "DequantizeLinear" for name in node.input)
    for method in ("percentile", "mse"):
        report = _fp8(small_model, photos, workdir / f"{method}.onnx", method=method, keep_fp=["none"], cache_dir=cache)
        manifest = json.loads(Path(report.manifest).read_text())
        assert manifest["params"]["method"] == method and report.cache == "hit"
        assert all(layer["threshold"] < 2 * layer["absmax"] for layer in manifest["layers"])
    with pytest.raises(InvalidOption, match="max, percentile, mse, not entropy"):
        CalibrationOptions(precision="fp8", method="entropy")
    with pytest.raises(InvalidOption, match="applies to INT8"):
        CalibrationOptions(precision="fp8", gelu_range="output")
    with pytest.raises(InvalidOption, match="applies to INT8 and FP8"):
        CalibrationOptions(precision="fp16", bias_correction="channel")
    with pytest.raises(InvalidOption, match="options for int8"):
        calibrate_fp8(small_model, photos, workdir / "wrong.onnx", CalibrationOptions())


def test_one_entry_dispatches_on_the_precision(small_model, photos, workdir):
    settings = dict(num_images=12, workers=0, cache_dir=workdir / "cache")
    reports = {precision: calibrate(small_model, photos, workdir / f"entry.{precision}.onnx",
                                    CalibrationOptions(precision=precision, **settings), tensorrt_check=False)
               for precision in ("int8", "fp8", "fp16")}
    for precision, report in reports.items():
        assert report.precision == precision == graph_precision(onnx.load(report.output))
    assert CalibrationOptions().method == "entropy" and CalibrationOptions(precision="fp8").method == "max"


def test_the_opset_is_lifted_to_19_only_when_nothing_else_changes(small_model, photos, workdir):
    model = onnx.load(small_model)
    lifted = to_fp8_opset(model)
    assert [(e.domain, e.version) for e in lifted.opset_import] == [("", FP8_OPSET)]
    assert len(lifted.graph.node) == len(model.graph.node)
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)

    def run(m):
        return onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"images": images})[0]

    np.testing.assert_array_equal(run(lifted), run(model))
    # An operator whose meaning moved between 17 and 19 (ReduceMean's axes became an input in 18): refused.
    rewritten = onnx.load(small_model)
    rewritten.graph.node.append(onnx.helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1], name="extra_mean"))
    with pytest.raises(FfxError, match="export it with `ffx export --opset 19`"):
        to_fp8_opset(rewritten, "extra.onnx")
    # A model exported at opset 19 is used as it is.
    at19 = _export(workdir / "small.pth", workdir / "small19.onnx", "--opset", "19")
    report = _fp8(at19, photos, workdir / "from19.onnx", cache_dir=workdir / "cache")
    assert json.loads(Path(report.manifest).read_text())["params"]["opset"] == {"source": 19, "output": 19}


def test_cli_fp8_and_its_mistakes(small_model, photos, workdir, cli_runner):
    out = workdir / "cli.fp8.onnx"
    result = cli_runner.invoke(cli, ["calibrate", str(small_model), "--fp8", "--data", str(photos), "-o", str(out),
                                     "--num-images", "12", "--workers", "0", "--no-tensorrt-check"])
    assert result.exit_code == 0, result.output
    assert "FP8 (E4M3) Q/DQ, max ranges from 12 images" in result.stdout
    never = workdir / "never.onnx"
    for args, message in [
        (["--fp8", "--fp16", "--data", str(photos)], "one of --fp16 and --fp8"),
        (["--fp8"], "FP8 calibration needs --data"),
        (["--fp8", "--data", str(photos), "--method", "entropy"], "--method: FP8 calibration takes"),
        (["--fp8", "--data", str(photos), "--gelu-range", "output"], "--gelu-range: applies to INT8"),
        (["--data", str(photos), "--int8-layers", "blocks.0"], "--int8-layers applies to --fp8"),
        (["--fp8", "--data", str(photos), "--int8-layers", "auto", "--int8-layers", "head"], "--int8-layers auto chooses every layer"),
        (["--fp8", "--data", str(photos), "--held-out-images", "30"], "--held-out-images applies to --target-agreement/--max-top1-drop or --fp8 --int8-layers auto"),
        (["--fp8", "--data", str(photos), "--int8-layers", "auto", "--point-estimate"], "--point-estimate applies to --target-agreement/--max-top1-drop"),
        (["--fp8", "--data", str(photos), "--int8-layers", "blocks.9"], "--int8-layers blocks.9: no such layer"),
        (["--fp8", "--data", str(photos), "--int8-layers", "head"], "--int8-layers head: kept in float by --keep-fp"),
    ]:
        result = cli_runner.invoke(cli, ["calibrate", str(small_model), *args, "-o", str(never)])
        assert result.exit_code == 2 and message in result.stderr, (args, result.output)
        assert "Traceback" not in result.output and result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert not never.exists()


def _int8_layer_qdq(model, layer_node):
    """(activation scale, activation zero point, weight values, weight scale, weight zero point) of a layer's Q/DQ."""
    initializers = _initializers(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    node = next(node for node in model.graph.node if node.name == layer_node)
    activation, weight = producers[node.input[0]], producers[node.input[1]]
    return [initializers[name] for name in (*activation.input[1:], *weight.input)]


def test_int8_layers_in_an_fp8_graph_are_the_int8_graphs_own(small_model, photos, workdir, cli_runner):
    """--int8-layers writes those layers exactly as `ffx calibrate` (INT8, entropy) writes them, the
    others in E4M3; the graph stays an FP8 graph (it needs FP8 tensor cores) and says which is which."""
    int8_names = ["blocks.0.mlp1.fc1", "blocks.1.mlp2.fc1", "blocks.1.mlp2.fc2"]
    report = _fp8(small_model, photos, workdir / "mixed.onnx", int8_layers=["blocks.0.mlp1.fc1", "blocks.1.mlp2"],
                  cache_dir=workdir / "cache")
    reference = calibrate(small_model, photos, workdir / "reference.int8.onnx",
                          CalibrationOptions(workers=0, num_images=12, cache_dir=workdir / "cache"), tensorrt_check=False)
    assert report.int8_layers == int8_names and report.kept_fp_layers == ["patch_embed", "head"]
    model, int8 = onnx.load(report.output), onnx.load(reference.output)
    assert graph_precision(model) == "fp8"
    manifest = json.loads(Path(report.manifest).read_text())
    assert manifest["params"]["int8_layers"]["layers"] == int8_names and manifest["params"]["int8_layers"]["method"] == "entropy"
    int8_manifest = {layer["name"]: layer for layer in json.loads(Path(reference.manifest).read_text())["layers"]}
    for layer in manifest["layers"]:
        expected = "int8" if layer["name"] in int8_names else "fp32" if layer["name"] in ("patch_embed", "head") else "fp8"
        assert layer["precision"] == expected, layer
        if expected == "int8":  # INT8's entropy threshold, INT8's scale
            assert layer["threshold"] == pytest.approx(int8_manifest[layer["name"]]["threshold"], rel=1e-6)
            assert layer["scale"] == pytest.approx(int8_manifest[layer["name"]]["scale"], rel=1e-6)
        ours = _int8_layer_qdq(model, layer["node"]) if expected != "fp32" else None
        if expected == "int8":  # the same int8 weights and scales as onnxruntime's quantizer writes
            theirs = _int8_layer_qdq(int8, layer["node"])
            for mine, other in zip(ours, theirs):
                assert mine.data_type == other.data_type
                np.testing.assert_allclose(onnx.numpy_helper.to_array(mine).astype(np.float64),
                                           onnx.numpy_helper.to_array(other).astype(np.float64), rtol=1e-6)
            assert ours[1].data_type == ours[4].data_type == onnx.TensorProto.INT8
        elif expected == "fp8":
            assert ours[1].data_type == ours[2].data_type == ours[4].data_type == FLOAT8
    session = onnxruntime.InferenceSession(report.output, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": np.zeros((2, 3, 32, 32), np.float32)})[0]
    assert logits.shape == (2, 3) and np.all(np.isfinite(logits))
    # The INT8 layers' rounding is INT8's: only they differ from the all-FP8 graph
    plain = _fp8(small_model, photos, workdir / "plain.onnx", cache_dir=workdir / "cache")
    fp8_manifest = {layer["name"]: layer for layer in json.loads(Path(plain.manifest).read_text())["layers"]}
    for layer in manifest["layers"]:
        if layer["precision"] == "fp8":
            assert layer["threshold"] == fp8_manifest[layer["name"]]["threshold"]
    assert "int8_layers" not in json.loads(Path(plain.manifest).read_text())["params"]

    # inspect says how many layers are INT8; building for Blackwell Ultra (INT8 at 1/30 of FP8) warns, not for Hopper
    assert int8_layer_count(model) == 3 and int8_layer_count(onnx.load(plain.output)) == 0
    inspected = cli_runner.invoke(cli, ["inspect", report.output])
    assert inspected.exit_code == 0 and "fp8 (3 layers INT8)" in inspected.stdout.splitlines()[0], inspected.output
    slow = slow_int8_notes(model, ["9.0", "10.3"])
    assert len(slow) == 1 and "compute capability 10.3" in slow[0] and "--int8-layers none" in slow[0]
    assert slow_int8_notes(onnx.load(plain.output), ["10.3"]) == [] and slow_int8_notes(model, ["8.9", "9.0"]) == []


@needs_rtx
def test_tensorrt_rtx_builds_an_fp8_graph_with_int8_layers(small_model, photos, workdir):
    report = _fp8(small_model, photos, workdir / "rtx.mixed.onnx", int8_layers=["blocks.0"], tensorrt_check=True,
                  cache_dir=workdir / "cache")
    assert report.tensorrt["status"] == "built" and report.int8_layers == [f"blocks.0.mlp{m}.fc{f}" for m in (1, 2)
                                                                            for f in (1, 2)]


@needs_rtx
def test_tensorrt_rtx_builds_the_fp8_graph_and_fp8_engines_target_only_fp8_gpus(small_model, photos, workdir,
                                                                                 cli_runner):
    report = _fp8(small_model, photos, workdir / "rtx.fp8.onnx", tensorrt_check=True, cache_dir=workdir / "cache")
    assert report.tensorrt["status"] == "built" and "TensorRT-RTX" in report.tensorrt["backend"]

    engine = workdir / "rtx.fp8.engine"
    built = cli_runner.invoke(cli, ["build-engine", report.output, "--fp8", "-o", str(engine), "--backend",
                                    "tensorrt-rtx", "--max-batch", "4", "--json"])
    assert built.exit_code == 0, built.output
    sidecar = json.loads(Path(f"{engine}.json").read_text())
    assert sidecar["precision"] == "fp8" and sidecar["target_compute_capabilities"] == ["8.9", "12.0", "12.1"]
    assert all(supports_fp8(target) for target in sidecar["target_compute_capabilities"])

    for target in ("8.6", "7.5"):  # Ampere RTX, Turing: no FP8 tensor cores
        refused = cli_runner.invoke(cli, ["build-engine", report.output, "--fp8", "--compute-capability", target,
                                          "-o", str(workdir / "no.engine"), "--backend", "tensorrt-rtx"])
        assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.output
        assert f"compute capability {target}" in refused.stderr and "no FP8 tensor cores" in refused.stderr
        assert "--int8" in refused.stderr and not (workdir / "no.engine").exists()
    # An FP8 graph is refused for an old target even without --fp8: the graph decides.
    refused = cli_runner.invoke(cli, ["build-engine", report.output, "--compute-capability", "8.6",
                                      "-o", str(workdir / "no.engine"), "--backend", "tensorrt-rtx"])
    assert refused.exit_code == 2 and "no FP8 tensor cores" in refused.stderr

    # An FP32 model with --fp8 is calibrated first, as --int8 does.
    from_fp32 = workdir / "from32.engine"
    built = cli_runner.invoke(cli, ["build-engine", str(small_model), "--fp8", "--calib-data", str(photos),
                                    "--calib-images", "12", "-o", str(from_fp32), "--backend", "tensorrt-rtx",
                                    "--max-batch", "4", "--json"])
    assert built.exit_code == 0, built.output
    result = json.loads(built.stdout)
    assert result["precision"] == "fp8" and result["calibrated_onnx"].endswith("from32.fp8.onnx")
    assert graph_precision(onnx.load(result["calibrated_onnx"])) == "fp8"
    assert result["targets"] == ["8.9", "12.0", "12.1"] and len(result["precision_guide"]) == 3


def test_the_precision_guide_table(small_model, photos, workdir, cli_runner):
    assert {row.capability for row in GPU_PRECISIONS.values() if row.fp8} >= {"8.9", "9.0", "10.0", "11.0", "12.0"}
    assert not any(GPU_PRECISIONS[cc].fp8 for cc in ("7.5", "8.0", "8.6", "8.7"))
    assert gpu_precisions("SM87").recommended == "int8" and gpu_precisions("9.0").recommended == "fp8"
    assert "NVFP4" in gpu_precisions("10.0").blackwell_formats
    assert all(row.fp8 == supports_fp8(cc) for cc, row in GPU_PRECISIONS.items())
    model = _fp8(small_model, photos, workdir / "guide.fp8.onnx", cache_dir=workdir / "cache").output
    result = cli_runner.invoke(cli, ["inspect", model, "--gpu", "8.7", "--gpu", "SM90"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("precisions on")]
    assert "8.7" in lines[0] and "Jetson AGX Orin" in lines[0] and "recommends INT8" in lines[0]
    assert "does NOT run there" in lines[0] and "recommends FP8" in lines[1] and "runs there" in lines[1]
    as_json = json.loads(cli_runner.invoke(cli, ["inspect", model, "--gpu", "8.9", "--json"]).stdout)
    assert as_json["precision"] == "fp8" and as_json["precision_guide"][0]["model_precision_runs_here"] is True
    bad = cli_runner.invoke(cli, ["inspect", model, "--gpu", "fast"])
    assert bad.exit_code == 2 and "not a compute capability" in bad.stderr


def test_full_tensorrt_builds_fp8_only_on_a_gpu_with_fp8():
    """The decision write_engine takes before calibrating, for the GPU full TensorRT would build on
    (none here: the GpuInfo values are what cuda-python reports on those GPUs)."""
    from ffx.runtime.backends.cuda import GpuInfo
    from ffx.runtime.engines.engine_file import _fp8_targets
    from ffx.tensorrt import Backend, BuildOptions

    full = Backend("tensorrt", module=None, version="10.3.0")
    orin = GpuInfo("Orin", "8.7", 64 << 30, "cuda-python")
    with pytest.raises(FfxError, match=r"Orin \(compute capability 8.7\) has no FP8 tensor cores.*--int8"):
        _fp8_targets(full, BuildOptions(), orin, [])
    h200 = GpuInfo("NVIDIA H200", "9.0", 141 << 30, "cuda-python")
    assert _fp8_targets(full, BuildOptions(), h200, []) == BuildOptions()
    notes = []
    rtx = Backend("tensorrt-rtx", module=None, version="1.7.1")
    assert _fp8_targets(rtx, BuildOptions(), None, notes).compute_capabilities == ("8.9", "12.0", "12.1") and notes
    with pytest.raises(InvalidOption, match="compute capability 7.5 .*no FP8"):
        _fp8_targets(rtx, BuildOptions(compute_capabilities=("8.9", "7.5")), None, [])


def _dark_photos(folder, per_class=4, seed=1):
    """Photos on a black background (most pixels exactly 0), as Fashion-MNIST's are."""
    rng = np.random.default_rng(seed)
    for index in range(10):
        for i in range(per_class):
            image = np.zeros((30, 40, 3), np.uint8)
            image[8:22, 10:30] = rng.integers(20, 256, (14, 20, 3))
            (folder / f"class{index}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"class{index}" / f"dark{i}.png")
    return folder


def test_a_plateau_value_is_exactly_on_the_e4m3_grid(small_model, workdir):
    dark = _dark_photos(workdir / "dark")
    report = _fp8(small_model, dark, workdir / "plateau.onnx", keep_fp=["none"], cache_dir=workdir / "cache")
    manifest = json.loads(Path(report.manifest).read_text())
    assert "plateaus" in manifest["params"]
    first = manifest["layers"][0]  # patch_embed, which reads the image
    assert first["absmax"] <= first["threshold"] < first["absmax"] * 1.125  # raised by < 1/8: clips nothing
    preprocess = Preprocess.from_dict(manifest["preprocess"])
    blacks = (0 - np.asarray(preprocess.mean, np.float32)) / np.asarray(preprocess.std, np.float32)  # per channel
    scale = np.float32(first["threshold"] / E4M3_MAX)
    exact = [value for value in blacks if to_e4m3(value / scale) * scale == pytest.approx(value, rel=1e-6)]
    assert exact, (blacks, first)  # the commonest value, the black of one channel, goes through Q/DQ unchanged
    # photos without a plateau (noise everywhere) keep max's threshold
    plain = _fp8(small_model, _photos(workdir / "noisy"), workdir / "noisy.onnx", keep_fp=["none"],
                 cache_dir=workdir / "cache")
    layers = json.loads(Path(plain.manifest).read_text())["layers"]
    assert all(layer["threshold"] == layer["absmax"] for layer in layers)


def test_exact_threshold_raises_by_less_than_an_eighth_and_never_clips():
    for threshold, value in ((2.0227, -0.8102), (1.0, 0.3), (5.0, 4.99), (448.0, 1.0)):
        raised = exact_threshold(threshold, value)
        scale = np.float32(raised / E4M3_MAX)
        assert threshold <= raised < threshold * 1.125
        assert to_e4m3(np.float32(value) / scale) * scale == pytest.approx(value, rel=1e-6)
    assert exact_threshold(1.0, 2.0) == 1.0  # clipped anyway: left alone
    assert exact_threshold(1.0, 1e-6) == 1.0  # among the subnormals: left alone


def test_fp8_bias_correction_moves_the_biases_and_cuts_the_mean_logit_error(small_model, workdir):
    dark = _dark_photos(workdir / "dark-bc")
    plain = _fp8(small_model, dark, workdir / "bc-off.onnx", keep_fp=["none"], cache_dir=workdir / "cache")
    corrected = _fp8(small_model, dark, workdir / "bc-channel.onnx", keep_fp=["none"], bias_correction="channel",
                     cache_dir=workdir / "cache")
    assert json.loads(Path(corrected.manifest).read_text())["params"]["bias_correction"] == "channel"
    off, on = _initializers(onnx.load(plain.output)), _initializers(onnx.load(corrected.output))
    moved = [name for name in off if off[name].data_type == onnx.TensorProto.FLOAT and name.endswith("bias")
             and not np.array_equal(onnx.numpy_helper.to_array(off[name]), onnx.numpy_helper.to_array(on[name]))]
    assert moved
    with silenced():
        items = open_dataset(dark).items
        images = np.concatenate([batch.images for batch in load_batches(
            items, json.loads(Path(plain.manifest).read_text())["preprocess"], 16, workers=0, progress=False)])

    def logits(path):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: images})[0]

    reference = logits(small_model)
    mean_error = {name: np.abs((logits(path) - reference).mean(axis=0)).mean()
                  for name, path in (("off", plain.output), ("on", corrected.output))}
    assert mean_error["on"] < mean_error["off"], mean_error
