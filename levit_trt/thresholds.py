"""How much accuracy each precision may lose, and the checks that apply those numbers.

Two tables, each the only place its numbers live:
- `TOP1_ALLOWANCE`: points of ImageNet top-1 an engine may fall below the reference figure
  (levit_trt/variants.py `reference_top1`: timm's measurement of the weights we load, which a
  correct fp32 run reproduces; not the paper's, up to 0.14 points higher), on the full 50,000-image val set.
- `AGREEMENT_FLOORS`: how closely a backend must reproduce PyTorch fp32 (timm's own model) on the
  same images and weights, for the agreement suite that runs without ImageNet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Source: issue 7 ("fp32 and fp16: 0.3 points on the full set; int8: 1.0 point"), the margins the
# reference project accepted for its hand-measured engines. bf16 is not in the issue: it keeps 8
# mantissa bits to fp16's 11, so we allow more (0.5); a GPU run should confirm it.
TOP1_ALLOWANCE: dict[str, float] = {"fp32": 0.3, "fp16": 0.3, "bf16": 0.5, "int8": 1.0}

# A subset of n images measures top-1 with a binomial standard error sqrt(p(1-p)/n); the
# allowance widens by this many of them. Three sigmas: a correct engine fails a subset run with
# probability 0.13% per case (one-sided normal tail).
SUBSET_SIGMAS = 3.0


@dataclass(frozen=True)
class Top1Threshold:
    """The lowest top-1 (percent) that passes, and how it was made."""

    reference: float  # Variant.reference_top1
    allowance: float  # from TOP1_ALLOWANCE
    sampling_error: float  # one binomial standard error in points; 0 on the full set
    sigmas: float

    @property
    def required(self) -> float:
        return self.reference - self.allowance - self.sigmas * self.sampling_error

    def explain(self) -> str:
        text = f"reference {self.reference:.2f} - allowance {self.allowance:.2f}"
        if self.sampling_error:
            text += f" - {self.sigmas:g} x sampling error {self.sampling_error:.2f}"
        return f"{text} = {self.required:.2f}"


def top1_threshold(reference: float, precision: str, images: int, full_set: bool) -> Top1Threshold:
    """The top-1 bar for `precision`: the table's allowance, widened on a subset of `images` images."""
    if precision not in TOP1_ALLOWANCE:
        raise KeyError(f"no top-1 allowance for precision {precision!r}; add it to TOP1_ALLOWANCE "
                       f"(levit_trt/thresholds.py) with its source")
    if images <= 0:
        raise ValueError(f"need at least one image to set a threshold, got {images}")
    p = reference / 100.0
    sampling_error = 0.0 if full_set else 100.0 * math.sqrt(p * (1.0 - p) / images)
    return Top1Threshold(reference, TOP1_ALLOWANCE[precision], sampling_error, SUBSET_SIGMAS)


@dataclass(frozen=True)
class AgreementFloor:
    top1: float  # fraction of images whose top-1 class matches PyTorch fp32
    cosine: float  # mean over images of the cosine between the two logit vectors


# Measured on CPU with levit_128s, weights `random:0`, `random:1`, `random:2` and the 64
# `synthetic_images` accuracy/test_agreement.py uses, against timm's unprepared model in fp32:
#   fp32  ONNX Runtime, prepared PyTorch model: agreement 1.0, cosine 1.0000000 (worst image 0.9999998).
#   fp16  prepared model cast to fp16 in PyTorch on the CPU: agreement 0.98-1.0, cosine 0.9993-0.9999.
#   bf16  the same in bf16: agreement 0.86-0.92, cosine 0.992-0.997.
#   int8  ONNX Runtime static Q/DQ (symmetric, per-channel weights, synthetic calibration), seeds 0-1:
#         agreement 0.34-0.48, cosine 0.87-0.93; the onnxruntime int8 backend (default policy, 64
#         synthetic calibration images), seeds 0-2: agreement 0.41-0.42, cosine 0.93-0.95.
# Random weights amplify rounding (fp32 and float64 differ by up to 1e-3 on logits of std 0.3, and
# the closest top-1/top-2 margins are 4e-4 to 1e-3), so the floors sit below those numbers;
# pretrained weights agree far better. A broken backend (logits of other images, or the mean
# logits) scores cosine 0.15-0.45 and near-zero agreement, well under every floor.
AGREEMENT_FLOORS: dict[str, AgreementFloor] = {
    "fp32": AgreementFloor(top1=0.95, cosine=0.9999),  # 0.95: near-ties (margins ~1e-3) may flip
    "fp16": AgreementFloor(top1=0.85, cosine=0.99),  # TensorRT fp16 may keep more in fp16 than PyTorch
    "bf16": AgreementFloor(top1=0.75, cosine=0.98),
    "int8": AgreementFloor(top1=0.33, cosine=0.9),  # the default policy measured 0.41-0.42 / 0.93-0.95
}


@dataclass(frozen=True)
class Agreement:
    top1: float
    cosine: float
    cosine_min: float
    images: int

    def meets(self, floor: AgreementFloor) -> bool:
        return self.top1 >= floor.top1 and self.cosine >= floor.cosine


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> Agreement:
    """Top-1 agreement and logit cosine of `logits` against `reference`, both [N, classes]."""
    if logits.shape != reference.shape:
        raise ValueError(f"logits of shape {tuple(logits.shape)} cannot be compared with the "
                         f"reference's {tuple(reference.shape)}")
    logits, reference = logits.double().cpu(), reference.double().cpu()
    cosine = torch.nn.functional.cosine_similarity(logits, reference, dim=1)
    return Agreement(
        top1=float((logits.argmax(dim=1) == reference.argmax(dim=1)).double().mean()),
        cosine=float(cosine.mean()), cosine_min=float(cosine.min()), images=len(reference),
    )
