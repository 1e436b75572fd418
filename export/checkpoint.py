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
import warnings
import zipfile
from pathlib import Path

import torch

from ffx.errors import FfxError
from ffx.export.configs import ARCHITECTURES, FFConfig, default_preprocess, get_architecture
from ffx.metadata import MAX_CLASSES, MAX_DEPTH, Preprocess, escape_text, validate_metadata

# Limits checked on shapes alone, before any tensor is materialised: a few KB of stride-0 views
# or one stray `blocks.99999999.*` key must not turn into an out-of-memory kill or a hang. The
# largest published configuration (linear_large) has 206 M parameters, depth 24, dim 1024.
MAX_PARAMETERS = 2_000_000_000
MAX_EMBED_DIM = 16384
MAX_TOKENS = 16385
# A zip entry that inflates more than this many times and to more than 64 MiB is a zip bomb:
# torch writes its checkpoints uncompressed.
MAX_ZIP_RATIO = 100

# Checkpoint keys that can hold the weights, in order of preference.
_WEIGHT_KEYS = ("model", "state_dict", "module")
# Weight dtypes loaded (and cast to float32): training checkpoints, fp16/bf16 exports included.
_WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


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
        loaded = LoadedCheckpoint(_load_safetensors(path), "state dict")
    else:
        _refuse_zip_bomb(path)
        loaded = _pick_weights(_load_pickle(path), path, use_ema)
    _check_tensors(loaded.state_dict, path)
    return loaded


def _refuse_zip_bomb(path):
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise FfxError(f"{path}: not a readable PyTorch checkpoint (corrupt zip: {e})") from None
    for entry in entries:
        if entry.file_size > (64 << 20) and entry.file_size > MAX_ZIP_RATIO * max(entry.compress_size, 1):
            raise FfxError(f"{path}: refused: zip entry {entry.filename} would inflate from {entry.compress_size:,} "
                           f"to {entry.file_size:,} bytes (a zip bomb, not a checkpoint torch wrote)")


def _check_tensors(state_dict, path):
    """Refuse, before anything is copied or cast, a state dict that is not names -> dense floating
    point tensors holding their own values, or whose shapes add up to an absurd model."""
    total = 0
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise FfxError(f"{path}: its state dict has the key {_shown(key)} ({type(key).__name__}); "
                           "weights are named by strings such as 'head.weight'")
        problem = _tensor_problem(value)
        if problem:
            raise FfxError(f"{path}: weight {_shown(key)} {problem}")
        total += value.numel()
        if total > MAX_PARAMETERS:
            raise FfxError(f"{path}: its tensors hold more than {MAX_PARAMETERS:,} values (at {_shown(key)} "
                           f"{tuple(value.shape)}); ffx refuses checkpoints that large")


def _tensor_problem(value):
    """Why `value` is not a weight ffx loads (a phrase), or None."""
    if not isinstance(value, torch.Tensor):
        return f"is a {type(value).__name__}, not a tensor"
    if value.device.type == "meta":
        return "is a meta tensor: it has a shape but no values"
    if value.layout != torch.strided:
        return f"is a sparse tensor ({str(value.layout).removeprefix('torch.')}); ffx loads dense weights"
    if value.is_quantized:
        return f"is a quantized tensor ({str(value.dtype).removeprefix('torch.')}); export the float checkpoint"
    if value.dtype not in _WEIGHT_DTYPES:
        return (f"is {str(value.dtype).removeprefix('torch.')}; the network's weights are floating point "
                f"({', '.join(str(d).removeprefix('torch.') for d in _WEIGHT_DTYPES)})")
    # An expanded view: a few stored values shown at a large shape (stride 0, or overlapping
    # strides). Training never saves one; materialised, a few KB become gigabytes.
    stored = value.untyped_storage().nbytes() // value.element_size()
    if any(stride == 0 and size > 1 for size, stride in zip(value.shape, value.stride())) or stored < value.numel():
        return (f"is an expanded view: shape {tuple(value.shape)} over {stored:,} stored values "
                "(stride 0); a checkpoint holds each weight's own values")
    return None


def _shown(key):
    return escape_text(repr(key)) if len(repr(key)) <= 80 else escape_text(repr(key)[:77]) + "..."


def _load_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FfxError(f"{path}: not a readable safetensors file ({e})") from None


