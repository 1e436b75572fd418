"""The feed-forward-only vision transformer (Melas-Kyriazi 2021), with the original module names.

Every attention layer of a ViT is replaced by an MLP over the token axis. Module and parameter
names match the released code exactly, so its state dicts load with ``strict=True``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ffx.export.configs import FFConfig

LAYER_NORM_EPS = 1e-6


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear. Dropout of the training code is the identity at inference."""

    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LinearBlock(nn.Module):
    """Feature MLP over the embedding dim, then token MLP over the (transposed) token axis."""

    def __init__(self, config: FFConfig):
        super().__init__()
        self.mlp1 = Mlp(config.embed_dim, config.feature_hidden)
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=LAYER_NORM_EPS)
        self.mlp2 = Mlp(config.num_tokens, config.token_hidden)
        self.norm2 = nn.LayerNorm(config.num_tokens, eps=LAYER_NORM_EPS)  # normalizes over tokens

    def forward(self, x):
        x = x + self.mlp1(self.norm1(x))
        x = x.transpose(-2, -1)
        x = x + self.mlp2(self.norm2(x))
        return x.transpose(-2, -1)


class PatchEmbed(nn.Module):
    def __init__(self, config: FFConfig):
        super().__init__()
        self.proj = nn.Conv2d(config.in_chans, config.embed_dim, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, x):
        return self.proj(x)


class LearnedPositionalEncoding(nn.Module):
    """A learned (1, E, g, g) grid, bilinearly resized to the patch grid when the sizes differ."""

    def __init__(self, config: FFConfig):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, config.pos_grid, config.pos_grid))
        self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_pos_embed, std=0.02)

    def token_embedding(self, grid_h, grid_w):
        """(1, 1 + grid_h * grid_w, E): the cls position followed by the flattened patch grid."""
        grid = self.pos_embed
        if grid.shape[-2:] != (grid_h, grid_w):
            grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
        return torch.cat([self.cls_pos_embed, grid.flatten(2).transpose(1, 2)], dim=1)


class FFVisionTransformer(nn.Module):
    def __init__(self, config: FFConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        self.pos_encoding = LearnedPositionalEncoding(config)
        self.blocks = nn.ModuleList(LinearBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.embed_dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(config.embed_dim, config.num_classes)
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def forward(self, x, pos_embed=None):
        """Logits for images `x` (B, C, H, W). `pos_embed` (1, T, E) overrides the computed one,
        which is how export folds the position-embedding resize into a constant."""
        x = self.patch_embed(x)
        if pos_embed is None:
            pos_embed = self.pos_encoding.token_embedding(x.shape[-2], x.shape[-1])
        cls_tokens = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls_tokens, x.flatten(2).transpose(1, 2)], dim=1) + pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def _init_weights(module):
    # The original uses trunc_normal_(std=.02) with its default bounds of +-2 (absolute), i.e.
    # +-100 standard deviations: the same distribution as normal_, which is much faster.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())
