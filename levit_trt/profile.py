"""Where a backend's forward spends GPU time: kernels (or TensorRT layers) by category, per forward.

PyTorch backends are measured with torch.profiler (CUDA kernel events; on the CPU device, the self
time of CPU ops, so the code path runs without a GPU), averaged over several forwards after warm-up.
Engine backends that offer `profile_layers(images, iterations)` (TensorRT's per-layer profiler) are
measured with that instead. Classification is by name only, so it is a table of name patterns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

CATEGORIES = ("GEMM", "attention", "softmax", "elementwise", "layout/copy", "conv", "other")

# First match wins, so the order settles names that fit two patterns: fused attention kernels run a
# softmax inside (attention, not softmax); inductor names a fused kernel after the ops it holds, so
# its pointwise/reduction kernels are elementwise unless they are a softmax or only a copy; PyTorch's
# copies are `elementwise_kernel<... direct_copy_kernel_cuda ...>` (layout/copy, not elementwise);
# cuDNN's convolutions are `..._fprop_implicit_gemm...` (conv, not GEMM). TensorRT layers are named
# after ONNX nodes (`node_MatMul_7`, `node_add_87`, the attention plugin's `<module>.LevitAttention`).
_OP = r"(?<![a-z])({})(?![a-z])"  # an op name between non-letters: `node_add_87`, `aten::add`, not `addmm`
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (category, re.compile(pattern, re.IGNORECASE)) for category, pattern in (
        ("attention", r"attention|fmha|flash|sdpa"),
        ("softmax", r"softmax"),
        ("layout/copy", r"triton_poi_fused_(clone|cat|copy|_unsafe_view|view|permute|transpose)(_\d+)+$"),
        ("elementwise", r"triton_(poi|per|red)_"),
        ("conv", r"conv|fprop|dgrad|wgrad"),
        ("GEMM", r"gemm|cutlass|cublas|nvjet|xmma|matmul|triton_tem_|" + _OP.format("addmm|bmm|mm|linear")),
        ("layout/copy", r"copy|memcpy|memset|transpose|permute|clone|contiguous|reformat|shuffle|reshape|nchwToNhwc|"
                        r"nhwcToNchw|gather|" + _OP.format("view|as_strided|t|expand|cat|index|slice|select|split|"
                                                           "unsqueeze|squeeze|stack")),
        ("elementwise", r"elementwise|pointwise|hardswish|activation|" + _OP.format("add|mul|div|sub|where|fill")),
    ))


def kernel_category(name: str) -> str:
    """One of CATEGORIES for a CUDA kernel, CPU op or TensorRT layer name."""
    for category, pattern in _PATTERNS:
        if pattern.search(name):
            return category
    return "other"


@dataclass(frozen=True)
class KernelTime:
    """One kernel (or op, or layer) name: its time and launches summed over the profiled forwards."""

    name: str
    total_ms: float
    calls: int


@dataclass(frozen=True)
class TopKernel:
    name: str
    category: str
    ms_per_forward: float
    calls_per_forward: float


@dataclass(frozen=True)
class ProfileSummary:
    """What the profile command prints and writes: times per forward, by category and by kernel."""

    source: str  # "torch.profiler cuda kernels", "torch.profiler cpu ops" or "tensorrt profile_layers"
    unit: str  # what is counted: "CUDA kernels", "CPU ops" or "TensorRT layers"
    forwards: int
    total_ms_per_forward: float
    kernels_per_forward: float
    categories_ms: dict[str, float]
    top: list[TopKernel]
    run: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        lines = [(f"{self.source}: {self.total_ms_per_forward:.3f} ms per forward, {self.kernels_per_forward:.1f} "
                  f"{self.unit} per forward (mean of {self.forwards} forwards)"),
                 "", f"{'category':12s} {'ms/forward':>11s} {'share':>7s}"]
        for category in CATEGORIES:
            ms = self.categories_ms[category]
            share = ms / self.total_ms_per_forward if self.total_ms_per_forward else 0.0
            lines.append(f"{category:12s} {ms:11.4f} {share:7.1%}")
        lines += ["", f"top {len(self.top)} {self.unit}:", f"{'ms/forward':>11s} {'calls':>6s}  {'category':12s} name"]
        lines += [f"{k.ms_per_forward:11.4f} {k.calls_per_forward:6.1f}  {k.category:12s} {k.name[:120]}"
                  for k in self.top]
        return "\n".join(lines) + "\n"

    def write_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def summarize(kernels: Iterable[KernelTime], forwards: int, source: str, unit: str, top: int = 15,
              run: dict[str, Any] | None = None) -> ProfileSummary:
    """Per-forward totals by category and the `top` most expensive names."""
    if forwards < 1:
        raise ValueError(f"forwards must be >= 1, not {forwards}")
    merged: dict[str, list[float]] = {}
    for kernel in kernels:
        entry = merged.setdefault(kernel.name, [0.0, 0])
        entry[0] += kernel.total_ms
        entry[1] += kernel.calls
    categories = dict.fromkeys(CATEGORIES, 0.0)
    for name, (total, _) in merged.items():
        categories[kernel_category(name)] += total / forwards
    ranked = sorted(merged.items(), key=lambda item: -item[1][0])[:top]
    return ProfileSummary(
        source=source, unit=unit, forwards=forwards,
        total_ms_per_forward=sum(categories.values()),
        kernels_per_forward=sum(calls for _, calls in merged.values()) / forwards,
        categories_ms=categories,
        top=[TopKernel(name, kernel_category(name), total / forwards, calls / forwards)
             for name, (total, calls) in ranked],
        run=dict(run or {}),
    )


def torch_profiler_kernels(call: Any, forwards: int, device: torch.device) -> list[KernelTime]:
    """Kernel times (CUDA) or CPU-op self times (CPU) of `forwards` calls of `call`, from torch.profiler."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if on_gpu else [ProfilerActivity.CPU]
    with profile(activities=activities) as profiler:
        for _ in range(forwards):
            call()
        if on_gpu:
            torch.cuda.synchronize(device)
    kernels = []
    for event in profiler.key_averages():
        if on_gpu and event.device_type == DeviceType.CUDA:
            kernels.append(KernelTime(event.key, event.self_device_time_total / 1000.0, event.count))
        elif not on_gpu and event.device_type == DeviceType.CPU and event.key.startswith("aten::"):
            kernels.append(KernelTime(event.key, event.self_cpu_time_total / 1000.0, event.count))
    return kernels


