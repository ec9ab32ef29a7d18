"""The benchmark and accuracy matrix as the pytest options select it (conftest.py declares the options).

Kept out of conftest.py so that suites can import it (`from conftest import ...` is ambiguous once
a suite folder has a conftest.py of its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import torch

from levit_trt.backends.base import DEFAULT_PLUGIN, PLUGINS, PRECISIONS
from levit_trt.backends.registry import BACKENDS, backend_class, parse_backends
from levit_trt.variants import Variant, resolve_variants


@dataclass(frozen=True)
class Case:
    """One cell of the matrix: what to run and how its id reads."""

    variant: Variant
    backend: str
    precision: str
    batch: int
    device: str
    cuda_graphs: bool = False
    plugin: str = DEFAULT_PLUGIN  # for backends with a plugin choice (Backend.plugin_choices)

    @property
    def id(self) -> str:
        return f"{self.model_id}-bs{self.batch}"

    @property
    def has_plugin_choice(self) -> bool:
        return bool(backend_class(self.backend).plugin_choices)

    @property
    def model_id(self) -> str:
        """The id without the batch size, for cases that do not depend on it (`-attention`/`-softmax`
        after a backend that can use either plugin)."""
        graph = "-graph" if self.cuda_graphs else ""
        plugin = f"-{self.plugin}" if self.has_plugin_choice else ""
        return f"{self.variant.name}-{self.backend}{plugin}{graph}-{self.precision}"


def selected_device(config: pytest.Config) -> str:
    """`--device`: cpu or cuda; 'auto' is cuda where torch sees a GPU."""
    device = config.getoption("--device")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise pytest.UsageError(f"--device must be cpu, cuda or auto, not {device!r}")
    return device


def benchmark_rounds(config: pytest.Config, device: str) -> tuple[int, int]:
    """(warm-up calls, timed rounds) from --warmup-rounds/--rounds, with defaults for the device."""
    on_gpu = device == "cuda"
    warmup = config.getoption("--warmup-rounds")
    rounds = config.getoption("--rounds")
    warmup = (10 if on_gpu else 3) if warmup is None else warmup
    rounds = (100 if on_gpu else 10) if rounds is None else rounds
    if warmup < 0 or rounds < 1:
        raise pytest.UsageError(f"--warmup-rounds must be >= 0 and --rounds >= 1 (got {warmup}, {rounds})")
    return warmup, rounds


def selected_plugin(config: pytest.Config) -> str:
    """`--plugin`: which of our CUDA plugins the plugin backends use (attention or softmax)."""
    plugin = str(config.getoption("--plugin"))
    if plugin not in PLUGINS:
        raise pytest.UsageError(f"--plugin must be one of {', '.join(PLUGINS)}, not {plugin!r}")
    return plugin


def selected_variants(config: pytest.Config) -> list[Variant]:
    """`--variants`, resolved; a bad name is a usage error listing the valid ones."""
    try:
        return resolve_variants(config.getoption("--variants"))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from error


def selected_batch_sizes(config: pytest.Config) -> list[int]:
    """`--batch-sizes`; 'auto' is 1,16 on the CPU and 1,16,64 on a GPU (issue 8's matrix)."""
    option = str(config.getoption("--batch-sizes"))
    if option == "auto":
        option = "1,16" if selected_device(config) == "cpu" else "1,16,64"
    try:
        sizes = [int(b) for b in option.split(",") if b.strip()]
    except ValueError as error:
        raise pytest.UsageError(f"--batch-sizes must be comma-separated integers: {error}") from error
    if not sizes or min(sizes) < 1:
        raise pytest.UsageError(f"--batch-sizes must be positive integers, got {config.getoption('--batch-sizes')!r}")
    return sizes


def selected_cases(config: pytest.Config, batches: bool = True,
                   auto_precisions: Sequence[str] | None = None) -> list[Case]:
    """The matrix from the options; unsupported precision/backend pairs are left out.

    `auto_precisions` replaces what `--precisions auto` means (e.g. every precision, for suites
    that should cover each one a backend supports here).
    """
    device = selected_device(config)
    variants = selected_variants(config)
    try:
        backend_option = config.getoption("--backends")
        if backend_option == "auto":
            backends = [n for n in BACKENDS if device in backend_class(n).supported]
            if device == "cpu":
                backends = [n for n in backends if n in ("torch", "onnxruntime")]
        else:
            backends = parse_backends(backend_option)
    except ValueError as error:
        raise pytest.UsageError(str(error)) from error
    precision_option = config.getoption("--precisions")
    default_precisions = auto_precisions or (["fp32"] if device == "cpu" else ["fp32", "fp16"])
    precisions = list(default_precisions) if precision_option == "auto" \
        else [p.strip() for p in precision_option.split(",") if p.strip()]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise pytest.UsageError(f"unknown precision(s) {unknown}; choose from {', '.join(PRECISIONS)}")
    sizes = selected_batch_sizes(config) if batches else [0]
    graphs = bool(config.getoption("--cuda-graphs"))
    if graphs and device != "cuda":
        raise pytest.UsageError("--cuda-graphs replays CUDA graphs and needs a GPU (--device cuda)")
    plugin = selected_plugin(config)
    return [
        Case(v, b, p, n, device, graphs, plugin)
        for v in variants for b in backends for p in precisions for n in sizes
        if p in backend_class(b).supported.get(device, ())
    ]