def _load_pickle(path):
    try:
        # torch warns about what it rebuilds (quantized tensors, typed storages): ffx judges the
        # tensors itself, in one line, after loading.
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
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
    if state_dict and all(isinstance(k, str) and k.startswith("module.") for k in state_dict):
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
    ranks = {"patch_embed.proj.weight": 4, "blocks.0.norm2.weight": 1, "blocks.0.mlp1.fc1.weight": 2,
             "head.weight": 2, "pos_encoding.pos_embed": 4}
    for key, rank in ranks.items():
        if state_dict[key].dim() != rank:
            raise FfxError(f"cannot infer the architecture: {key} has shape {tuple(state_dict[key].shape)}, expected {rank} dimensions")
    embed_dim, in_chans, patch, patch_w = state_dict["patch_embed.proj.weight"].shape
    num_tokens = state_dict["blocks.0.norm2.weight"].shape[0]
    grid = math.isqrt(max(num_tokens - 1, 0))
    if patch != patch_w or num_tokens < 2 or grid * grid != num_tokens - 1:
        raise FfxError(f"cannot infer the architecture: {num_tokens} tokens is not 1 + a square patch grid")
    blocks = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))})
    depth = len(blocks)
    if blocks != list(range(depth)):
        stray = next(index for position, index in enumerate(blocks) if index != position)
        raise FfxError(f"cannot infer the architecture: the checkpoint's blocks are not numbered 0..{depth - 1} "
                       f"(found blocks.{stray}.*)")
    limits = (("embedding dim", embed_dim, MAX_EMBED_DIM), ("depth", depth, MAX_DEPTH), ("token count", num_tokens, MAX_TOKENS),
              ("class count", state_dict["head.weight"].shape[0], MAX_CLASSES))
    for label, value, limit in limits:
        if value > limit:
            raise FfxError(f"cannot infer the architecture: {label} {value} exceeds ffx's limit of {limit}")
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
    preprocess_recorded: bool = False  # False: the architecture's default (ImageNet) was assumed


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

    if loaded is None:
        torch.manual_seed(seed)
        model = FFVisionTransformer(config)
    else:
        # Build on the meta device (no initialisation work) and adopt the checkpoint's tensors.
        with torch.device("meta"):
            model = FFVisionTransformer(config)
        check_state_dict(loaded.state_dict, model.state_dict(), name)
        weights = {k: v.float().contiguous() for k, v in loaded.state_dict.items()}
        _refuse_non_finite(weights, checkpoint)
        model.load_state_dict(weights, strict=True, assign=True)
    model.eval()

    # The checkpoint's own metadata is checked after its weights, so that a wrong --arch is
    # reported as mismatched keys rather than as a preprocessing size.
    if loaded is not None and loaded.extras:
        validate_metadata({**loaded.extras, "num_classes": config.num_classes}, f"{checkpoint} (its `ffx` entry)")
    if loaded is not None and "preprocess" in loaded.extras:
        preprocess = Preprocess.from_dict(loaded.extras["preprocess"], f"{checkpoint} (its `ffx` entry)")
    if preprocess.input_size[1:] != (config.img_size, config.img_size):
        raise FfxError(f"preprocessing crops to {preprocess.input_size[1:]} but the network takes {config.img_size}x{config.img_size}")

    class_names = loaded.extras.get("class_names") if loaded is not None else None
    if class_names is None and config.num_classes == 1000:
        class_names = imagenet_class_names()
    if class_names is not None and len(class_names) != config.num_classes:
        raise FfxError(f"the checkpoint lists {len(class_names)} class names for {config.num_classes} classes")
    recorded = loaded is not None and "preprocess" in loaded.extras
    return ResolvedModel(model, name, config, preprocess, class_names, loaded.source if loaded else "random", recorded)


def _refuse_non_finite(weights, path):
    bad = [key for key, tensor in weights.items() if not bool(torch.isfinite(tensor).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise FfxError(f"{path}: {len(bad)} weight tensor{'s hold' if len(bad) > 1 else ' holds'} NaN or Inf ({shown}); "
                       "the training run diverged or the file is damaged")


def _registered_name(config):
    """The registered name whose config equals `config`, else "ff_custom"."""
    for name, registered in ARCHITECTURES.items():
        if registered.config == config:
            return name
    return "ff_custom"
