"""The latency matrix: variant x backend x precision x batch (ids like `levit_384-tensorrt-fp16-bs16`).

Backends are built by session fixtures (and cached on disk) before any timing, so build, compile
and capture times are reported in extra_info (`setup_seconds`, `capture_seconds`), never inside a
timed round. On a GPU each case also records CUDA-event (or, with `--cuda-graphs`, graph-replay)
times per call in extra_info beside pytest-benchmark's wall-clock statistics, whose every call
ends synchronised. Inputs are put on the device before timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import pytest
import torch

from levit_trt.backends.registry import backend_class
from levit_trt.export import NUM_CLASSES
from levit_trt.matrix import benchmark_rounds
from levit_trt.timing import capture_cuda_graph, synchronised, time_cuda_events
from levit_trt.weights import synthetic_images


def test_latency(benchmark, case, backend_for, weights_spec, pytestconfig) -> None:
    if case.cuda_graphs and not backend_class(case.backend).cuda_graph_capture:
        pytest.skip(f"backend {case.backend!r} cannot be captured into a CUDA graph; run it without --cuda-graphs")
    backend = backend_for(case)
    warmup, rounds = benchmark_rounds(pytestconfig, case.device)
    images = backend.prepare_input(synthetic_images(case.batch, case.variant.input_size, seed=case.batch))
    started = time.perf_counter()
    backend.prepare_shape(images)  # compile / capture now: setup time stays out of every timed round
    shape_setup_seconds = time.perf_counter() - started
    logits = backend(images)  # untimed: a backend that returns nonsense fails here, not in a table
    assert logits.shape == (case.batch, NUM_CLASSES) and bool(torch.isfinite(logits).all()), \
        f"{case.id} returned logits of shape {tuple(logits.shape)} (or non-finite values)"
    benchmark.group = f"{case.variant.name}-bs{case.batch}"

    if case.device == "cuda":
        call: Callable[[], object] = partial(backend, images)
        if case.cuda_graphs:
            started = time.perf_counter()
            call = capture_cuda_graph(call).replay
            benchmark.extra_info["capture_seconds"] = round(time.perf_counter() - started, 3)
        if not benchmark.disabled:
            timing = time_cuda_events(call, warmup=warmup, rounds=rounds).summary(items_per_call=case.batch)
            timing["images_per_s"] = timing.pop("items_per_s")
            if case.cuda_graphs:
                timing["timing_method"] = "cuda-graph"
            benchmark.extra_info.update(timing)
        benchmark.pedantic(synchronised(call), rounds=rounds, warmup_rounds=warmup)
    else:
        benchmark.pedantic(backend, args=(images,), rounds=rounds, warmup_rounds=warmup)
    # After the calls, so that parts a backend builds lazily count in its setup time; the case's own
    # fields last, so extra_info says what the id says.
    described = backend.describe()
    case_fields = {"variant": case.variant.name, "backend": case.backend, "precision": case.precision,
                   "batch": case.batch, "device": case.device, "cuda_graphs": case.cuda_graphs,
                   "weights": weights_spec.describe(), "warmup_rounds": warmup,
                   "shape_setup_seconds": round(shape_setup_seconds, 3),
                   **({"plugin": case.plugin} if case.has_plugin_choice else {})}
    clashes = {key for key in set(described) & set(case_fields) if described[key] != case_fields[key]}
    assert not clashes, f"backend.describe() gives other values for the case's own keys {sorted(clashes)}"
    benchmark.extra_info.update({**described, **case_fields})
