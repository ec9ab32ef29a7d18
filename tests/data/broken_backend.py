"""Loaded with `-p broken_backend`: registers a backend whose logits have the wrong shape, so that
tests/test_benchmark_run.py can show a broken latency case failing the run."""

from __future__ import annotations

from typing import ClassVar

import torch

from levit_trt.backends.registry import BACKENDS
from levit_trt.backends.torch_eager import TorchEagerBackend


class TruncatedLogitsBackend(TorchEagerBackend):
    name = "broken"
    supported: ClassVar[dict[str, tuple[str, ...]]] = {"cpu": ("fp32",)}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return super().__call__(images)[:, :10]


# At import (which `-p` does before any configure hook), so that the options naming it validate.
BACKENDS["broken"] = f"{__name__}:TruncatedLogitsBackend"
