"""Every attention layer's shape in the five LeViT variants, from the variant table (timm's levit.py layout).

Stage i attends over its tokens with num_heads[i] heads, value heads 2x the key size (attn_ratio 2);
the two downsample attentions between stages take queries from the stride-2 grid and keys from the
full one, with embed_dims[i] // key_dim heads and value heads 4x the key size (attn_ratio 4).
tests/test_attention_shapes.py checks this list against the modules timm builds.
"""

from __future__ import annotations

from dataclasses import dataclass

from levit_trt.variants import VARIANTS, Variant

PATCH_STRIDE = 16  # LeViT's stem: four stride-2 convolutions
SELF_ATTENTION_VALUE_RATIO = 2
DOWNSAMPLE_VALUE_RATIO = 4


@dataclass(frozen=True)
class AttentionShape:
    """One attention layer: softmax(q k^T * scale + bias) v over `heads` heads, per image."""

    variant: str  # e.g. "levit_128s"
    layer: str  # "stage1" .. "stage3" or "downsample1", "downsample2"
    heads: int
    queries: int
    keys: int
    key_dim: int
    value_dim: int

    @property
    def scale(self) -> float:
        return self.key_dim ** -0.5

    @property
    def downsample(self) -> bool:
        return self.queries != self.keys

    def flops(self, batch: int) -> int:
        """Multiply-adds of both products, counted as 2 flops each (softmax and bias not counted)."""
        return 2 * batch * self.heads * self.queries * self.keys * (self.key_dim + self.value_dim)

    def min_bytes(self, batch: int, element_bytes: int) -> int:
        """q, k, v and bias read once and the output written once."""
        per_image = self.heads * (self.queries * self.key_dim + self.keys * (self.key_dim + self.value_dim)
                                  + self.queries * self.value_dim)
        return element_bytes * (batch * per_image + self.heads * self.queries * self.keys)


def stage_tokens(variant: Variant) -> tuple[int, int, int]:
    """Tokens per image in stages 1..3 (196, 49, 16 at 224x224)."""
    side = variant.input_size // PATCH_STRIDE
    tokens = [side * side]
    for _ in range(2):
        side = (side - 1) // 2 + 1
        tokens.append(side * side)
    return tokens[0], tokens[1], tokens[2]


def variant_attention_shapes(variant: Variant) -> list[AttentionShape]:
    """The variant's attention layers in network order (one entry per distinct layer, not per block)."""
    tokens = stage_tokens(variant)
    shapes = []
    for stage in range(3):
        n = tokens[stage]
        shapes.append(AttentionShape(variant.name, f"stage{stage + 1}", variant.num_heads[stage], n, n,
                                     variant.key_dim, SELF_ATTENTION_VALUE_RATIO * variant.key_dim))
        if stage < 2:
            shapes.append(AttentionShape(variant.name, f"downsample{stage + 1}",
                                         variant.embed_dims[stage] // variant.key_dim, tokens[stage + 1], n,
                                         variant.key_dim, DOWNSAMPLE_VALUE_RATIO * variant.key_dim))
    return shapes


def softmax_shapes(variant: Variant, batch: int) -> list[tuple[int, int, int, int]]:
    """Distinct softmax input shapes [B, heads, queries, keys] of the variant's attention layers, in network order."""
    return list(dict.fromkeys((batch, s.heads, s.queries, s.keys) for s in variant_attention_shapes(variant)))


LEVIT_ATTENTION_SHAPES: tuple[AttentionShape, ...] = tuple(
    shape for variant in VARIANTS.values() for shape in variant_attention_shapes(variant)
)
