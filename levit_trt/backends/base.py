"""The backend protocol: something that turns a batch of images into logits, and the model it starts from."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from levit_trt.variants import Variant
from levit_trt.weights import WeightsSpec

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# Which of our CUDA plugins a plugin backend uses: the fused attention (default), or the softmax-only
# plugin the reference profiled (kept so its comparison can be rerun).
PLUGINS = ("attention", "softmax")
DEFAULT_PLUGIN = "attention"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def set_tf32(enabled: bool) -> None:
    """Whether fp32 matmuls and cuDNN convolutions may use TF32 on the GPU.

    PyTorch lets cuDNN convolutions use TF32 by default; the suites and `levit-trt eval` turn it off
    unless asked, so that fp32 means fp32 in every backend, as in TensorRT's fp32 engines.
    """
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine (a missing library or device); tests skip on it."""


class UnsupportedCombination(ValueError):
    """A precision/device/option the backend does not support; an error, never a skip."""


class NoEngineForPlugin(BackendUnavailable):
    """A plugin choice with no engine in this precision (INT8 with the fused attention plugin): a valid
    request that this backend cannot build, so the suites skip it with the reason."""


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""

    def requiring(self, find_library: Callable[[], object]) -> Availability:
        """This availability, or unavailable with the build instructions when a plugin library is missing."""
        from levit_trt.plugins import PluginNotBuiltError

        if not self.available:
            return self
        try:
            find_library()
        except PluginNotBuiltError as error:
            return Availability(False, str(error))
        return self


@dataclass
class ModelSource:
    """The variant and weights every backend builds from; the prepared model and ONNX are made once."""

    variant: Variant
    weights: WeightsSpec
    cache_dir: Path
    _model: nn.Module | None = field(default=None, repr=False)

    def torch_model(self, attention: str = "explicit", softmax: str = "native") -> nn.Module:
        """A fresh copy of the prepared fp32 CPU model, with the attention form and softmax asked for."""
        from levit_trt.models import check_attention_impl, set_attention, set_softmax

        check_attention_impl(attention, softmax)
        if self._model is None:
            from levit_trt.models import load_model

            self._model = load_model(self.variant, self.weights)
        model = copy.deepcopy(self._model)
        if attention != "explicit":
            set_attention(model, attention)
        if softmax != "native":
            set_softmax(model, softmax)
        return model

    def onnx_path(self, options: Any = None) -> Path:
        """The cached ONNX export for `options` (an `ExportOptions`; default fp32, native softmax)."""
        from levit_trt.export import ExportOptions, cached_onnx

        return cached_onnx(self.variant, self.weights, options or ExportOptions(), self.cache_dir)


class Backend(ABC):
    """One way of running LeViT. Subclasses set `name`, `supported` and implement `__call__`.

    `__call__` takes a batch already on `self.device` in `self.input_dtype` and returns logits
    [N, 1000] on the same device; the work is enqueued on the current CUDA stream and not
    synchronised, so callers time it with CUDA events.
    """

    name: ClassVar[str]
    # device type ("cpu"/"cuda") -> precisions this backend runs there
    supported: ClassVar[dict[str, tuple[str, ...]]]
    # Whether `__call__` may be captured into a CUDA graph (`--cuda-graphs`): only work enqueued on
    # the current stream, no host synchronisation, not already a graph replay of its own.
    cuda_graph_capture: ClassVar[bool] = False
    # The PLUGINS this backend can be built with (its `plugin` constructor option); empty: no choice.
    plugin_choices: ClassVar[tuple[str, ...]] = ()

    def __init__(self, precision: str, device: str) -> None:
        self.check_supported(precision, device)
        self.precision = precision
        self.device = torch.device(device)
        self.setup_seconds = 0.0  # build / compile / capture time, reported apart from inference

    @classmethod
    def availability(cls, device: str) -> Availability:
        """Whether this backend can run on `device` here, and if not, why."""
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            return Availability(False, "no CUDA device (torch.cuda.is_available() is False)")
        return Availability(True)

    @classmethod
    def availability_for(cls, device: str, **options: Any) -> Availability:
        """Whether the backend built with these constructor options can run here (a plugin choice needs
        its own library); by default the options do not matter."""
        return cls.availability(device)

    @classmethod
    def check_plugin(cls, plugin: str) -> None:
        """UnsupportedCombination unless `plugin` is one of this backend's plugin choices."""
        if plugin not in cls.plugin_choices:
            raise UnsupportedCombination(f"backend {cls.name!r} has no plugin {plugin!r}; choose one of "
                                         f"{', '.join(cls.plugin_choices) or '(none)'}")

    @classmethod
    def check_supported(cls, precision: str, device: str) -> None:
        device_type = torch.device(device).type
        if precision not in PRECISIONS:
            raise UnsupportedCombination(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        allowed = cls.supported.get(device_type, ())
        if precision not in allowed:
            where = ", ".join(f"{d}: {'/'.join(p)}" for d, p in cls.supported.items())
            raise UnsupportedCombination(
                f"backend {cls.name!r} does not run {precision} on {device_type} (it supports {where})"
            )

    @property
    def input_dtype(self) -> torch.dtype:
        return DTYPES.get(self.precision, torch.float32)

    def prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        """Move a float32 CPU batch to where and what `__call__` expects."""
        return images.to(self.device, self.input_dtype, non_blocking=True)

    def prepare_shape(self, images: torch.Tensor) -> None:
        """Do the per-shape work (compilation, graph capture) for this batch before anything is timed.

        Its time is added to `setup_seconds`; backends without per-shape work do nothing here.
        """

    @abstractmethod
    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]:
        """What a reader of a result needs to know about how this backend ran."""
        return {"backend": self.name, "precision": self.precision, "device": str(self.device),
                "setup_seconds": round(self.setup_seconds, 3)}
