"""Fixtures of the accuracy suites: reference logits for agreement, ImageNet decoded once."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from levit_trt.data import Batch, DecodedImages, LoaderOptions, decode_images, imagenet_loader
from levit_trt.variants import Variant
from levit_trt.weights import WeightsSpec, create_model, synthetic_images

AGREEMENT_IMAGES = 64  # enough for agreement fractions in steps of 1/64, ~0.3 s per backend on 2 CPU cores
AGREEMENT_SEED = 1234  # images drawn apart from the weights' calibration images (seed + 1)


@pytest.fixture(scope="session")
def agreement_images() -> Callable[[Variant], torch.Tensor]:
    """`agreement_images(variant)`: the images every backend and the reference see."""
    return lambda variant: synthetic_images(AGREEMENT_IMAGES, variant.input_size, seed=AGREEMENT_SEED)


@pytest.fixture(scope="session")
def reference_logits(weights_spec: WeightsSpec, agreement_images: Callable[[Variant], torch.Tensor]
                     ) -> Callable[[Variant], torch.Tensor]:
    """`reference_logits(variant)`: timm's own model (not our prepared one) in fp32 on the CPU, once per variant."""
    computed: dict[str, torch.Tensor] = {}

    def get(variant: Variant) -> torch.Tensor:
        if variant.name not in computed:
            with torch.inference_mode():
                logits = create_model(variant, weights_spec)(agreement_images(variant))
            distinct = int(logits.argmax(dim=1).unique().numel())
            # Agreement on images that all get one class would prove nothing (issue 2, item 7).
            if distinct < AGREEMENT_IMAGES // 4:
                raise RuntimeError(f"{variant.name} with weights {weights_spec.describe()} gives only {distinct} "
                                   f"distinct classes on {AGREEMENT_IMAGES} images: degenerate weights")
            computed[variant.name] = logits
        return computed[variant.name]

    return get


@dataclass(frozen=True)
class StreamedImages:
    """A loader read afresh on each pass: for sets too large to keep decoded in memory."""

    loader: DataLoader
    samples: list[tuple[Path, int]]

    def batches(self) -> Iterator[Batch]:
        return iter(self.loader)


def _fits_in_memory(images: int, variant: Variant) -> bool:
    """Decoded uint8 crops (7.5 GB for the full val set) are kept when they take under half the RAM."""
    needed = images * 3 * variant.input_size ** 2
    return needed < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


@pytest.fixture(scope="session")
def imagenet_images(pytestconfig: pytest.Config, weights_spec: WeightsSpec
                    ) -> Callable[[Variant], DecodedImages | StreamedImages]:
    """`imagenet_images(variant)`: the val set (or `--imagenet-limit` subset) through the eval transform.

    Decoded once per preprocessing config and shared by every variant, backend and precision, so
    all but the first evaluation are bound by the model; skips with the reason when there is no
    ImageNet or the weights have no published accuracy.
    """
    root = pytestconfig.getoption("--imagenet-root")
    limit = pytestconfig.getoption("--imagenet-limit")
    sets: dict[tuple[object, ...], DecodedImages | StreamedImages] = {}

    def get(variant: Variant) -> DecodedImages | StreamedImages:
        if not root:
            pytest.skip("no ImageNet: pass --imagenet-root ROOT (holding val/<wnid>/<image>) or set IMAGENET_ROOT")
        if weights_spec.kind == "random":
            pytest.skip("random weights have no published accuracy: pass --weights pretrained or a checkpoint")
        key = (variant.resize_size, variant.input_size, variant.interpolation)
        if key not in sets:
            loader = imagenet_loader(root, variant, LoaderOptions(
                limit=limit, classes=pytestconfig.getoption("--imagenet-classes")))
            samples = loader.dataset.samples  # type: ignore[attr-defined]
            sets[key] = (decode_images(loader) if _fits_in_memory(len(samples), variant)
                         else StreamedImages(loader, samples))
        return sets[key]

    return get