def profile_backend(backend: Any, images: torch.Tensor, forwards: int = 20, warmup: int = 5, top: int = 15,
                    run: dict[str, Any] | None = None) -> ProfileSummary:
    """Profile `backend` on `images` (already prepared): its per-layer profiler if it has one, else torch.profiler."""
    if forwards < 1 or warmup < 0:
        raise ValueError(f"need forwards >= 1 and warmup >= 0 (got {forwards}, {warmup})")
    backend.prepare_shape(images)
    with torch.inference_mode():
        for _ in range(warmup):
            backend(images)
        if backend.device.type == "cuda":
            torch.cuda.synchronize(backend.device)
        profile_layers = getattr(backend, "profile_layers", None)
        if callable(profile_layers):  # mean ms per inference per layer, over `forwards` inferences
            layers = [KernelTime(str(name), float(ms) * forwards, forwards) for name, ms in profile_layers(images, forwards)]
            return summarize(layers, forwards, "tensorrt profile_layers", "TensorRT layers", top, run)
        kernels = torch_profiler_kernels(lambda: backend(images), forwards, backend.device)
    on_gpu = backend.device.type == "cuda"
    return summarize(kernels, forwards, f"torch.profiler {'cuda kernels' if on_gpu else 'cpu ops'}",
                     "CUDA kernels" if on_gpu else "CPU ops", top, run)
