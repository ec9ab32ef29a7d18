"""The variant table: name resolution, published numbers, attention shapes against the real model."""

from __future__ import annotations

import pytest
import torch

from levit_trt.attention_shapes import softmax_shapes
from levit_trt.variants import VARIANTS, UnknownVariantError, resolve_variant, resolve_variants


@pytest.mark.parametrize("spelling", ["384", "LeViT-384", "LeViT_384", "levit_384", "LEVIT-384", " levit384 "])
def test_every_documented_spelling_resolves(spelling: str) -> None:
    assert resolve_variant(spelling).name == "levit_384"


def test_128s_spellings() -> None:
    assert resolve_variant("128S").name == resolve_variant("LeViT-128S").name == "levit_128s"
    assert resolve_variant("128").name == "levit_128"


def test_unknown_variant_lists_valid_ones() -> None:
    with pytest.raises(UnknownVariantError, match=r"unknown LeViT variant '512'.*LeViT-128S.*LeViT-384"):
        resolve_variant("512")


def test_all_and_lists() -> None:
    assert [v.name for v in resolve_variants("all")] == list(VARIANTS)
    assert [v.name for v in resolve_variants("128S, 256")] == ["levit_128s", "levit_256"]


def test_published_numbers_match_the_paper() -> None:
    # LeViT paper (arXiv:2104.01136) distilled models: top-1 and FLOPs (M).
    expected = {"levit_128s": (76.6, 305), "levit_128": (78.6, 406), "levit_192": (80.0, 658),
                "levit_256": (81.6, 1120), "levit_384": (82.6, 2353)}
    assert {n: (v.published_top1, v.flops_m) for n, v in VARIANTS.items()} == expected


def test_reference_numbers_are_timms_measurement_of_the_weights_loaded() -> None:
    # huggingface/pytorch-image-models results/results-imagenet.csv, rows levit_<size>.fb_dist_in1k: top1, top5.
    expected = {"levit_128s": (76.520, 92.870), "levit_128": (78.486, 93.998), "levit_192": (79.858, 94.808),
                "levit_256": (81.506, 95.466), "levit_384": (82.600, 96.020)}
    assert {n: (v.reference_top1, v.reference_top5) for n, v in VARIANTS.items()} == expected
    assert all(v.pretrained_tag == "fb_dist_in1k" for v in VARIANTS.values())  # the weights those rows measured


@pytest.mark.parametrize("name", list(VARIANTS))
def test_table_matches_timm_architecture(name: str) -> None:
    import timm

    variant = VARIANTS[name]
    model = timm.create_model(variant.timm_name, pretrained=False)
    assert tuple(stage.blocks[0].attn.num_heads for stage in model.stages) == variant.num_heads
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    # timm counts both distillation heads; the paper's figure is within 10% of it.
    assert params_m == pytest.approx(variant.params_m, rel=0.1)


@pytest.mark.parametrize("name", ["levit_128s", "levit_192"])
def test_attention_shapes_match_the_softmax_inputs_of_the_model(name: str) -> None:
    import timm

    variant = VARIANTS[name]
    model = timm.create_model(variant.timm_name, pretrained=False).eval()
    seen: list[tuple[int, ...]] = []
    original = torch.Tensor.softmax

    def recording_softmax(self: torch.Tensor, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    torch.Tensor.softmax = recording_softmax  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            model(torch.randn(3, 3, 224, 224))
    finally:
        torch.Tensor.softmax = original  # type: ignore[method-assign]
    assert sorted(set(seen)) == sorted(softmax_shapes(variant, 3))
