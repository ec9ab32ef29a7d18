"""How smooth and how input-dependent a model's logits are: what stand-in weights must show.

A numeric test of a backend against PyTorch fp32 proves something only if the reference network
rounds little (fp32 close to float64), is not chaotic (a small input change moves the logits
little) and still tells images apart (many top-1 classes, margins that are not ties).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class StabilityReport:
    """The measurements of `measure_stability`, each relative to the logits' own spread."""

    images: int
    logit_std: float  # std of all fp32 logits of all images
    float64_error: float  # max |fp32 - float64| logit difference / logit_std
    float64_error_rms: float  # root mean square of that difference / logit_std
    noise_cosine_mean: float  # cosine between the logits of an image and of the image plus noise
    noise_cosine_min: float
    noise_top1: float  # fraction of images whose top-1 class survives the noise
    distinct_top1: int  # distinct top-1 classes over the first `distinct_of` images
    distinct_of: int
    median_margin: float  # median top-1 minus top-2 logit / logit_std
    between_over_within: float  # std between images (per class) / std within an image (over classes)

    def row(self) -> str:
        return (f"{self.float64_error:9.1e} {self.float64_error_rms:9.1e} {self.noise_cosine_mean:8.6f} {self.noise_cosine_min:8.6f} "
                f"{self.noise_top1:5.3f} {self.distinct_top1:3d}/{self.distinct_of} {self.median_margin:6.3f} "
                f"{self.between_over_within:6.3f} {self.logit_std:6.3f}")

    HEADER = "fp64-max  fp64-rms  cos-mean cos-min  top-1 distinct margin betw/in  std"


def cast_logits(model: nn.Module, images: torch.Tensor, dtype: torch.dtype = torch.float32,
                chunk: int = 16) -> torch.Tensor:
    """Logits of a copy of `model` cast to `dtype` (model and images), in chunks of `chunk` images.

    Below float32 (fp16, bf16 on the CPU) the logits come back as float32, so they can be compared.
    The caller's model is left as it is.
    """
    cast = model if next(model.parameters()).dtype == dtype else copy.deepcopy(model).to(dtype)
    with torch.inference_mode():
        logits = torch.cat([cast(part.to(dtype)) for part in images.split(chunk)])
    return logits if logits.element_size() >= 4 else logits.float()


def measure_stability(model: nn.Module, images: torch.Tensor, noise_std: float = 1e-2, noise_seed: int = 0,
                      float64_images: int | None = None, distinct_of: int = 32) -> StabilityReport:
    """Measure an fp32 `model` on `images`: float64 agreement, noise response and spread of its logits.

    `float64_images` limits the float64 comparison to the first images (the costliest part for the
    large variants); the other measurements use all of them, but distinct classes are counted over
    the first `distinct_of`.
    """
    fp32 = cast_logits(model, images)
    count = len(images) if float64_images is None else min(float64_images, len(images))
    fp64 = cast_logits(model, images[:count], torch.float64)
    generator = torch.Generator().manual_seed(noise_seed)
    noisy = cast_logits(model, images + noise_std * torch.randn(images.shape, generator=generator))

    scale = float(fp32.double().std())
    error = fp32[:count].double() - fp64
    cosine = nn.functional.cosine_similarity(noisy.double(), fp32.double(), dim=1)
    top2 = fp32.double().topk(2, dim=1).values
    between = float(fp32.double().var(dim=0).mean().sqrt())
    within = float(fp32.double().var(dim=1).mean().sqrt())
    return StabilityReport(
        images=len(images),
        logit_std=scale,
        float64_error=float(error.abs().max()) / scale,
        float64_error_rms=float(error.pow(2).mean().sqrt()) / scale,
        noise_cosine_mean=float(cosine.mean()),
        noise_cosine_min=float(cosine.min()),
        noise_top1=float((noisy.argmax(dim=1) == fp32.argmax(dim=1)).double().mean()),
        distinct_top1=int(fp32[:distinct_of].argmax(dim=1).unique().numel()),
        distinct_of=min(distinct_of, len(images)),
        median_margin=float((top2[:, 0] - top2[:, 1]).median()) / scale,
        between_over_within=between / within,
    )
