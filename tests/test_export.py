"""ffx export: the network, checkpoint loading, the ONNX graph and the CLI, with real torch and
real onnxruntime."""

import argparse
import collections
import json
import os
import subprocess

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from ffx.cli import cli
from ffx.export.checkpoint import infer_config
from ffx.export.configs import ARCHITECTURES, FFConfig, get_architecture
from ffx.export.model import FFVisionTransformer, count_parameters
from ffx.metadata import onnx_metadata
from reference_ffvit import reference_forward

SMALL = FFConfig(patch_size=16, embed_dim=48, depth=2, num_classes=10)  # 197 tokens, like ff_tiny
PATCH32 = FFConfig(patch_size=32, embed_dim=64, depth=2, num_classes=7)  # 7x7 grid: resized pos-embed


def random_state_dict(config, seed):
    """Weights with every tensor perturbed (biases, norms, positions too) so no term hides."""
    torch.manual_seed(seed)
    state = FFVisionTransformer(config).state_dict()
    return {k: v + 0.05 * torch.randn_like(v) for k, v in state.items()}


def deit_checkpoint(config, seed=0, arch="linear_tiny"):
    model = random_state_dict(config, seed)
    ema = random_state_dict(config, seed + 1)
    return {
        "model": model,
        "model_ema": ema,
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
        "lr_scheduler": {"last_epoch": 3, "base_lrs": [5e-4]},
        "epoch": 299,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0},
        "args": argparse.Namespace(model=arch, input_size=224, nb_classes=config.num_classes, drop_path=0.1),
    }


def onnx_logits(path, images):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.numpy()})[0]


def run_export(cli_runner, *args):
    result = cli_runner.invoke(cli, ["export", *args])
    assert "Traceback" not in result.output
    return result


# --- the network -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [("ff_tiny", 7_676_332), ("ff_base", 61_943_020), pytest.param("ff_large", 206_363_576, marks=pytest.mark.slow)],
)
def test_parameter_counts_match_the_paper_models(name, expected):
    assert count_parameters(FFVisionTransformer(get_architecture(name).config)) == expected


@pytest.mark.slow
def test_original_names_are_aliases_and_state_dict_keys_match_the_release():
    assert get_architecture("linear_base") is ARCHITECTURES["ff_base"]
    keys = FFVisionTransformer(ARCHITECTURES["ff_tiny"].config).state_dict()
    assert len(keys) == 153
    assert tuple(keys["blocks.0.mlp2.fc1.weight"].shape) == (788, 197)
    assert tuple(keys["blocks.0.norm2.weight"].shape) == (197,)
    assert tuple(keys["pos_encoding.pos_embed"].shape) == (1, 192, 14, 14)
    assert len(FFVisionTransformer(ARCHITECTURES["ff_large"].config).state_dict()) == 297


@pytest.mark.parametrize("config", [SMALL, PATCH32], ids=["patch16", "patch32"])
def test_network_matches_independent_reference(config):
    state = random_state_dict(config, seed=3)
    model = FFVisionTransformer(config).eval()
    model.load_state_dict(state, strict=True)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference_forward(state, images), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_infer_config_recovers_every_field():
    config = FFConfig(patch_size=4, embed_dim=40, depth=3, num_classes=10, img_size=28, pos_grid=7, mlp_ratio=2.0)
    assert infer_config(FFVisionTransformer(config).state_dict()) == config
    assert infer_config(FFVisionTransformer(ARCHITECTURES["ff_large"].config).state_dict()) == ARCHITECTURES["ff_large"].config


# --- ONNX export --------------------------------------------------------------------------


