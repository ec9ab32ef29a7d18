"""Options, markers and session fixtures shared by tests/, benchmarks/ and accuracy/.

The matrix options (`--variants --backends --precisions --batch-sizes --device`) select what the
suites run; anything the machine cannot run is skipped with its reason (`pytest -rs`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from levit_trt.backends.base import (
    DEFAULT_PLUGIN,
    PLUGINS,
    PRECISIONS,
    Backend,
    BackendUnavailable,
    ModelSource,
    set_tf32,
)
from levit_trt.backends.registry import BACKENDS
from levit_trt.cache import ensure_cache_dir
from levit_trt.matrix import Case, benchmark_rounds, selected_cases, selected_device
from levit_trt.variants import Variant, resolve_variant
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
    group.addoption("--imagenet-classes", type=int, default=1000,
                    help="class folders val/ must hold (default 1000; labels are folder positions, so a missing one "
                         "would shift the rest); another number only for trees made for tests")
    group.addoption("--cache-dir", default=None, help="artifact cache (or env LEVIT_TRT_CACHE; default ~/.cache/levit_trt)")
    group.addoption("--warmup-rounds", type=int, default=None, help="benchmark warm-up calls (default: 10 on GPU, 3 on CPU)")
    group.addoption("--rounds", type=int, default=None, help="timed benchmark rounds (default: 100 on GPU, 10 on CPU)")
    group.addoption("--cuda-graphs", action="store_true", help="replay a captured CUDA graph instead of eager calls")
    group.addoption("--plugin", default=DEFAULT_PLUGIN,
                    help=f"which CUDA plugin the plugin backends use: {' or '.join(PLUGINS)} (default: {DEFAULT_PLUGIN}; "
                         "softmax is the reference's softmax-only plugin)")
    group.addoption("--tf32", action="store_true",
                    help="let fp32 matmuls and convolutions use TF32 on the GPU (default: off, so fp32 means fp32 "
                         "in every backend, as in TensorRT's fp32 engines)")
    group.addoption("--accuracy-json", default=None, help="append accuracy results to this JSON file")


@pytest.fixture(scope="session", autouse=True)
def fp32_math(pytestconfig: pytest.Config) -> None:
    """fp32 is IEEE fp32 in every backend unless --tf32 (levit_trt.backends.base.set_tf32)."""
    set_tf32(bool(pytestconfig.getoption("--tf32")))


def pytest_configure(config: pytest.Config) -> None:
    """Check the matrix options once, before collection: a bad name stops the run with one clear
    usage error instead of a collection error in every module."""
    benchmark_rounds(config, selected_device(config))
    selected_cases(config)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """End the run with something worth reading: why tests were skipped, grouped by reason (a bare
    "80 skipped" says nothing; `-rs` lists each instead), and how to turn a saved run into tables."""
    skipped = terminalreporter.stats.get("skipped", [])
    listed = set(config.getoption("reportchars") or "") & {"s", "a", "A"}
    if skipped and not listed:
        reasons = Counter(_skip_reason(report) for report in skipped)
        terminalreporter.section(f"{len(skipped)} skipped, by reason (-rs lists each)")
        for reason, count in reasons.most_common():
            terminalreporter.write_line(f"{count:4d}  {reason}")
    saved = config.getoption("benchmark_json", None)
    if saved is not None:
        terminalreporter.write_line(f"latency tables of this run: levit-trt report {getattr(saved, 'name', saved)}")


def _skip_reason(report: pytest.TestReport) -> str:
    """The first line of a skip's reason (what `-rs` shows, without the location)."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ").strip().splitlines()[0]


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Every saved run says which GPU, driver, CUDA and library versions produced it."""
    from levit_trt.environment import machine_info as levit_machine_info

    machine_info["levit_trt"] = levit_machine_info()


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_commit_info(config: pytest.Config, commit_info: dict[str, Any]) -> None:
    """The commit of the levit_trt checkout, not of whatever repository the working directory is in."""
    from levit_trt.environment import project_commit

    commit_info.clear()
    commit_info.update(project_commit())


TENSORRT_HEADERS_ENV = "LEVIT_TRT_HEADERS_DIR"


@pytest.fixture(scope="session")
def tensorrt_headers() -> Callable[[str], Path]:
    """`tensorrt_headers("10.13")`: the directory holding that TensorRT version's NvInfer.h, under
    $LEVIT_TRT_HEADERS_DIR (default: shared/tensorrt-headers beside the checkout); where it is missing,
    a skip whose reason says how to point the tests at the headers."""
    from levit_trt.plugins import REPO_ROOT

    configured = os.environ.get(TENSORRT_HEADERS_ENV)
    root = Path(configured) if configured else REPO_ROOT.parent / "shared" / "tensorrt-headers"

    def find(version: str) -> Path:
        headers = root / version
        if not (headers / "NvInfer.h").is_file():
            source = f"${TENSORRT_HEADERS_ENV}" if configured else f"the default, unset ${TENSORRT_HEADERS_ENV}"
            pytest.skip(f"TensorRT {version} headers not found: no {headers / 'NvInfer.h'} (from {source}); "
                        f"set {TENSORRT_HEADERS_ENV}=DIR where DIR/{version}/NvInfer.h is TensorRT {version}'s "
                        "include/NvInfer.h")
        return headers

    return find


PLUGIN_TEST_CUDA_ARCH = "80"  # one architecture keeps the plugin builds short; TensorRT-RTX runs sm 8.0 too


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


@pytest.fixture(scope="session")
def nvcc() -> str:
    """nvcc's path, where cmake and nvcc are both there (compiling needs no GPU); else a skip with the reason."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found on PATH")
    found = find_nvcc()
    if found is None:
        pytest.skip("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda)")
    return found


