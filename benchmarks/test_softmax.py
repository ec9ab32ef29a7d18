"""Softmax at LeViT's attention shapes: PyTorch's native op against our plugin op, and TensorRT's
softmax layer against our TensorRT plugin where TensorRT exists (ids like
`softmax-plugin-fp16-16x6x196x196`; one group per shape and precision, so they sit together).

Shapes come from `levit_trt.attention_shapes.softmax_shapes` for the selected variants and batch sizes,
in fp32 and fp16 (the plugin's two types). Each implementation is captured CALLS_PER_GRAPH times
back-to-back in one CUDA graph and replayed, so kernels of a few microseconds are not hidden behind
launch overhead; extra_info holds that GPU time per call and the bytes moved per second (input read
once + output written once). One input is reused, so it stays in L2 where it fits, as in the network,
where softmax reads the scores the previous matmul just wrote. pytest-benchmark's own statistics are
wall clock per synchronised single call (launch overhead included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pytest
import torch

from levit_trt.attention_shapes import softmax_shapes
from levit_trt.backends.base import BackendUnavailable
from levit_trt.environment import module_versions
from levit_trt.matrix import benchmark_rounds, selected_batch_sizes, selected_device, selected_variants
from levit_trt.plugins import PluginNotBuiltError, load_torch_op, plugin_softmax
from levit_trt.timing import synchronised, time_cuda_graph

IMPLEMENTATIONS = ("native", "plugin", "tensorrt", "tensorrt-plugin")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
CALLS_PER_GRAPH = 20
# Norm-wise relative error against float64 softmax of the same input that still counts as a
# softmax: fp32 allows a few ulp per element (fast exp, another summation order); fp16 output
# rounding alone is 2^-11 ~ 4.9e-4 per element. A wrong axis or stale output is off by ~1e-1.
TOLERANCE = {"fp32": 1e-5, "fp16": 5e-3}


@dataclass(frozen=True)
class SoftmaxCase:
    implementation: str
    precision: str
    shape: tuple[int, int, int, int]
    variants: tuple[str, ...]  # every selected variant with an attention of this shape

    @property
    def shape_text(self) -> str:
        return "x".join(map(str, self.shape))

    @property
    def id(self) -> str:
        return f"softmax-{self.implementation}-{self.precision}-{self.shape_text}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "softmax_case" not in metafunc.fixturenames:
        return
    shapes: dict[tuple[int, int, int, int], list[str]] = {}
    for variant in selected_variants(metafunc.config):
        for batch in selected_batch_sizes(metafunc.config):
            for shape in softmax_shapes(variant, batch):
                shapes.setdefault(shape, []).append(variant.name)
    cases = [SoftmaxCase(impl, precision, shape, tuple(names))
             for shape, names in shapes.items() for precision in DTYPES for impl in IMPLEMENTATIONS]
    metafunc.parametrize("softmax_case", cases, ids=[case.id for case in cases])


def softmax_function(case: SoftmaxCase) -> Callable[[torch.Tensor], torch.Tensor]:
    """The implementation under test, or a skip that says why it cannot run here."""
    if case.implementation == "native":
        return partial(torch.softmax, dim=-1)
    if case.implementation == "plugin":
        try:
            load_torch_op()
        except PluginNotBuiltError as error:
            pytest.skip(f"softmax op not built: {error}")
        return plugin_softmax
    if "tensorrt" not in module_versions():
        pytest.skip("TensorRT is not installed (no tensorrt distribution; pip install tensorrt)")
    try:
        from levit_trt.tensorrt.softmax_engine import softmax_engine
    except ImportError as error:
        pytest.skip(f"levit_trt.tensorrt.softmax_engine is not available: {error}")
    try:
        return softmax_engine(case.shape, DTYPES[case.precision], use_plugin=case.implementation == "tensorrt-plugin")
    except (BackendUnavailable, PluginNotBuiltError) as error:
        pytest.skip(str(error))


@pytest.mark.gpu
def test_softmax(benchmark, softmax_case: SoftmaxCase, pytestconfig) -> None:
    if selected_device(pytestconfig) != "cuda":
        pytest.skip("softmax benchmarks run on a CUDA device (--device cpu, or torch.cuda.is_available() is False)")
    softmax = softmax_function(softmax_case)
    generator = torch.Generator(device="cuda").manual_seed(sum(softmax_case.shape))
    x = (torch.randn(softmax_case.shape, device="cuda", generator=generator) * 3).to(DTYPES[softmax_case.precision])
    reference = torch.softmax(x.double(), dim=-1)
    error = ((softmax(x).double() - reference).norm() / reference.norm()).item()
    assert error <= TOLERANCE[softmax_case.precision], f"{softmax_case.id}: relative error {error:.2e}"

    warmup, rounds = benchmark_rounds(pytestconfig, "cuda")
    benchmark.group = f"softmax-{softmax_case.precision}-{softmax_case.shape_text}"
    benchmark.extra_info.update({
        "implementation": softmax_case.implementation, "precision": softmax_case.precision,
        "shape": list(softmax_case.shape), "variants": list(softmax_case.variants),
    })
    if not benchmark.disabled:
        timing = time_cuda_graph(lambda: softmax(x), warmup=warmup, rounds=rounds, calls_per_graph=CALLS_PER_GRAPH)
        moved = 2 * x.numel() * x.element_size()
        summary = timing.summary()
        del summary["items_per_s"]  # calls per second; bytes per second says more here
        benchmark.extra_info.update({**summary, "calls_per_graph": CALLS_PER_GRAPH, "bytes_per_call": moved,
                                     "gb_per_s": moved / (timing.median_ms * 1e-3) / 1e9})
    benchmark.pedantic(synchronised(partial(softmax, x)), rounds=rounds, warmup_rounds=warmup)