@pytest.mark.slow
def test_deit_checkpoint_exports_with_and_without_arch_and_matches_reference(tmp_path, cli_runner):
    config = ARCHITECTURES["ff_tiny"].config
    checkpoint = deit_checkpoint(config)
    torch.save(checkpoint, tmp_path / "linear-tiny-checkpoint.pth")
    images = torch.randn(3, 3, 224, 224)
    expected = reference_forward(checkpoint["model"], images).numpy()

    for extra in ([], ["--arch", "linear_tiny"]):
        out = tmp_path / f"tiny{len(extra)}.onnx"
        result = run_export(cli_runner, "--checkpoint", str(tmp_path / "linear-tiny-checkpoint.pth"), "-o", str(out), "--json", *extra)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["arch"] == "ff_tiny" and report["parameters"] == 7_676_332
        assert report["max_abs_diff"] <= 1e-4
        np.testing.assert_allclose(onnx_logits(out, images), expected, atol=1e-4, rtol=0)

    # --ema picks model_ema, which differs from model.
    out = tmp_path / "ema.onnx"
    assert run_export(cli_runner, "--checkpoint", str(tmp_path / "linear-tiny-checkpoint.pth"), "--ema", "-o", str(out)).exit_code == 0
    np.testing.assert_allclose(onnx_logits(out, images), reference_forward(checkpoint["model_ema"], images).numpy(), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_graph_shape_ops_and_metadata(tmp_path, cli_runner):
    torch.save({"model": random_state_dict(SMALL, 0)}, tmp_path / "small.pth")
    out = tmp_path / "small.onnx"
    assert run_export(cli_runner, "--checkpoint", str(tmp_path / "small.pth"), "-o", str(out)).exit_code == 0
    graph = onnx.load(str(out))
    onnx.checker.check_model(graph, full_check=True)
    ops = collections.Counter(node.op_type for node in graph.graph.node)
    assert ops["LayerNormalization"] == 2 * SMALL.depth + 1  # fused, never decomposed
    assert not {"Pow", "Resize", "Dropout", "ReduceMean"} & set(ops)
    assert graph.opset_import[0].version == 17
    (inp,), (outp,) = graph.graph.input, graph.graph.output
    assert inp.name == "images" and outp.name == "logits"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 3, 224, 224]
    assert [d.dim_param or d.dim_value for d in outp.type.tensor_type.shape.dim] == ["batch", 10]

    assert [p.key for p in graph.metadata_props].count("ffx") == 1
    meta = onnx_metadata(graph)
    assert meta["arch"] == "ff_custom" and meta["num_classes"] == 10
    assert meta["config"]["embed_dim"] == 48
    assert meta["preprocess"] == {
        "input_size": [3, 224, 224], "resize": 256, "interpolation": "bicubic",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    }
    assert len(meta["source_sha256"]) == 64 and meta["ffx_version"]
    import onnxscript

    assert meta["exporter"] == {"torch": torch.__version__, "onnxscript": onnxscript.__version__, "onnx": onnx.__version__}
    # Dynamic batch really works.
    for batch in (1, 5):
        assert onnx_logits(out, torch.randn(batch, 3, 224, 224)).shape == (batch, 10)


