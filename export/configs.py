"""Named configurations of the feed-forward-only ViT, each with its evaluation preprocessing.

Like timm's registry + pretrained_cfg: an architecture name resolves to the network's shape and
to the transform its weights were evaluated with, so the ONNX model can carry both.
"""

import dataclasses

from ffx.errors import FfxError
from ffx.metadata import Preprocess


@dataclasses.dataclass(frozen=True)
class FFConfig:
    """Shape of one feed-forward-only ViT. `num_tokens` is fixed by img_size and patch_size."""

    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_classes: int = 1000
    img_size: int = 224
    in_chans: int = 3
    mlp_ratio: float = 4.0
    pos_grid: int = 14  # side of the learned position-embedding grid (14 in the released code)

    def __post_init__(self):
        for name in ("patch_size", "embed_dim", "depth", "num_classes", "img_size", "in_chans", "pos_grid"):
            if getattr(self, name) <= 0:
                raise FfxError(f"config: {name} must be positive, got {getattr(self, name)}")
        if self.img_size % self.patch_size:
            raise FfxError(f"config: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def grid(self):
        return self.img_size // self.patch_size

    @property
    def num_tokens(self):
        return 1 + self.grid**2

    @property
    def feature_hidden(self):
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def token_hidden(self):
        return int(self.num_tokens * self.mlp_ratio)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise FfxError(f"config: unknown fields {sorted(unknown)}")
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    config: FFConfig
    preprocess: Preprocess
    labels: str  # "imagenet1k" or "" when the class names are not known


DEIT_EVAL = Preprocess(input_size=(3, 224, 224), resize=256, interpolation="bicubic")

ARCHITECTURES = {
    "ff_tiny": Architecture("ff_tiny", FFConfig(patch_size=16, embed_dim=192, depth=12), DEIT_EVAL, "imagenet1k"),
    "ff_base": Architecture("ff_base", FFConfig(patch_size=16, embed_dim=768, depth=12), DEIT_EVAL, "imagenet1k"),
    "ff_large": Architecture("ff_large", FFConfig(patch_size=32, embed_dim=1024, depth=24), DEIT_EVAL, "imagenet1k"),
}
ALIASES = {"linear_tiny": "ff_tiny", "linear_base": "ff_base", "linear_large": "ff_large"}


def get_architecture(name):
    key = ALIASES.get(name, name)
    if key not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES) + sorted(ALIASES))
        raise FfxError(f"unknown architecture {name!r}; known: {known}")
    return ARCHITECTURES[key]


def default_preprocess(config):
    """DeiT-style evaluation transform scaled to a custom input size (crop fraction 0.875)."""
    if config.img_size == 224:
        return DEIT_EVAL
    return dataclasses.replace(
        DEIT_EVAL,
        input_size=(config.in_chans, config.img_size, config.img_size),
        resize=round(config.img_size / 0.875),
    )
