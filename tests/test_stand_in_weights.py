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
# say little about the image: logits' std between images (per class) over their std within an
# image (over classes). Measured 0.98-1.00 on the recipe (independent logits per image give 1);
# timm's own init (logits of std 4e-5 that barely depend on the image) gave 0.52, and the recipe
# with a per-class offset of std 4 added to the classifier's bias 0.65.
BETWEEN_OVER_WITHIN = 0.9
# All the suite's 64 images for the noise response (on the first 32 alone one flipped near-tie of
# LeViT-128 is 0.969, under the bar; of 64 it is 0.984); distinct classes of the first 32, as the
# issue counts them. float64 of LeViT-384 is the costliest part: the first 16 show the rounding.
FLOAT64_IMAGES = 16


def _failed_bars(report: StabilityReport) -> list[str]:
    """Every bar `report` misses, so one run shows all that a bad recipe breaks."""
    bars = {
        f"float64 error {report.float64_error:.1e} > {FLOAT64_ERROR}": report.float64_error <= FLOAT64_ERROR,
        f"noise cosine mean {report.noise_cosine_mean:.6f} < {NOISE_COSINE_MEAN}":
            report.noise_cosine_mean >= NOISE_COSINE_MEAN,
        f"noise cosine min {report.noise_cosine_min:.6f} < {NOISE_COSINE_MIN}": report.noise_cosine_min >= NOISE_COSINE_MIN,
        f"noise top-1 {report.noise_top1:.3f} < {NOISE_TOP1}": report.noise_top1 >= NOISE_TOP1,
        f"distinct top-1 {report.distinct_top1}/{report.distinct_of} < {DISTINCT_TOP1}/32":
            report.distinct_of == 32 and report.distinct_top1 >= DISTINCT_TOP1,
        f"median margin {report.median_margin:.3f} < {MEDIAN_MARGIN}": report.median_margin >= MEDIAN_MARGIN,
        f"between/within {report.between_over_within:.3f} < {BETWEEN_OVER_WITHIN}":
            report.between_over_within >= BETWEEN_OVER_WITHIN,
    }
    return [bar for bar, met in bars.items() if not met]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_stand_in_weights_are_smooth_and_input_dependent(name: str) -> None:
    variant = VARIANTS[name]
    images = synthetic_images(AGREEMENT_IMAGES, variant.input_size, seed=AGREEMENT_SEED)
    model = load_model(variant, parse_weights("random"))
    report = measure_stability(model, images, noise_std=NOISE_STD, float64_images=FLOAT64_IMAGES)
    print(name, StabilityReport.HEADER, "\n", report.row())
    assert not _failed_bars(report), f"{name}: {_failed_bars(report)}"


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
