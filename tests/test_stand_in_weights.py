"""The stand-in (`random`) weights give every variant a smooth, input-dependent network (issue 16).

Measured on the agreement suite's images (accuracy/conftest.py): the prepared fp32 model against
itself in float64, under input noise, and for how well it tells the images apart.
"""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch

from accuracy.conftest import AGREEMENT_IMAGES, AGREEMENT_SEED
from levit_trt.models import load_model
from levit_trt.stability import StabilityReport, measure_stability
from levit_trt.variants import VARIANTS, resolve_variant
from levit_trt.weights import STAND_IN_MEASURED, WeightsError, make_realistic, parse_weights, synthetic_images

# The bars of issue 16. What the recipe measured is in levit_trt/weights.py, beside STAND_IN_RECIPE.
FLOAT64_ERROR = 1e-4  # max |fp32 - float64| logit / logit std
NOISE_STD = 1e-2
NOISE_COSINE_MEAN, NOISE_COSINE_MIN, NOISE_TOP1 = 0.999, 0.99, 0.97
DISTINCT_TOP1 = 16  # of the first 32 images
MEDIAN_MARGIN = 0.05  # top-1 minus top-2 logit / logit std
# Logits that were mostly a fixed per-class offset would score well on everything above and still
# say little about the image; measured 0.97-1.00 (independent logits per image give 1).
BETWEEN_OVER_WITHIN = 0.5
# float64 of LeViT-384 on 64 images takes ~20 s on one core: the first 16 show the rounding as well.
FLOAT64_IMAGES = 16


@pytest.fixture(scope="module")
def reports() -> dict[str, StabilityReport]:
    """One measurement per variant, made on first use."""
    return {}


def _report(reports: dict[str, StabilityReport], name: str) -> StabilityReport:
    if name not in reports:
        variant = VARIANTS[name]
        images = synthetic_images(AGREEMENT_IMAGES, variant.input_size, seed=AGREEMENT_SEED)
        model = load_model(variant, parse_weights("random"))
        reports[name] = measure_stability(model, images, noise_std=NOISE_STD, float64_images=FLOAT64_IMAGES)
    return reports[name]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_stand_in_weights_are_smooth_and_input_dependent(name: str, reports: dict[str, StabilityReport]) -> None:
    report = _report(reports, name)
    print(name, StabilityReport.HEADER, "\n", report.row())
    assert report.float64_error <= FLOAT64_ERROR, report
    assert report.noise_cosine_mean >= NOISE_COSINE_MEAN and report.noise_cosine_min >= NOISE_COSINE_MIN, report
    assert report.noise_top1 >= NOISE_TOP1, report
    assert report.distinct_of == 32 and report.distinct_top1 >= DISTINCT_TOP1, report
    assert report.median_margin >= MEDIAN_MARGIN, report
    assert report.between_over_within >= BETWEEN_OVER_WITHIN, report


def test_every_variant_was_measured() -> None:
    assert set(STAND_IN_MEASURED) == set(VARIANTS)


def _fresh(timm_name: str) -> torch.nn.Module:
    return timm.create_model(timm_name, pretrained=False)


def test_a_model_the_recipe_was_not_measured_on_is_refused() -> None:
    variant = resolve_variant("128S")
    with pytest.raises(WeightsError, match=r"only timm's linear-mode distilled LeViT.*LeViT-128S"):
        make_realistic(_fresh("levit_conv_128s"), variant)
    with pytest.raises(WeightsError, match=r"this model .* is \('LevitDistilled', False, \(4, 4, 4\)"):
        make_realistic(_fresh("levit_128"), variant)  # another variant's model
    unmeasured = dataclasses.replace(variant, name="levit_128xs", display="LeViT-128XS")
    with pytest.raises(WeightsError, match="recipe was not measured on LeViT-128XS; measure it with tools/"):
        make_realistic(_fresh("levit_128s"), unmeasured)
