"""The latency matrix: variant x backend x precision x batch (ids like `levit_384-tensorrt-fp16-bs16`).

On a GPU each case records CUDA-event (or CUDA-graph replay) times per call in `extra_info`
beside pytest-benchmark's wall-clock statistics; every timed call ends synchronised.
"""

from __future__ import annotations

import torch

from levit_trt.timing import time_cuda_events, time_cuda_graph
from levit_trt.weights import synthetic_images


def test_latency(benchmark, case, backend_for, pytestconfig) -> None:
    backend = backend_for(case)
    images = backend.prepare_input(synthetic_images(case.batch, case.variant.input_size, seed=case.batch))
    warmup = pytestconfig.getoption("--warmup-rounds")
    rounds = pytestconfig.getoption("--rounds") or (100 if case.device == "cuda" else 10)
    backend.prepare_shape(images)  # compile / capture now, so setup time stays out of every timed round
    benchmark.group = f"{case.variant.name}-bs{case.batch}"
    benchmark.extra_info.update({
        "variant": case.variant.name, "backend": case.backend, "precision": case.precision,
        "batch": case.batch, "device": case.device, "cuda_graphs": case.cuda_graphs,
        **backend.describe(),
    })

    if case.device == "cuda":
        def call() -> None:
            backend(images)

        timing = (time_cuda_graph(call, warmup=warmup, rounds=rounds) if case.cuda_graphs
                  else time_cuda_events(call, warmup=warmup, rounds=rounds))
        benchmark.extra_info.update(timing.summary(items_per_call=case.batch))

        def call_synchronised() -> None:
            backend(images)
            torch.cuda.synchronize()

        benchmark.pedantic(call_synchronised, rounds=rounds, warmup_rounds=warmup)
    else:
        benchmark.pedantic(backend, args=(images,), rounds=rounds, warmup_rounds=min(warmup, 3))
