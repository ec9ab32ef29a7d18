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


# Measured with tools/agreement_floors_table.py on CPU: levit_128s, the stand-in weights `random:0`,
# `random:1`, `random:2` (recipe 3, levit_trt/weights.py) and the 64 `synthetic_images` of
# accuracy/test_agreement.py, against timm's unprepared model in fp32 (top-1 agreement / mean
# logit cosine, worst image's cosine in brackets):
#   fp32  ONNX Runtime: 1.000 / 1.0000000 (1.000000) on all three.
#   fp16  prepared model cast to fp16 in PyTorch on the CPU: 0.984-1.000 / 0.999997-0.999998 (0.99998-0.99999);
#         0.984 is one near-tie image of 64 (the same weights gave 1.000 in another run).
#   bf16  the same in bf16: 0.969-0.984 / 0.99980-0.99983 (0.99937-0.99949).
#   int8  the onnxruntime int8 backend (default policy, 64 synthetic calibration images): 0.594-0.703 /
#         0.946-0.973 (0.861-0.939). Below issue 16's aim (0.85 / 0.98); the floor is set from what
#         is measured, not from the aim. Why, measured on random:0 (same images, tools/ and ONNX
#         Runtime; mean cosine 0.963 with the default policy): the loss is the 21 Adds between
#         activations (the residual adds re-quantize the trunk to INT8 at every block): keeping every Add float gives 0.812 / 0.9909
#         (random:1 0.797 / 0.9884, random:2 0.844 / 0.9917), keeping any one float gains only
#         0.001-0.004 of cosine (spread evenly, no one bad layer), keeping all Conv, Gemm, MatMul or
#         Mul inputs float instead 0.966, 0.964, 0.968, 0.963. The stand-in's branches are small
#         (norm scale 0.04-0.1, needed for the float64 and noise bars), so what each block adds is
#         of the order of the trunk's 8-bit rounding. No activation outliers: |x| max / rms 10-16 per
#         tensor, largest channel max / median 1.7-3.2. Calibration is not decisive: 16, 64, 256
#         images of seed 0 gave 0.962, 0.963, 0.966; seed 5 0.950; Percentile 99.99, 99.9999, 100
#         0.954, 0.958, 0.955. A policy keeping the residual Adds float (as ViT PTQ work such as
#         PTQ4ViT quantizes the matmul inputs, not the residual stream) is the lever, not the weights.
# The floors leave room for GPU engines, which keep more of the work in low precision than these CPU
# casts; tests/test_agreement_floors.py shows that one doubled Q/DQ scale, one dropped attention
# bias, a softmax over the wrong axis in one head group, or another batch's logits fail them.
AGREEMENT_FLOORS: dict[str, AgreementFloor] = {
    "fp32": AgreementFloor(top1=0.98, cosine=0.99999),  # on 64 images 0.98 allows one flipped near-tie
    "fp16": AgreementFloor(top1=0.98, cosine=0.9995),
    "bf16": AgreementFloor(top1=0.9, cosine=0.999),
    "int8": AgreementFloor(top1=0.5, cosine=0.93),
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
