"""Compiled PyTorch peers: `torch-compile` (torch.compile) and `torch-cudagraph` (eager model, graph replay).

`torch-compile-sdpa` compiles the model whose attention is `F.scaled_dot_product_attention`, and
`torch-compile-plugin` the one whose attention is our `levit_trt::attention` op (its fake kernel lets
fullgraph tracing pass through it), so the op is measured against, and inside, what inductor makes.

A PyTorch user who does not adopt TensorRT reaches for these, so every TensorRT speed-up is also
measured against them. Both start from the prepared model (batch norms folded, attention biases held
in buffers): timm's own LeViT writes a bias cache on its first eval call, which breaks CUDA-graph
trees ("accessing tensor output of CUDAGraphs that has been overwritten").

Compilation and capture happen per batch shape in `prepare_shape`, timed into `setup_seconds`, never
inside the timed rounds. Outputs of both backends live in graph-owned memory: a returned tensor is
valid until the next call, which is how the benchmarks and evaluators use it.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch
import torch._inductor

from levit_trt import plugins
from levit_trt.backends.base import Availability, Backend, ModelSource
from levit_trt.models import to_device
from levit_trt.timing import capture_cuda_graph


class CompileError(RuntimeError):
    """torch.compile failed for a variant and mode; the case fails rather than falling back to eager."""


def compile_modes() -> tuple[str, ...]:
    """The modes torch.compile knows in this torch (read from inductor, not restated here)."""
    return tuple(torch._inductor.list_mode_options())


# "reduce-overhead" keeps inductor's kernels and replays them through CUDA graphs: LeViT at
# batch 16 is launch-bound (issue 8: eager 8-11 ms, graph replay 2-4 ms on an H100), so removing
# launches matters more than autotuning, which also costs minutes of compile time per shape.
DEFAULT_CUDA_MODE = "reduce-overhead"
DEFAULT_CPU_MODE = "default"


class TorchCompileBackend(Backend):
    """The prepared model through torch.compile (inductor), one compiled graph per batch size."""

    name = "torch-compile"
    supported: ClassVar[dict[str, tuple[str, ...]]] = {"cpu": ("fp32",), "cuda": ("fp32", "fp16", "bf16")}
    attention: ClassVar[str] = "explicit"  # levit_trt.models.ATTENTION_IMPLS

    def __init__(self, source: ModelSource, precision: str = "fp32", device: str = "cpu",
                 mode: str | None = None) -> None:
        super().__init__(precision, device)
        self.mode = mode or (DEFAULT_CUDA_MODE if self.device.type == "cuda" else DEFAULT_CPU_MODE)
        if self.mode not in compile_modes():
            raise ValueError(f"unknown torch.compile mode {self.mode!r}; torch {torch.__version__} knows "
                             f"{', '.join(compile_modes())}")
        self.variant = source.variant.display
        started = time.perf_counter()
        model = to_device(source.torch_model(attention=self.attention), self.device, self.input_dtype).eval()
        self.compiled = torch.compile(model, mode=self.mode, dynamic=False, fullgraph=True)
        self.uses_cuda_graphs = bool(torch._inductor.list_mode_options(self.mode).get("triton.cudagraphs"))
        self.compile_seconds: dict[int, float] = {}
        self.setup_seconds = time.perf_counter() - started

    def prepare_shape(self, images: torch.Tensor) -> None:
        batch = images.shape[0]
        if batch in self.compile_seconds:
            return
        started = time.perf_counter()
        try:
            for _ in range(3):  # cudagraph trees record on the first runs and replay from the third
                self._run(images)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as error:
            raise CompileError(f"torch.compile (mode={self.mode!r}) failed for {self.variant} {self.precision} "
                               f"batch {batch}: {type(error).__name__}: {error}") from error
        self.compile_seconds[batch] = time.perf_counter() - started
        self.setup_seconds += self.compile_seconds[batch]

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        if self.uses_cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous call's output may be overwritten now
        with torch.no_grad():
            return self.compiled(images)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.prepare_shape(images)
        return self._run(images)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "attention": self.attention, "softmax": "native", "compile_mode": self.mode,
                "inductor_cudagraphs": self.uses_cuda_graphs,
                "compile_seconds": {str(b): round(s, 3) for b, s in self.compile_seconds.items()}}


class TorchCompileSdpaBackend(TorchCompileBackend):
    """torch.compile of the prepared model whose attention is F.scaled_dot_product_attention with the bias."""

    name = "torch-compile-sdpa"
    attention = "sdpa"


class TorchCompilePluginBackend(TorchCompileBackend):
    """torch.compile of the prepared model whose attention is the fused `levit_trt::attention` op."""

    name = "torch-compile-plugin"
    supported: ClassVar[dict[str, tuple[str, ...]]] = {"cuda": ("fp32", "fp16")}
    attention = "fused"

    @classmethod
    def availability(cls, device: str) -> Availability:
        return super().availability(device).requiring(plugins.load_attention_op)


class TorchCudaGraphBackend(Backend):
    """The eager prepared model captured into one CUDA graph per batch size and replayed.

    Each call copies the batch into the graph's static input (a device-to-device copy, part of the
    timed call as it would be in a serving loop) and replays; a batch size not seen before is
    captured first.
    """

    name = "torch-cudagraph"
    supported: ClassVar[dict[str, tuple[str, ...]]] = {"cuda": ("fp32", "fp16", "bf16")}

    def __init__(self, source: ModelSource, precision: str = "fp32", device: str = "cuda") -> None:
        super().__init__(precision, device)
        started = time.perf_counter()
        self.model = to_device(source.torch_model(), self.device, self.input_dtype).eval()
        self.graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.capture_seconds: dict[int, float] = {}
        self.setup_seconds = time.perf_counter() - started

    def prepare_shape(self, images: torch.Tensor) -> None:
        shape = tuple(images.shape)
        if shape in self.graphs:
            return
        started = time.perf_counter()
        static_input = images.clone()
        outputs: list[torch.Tensor] = []

        def forward() -> None:
            outputs.clear()
            outputs.append(self.model(static_input))

        with torch.no_grad():
            graph = capture_cuda_graph(forward)
        self.graphs[shape] = (graph, static_input, outputs[0])
        self.capture_seconds[shape[0]] = time.perf_counter() - started
        self.setup_seconds += self.capture_seconds[shape[0]]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.prepare_shape(images)
        graph, static_input, static_output = self.graphs[tuple(images.shape)]
        static_input.copy_(images)
        graph.replay()
        return static_output

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "attention": "explicit", "softmax": "native",
                "graph_capture_seconds": {str(b): round(s, 3) for b, s in self.capture_seconds.items()}}
