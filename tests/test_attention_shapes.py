"""levit_trt.attention_shapes against the attention modules timm builds for each variant (CPU)."""

from __future__ import annotations

import pytest

from levit_trt.attention_shapes import LEVIT_ATTENTION_SHAPES, variant_attention_shapes
from levit_trt.variants import VARIANTS


@pytest.mark.parametrize("name", list(VARIANTS))
def test_shapes_match_timm_modules(name):
    timm = pytest.importorskip("timm")
    model = timm.create_model(VARIANTS[name].timm_name, pretrained=False)
    found = []
    for module in model.modules():
        if not hasattr(module, "attention_biases"):
            continue
        keys = module.attention_bias_idxs.shape[-1]
        queries = module.attention_bias_idxs.shape[0]
        entry = (module.num_heads, queries, keys, module.key_dim, module.val_dim, module.scale)
        if entry not in found:
            found.append(entry)
    expected = [(s.heads, s.queries, s.keys, s.key_dim, s.value_dim, pytest.approx(s.scale))
                for s in variant_attention_shapes(VARIANTS[name])]
    assert found == expected


def test_every_variant_has_five_layers_and_kernel_sizes():
    assert len(LEVIT_ATTENTION_SHAPES) == 5 * len(VARIANTS)
    assert {(s.queries, s.keys) for s in LEVIT_ATTENTION_SHAPES} == {(196, 196), (49, 196), (49, 49), (16, 49),
                                                                      (16, 16)}
    assert {s.key_dim for s in LEVIT_ATTENTION_SHAPES} == {16, 32}
    assert {s.value_dim for s in LEVIT_ATTENTION_SHAPES} == {32, 64, 128}
