"""An independent, functional transcription of the original network's forward pass.

It works directly on a state dict with torch.nn.functional, following the published code's
order of operations (patch conv, per-forward bilinear resize of the position grid when the
patch grid differs, cls token, blocks of feature-MLP then token-MLP, final norm, cls readout).
It shares no code with ffx.export.model, so agreement between the two is evidence that ffx
computes what the released network computes.
"""

import torch
import torch.nn.functional as F


def reference_forward(state_dict, images, eps=1e-6):
    sd = {k: v.float() for k, v in state_dict.items()}
    w = sd["patch_embed.proj.weight"]
    x = F.conv2d(images, w, sd["patch_embed.proj.bias"], stride=w.shape[-1])
    batch, dim, grid_h, grid_w = x.shape
    pos = sd["pos_encoding.pos_embed"]
    if pos.shape[-2:] != (grid_h, grid_w):
        pos = F.interpolate(pos, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat((sd["cls_token"].expand(batch, -1, -1), x), dim=1)
    pos = torch.cat([sd["pos_encoding.cls_pos_embed"], pos.flatten(2).transpose(1, 2)], dim=1)
    x = x + pos
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))

    def mlp(prefix, t):
        t = F.linear(t, sd[f"{prefix}.fc1.weight"], sd[f"{prefix}.fc1.bias"])
        t = F.gelu(t)  # exact (erf) GELU, as nn.GELU()
        return F.linear(t, sd[f"{prefix}.fc2.weight"], sd[f"{prefix}.fc2.bias"])

    for i in range(depth):
        p = f"blocks.{i}"
        x = x + mlp(f"{p}.mlp1", F.layer_norm(x, (dim,), sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"], eps))
        x = x.transpose(-2, -1)
        tokens = x.shape[-1]
        x = x + mlp(f"{p}.mlp2", F.layer_norm(x, (tokens,), sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"], eps))
        x = x.transpose(-2, -1)
    x = F.layer_norm(x, (dim,), sd["norm.weight"], sd["norm.bias"], eps)
    return F.linear(x[:, 0], sd["head.weight"], sd["head.bias"])
