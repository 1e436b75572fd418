"""Loading checkpoints safely and working out which network they belong to.

Accepted: DeiT training checkpoints (dicts with `model`, `model_ema`, `optimizer`, ..., `args`
as an argparse.Namespace), plain state dicts, `module.`-prefixed keys, `.safetensors` files.
Pickles are read with `torch.load(weights_only=True)` and only `argparse.Namespace` is
allowlisted, so a checkpoint that would run code when unpickled is refused before it can.
"""

import argparse
import dataclasses
import math
import pickle
import re
import zipfile
from pathlib import Path

import torch

from ffx.errors import FfxError
from ffx.export.configs import ARCHITECTURES, FFConfig, default_preprocess, get_architecture
from ffx.metadata import Preprocess

# Checkpoint keys that can hold the weights, in order of preference.
_WEIGHT_KEYS = ("model", "state_dict", "module")


@dataclasses.dataclass
class LoadedCheckpoint:
    state_dict: dict
    source: str  # which part of the file the weights came from: "model", "model_ema", "state dict"
    args: argparse.Namespace | None = None
    extras: dict = dataclasses.field(default_factory=dict)  # the checkpoint's own `ffx` entry


def load_checkpoint(path, use_ema=False):
    path = Path(path)
    if not path.is_file():
        raise FfxError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        if use_ema:
            raise FfxError(f"{path}: a safetensors file holds one set of weights; --ema does not apply")
        return LoadedCheckpoint(_load_safetensors(path), "state dict")
    raw = _load_pickle(path)
    return _pick_weights(raw, path, use_ema)


def _load_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FfxError(f"{path}: not a readable safetensors file ({e})") from None


def _load_pickle(path):
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global outside the allowlist before constructing it. Other
        # unpickling errors (bad opcodes, load keys) mean the file is not a checkpoint at all.
        culprit = re.search(r"GLOBAL ([\w.]+)", str(e)) or re.search(r"Unsupported global: ([\w. ]+)", str(e))
        if culprit is None:
            raise FfxError(f"{path}: not a PyTorch checkpoint (the file is not a readable pickle)") from None
        what = f" (it asks for {culprit.group(1).strip()})"
        raise FfxError(
            f"{path}: refused to load: unpickling it would construct objects other than tensors{what}; "
            "ffx only loads weights (tensors, plain containers and argparse.Namespace)"
        ) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FfxError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {first_line}") from None


def _pick_weights(raw, path, use_ema):
    if not isinstance(raw, dict):
        raise FfxError(f"{path}: expected a state dict or a training checkpoint dict, found {type(raw).__name__}")
    args = raw.get("args") if isinstance(raw.get("args"), argparse.Namespace) else None
    extras = raw.get("ffx") if isinstance(raw.get("ffx"), dict) else {}
    if use_ema:
        if not isinstance(raw.get("model_ema"), dict):
            raise FfxError(f"{path}: --ema given but the checkpoint has no `model_ema` weights")
        return LoadedCheckpoint(_strip_prefix(raw["model_ema"]), "model_ema", args, extras)
    for key in _WEIGHT_KEYS:
        if isinstance(raw.get(key), dict):
            return LoadedCheckpoint(_strip_prefix(raw[key]), key, args, extras)
    if raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        return LoadedCheckpoint(_strip_prefix(raw), "state dict", args, extras)
    raise FfxError(f"{path}: no weights found (looked for {', '.join(_WEIGHT_KEYS)} or a plain state dict)")


