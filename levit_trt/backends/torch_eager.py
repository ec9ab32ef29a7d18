"""PyTorch eager: the reference every other backend is compared with, and its SDPA and plugin forms.

`torch` runs the explicit attention (what ONNX export writes), `torch-sdpa` PyTorch's own fused
attention with the bias as mask (the best a PyTorch user would write), `torch-plugin` our CUDA ops:
the fused `levit_trt::attention` by default, or the softmax-only op (`plugin="softmax"`).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch

from levit_trt import plugins
from levit_trt.backends.base import DEFAULT_PLUGIN, PLUGINS, Availability, Backend, ModelSource
from levit_trt.models import to_device


def plugin_library_check(plugin: str) -> Any:
    """What `Availability.requiring` calls to find the library a plugin choice needs (the attention op is
    loaded, so a library built for another torch shows too)."""
    return plugins.load_attention_op if plugin == "attention" else plugins.torch_op_library


class TorchEagerBackend(Backend):
    name = "torch"
    supported: ClassVar[dict[str, tuple[str, ...]]] = {"cpu": ("fp32",), "cuda": ("fp32", "fp16", "bf16")}
    attention: ClassVar[str] = "explicit"  # levit_trt.models.ATTENTION_IMPLS
    cuda_graph_capture = True

    def __init__(self, source: ModelSource, precision: str = "fp32", device: str = "cpu") -> None:
        super().__init__(precision, device)
        started = time.perf_counter()
        self.forms = self.model_forms()
        self.model = to_device(source.torch_model(**self.forms), self.device, self.input_dtype).eval()
        self.setup_seconds = time.perf_counter() - started

    def model_forms(self) -> dict[str, str]:
        """The prepared model's attention form and softmax (ModelSource.torch_model's arguments)."""
        return {"attention": self.attention, "softmax": "native"}

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.forms}


class TorchSdpaBackend(TorchEagerBackend):
    """PyTorch eager with each attention as `F.scaled_dot_product_attention(q, k, v, attn_mask=bias)`."""

    name = "torch-sdpa"
    attention = "sdpa"


class TorchPluginBackend(TorchEagerBackend):
    """PyTorch eager with our CUDA op: the fused attention (default) or the softmax-only op inside the explicit form."""

    name = "torch-plugin"
    supported: ClassVar[dict[str, tuple[str, ...]]] = {"cuda": ("fp32", "fp16")}
    plugin_choices = PLUGINS

    def __init__(self, source: ModelSource, precision: str = "fp32", device: str = "cuda",
                 plugin: str = DEFAULT_PLUGIN) -> None:
        self.check_plugin(plugin)
        self.plugin = plugin
        super().__init__(source, precision, device)

    def model_forms(self) -> dict[str, str]:
        if self.plugin == "attention":
            return {"attention": "fused", "softmax": "native"}
        return {"attention": "explicit", "softmax": "plugin"}

    @classmethod
    def availability(cls, device: str) -> Availability:
        return cls.availability_for(device)

    @classmethod
    def availability_for(cls, device: str, **options: Any) -> Availability:
        plugin = options.get("plugin", DEFAULT_PLUGIN)
        cls.check_plugin(plugin)
        return Backend.availability(device).requiring(plugin_library_check(plugin))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "plugin": self.plugin}
