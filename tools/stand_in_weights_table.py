"""Measure how smooth and input-dependent the stand-in (`random`) weights make each LeViT variant.

    python3 tools/stand_in_weights_table.py [--variants 128S,384] [--seeds 0,1] [--images 64]
        [--float64-images 16] [--ablations]

Prints, per variant and seed, what levit_trt.stability.measure_stability reports for the prepared
fp32 model on `synthetic_images(IMAGES, seed=1234)` (the agreement suite's images): fp32 vs float64
logits on the first FLOAT64_IMAGES (max and rms, over the logit std), logit cosine and top-1
agreement under input noise of std 1e-2, distinct top-1 classes of the first 32, median top-1/top-2 margin (over the logit std), between-image over
within-image logit std, and the logit std. `--ablations` adds rows for recipes that differ from
STAND_IN_RECIPE in one respect (and recipe 2's scales), the measurements the recipe's docstring cites.
The table beside STAND_IN_RECIPE in levit_trt/weights.py is this script's output.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accuracy.conftest import AGREEMENT_SEED
from levit_trt.models import prepare_model
from levit_trt.stability import StabilityReport, measure_stability
from levit_trt.variants import VARIANTS, resolve_variant
from levit_trt.weights import STAND_IN_RECIPE, StandInRecipe, make_realistic, synthetic_images

ABLATIONS: dict[str, StandInRecipe] = {
    "recipe": STAND_IN_RECIPE,
    "white-noise stem": dataclasses.replace(STAND_IN_RECIPE, stem_gradient=None),
    "residual 0.05-0.15": dataclasses.replace(STAND_IN_RECIPE, residual_norm=(0.05, 0.15)),
    "biases std 6": dataclasses.replace(STAND_IN_RECIPE, attention_bias_std=6.0),
    # recipe 2's scales inside this recipe's procedure (its calibration, timm's stem and its head
    # norms differed too): 128S float64 error 4.7e-5, noise top-1 0.83; the real recipe 2 measured
    # 8.3e-4 and 0.91 (tests/test_stand_in_weights.py run on it), and failed every variant.
    "recipe-2 scales": StandInRecipe(inner_norm=(0.5, 1.5), trunk_norm=(0.5, 1.5), residual_norm=(0.1, 0.4),
                              norm_bias_std=0.2, attention_bias_std=6.0, head_logit_std=2.0, head_fan_in=384,
                              stem_gradient=None),
}


def stand_in_model(variant_name: str, seed: int, recipe: StandInRecipe) -> torch.nn.Module:
    """The prepared model `load_model(variant, random:SEED)` gives, with `recipe` in place of the shipped one."""
    import timm

    variant = resolve_variant(variant_name)
    with torch.random.fork_rng(devices=[]):  # as levit_trt.weights.create_model draws timm's initial weights
        torch.manual_seed(seed)
        model = timm.create_model(variant.timm_name, pretrained=False)
    return prepare_model(make_realistic(model, variant, seed=seed, recipe=recipe))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--images", type=int, default=64, help="the agreement suite's 64 (accuracy/conftest.py)")
    parser.add_argument("--float64-images", type=int, default=16, help="the first N for the float64 comparison")
    parser.add_argument("--ablations", action="store_true")
    args = parser.parse_args()
    images = synthetic_images(args.images, seed=AGREEMENT_SEED)
    recipes = ABLATIONS if args.ablations else {"recipe": STAND_IN_RECIPE}
    print(f"{'variant':11s} {'recipe':19s} seed {StabilityReport.HEADER}  seconds")
    for name in args.variants.split(","):
        for label, recipe in recipes.items():
            for seed in (int(s) for s in args.seeds.split(",")):
                start = time.perf_counter()
                report = measure_stability(stand_in_model(name, seed, recipe), images,
                                            float64_images=args.float64_images)
                print(f"{resolve_variant(name).display:11s} {label:19s} {seed:4d} {report.row()}  "
                      f"{time.perf_counter() - start:.1f}", flush=True)


if __name__ == "__main__":
    main()
