"""GpuTiming statistics against values worked out by hand; the timed loop's garbage-collection pause."""

from __future__ import annotations

import gc

import pytest

from levit_trt.timing import GpuTiming, garbage_collection_paused


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
