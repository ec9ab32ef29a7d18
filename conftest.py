"""Options, markers and session fixtures shared by tests/, benchmarks/ and accuracy/.

The matrix options (`--variants --backends --precisions --batch-sizes --device`) select what the
suites run; anything the machine cannot run is skipped with its reason (`pytest -rs`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from levit_trt.backends.base import PRECISIONS, Backend, BackendUnavailable, ModelSource
from levit_trt.backends.registry import BACKENDS, backend_class, parse_backends
from levit_trt.cache import ensure_cache_dir
from levit_trt.variants import Variant, resolve_variant, resolve_variants
from levit_trt.weights import WeightsSpec, parse_weights


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("levit_trt")
    group.addoption("--variants", default="128S", help="comma-separated variants, or 'all' (default: 128S)")
    group.addoption("--backends", default="auto",
                    help=f"comma-separated backends ({', '.join(BACKENDS)}), 'all', or 'auto': "
                         "torch+onnxruntime on CPU, every CUDA backend on a GPU")
    group.addoption("--precisions", default="auto", help="comma-separated fp32,fp16,bf16,int8; 'auto': fp32 on CPU, fp32,fp16 on GPU")
    group.addoption("--batch-sizes", default="auto",
                    help="comma-separated batch sizes; 'auto': 1,16 on CPU, 1,16,64 on a GPU")
    group.addoption("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    group.addoption("--weights", default="random",
                    help="pretrained | random[:SEED] | checkpoint path (default: random, no download)")
    group.addoption("--imagenet-root", default=os.environ.get("IMAGENET_ROOT"),
                    help="ImageNet root holding val/<wnid>/<image> (or env IMAGENET_ROOT)")
    group.addoption("--imagenet-limit", type=int, default=None, help="seeded class-balanced subset of N images")
    group.addoption("--cache-dir", default=None, help="artifact cache (or env LEVIT_TRT_CACHE; default ~/.cache/levit_trt)")
    group.addoption("--warmup-rounds", type=int, default=None, help="benchmark warm-up calls (default: 10 on GPU, 3 on CPU)")
    group.addoption("--rounds", type=int, default=None, help="timed benchmark rounds (default: 100 on GPU, 10 on CPU)")
    group.addoption("--cuda-graphs", action="store_true", help="replay a captured CUDA graph instead of eager calls")
    group.addoption("--tf32", action="store_true",
                    help="let fp32 matmuls and convolutions use TF32 on the GPU (default: off, so fp32 means fp32 "
                         "in every backend, as in TensorRT's fp32 engines)")
    group.addoption("--accuracy-json", default=None, help="append accuracy results to this JSON file")


@dataclass(frozen=True)
class Case:
    """One cell of the matrix: what to run and how its id reads."""

    variant: Variant
    backend: str
    precision: str
    batch: int
    device: str
    cuda_graphs: bool = False

    @property
    def id(self) -> str:
        return f"{self.model_id}-bs{self.batch}"

    @property
    def model_id(self) -> str:
        """The id without the batch size, for cases that do not depend on it."""
        graph = "-graph" if self.cuda_graphs else ""
        return f"{self.variant.name}-{self.backend}{graph}-{self.precision}"


def selected_device(config: pytest.Config) -> str:
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


def selected_variants(config: pytest.Config) -> list[Variant]:
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
    unknown = [p for p in precisions if p not in ("fp32", "fp16", "bf16", "int8")]
    if unknown:
        raise pytest.UsageError(f"unknown precision(s) {unknown}; choose from fp32, fp16, bf16, int8")
    sizes = selected_batch_sizes(config) if batches else [0]
    graphs = bool(config.getoption("--cuda-graphs"))
    if graphs and device != "cuda":
        raise pytest.UsageError("--cuda-graphs replays CUDA graphs and needs a GPU (--device cuda)")
    return [
        Case(v, b, p, n, device, graphs)
        for v in variants for b in backends for p in precisions for n in sizes
        if p in backend_class(b).supported.get(device, ())
    ]


@pytest.fixture(scope="session", autouse=True)
def fp32_math(pytestconfig: pytest.Config) -> None:
    """PyTorch lets cuDNN convolutions use TF32 by default; fp32 results here are IEEE fp32 unless --tf32."""
    tf32 = bool(pytestconfig.getoption("--tf32"))
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def pytest_configure(config: pytest.Config) -> None:
    """Check the matrix options once, before collection: a bad name stops the run with one clear
    usage error instead of a collection error in every module."""
    benchmark_rounds(config, selected_device(config))
    selected_cases(config)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Every saved run says which GPU, driver, CUDA and library versions produced it."""
    from levit_trt.environment import machine_info as levit_machine_info

    machine_info["levit_trt"] = levit_machine_info()


@pytest.fixture(scope="session")
def cache_dir(pytestconfig: pytest.Config) -> Path:
    return ensure_cache_dir(pytestconfig.getoption("--cache-dir"))


@pytest.fixture(scope="session")
def weights_spec(pytestconfig: pytest.Config) -> WeightsSpec:
    return parse_weights(pytestconfig.getoption("--weights"))


@pytest.fixture(scope="session")
def model_source(cache_dir: Path, weights_spec: WeightsSpec) -> Callable[[Variant | str], ModelSource]:
    """`model_source(variant)`: one ModelSource per variant per session (model and ONNX built once)."""
    sources: dict[str, ModelSource] = {}

    def get(variant: Variant | str) -> ModelSource:
        resolved = resolve_variant(variant)
        if resolved.name not in sources:
            sources[resolved.name] = ModelSource(resolved, weights_spec, cache_dir)
        return sources[resolved.name]

    return get


@pytest.fixture(scope="session")
def backend_for(model_source: Callable[[Variant | str], ModelSource]) -> Callable[..., Backend]:
    """`backend_for(case, **options)`: each backend built once per session; skips with the reason
    when it cannot run on this machine."""
    built: dict[tuple[Any, ...], Backend | str] = {}

    def get(case: Case, **options: Any) -> Backend:
        from levit_trt.backends.registry import create_backend

        key = (case.variant.name, case.backend, case.precision, case.device, tuple(sorted(options.items())))
        if key not in built:
            try:
                built[key] = create_backend(case.backend, model_source(case.variant), case.precision,
                                            case.device, **options)
            except BackendUnavailable as error:
                built[key] = str(error)
        backend = built[key]
        if isinstance(backend, str):
            pytest.skip(backend)
        return backend

    return get


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`case` parametrises over the full matrix; `model_case` over it without batch sizes;
    `every_precision_case` too, but with `--precisions auto` meaning every precision a backend
    supports here (for the agreement suite, the one accuracy check that runs everywhere)."""
    for name, batches, auto_precisions in (("case", True, None), ("model_case", False, None),
                                           ("every_precision_case", False, PRECISIONS)):
        if name in metafunc.fixturenames:
            cases = selected_cases(metafunc.config, batches=batches, auto_precisions=auto_precisions)
            ids = [c.id if batches else c.model_id for c in cases]
            metafunc.parametrize(name, cases, ids=ids)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark GPU and TensorRT cases so `-m 'not gpu'` and friends select them."""
    for item in items:
        params = item.callspec.params if hasattr(item, "callspec") else {}
        case = next((p for p in params.values() if isinstance(p, Case)), None)
        if case is not None:
            if case.device == "cuda":
                item.add_marker(pytest.mark.gpu)
            if case.backend.startswith("tensorrt"):
                item.add_marker(pytest.mark.tensorrt)
