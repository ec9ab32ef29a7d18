"""GpuTiming statistics against values worked out by hand; the timed loop's garbage-collection pause;
what interleaved graph timing replays (on a CUDA GPU)."""

from __future__ import annotations

import gc
from functools import partial

import pytest
import torch

from levit_trt.timing import GpuTiming, garbage_collection_paused, time_cuda_graphs_interleaved


@pytest.mark.parametrize(("count", "pct", "expected"), [(100, 99, 99.0), (100, 90, 90.0), (10, 90, 9.0),
                                                       (20, 95, 19.0), (10, 100, 10.0), (7, 50, 4.0), (1, 99, 1.0)])
def test_nearest_rank_percentile(count: int, pct: float, expected: float) -> None:
    # Times 1..count shuffled: the nearest-rank p-th percentile is ceil(p/100 * count).
    times = tuple(float(v) for v in sorted(range(1, count + 1), key=lambda v: (v * 7919) % count))
    assert GpuTiming(times, "cuda-events").percentile_ms(pct) == expected


def test_summary_reports_median_spread_and_throughput() -> None:
    timing = GpuTiming((2.0, 4.0, 3.0, 100.0), "cuda-graph")
    summary = timing.summary(items_per_call=16)
    assert summary["gpu_median_ms"] == 3.5 and summary["gpu_min_ms"] == 2.0 and summary["gpu_p99_ms"] == 100.0
    assert summary["items_per_s"] == pytest.approx(16 / 3.5e-3) and summary["timing_method"] == "cuda-graph"


def test_garbage_collection_is_paused_and_restored() -> None:
    assert gc.isenabled()
    with garbage_collection_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with garbage_collection_paused():
            pass
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()


@pytest.mark.gpu
def test_interleaved_rounds_replay_every_graph_once_per_round() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch.cuda.is_available() is False")
    counters = {name: torch.zeros((), device="cuda") for name in ("a", "b")}
    steps = {"a": 1.0, "b": 10.0}
    timings = time_cuda_graphs_interleaved({name: partial(counters[name].add_, steps[name]) for name in counters},
                                           warmup=2, rounds=5, calls_per_graph=3)
    assert set(timings) == {"a", "b"}
    assert all(len(t.times_ms) == 5 and t.method == "cuda-graph" and min(t.times_ms) > 0 for t in timings.values())
    # Three eager warm-up calls of each captured function (capture_cuda_graph), then 2 + 5 replays of 3 calls.
    for name, counter in counters.items():
        assert counter.item() == steps[name] * 3 * (3 + 2 + 5)
