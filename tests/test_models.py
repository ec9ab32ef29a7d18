"""The prepared model computes timm's function, has no batch norms, and has input-dependent logits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from levit_trt.models import PreparedAttention, prepare_model, set_softmax, softmax_function
from levit_trt.variants import resolve_variant
from levit_trt.weights import create_model, parse_weights, synthetic_images


@pytest.fixture(scope="module")
def timm_model() -> nn.Module:
    return create_model(resolve_variant("128S"), parse_weights("random"))


def test_prepared_model_matches_unprepared_timm_model(timm_model: nn.Module) -> None:
    prepared = prepare_model(copy.deepcopy(timm_model))
    images = synthetic_images(8, seed=21)
    with torch.no_grad():
        # A float64 copy: timm caches attention biases per device on first use, and a cast of the
        # shared fixture would leave that cache in the other dtype for later tests.
        reference = copy.deepcopy(timm_model).double()(images.double())
        got = prepared(images).double()
    # Folding changes float32 rounding only: measured max diff 1e-5 on logits of std ~0.3.
    assert (got - reference).abs().max() < 1e-4


def test_prepared_model_has_no_batch_norm_and_fixed_biases(timm_model: nn.Module) -> None:
    prepared = prepare_model(copy.deepcopy(timm_model))
    assert not [m for m in prepared.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    attention = [m for m in prepared.modules() if isinstance(m, PreparedAttention)]
    assert len(attention) == 2 + 3 + 4 + 2  # 128S: depths (2, 3, 4) plus two downsampling attentions
    assert all("attention_bias" in dict(m.named_buffers()) for m in attention)


def test_random_weights_are_not_degenerate(timm_model: nn.Module) -> None:
    """Logits must depend on the image, or parity tests on them prove nothing."""
    images = synthetic_images(16, seed=22)
    with torch.no_grad():
        logits = timm_model(images)
    assert len(set(logits.argmax(1).tolist())) >= 8  # measured: 15 distinct top-1 classes of 16
    assert logits.std(dim=0).mean() > 0.05 * logits.std()  # variation across images, not a constant


def test_unknown_softmax_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown softmax implementation 'fast'"):
        softmax_function("fast")


def test_set_softmax_swaps_the_function(timm_model: nn.Module) -> None:
    prepared = prepare_model(copy.deepcopy(timm_model))
    calls = []

    def counting(scores: torch.Tensor) -> torch.Tensor:
        calls.append(scores.shape)
        return scores.softmax(-1)

    for module in prepared.modules():
        if isinstance(module, PreparedAttention):
            module.softmax = counting
    with torch.no_grad():
        prepared(synthetic_images(1))
    assert len(calls) == 11
    set_softmax(prepared, "native")
    with pytest.raises(ValueError, match="no prepared attention layers"):
        set_softmax(nn.Linear(2, 2), "native")