def _strip_prefix(state_dict):
    """Drop the `module.` prefix DataParallel/DDP training leaves on every key."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def infer_config(state_dict):
    """The network shape implied by the tensors: patch, embed dim, depth, tokens, classes."""
    required = ["patch_embed.proj.weight", "blocks.0.norm2.weight", "blocks.0.mlp1.fc1.weight",
                "head.weight", "pos_encoding.pos_embed"]
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise FfxError(
            "cannot infer the architecture: the checkpoint lacks " + ", ".join(missing)
            + " (is this a feed-forward-only ViT checkpoint?)"
        )
    embed_dim, in_chans, patch, patch_w = state_dict["patch_embed.proj.weight"].shape
    num_tokens = state_dict["blocks.0.norm2.weight"].shape[0]
    grid = math.isqrt(num_tokens - 1)
    if patch != patch_w or grid * grid != num_tokens - 1:
        raise FfxError(f"cannot infer the architecture: {num_tokens} tokens is not 1 + a square patch grid")
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
    return FFConfig(
        patch_size=int(patch),
        embed_dim=int(embed_dim),
        depth=depth,
        num_classes=int(state_dict["head.weight"].shape[0]),
        img_size=int(grid * patch),
        in_chans=int(in_chans),
        mlp_ratio=state_dict["blocks.0.mlp1.fc1.weight"].shape[0] / embed_dim,
        pos_grid=int(state_dict["pos_encoding.pos_embed"].shape[-1]),
    )


def check_state_dict(state_dict, expected, arch_name):
    """FfxError naming missing, unexpected and mis-shaped keys (the first few of each and a count)."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            shown = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
            problems.append(f"{len(items)} {label} key{'s' if len(items) > 1 else ''}: {shown}")
    if problems:
        raise FfxError(f"checkpoint does not match {arch_name}: " + "; ".join(problems))


@dataclasses.dataclass
class ResolvedModel:
    """Everything export needs: the network with weights and what to write into its metadata."""

    model: torch.nn.Module
    arch: str
    config: FFConfig
    preprocess: Preprocess
    class_names: list | None
    weights: str  # "random" or where in the checkpoint the weights came from


def resolve_model(arch=None, checkpoint=None, use_ema=False, num_classes=None, seed=0):
    """Build the network from a registered architecture, a checkpoint, or both, and load weights."""
    from ffx.export.model import FFVisionTransformer
    from ffx.metadata import imagenet_class_names

    loaded = load_checkpoint(checkpoint, use_ema) if checkpoint else None
    if arch is not None:
        registered = get_architecture(arch)
        name, config, preprocess = registered.name, registered.config, registered.preprocess
        if num_classes is not None:
            config = dataclasses.replace(config, num_classes=num_classes)
    elif loaded is not None:
        config = infer_config(loaded.state_dict)
        name = _registered_name(config)
        preprocess = ARCHITECTURES[name].preprocess if name in ARCHITECTURES else default_preprocess(config)
        if num_classes is not None and num_classes != config.num_classes:
            raise FfxError(f"--num-classes {num_classes} contradicts the checkpoint's head ({config.num_classes} classes)")
    else:
        raise FfxError("give --arch, --checkpoint, or both")

    if loaded is not None and "preprocess" in loaded.extras:
        preprocess = Preprocess.from_dict(loaded.extras["preprocess"])
    if preprocess.input_size[1:] != (config.img_size, config.img_size):
        raise FfxError(f"preprocessing crops to {preprocess.input_size[1:]} but the network takes {config.img_size}x{config.img_size}")

    if loaded is None:
        torch.manual_seed(seed)
        model = FFVisionTransformer(config)
    else:
        # Build on the meta device (no initialisation work) and adopt the checkpoint's tensors.
        with torch.device("meta"):
            model = FFVisionTransformer(config)
        check_state_dict(loaded.state_dict, model.state_dict(), name)
        weights = {k: v.float().contiguous() for k, v in loaded.state_dict.items()}
        model.load_state_dict(weights, strict=True, assign=True)
    model.eval()

    class_names = loaded.extras.get("class_names") if loaded is not None else None
    if class_names is None and config.num_classes == 1000:
        class_names = imagenet_class_names()
    if class_names is not None and len(class_names) != config.num_classes:
        raise FfxError(f"the checkpoint lists {len(class_names)} class names for {config.num_classes} classes")
    return ResolvedModel(model, name, config, preprocess, class_names, loaded.source if loaded else "random")


def _registered_name(config):
    """The registered name whose config equals `config`, else "ff_custom"."""
    for name, registered in ARCHITECTURES.items():
        if registered.config == config:
            return name
    return "ff_custom"
