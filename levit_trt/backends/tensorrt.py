"""TensorRT and TensorRT-RTX backends: thin adapters over `levit_trt.tensorrt` (build through the cache, then run).

Which ONNX, the cache key, the build and the runner all live in the `levit_trt.tensorrt` package;
these classes only say which flavor and ONNX form a backend uses and why it is unavailable here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

import torch

from levit_trt.backends.base import DEFAULT_PLUGIN, PLUGINS, Availability, Backend, ModelSource, NoEngineForPlugin
from levit_trt.tensorrt.binding import TensorRTNotInstalled, tensorrt_version
from levit_trt.tensorrt.builder import TensorRTBuilder
from levit_trt.tensorrt.devices import current_gpu
from levit_trt.tensorrt.engine_cache import CachedEngine, ExportedOnnx, cached_engine, int8_inputs_loader
from levit_trt.tensorrt.options import EngineOptions, EnginePrecision, Flavor, rtx_runtime_problem
from levit_trt.tensorrt.plugin_libraries import load_plugin_libraries, plugin_library
from levit_trt.tensorrt.runner import EngineRunner

RUNTIME_CACHE_KIND = "tensorrt-rtx-runtime-cache"


class TensorRTBackend(Backend):
    """LeViT as a TensorRT engine built from the exported ONNX, cached per manifest, run on a stream of its own.

    Options: `engine_options` (batch range, optimisation level, workspace, timing cache, TF32, INT8
    path and policy, RTX targets; its precision and flavor are the backend's), `cuda_graph` (replay a
    captured graph for repeated same-shape calls), `plugin_libraries` (extra TensorRT plugin libraries),
    `plugin` (plugin backends only: which of our plugins the ONNX uses).
    """

    name = "tensorrt"
    flavor: ClassVar[Flavor] = "tensorrt"
    supported: ClassVar[dict[str, tuple[str, ...]]] = {"cuda": ("fp32", "fp16", "int8")}
    default_plugin: ClassVar[str | None] = None  # the plugin backends' DEFAULT_PLUGIN

    def __init__(
        self,
        source: ModelSource,
        precision: str = "fp32",
        device: str = "cuda",
        *,
        engine_options: EngineOptions | None = None,
        cuda_graph: bool = False,
        plugin_libraries: Sequence[Path] = (),
        plugin: str | None = None,
    ) -> None:
        self.plugin = plugin if plugin is not None else self.default_plugin
        if self.plugin is not None:
            self.check_plugin(self.plugin)
        if self.plugin == "attention" and precision == "int8":
            raise NoEngineForPlugin(
                f"backend {self.name!r} with the fused attention plugin has no INT8 engine (the plugin takes fp32 or "
                "fp16 and has no place in a Q/DQ graph); use the softmax plugin for INT8 (--plugin softmax)")
        super().__init__(precision, device)
        started = time.perf_counter()
        options = dataclasses.replace(engine_options or EngineOptions(), precision=cast(EnginePrecision, precision),
                                      flavor=self.flavor)
        builder = TensorRTBuilder(self.flavor, self.device, cache_dir=source.cache_dir)
        self.tensorrt_version = builder.tensorrt_version
        int8 = int8_inputs_loader(options, source.variant) if precision == "int8" else None
        self.engine: CachedEngine = cached_engine(builder, ExportedOnnx(source, self.plugin), options,
                                                  source.cache_dir, int8=int8, plugin_libraries=plugin_libraries)
        load_plugin_libraries(self.flavor, self.engine.plugin_libraries)
        self.runner = EngineRunner.load(self.flavor, self.engine.engine_path, self.device, cuda_graph=cuda_graph,
                                        runtime_cache=self._runtime_cache(source.cache_dir))
        self.setup_seconds = time.perf_counter() - started

    def _runtime_cache(self, cache_dir: Path) -> Path | None:
        """TensorRT-RTX's compiled-kernel cache for this engine on this GPU; None for TensorRT."""
        return None

    @classmethod
    def availability(cls, device: str) -> Availability:
        try:
            tensorrt_version(cls.flavor)
        except TensorRTNotInstalled as error:
            return Availability(False, str(error))
        return super().availability(device)

    @property
    def input_dtype(self) -> torch.dtype:
        """The engine's input type: fp16 only for engines parsed from an fp16 ONNX."""
        return self.runner.input_dtype

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.runner(images)

    def profile_layers(self, images: torch.Tensor, iterations: int) -> list[tuple[str, float]]:
        """Per layer, mean milliseconds per inference from TensorRT's IProfiler (the profile command's contract)."""
        return self.runner.profile_layers(images, iterations)

    def describe(self) -> dict[str, Any]:
        info = {**super().describe(), "flavor": self.flavor, "tensorrt": self.tensorrt_version,
                "engine_key": self.engine.key, "strongly_typed": self.engine.plan.strongly_typed,
                "onnx_form": self.engine.plan.onnx_form, "batch_range": list(self.runner.batch_range),
                "cuda_graph": self.runner.cuda_graph, "layer_precisions": self.engine.precision_summary()}
        if self.runner.first_run_seconds is not None:
            info["first_run_seconds"] = self.runner.first_run_seconds  # RTX compiles kernels then; not latency
        if self.plugin is not None:
            info["plugin"] = self.plugin
        if self.engine.int8 is not None:
            info.update(self.engine.int8.describe())
        return info


class PluginEngineBackend(TensorRTBackend):
    """What the plugin backends add: the ONNX with our fused attention plugin (default) or, with
    `plugin="softmax"`, the softmax-only plugin the reference compared; unavailable without its library."""

    plugin_choices = PLUGINS
    default_plugin = DEFAULT_PLUGIN

    @classmethod
    def availability(cls, device: str) -> Availability:
        return cls.availability_for(device)

    @classmethod
    def availability_for(cls, device: str, **options: Any) -> Availability:
        plugin = options.get("plugin") or DEFAULT_PLUGIN  # None: the default, as the constructor takes it
        cls.check_plugin(plugin)
        return super().availability(device).requiring(plugin_library(plugin).locate)


class TensorRTPluginBackend(PluginEngineBackend):
    """TensorRT with each attention as the levit_trt fused attention plugin (or only its softmax as the softmax one)."""

    name = "tensorrt-plugin"


class TensorRTRtxBackend(TensorRTBackend):
    """TensorRT-RTX: built ahead of time (no GPU needed) for RTX's targets, kernels compiled on the first run."""

    name = "tensorrt-rtx"
    flavor = "rtx"

    def _runtime_cache(self, cache_dir: Path) -> Path | None:
        gpu = current_gpu(self.device)
        return cache_dir / RUNTIME_CACHE_KIND / f"{self.engine.key}-sm{gpu.compute_capability}.cache"

    @classmethod
    def availability(cls, device: str) -> Availability:
        status = super().availability(device)
        if not status.available or torch.device(device).type != "cuda":
            return status
        gpu = current_gpu(torch.device(device))
        problem = rtx_runtime_problem(gpu.compute_capability)
        return status if problem is None else Availability(False, f"{gpu.name}: {problem}")


class TensorRTRtxPluginBackend(PluginEngineBackend, TensorRTRtxBackend):
    """TensorRT-RTX with the levit_trt fused attention plugin, or the softmax one (libraries built against 11.x
    headers)."""

    name = "tensorrt-rtx-plugin"
