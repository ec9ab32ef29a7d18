"""PyTorch eager: the reference every other backend is compared with (native or plugin softmax)."""

from __future__ import annotations

import time
from typing import ClassVar

import torch

from levit_trt.backends.base import Availability, Backend, ModelSource


class TorchEagerBackend(Backend):
    name = "torch"
    supported: ClassVar[dict[str, tuple[str, ...]]] = {"cpu": ("fp32",), "cuda": ("fp32", "fp16", "bf16")}
    softmax = "native"
    cuda_graph_capture = True

    def __init__(self, source: ModelSource, precision: str = "fp32", device: str = "cpu") -> None:
        super().__init__(precision, device)
        started = time.perf_counter()
        from levit_trt.models import set_softmax

        model = source.torch_model()
        if self.softmax != "native":
            set_softmax(model, self.softmax)
        self.model = model.to(self.device, self.input_dtype).eval()
        self.setup_seconds = time.perf_counter() - started

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


class TorchPluginBackend(TorchEagerBackend):
    """PyTorch eager with attention's softmax replaced by the `levit_trt::softmax` CUDA op."""

    name = "torch-plugin"
    supported: ClassVar[dict[str, tuple[str, ...]]] = {"cuda": ("fp32", "fp16")}
    softmax = "plugin"

    @classmethod
    def availability(cls, device: str) -> Availability:
        from levit_trt.plugins import torch_op_library

        return super().availability(device).requiring(torch_op_library)
