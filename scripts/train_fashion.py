#!/usr/bin/env python3
"""Train the feed-forward-only ViT of ffx on Fashion-MNIST, on CPU.

    python scripts/train_fashion.py /usr/share/datasets/fashion-mnist -o model.pth
    python scripts/train_fashion.py /usr/share/datasets/fashion-mnist --eval-only model.pth
    # the deep fixture (ff_tiny's blocks, 197 tokens): bf16 autocast, resumable epoch by epoch
    python scripts/train_fashion.py /usr/share/datasets/fashion-mnist --preset tiny197 -o model.pth

The shallow fixture (patch 4, dim 96, depth 4) takes about ten minutes. `--preset tiny197` trains
ff_tiny's block shapes (patch 2, dim 192, depth 12, 196 patches + cls = 197 tokens). After every
epoch the full training state (model, optimizer, generator, step) goes to `OUTPUT.state.pt`; run the
same command again and it resumes from there. `--bf16` runs forward and backward under bfloat16
autocast (weights, optimizer and the written checkpoint stay float32).

The network is the package's own `FFVisionTransformer` in a configuration for 28x28 inputs
(patch 4: a 7x7 grid, 50 tokens). Images are read straight from the idx files into tensors; the
gray channel is replicated to RGB, as in the PNG fixture. The checkpoint has the layout of the
original (DeiT) release, a dict with `model`, `args` and `epoch`, plus this project's `ffx` entry
with the evaluation preprocessing and class names, so `ffx export --checkpoint` needs no flags.
"""

import argparse
import math
import pickle
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fashion_mnist_to_folders import CLASS_NAMES, IdxError, load_split  # sibling script in scripts/
from ffx.export.configs import FFConfig
from ffx.export.model import FFVisionTransformer, count_parameters

IMG_SIZE = 28
# Fashion-MNIST training-set statistics of the gray channel, replicated to the three RGB channels.
MEAN = (0.2860, 0.2860, 0.2860)
STD = (0.3530, 0.3530, 0.3530)


def preprocess_metadata():
    """The evaluation transform as ffx metadata: 28x28 in, no resize or crop in effect."""
    return {
        "input_size": [3, IMG_SIZE, IMG_SIZE],
        "resize": IMG_SIZE,
        "interpolation": "bilinear",
        "mean": list(MEAN),
        "std": list(STD),
    }


def to_network_input(images_uint8):
    """uint8 (B, 28, 28) -> normalised float (B, 3, 28, 28): pixel/255, then (x - mean) / std.

    Exactly what a consumer of the exported metadata does with the RGB PNGs."""
    x = images_uint8.float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(images_uint8, generator, crop_padding):
    """Random horizontal flip, and a random shift of up to `crop_padding` pixels (zero fill)."""
    flip = torch.rand(len(images_uint8), generator=generator) < 0.5
    images = torch.where(flip.view(-1, 1, 1), images_uint8.flip(-1), images_uint8)
    if crop_padding:
        batch = len(images)
        padded = F.pad(images, (crop_padding,) * 4)
        top = torch.randint(0, 2 * crop_padding + 1, (batch,), generator=generator)
        left = torch.randint(0, 2 * crop_padding + 1, (batch,), generator=generator)
        rows = (top.view(-1, 1) + torch.arange(IMG_SIZE)).view(batch, IMG_SIZE, 1)
        cols = (left.view(-1, 1) + torch.arange(IMG_SIZE)).view(batch, 1, IMG_SIZE)
        images = padded[torch.arange(batch).view(-1, 1, 1), rows, cols]
    return images