def cmake_build(build_dir: Path, nvcc: str, *options: str) -> None:
    """Configure and build the plugin libraries into `build_dir` for PLUGIN_TEST_CUDA_ARCH (asserting success)."""
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = [
        "cmake", "-S", str(Path(__file__).resolve().parent), "-B", str(build_dir), *generator,
        f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={PLUGIN_TEST_CUDA_ARCH}",
        "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_CXX_FLAGS=-Werror", *options,
    ]
    result = subprocess.run(configure, capture_output=True, text=True, check=False)
    if result.returncode == 0:
        build = ["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2)]
        result = subprocess.run(build, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(result.args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


@pytest.fixture(scope="session")
def plugin_cuda_arch() -> str:
    return PLUGIN_TEST_CUDA_ARCH


@pytest.fixture(scope="session")
def trt_plugins_built(tmp_path_factory: pytest.TempPathFactory, nvcc: str,
                      tensorrt_headers: Callable[[str], Path]) -> Callable[[str], Path]:
    """`trt_plugins_built("11.1")`: a directory with both TensorRT plugin libraries built against those
    headers, built once per session (the build tests and the TensorRT-RTX tests share it)."""
    built: dict[str, Path] = {}

    def build(version: str) -> Path:
        if version not in built:
            headers = tensorrt_headers(version)
            directory = tmp_path_factory.mktemp(f"trt-plugins-{version}")
            cmake_build(directory, nvcc, f"-DTENSORRT_INCLUDE_DIR={headers}", "-DLEVIT_BUILD_TORCH_OP=OFF")
            built[version] = directory
        return built[version]

    return build


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
    when it cannot run on this machine. A backend with a plugin choice gets the case's (`--plugin`)."""
    built: dict[tuple[Any, ...], Backend | str] = {}

    def get(case: Case, **options: Any) -> Backend:
        from levit_trt.backends.registry import create_backend

        if case.has_plugin_choice:
            options.setdefault("plugin", case.plugin)
        key = (case.variant.name, case.backend, case.precision, case.device, tuple(sorted(options.items())))
        if key not in built:
            try:
                built[key] = create_backend(case.backend, model_source(case.variant), case.precision,
                                            case.device, **options)
            except BackendUnavailable as error:  # NoEngineForPlugin too: int8 with the attention plugin
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
