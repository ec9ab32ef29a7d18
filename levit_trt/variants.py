"""The LeViT variant table: timm names, evaluation config and published numbers, in one place.

Sources:
- reference top-1/top-5, what the accuracy thresholds start from: timm's own measurement of the
  weights we load, `levit_*.fb_dist_in1k`, with the same eval transform (224 px, crop_pct 0.9,
  bicubic): huggingface/pytorch-image-models, results/results-imagenet.csv, rows
  `levit_<size>.fb_dist_in1k` (last changed in commit 4e5207c7bb6592474ca56e28b2cf85be8f1a550f).
  A correct fp32 engine reproduces these, not the paper's figures, which are up to 0.14 points higher.
- paper top-1/top-5 (kept for reports), parameters and FLOPs: Graham et al., "LeViT: a Vision
  Transformer in ConvNet's Clothing for Faster Inference", ICCV 2021 (arXiv:2104.01136), Table 2 /
  the official facebookresearch/LeViT model table (distilled models, 1000 epochs, 224x224).
- evaluation config (input size, crop_pct, interpolation, mean/std): timm's pretrained config for
  `levit_*.fb_dist_in1k` (timm/models/levit.py, `_cfg`); `tests/test_data.py` checks it against timm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Variant:
    """One LeViT model size with everything the project needs to know about it."""

    name: str  # canonical, e.g. "levit_128s"
    display: str  # e.g. "LeViT-128S"
    timm_name: str  # architecture name in timm
    pretrained_tag: str  # timm pretrained tag, e.g. "fb_dist_in1k"
    published_top1: float  # percent, ImageNet-1k val, as the paper reports it
    published_top5: float
    reference_top1: float  # percent, ImageNet-1k val, timm's measurement of these weights: the thresholds' start
    reference_top5: float
    params_m: float
    flops_m: float
    embed_dims: tuple[int, int, int]
    num_heads: tuple[int, int, int]
    depths: tuple[int, int, int]
    key_dim: int
    input_size: int = 224
    crop_pct: float = 0.9
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def timm_pretrained_name(self) -> str:
        return f"{self.timm_name}.{self.pretrained_tag}"

    @property
    def resize_size(self) -> int:
        """Shorter-side resize before the centre crop (timm: floor(input_size / crop_pct))."""
        return int(self.input_size / self.crop_pct)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("levit_128s", "LeViT-128S", "levit_128s", "fb_dist_in1k", 76.6, 92.9, 76.520, 92.870, 7.8, 305,
                (128, 256, 384), (4, 6, 8), (2, 3, 4), 16),
        Variant("levit_128", "LeViT-128", "levit_128", "fb_dist_in1k", 78.6, 94.0, 78.486, 93.998, 9.2, 406,
                (128, 256, 384), (4, 8, 12), (4, 4, 4), 16),
        Variant("levit_192", "LeViT-192", "levit_192", "fb_dist_in1k", 80.0, 94.7, 79.858, 94.808, 11.0, 658,
                (192, 288, 384), (3, 5, 6), (4, 4, 4), 32),
        Variant("levit_256", "LeViT-256", "levit_256", "fb_dist_in1k", 81.6, 95.4, 81.506, 95.466, 18.9, 1120,
                (256, 384, 512), (4, 6, 8), (4, 4, 4), 32),
        Variant("levit_384", "LeViT-384", "levit_384", "fb_dist_in1k", 82.6, 96.0, 82.600, 96.020, 39.1, 2353,
                (384, 512, 768), (6, 9, 12), (4, 4, 4), 32),
    )
}


class UnknownVariantError(ValueError):
    """A variant name that matches none of the table."""


def resolve_variant(name: str | Variant) -> Variant:
    """Accept `384`, `LeViT-384`, `LeViT_384`, `levit_384` (any case) and return the Variant."""
    if isinstance(name, Variant):
        return name
    key = re.sub(r"^levit[-_ ]?", "", str(name).strip().lower())
    variant = VARIANTS.get(f"levit_{key}")
    if variant is None:
        valid = ", ".join(v.display for v in VARIANTS.values())
        raise UnknownVariantError(
            f"unknown LeViT variant {name!r}; valid variants: {valid} "
            f"(also accepted as e.g. '384', 'LeViT_384', 'levit_384')"
        )
    return variant


def resolve_variants(names: str | list[str]) -> list[Variant]:
    """Resolve a comma-separated string or list of names; `all` means every variant."""
    items = names.split(",") if isinstance(names, str) else list(names)
    items = [n.strip() for n in items if n.strip()]
    if items == ["all"]:
        return list(VARIANTS.values())
    return [resolve_variant(n) for n in items]
