"""ImageNet top-1/top-5 of every selected variant x backend x precision against the reference figure.

Passes when top-1 >= reference (levit_trt/variants.py: timm's measured top-1 of the weights loaded)
- allowance (levit_trt/thresholds.py);
on an `--imagenet-limit N` subset the allowance widens by three binomial standard errors.
Skips with the reason without `--imagenet-root`/IMAGENET_ROOT or with random weights.
Results are appended to `--accuracy-json` for `levit-trt report`.
"""

from __future__ import annotations

import pytest

from levit_trt.accuracy import append_results, evaluate
from levit_trt.data import LoaderOptions
from levit_trt.environment import machine_info
from levit_trt.thresholds import top1_threshold

pytestmark = pytest.mark.imagenet


def test_imagenet_top1(model_case, imagenet_images, backend_for, weights_spec, pytestconfig, record_property) -> None:
    images = imagenet_images(model_case.variant)  # skips before any engine is built
    backend = backend_for(model_case)
    limit = pytestconfig.getoption("--imagenet-limit")
    result = evaluate(
        backend, images.batches(), variant=model_case.variant, weights=weights_spec.describe(),
        samples=images.samples,
        extra={"imagenet_root": str(pytestconfig.getoption("--imagenet-root")), "limit": limit, "seed": LoaderOptions.seed},
    )
    variant = model_case.variant
    threshold = top1_threshold(variant.reference_top1, model_case.precision, result.images, full_set=limit is None)
    result_json = result.to_json() | {"required_top1": round(threshold.required, 3),
                                      "reference_top1": variant.reference_top1, "paper_top1": variant.published_top1}
    record_property("accuracy", result_json)
    if pytestconfig.getoption("--accuracy-json"):
        append_results(pytestconfig.getoption("--accuracy-json"), [result], machine_info())
    assert result.unreadable == 0, (
        f"{result.unreadable} images could not be decoded (e.g. {', '.join(result.unreadable_examples[:3])}); "
        f"the reference top-1 counts every image: re-extract the dataset"
    )
    assert result.top1 >= threshold.required, (
        f"{model_case.model_id}: top-1 {result.top1:.2f} on {result.images} images is below "
        f"{threshold.explain()} (reference: timm's measured top-1 of {variant.timm_pretrained_name}; the paper "
        f"reports {variant.published_top1:.1f}) (top-5 {result.top5:.2f})"
    )