@torch.no_grad()
def evaluate(model, images, labels, batch_size=1000):
    """Top-1 accuracy (a fraction) on uint8 images (N, 28, 28)."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(to_network_input(images[start : start + batch_size]))
        correct += (logits.argmax(1) == labels[start : start + batch_size]).sum().item()
    return correct / len(images)


def lr_at(step, total_steps, warmup_steps, peak_lr):
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


PRESETS = {
    # ff_tiny's blocks exactly: embed dim 192, depth 12, MLP ratio 4, 14x14 patches + cls = 197 tokens.
    "tiny197": {"patch_size": 2, "embed_dim": 192, "depth": 12, "epochs": 2, "lr": 1.5e-3, "bf16": True},
}


def state_path(output):
    return output.with_name(output.name + ".state.pt")


def save_training_state(path, model, optimizer, generator, epoch, step, train_seconds):
    """Everything a resumed run needs, written atomically (a killed run leaves the previous epoch)."""
    partial = path.with_name(path.name + ".partial")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(), "epoch": epoch, "step": step,
                "train_seconds": train_seconds}, partial)
    partial.replace(path)


def train(args, train_images, train_labels, test_images, test_labels):
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    config = FFConfig(
        patch_size=args.patch_size, embed_dim=args.embed_dim, depth=args.depth,
        num_classes=len(CLASS_NAMES), img_size=IMG_SIZE, in_chans=3, pos_grid=IMG_SIZE // args.patch_size,
    )
    model = FFVisionTransformer(config)
    print(f"config {config.to_dict()}, {count_parameters(model):,} parameters", flush=True)

    # No weight decay on biases, norms, cls token and position embeddings (as timm/DeiT do).
    def decays(name, parameter):
        return parameter.ndim > 1 and "pos_encoding" not in name and name != "cls_token"

    decay = [p for n, p in model.named_parameters() if decays(n, p)]
    no_decay = [p for n, p in model.named_parameters() if not decays(n, p)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    steps_per_epoch = len(train_images) // args.batch_size  # the last partial batch is dropped
    total_steps = steps_per_epoch * args.epochs
    step = 0
    train_seconds = 0.0
    first_epoch = 0
    resume = state_path(args.output)
    if resume.is_file():
        state = torch.load(resume, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        first_epoch, step, train_seconds = state["epoch"] + 1, state["step"], state["train_seconds"]
        print(f"resumed from {resume} after epoch {first_epoch}/{args.epochs}", flush=True)
    accuracy = None  # of the last epoch trained in this run (a run resumed after the last epoch trains none)
    for epoch in range(first_epoch, args.epochs):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(train_images), generator=generator)
        loss_sum = 0.0
        for batch in range(steps_per_epoch):
            index = order[batch * args.batch_size : (batch + 1) * args.batch_size]
            images = augment(train_images[index], generator, args.crop_padding)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, args.warmup_steps, args.lr)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                logits = model(to_network_input(images))
            loss = F.cross_entropy(logits.float(), train_labels[index], label_smoothing=args.smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            step += 1
            if args.log_every and step % args.log_every == 0:
                print(f"  step {step}/{total_steps}, loss {loss.item():.4f}, "
                      f"{time.perf_counter() - started:.0f} s into epoch {epoch + 1}", flush=True)
        train_seconds += time.perf_counter() - started
        save_training_state(resume, model, optimizer, generator, epoch, step, train_seconds)
        # Printed for the log only; the checkpoint is always the last epoch (no selection on test).
        accuracy = evaluate(model, test_images, test_labels)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss_sum / steps_per_epoch:.4f}, "
              f"test top-1 {100 * accuracy:.2f}%, training time so far {train_seconds:.0f} s", flush=True)
    return model, config, train_seconds, accuracy


def save_checkpoint(path, model, config, args):
    """DeiT release layout: {'model', 'args', 'epoch'}, plus the `ffx` entry for export."""
    train_args = argparse.Namespace(
        model="ff_custom", input_size=IMG_SIZE, nb_classes=config.num_classes, data_set="fashion-mnist",
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, smoothing=args.smoothing, crop_padding=args.crop_padding,
        hflip=0.5, seed=args.seed, bf16_autocast=args.bf16, patch_size=config.patch_size, embed_dim=config.embed_dim, depth=config.depth,
    )
    state_dict = {name: tensor.detach().float().contiguous() for name, tensor in model.state_dict().items()}
    checkpoint = {
        "model": state_dict,
        "args": train_args,
        "epoch": args.epochs - 1,  # DeiT stores the index of the last finished epoch
        "ffx": {"preprocess": preprocess_metadata(), "class_names": list(CLASS_NAMES)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def config_from_state_dict(state_dict):
    """The FFConfig a 28x28 checkpoint was built with, read from its tensor shapes."""
    embed_dim, in_chans, patch_size, _ = state_dict["patch_embed.proj.weight"].shape
    num_tokens = state_dict["blocks.0.norm2.weight"].shape[0]
    grid = math.isqrt(num_tokens - 1)
    return FFConfig(
        patch_size=patch_size, embed_dim=embed_dim,
        depth=len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")}),
        num_classes=state_dict["head.weight"].shape[0], img_size=grid * patch_size, in_chans=in_chans,
        pos_grid=state_dict["pos_encoding.pos_embed"].shape[-1],
    )


def load_checkpoint(path):
    """The model of a checkpoint written by `save_checkpoint`, loaded without arbitrary unpickling."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = checkpoint["model"] if "model" in checkpoint else checkpoint
    model = FFVisionTransformer(config_from_state_dict(state_dict))
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("idx_dir", type=Path, help="folder with the (gzipped) Fashion-MNIST idx files")
    parser.add_argument("-o", "--output", type=Path, default=Path("model.pth"), help="checkpoint to write")
    parser.add_argument("--eval-only", type=Path, metavar="CHECKPOINT",
                        help="only report the test-set top-1 of this checkpoint")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="a named model and schedule; flags given beside it override its values")
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--embed-dim", type=int, default=96)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    parser.add_argument("--crop-padding", type=int, default=0,
                        help="random shift of up to this many pixels (0: horizontal flip only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the machine is shared)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for forward and backward")
    parser.add_argument("--log-every", type=int, default=0, help="print the loss every N steps")
    preset = parser.parse_known_args(argv)[0].preset
    if preset:
        parser.set_defaults(**PRESETS[preset])  # flags given on the command line still win
    args = parser.parse_args(argv)
    if not args.idx_dir.is_dir():
        parser.error(f"idx folder {args.idx_dir} does not exist (Debian: apt-get install dataset-fashion-mnist)")
    if args.eval_only is not None and not args.eval_only.is_file():
        parser.error(f"checkpoint {args.eval_only} does not exist")
    if IMG_SIZE % args.patch_size:
        parser.error(f"--patch-size must divide {IMG_SIZE}")
    return args


