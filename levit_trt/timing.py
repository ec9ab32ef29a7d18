"""GPU timing with CUDA events or CUDA-graph replay, the one way every benchmark measures time.

Wall-clock timers around asynchronous GPU work measure the launch, not the work; these helpers
record events on the stream the work runs on, after warm-up, and return every round so that
reports can give the median and the spread.
"""

from __future__ import annotations

import gc
import math
import statistics
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class GpuTiming:
    """Per-call GPU times in milliseconds, one entry per timed round."""

    times_ms: tuple[float, ...]
    method: str  # "cuda-events" or "cuda-graph"

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.times_ms)

    @property
    def stdev_ms(self) -> float:
        return statistics.stdev(self.times_ms) if len(self.times_ms) > 1 else 0.0

    def percentile_ms(self, pct: float) -> float:
        """Nearest-rank percentile (pct in 0..100): the smallest time at least pct% of rounds do not exceed."""
        ordered = sorted(self.times_ms)
        rank = max(1, min(len(ordered), math.ceil(pct / 100.0 * len(ordered))))
        return ordered[rank - 1]

    def summary(self, items_per_call: int = 1) -> dict[str, float | str | int]:
        """Flat dict for pytest-benchmark's extra_info and for JSON reports."""
        return {
            "timing_method": self.method,
            "rounds": len(self.times_ms),
            "gpu_median_ms": self.median_ms,
            "gpu_mean_ms": self.mean_ms,
            "gpu_min_ms": self.min_ms,
            "gpu_stdev_ms": self.stdev_ms,
            "gpu_p90_ms": self.percentile_ms(90),
            "gpu_p99_ms": self.percentile_ms(99),
            "items_per_s": items_per_call / (self.median_ms / 1e3),
        }


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise RuntimeError("GPU timing needs a CUDA device; torch.cuda.is_available() is False here")


@contextmanager
def garbage_collection_paused() -> Iterator[None]:
    """No Python garbage collection inside a timed loop: a collection pause lands in one round at random."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def time_cuda_events(
    fn: Callable[[], object], *, warmup: int = 10, rounds: int = 100
) -> GpuTiming:
    """Time `fn` (which enqueues work on the current stream) with a pair of events per call.

    Calls are issued back to back, as in a serving loop: each round is the device time from the end
    of the previous call's work to the end of this one's. Where the GPU is the bottleneck this is the
    GPU time per call; where launching is (eager PyTorch at small batches), it is the host's launch
    time per call and varies with the host. The latency of one call on its own is what a synchronised
    wall clock measures (pytest-benchmark's statistics beside these).
    """
    _require_cuda()
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    stream = torch.cuda.current_stream()
    for _ in range(warmup):
        fn()
    stream.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(rounds)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(rounds)]
    with garbage_collection_paused():
        for start, end in zip(starts, ends):
            start.record(stream)
            fn()
            end.record(stream)
        stream.synchronize()
    return GpuTiming(tuple(s.elapsed_time(e) for s, e in zip(starts, ends)), "cuda-events")


def capture_cuda_graph(fn: Callable[[], object], *, warmup: int = 3) -> torch.cuda.CUDAGraph:
    """Capture one call of `fn` into a CUDA graph after warming it up on a side stream.

    The warm-up runs on a side stream as PyTorch requires, so that lazy initialisation (cuBLAS
    handles, autotuning, allocator growth) happens outside the captured region.
    """
    _require_cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph


def time_cuda_graph(
    fn: Callable[[], object],
    *,
    warmup: int = 10,
    rounds: int = 100,
    calls_per_graph: int = 1,
) -> GpuTiming:
    """Time `fn` by replaying a captured graph of `calls_per_graph` back-to-back calls.

    Graph replay removes CPU launch overhead; with `calls_per_graph > 1` the per-call time of
    very short kernels (a few microseconds) is not dominated by the replay's own start-up.
    """
    return time_cuda_graphs_interleaved({"fn": fn}, warmup=warmup, rounds=rounds, calls_per_graph=calls_per_graph)["fn"]


def time_cuda_graphs_interleaved(
    fns: Mapping[Key, Callable[[], object]],
    *,
    warmup: int = 10,
    rounds: int = 100,
    calls_per_graph: int = 1,
) -> dict[Key, GpuTiming]:
    """Time several functions as `time_cuda_graph` does, each round replaying every graph in turn.

    Timing one function after another lets a slow spell of the GPU (a clock change, another
    process) land on one of them only; interleaved rounds share it, so comparisons between them hold.
    """
    _require_cuda()
    if calls_per_graph < 1:
        raise ValueError(f"calls_per_graph must be at least 1, got {calls_per_graph}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")

    def repeated(fn: Callable[[], object]) -> Callable[[], None]:
        def calls() -> None:
            for _ in range(calls_per_graph):
                fn()

        return calls

    graphs = {key: capture_cuda_graph(repeated(fn)) for key, fn in fns.items()}
    stream = torch.cuda.current_stream()
    for _ in range(warmup):
        for graph in graphs.values():
            graph.replay()
    stream.synchronize()
    events = {key: [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                    for _ in range(rounds)] for key in graphs}
    with garbage_collection_paused():
        for index in range(rounds):
            for key, graph in graphs.items():
                start, end = events[key][index]
                start.record(stream)
                graph.replay()
                end.record(stream)
        stream.synchronize()
    return {key: GpuTiming(tuple(start.elapsed_time(end) / calls_per_graph for start, end in pairs), "cuda-graph")
            for key, pairs in events.items()}


def synchronised(fn: Callable[[], object]) -> Callable[[], None]:
    """`fn` followed by a device synchronisation, so that a wall-clock timer sees the work end."""
    def run() -> None:
        fn()
        torch.cuda.synchronize()

    return run