@pytest.mark.slow
def test_patch32_checkpoint_folds_position_resize(tmp_path, cli_runner):
    state = random_state_dict(PATCH32, 1)
    torch.save({"model": state}, tmp_path / "p32.pth")
    out = tmp_path / "p32.onnx"
    result = run_export(cli_runner, "--checkpoint", str(tmp_path / "p32.pth"), "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert "Resize" not in {node.op_type for node in onnx.load(str(out)).graph.node}
    images = torch.randn(2, 3, 224, 224)
    np.testing.assert_allclose(onnx_logits(out, images), reference_forward(state, images).numpy(), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_imagenet_models_carry_class_names(ff_tiny_random):
    out, result = ff_tiny_random.onnx, ff_tiny_random.result  # `ffx export --arch ff_tiny -o tiny.onnx`, once a session
    assert result.exit_code == 0
    assert "RANDOM weights" in result.stderr
    meta = onnx_metadata(onnx.load(str(out)))
    assert len(meta["class_names"]) == 1000 and meta["class_names"][0] == "tench"
    assert meta["weights"] == "random" and meta["source_sha256"] is None


@pytest.mark.slow
def test_safetensors_and_module_prefix(tmp_path, cli_runner):
    from safetensors.torch import save_file

    state = random_state_dict(SMALL, 2)
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    images = torch.randn(1, 3, 224, 224)
    for name in ("w.safetensors", "ddp.pth"):
        out = tmp_path / f"{name}.onnx"
        result = run_export(cli_runner, "--checkpoint", str(tmp_path / name), "-o", str(out))
        assert result.exit_code == 0, result.output
        np.testing.assert_allclose(onnx_logits(out, images), reference_forward(state, images).numpy(), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_num_classes_for_fine_tuned_heads(tmp_path, cli_runner):
    config = FFConfig(patch_size=16, embed_dim=192, depth=12, num_classes=37)
    torch.save({"model": random_state_dict(config, 4)}, tmp_path / "ft.pth")
    out = tmp_path / "ft.onnx"
    result = run_export(cli_runner, "--arch", "ff_tiny", "--num-classes", "37", "--checkpoint", str(tmp_path / "ft.pth"), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert onnx_metadata(onnx.load(str(out)))["num_classes"] == 37


# --- bad input: one line, exit 2, no output, no traceback ----------------------------------


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def assert_refused(result, out, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    message = result.stderr.strip()
    assert message.startswith("Error:") and len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message
    assert not out.exists()
    assert not list(out.parent.glob("*.partial"))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, cli_runner):
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "payload": _RunsCode(marker)}, tmp_path / "evil.pth")
    out = tmp_path / "evil.onnx"
    assert_refused(run_export(cli_runner, "--checkpoint", str(tmp_path / "evil.pth"), "-o", str(out)), out, "refused")
    assert not marker.exists()


def test_truncated_checkpoint(tmp_path, cli_runner):
    torch.save({"model": random_state_dict(SMALL, 0)}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    out = tmp_path / "cut.onnx"
    assert_refused(run_export(cli_runner, "--checkpoint", str(tmp_path / "cut.pth"), "-o", str(out)), out, "not a readable")


def test_wrong_architecture_names_mismatched_keys(tmp_path, cli_runner):
    torch.save(deit_checkpoint(SMALL), tmp_path / "small.pth")
    out = tmp_path / "x.onnx"
    result = run_export(cli_runner, "--arch", "ff_base", "--checkpoint", str(tmp_path / "small.pth"), "-o", str(out))
    assert_refused(result, out, "does not match ff_base", "mis-shaped keys", "patch_embed.proj.weight (48, 3, 16, 16)")


def test_missing_and_unexpected_keys_are_counted(tmp_path, cli_runner):
    state = random_state_dict(SMALL, 0)
    del state["head.bias"], state["norm.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "odd.pth")
    out = tmp_path / "odd.onnx"
    result = run_export(cli_runner, "--checkpoint", str(tmp_path / "odd.pth"), "-o", str(out))
    assert_refused(result, out, "2 missing keys", "norm.weight", "1 unexpected key: extra.weight")


def test_a_file_that_is_not_a_checkpoint_is_not_called_malicious(tmp_path, cli_runner):
    (tmp_path / "model.onnx.pth").write_bytes(b"\x08\x07" + bytes(range(200)))  # protobuf-ish bytes
    out = tmp_path / "n.onnx"
    result = run_export(cli_runner, "--checkpoint", str(tmp_path / "model.onnx.pth"), "-o", str(out))
    assert_refused(result, out, "not a PyTorch checkpoint")
    assert "refused" not in result.stderr


def test_not_a_feed_forward_vit(tmp_path, cli_runner):
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "resnet.pth")
    out = tmp_path / "r.onnx"
    assert_refused(run_export(cli_runner, "--checkpoint", str(tmp_path / "resnet.pth"), "-o", str(out)), out, "cannot infer")


@pytest.mark.slow
def test_max_opset_is_the_one_torch_declares_and_exports(mini, tmp_path, cli_runner):
    """Raise MAX_OPSET with torch only after an export at the new maximum passes the checker."""
    import torch.onnx._constants

    from ffx.export.onnx_export import MAX_OPSET

    assert MAX_OPSET == torch.onnx._constants.ONNX_MAX_OPSET
    out = tmp_path / "newest.onnx"
    result = run_export(cli_runner, "--checkpoint", str(mini.checkpoint), "--opset", str(MAX_OPSET), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert onnx.load(str(out)).opset_import[0].version == MAX_OPSET


def test_usage_errors_exit_2(tmp_path, cli_runner):
    out = tmp_path / "u.onnx"
    assert run_export(cli_runner, "--arch", "ff_huge", "-o", str(out)).exit_code == 2
    assert run_export(cli_runner, "--arch", "ff_tiny", "--opset", "13", "-o", str(out)).exit_code == 2
    # Past the exporter's newest opset torch writes a graph the ONNX checker rejects (a traceback before).
    assert run_export(cli_runner, "--arch", "ff_tiny", "--opset", "26", "-o", str(out)).exit_code == 2
    assert run_export(cli_runner, "--checkpoint", str(tmp_path / "nope.pth"), "-o", str(out)).exit_code == 2
    assert not out.exists()


@pytest.mark.slow
def test_failed_parity_gate_exits_1_and_writes_nothing(tmp_path, cli_runner, monkeypatch):
    import ffx.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "PARITY_ATOL", -1.0)  # a gate no real export can pass
    torch.save({"model": random_state_dict(SMALL, 0)}, tmp_path / "small.pth")
    out = tmp_path / "gate.onnx"
    result = run_export(cli_runner, "--checkpoint", str(tmp_path / "small.pth"), "-o", str(out))
    assert result.exit_code == 1
    assert "parity check failed" in result.stderr
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


@pytest.mark.slow
def test_console_script_version_and_export(tmp_path):
    version = subprocess.run(["ffx", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("ffx, version")
    bad = subprocess.run(["ffx", "export", "--checkpoint", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "m.onnx")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "no such checkpoint" in bad.stderr


@pytest.mark.slow
def test_onnxruntime_fuses_every_gelu(tmp_path, cli_runner):
    """The exported GELU is in the form onnxruntime's GeluFusion recognises (a large share of
    CPU time otherwise goes to four unfused elementwise ops per GELU)."""
    torch.save({"model": random_state_dict(SMALL, 0)}, tmp_path / "small.pth")
    out = tmp_path / "small.onnx"
    assert run_export(cli_runner, "--checkpoint", str(tmp_path / "small.pth"), "-o", str(out)).exit_code == 0
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert ops["BiasGelu"] + ops["Gelu"] == 2 * SMALL.depth and ops["Erf"] == 0