def main(argv=None):
    started = time.perf_counter()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        test_images, test_labels = (torch.from_numpy(a.copy()) for a in load_split(args.idx_dir, "val"))
        if args.eval_only is None:
            train_images, train_labels = (torch.from_numpy(a.copy()) for a in load_split(args.idx_dir, "train"))
    except IdxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    test_labels = test_labels.long()

    if args.eval_only is not None:
        try:
            model = load_checkpoint(args.eval_only)
        except (pickle.UnpicklingError, RuntimeError, KeyError, ValueError) as e:
            print(f"error: {args.eval_only}: not a checkpoint of this script ({type(e).__name__}: {e})", file=sys.stderr)
            return 2
        accuracy = evaluate(model, test_images, test_labels)
        print(f"{args.eval_only}: test top-1 {100 * accuracy:.2f}% on {len(test_images)} images")
        return 0

    model, config, train_seconds, accuracy = train(args, train_images, train_labels.long(), test_images, test_labels)
    if accuracy is None:
        accuracy = evaluate(model, test_images, test_labels)
    save_checkpoint(args.output, model, config, args)
    print(f"training time {train_seconds:.0f} s ({train_seconds / 60:.1f} min) for {args.epochs} epochs")
    print(f"test top-1 {100 * accuracy:.2f}% on {len(test_images)} images")
    # CPU seconds as well as wall clock: on a shared machine the wall clock depends on the neighbours.
    print(f"checkpoint -> {args.output} (wall clock {time.perf_counter() - started:.0f} s in all, "
          f"{time.process_time():.0f} CPU s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
