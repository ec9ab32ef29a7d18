"""CMake builds the plugin libraries (softmax and fused attention) with nvcc (compile and link only; no GPU needed).

The TensorRT plugins are built against each TensorRT header set in $LEVIT_TRT_HEADERS_DIR (default
../shared/tensorrt-headers; the `tensorrt_headers` fixture) for one CUDA architecture, without
libnvinfer; the PyTorch ops against the torch this interpreter imports; and the README's own command
with CMake's default generator. Skipped, with the reason, where cmake, nvcc, the headers or a CUDA
build of torch are missing.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from levit_trt import plugins

REPO_ROOT = plugins.REPO_ROOT
TRT_HEADER_VERSIONS = ("10.13", "11.1")


def needed_libraries(library: Path) -> list[str]:
    """DT_NEEDED entries, read with readelf (skip if binutils are missing)."""
    if shutil.which("readelf") is None:
        pytest.skip("readelf not found")
    dynamic = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)


def header_major(headers: Path) -> int:
    text = (headers / "NvInferVersion.h").read_text()
    return int(re.search(r"#define TRT_MAJOR_ENTERPRISE (\d+)", text).group(1))


@pytest.mark.parametrize("version", TRT_HEADER_VERSIONS)
def test_trt_plugin_builds_against_headers(version, tensorrt_headers, trt_plugins_built):
    headers = tensorrt_headers(version)
    tmp_path = trt_plugins_built(version)
    assert not (tmp_path / plugins.TORCH_OP_LIBRARY_NAME).exists()
    assert not (tmp_path / plugins.ATTENTION_TORCH_OP_LIBRARY_NAME).exists()
    major = header_major(headers)
    for name, prefix, check in (
        (plugins.TRT_PLUGIN_LIBRARY_NAME, "levit_softmax", plugins.check_trt_plugin_library),
        (plugins.ATTENTION_TRT_PLUGIN_LIBRARY_NAME, "levit_attention", plugins.check_attention_trt_plugin_library),
    ):
        library = tmp_path / name
        assert library.is_file()
        # TensorRT is left to be resolved where the library is loaded: no libnvinfer dependency.
        assert not [needed for needed in needed_libraries(library) if "nvinfer" in needed]
        # What IPluginRegistry::loadLibrary looks up, and what levit_trt reads through ctypes.
        handle = ctypes.CDLL(str(library))
        for symbol in ("getCreators", "setLoggerFinder", f"{prefix}_trt_compiled_major", f"{prefix}_plugin_name"):
            assert hasattr(handle, symbol), f"{library.name} does not export {symbol}"
        check((major,), library)
        with pytest.raises(plugins.PluginMismatchError, match="rebuild"):
            check((major + 1,), library)
    softmax_library = tmp_path / plugins.TRT_PLUGIN_LIBRARY_NAME
    assert plugins.trt_plugin_compiled_major(softmax_library) == major
    assert plugins.trt_plugin_library_identity(softmax_library) == plugins.softmax_plugin_identity()
    assert plugins.attention_plugin_identity() == plugins.PluginIdentity("LevitAttention", "1", "levit_trt")


README_BUILD_COMMAND = "cmake -S . -B build && cmake --build build -j"
# What the build reads from the source tree; the test builds a copy so the checkout's build/ stays untouched.
BUILD_SOURCES = ("CMakeLists.txt", "plugins", "levit_trt/plugin_identities")


@pytest.fixture(scope="module")
def readme_build(tmp_path_factory: pytest.TempPathFactory, nvcc: str, plugin_cuda_arch: str) -> Path:
    """The README's command, as written, run once in a copy of the sources with CMake's default generator
    (Makefiles): the PyTorch ops' build for the tests below. CMake 3.25 once stopped at generate there
    with "requires the language dialect CUDA20", while Ninja built."""
    torch = pytest.importorskip("torch")
    if torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is a CPU-only build (no CUDA headers)")
    assert README_BUILD_COMMAND in (REPO_ROOT / "README.md").read_text(), "the README no longer says how to build"
    source = tmp_path_factory.mktemp("levit_trt_copy")
    for name in BUILD_SOURCES:
        copy = shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy2
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        copy(REPO_ROOT / name, source / name)  # type: ignore[operator]
    env = {name: value for name, value in os.environ.items() if name not in ("CMAKE_GENERATOR", "CUDACXX")}
    # The command as written finds nvcc and python3 on PATH; CUDAARCHS (read by CMake itself) keeps it to one
    # architecture so the test stays short, and CXXFLAGS makes warnings in our op code errors.
    env.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), str(Path(nvcc).parent), env.get("PATH", "")]),
               CUDAARCHS=plugin_cuda_arch, CXXFLAGS="-Werror")
    result = subprocess.run(["bash", "-c", README_BUILD_COMMAND], cwd=source, env=env, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, f"{README_BUILD_COMMAND} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return source / "build"


def test_readme_build_command_works_with_default_generator(readme_build: Path) -> None:
    assert (readme_build / "Makefile").is_file(), "not built with the default (Makefiles) generator"
    assert (readme_build / plugins.TORCH_OP_LIBRARY_NAME).is_file()
    assert (readme_build / plugins.ATTENTION_TORCH_OP_LIBRARY_NAME).is_file()


def test_torch_op_builds_and_registers(readme_build: Path) -> None:
    # Load both in a fresh interpreter through levit_trt (not in this one: a registered op library
    # cannot be unloaded), the attention op first (it adds to the namespace the softmax one defines),
    # and run the Meta kernels, which need no GPU.
    probe = (
        "import torch; from levit_trt import plugins; attention = plugins.load_attention_op(); "
        "op = plugins.load_torch_op(); "
        "m = lambda *s: torch.empty(s, device='meta', dtype=torch.float16); "
        "q, k, v = m(8, 196, 6, 128).split([32, 32, 64], dim=3); "
        "a = attention(q, k, v, m(6, 196, 196), 0.17); print(tuple(a.shape), a.dtype, a.device.type); "
        "y = op(torch.empty((8, 6, 196, 196), device='meta', dtype=torch.float16)); "
        "print(tuple(y.shape), y.dtype, y.device.type)"
    )
    env = {**os.environ, plugins.PLUGIN_DIR_ENV: str(readme_build)}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                            check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-2:] == ["(8, 196, 384) torch.float16 meta",
                                                       "(8, 6, 196, 196) torch.float16 meta"]


def test_missing_library_error_says_how_to_build(tmp_path, monkeypatch):
    monkeypatch.setenv(plugins.PLUGIN_DIR_ENV, str(tmp_path))
    for find in (plugins.trt_plugin_library, plugins.torch_op_library, plugins.attention_trt_plugin_library,
                 plugins.attention_torch_op_library):
        with pytest.raises(plugins.PluginNotBuiltError, match=r"cmake -S \. -B build") as error:
            find()
        assert str(tmp_path) in str(error.value)


def test_missing_headers_skip_says_how_to_set_the_directory(tmp_path):
    env = {**os.environ, "LEVIT_TRT_HEADERS_DIR": str(tmp_path / "nowhere")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-n", "0",
                             "tests/test_engine_options.py", "-k", "planned_flag"],
                            capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300, check=False)
    assert result.returncode == 0 and "2 skipped" in result.stdout, result.stdout[-3000:]
    assert (f"no {tmp_path / 'nowhere' / '11.1' / 'NvInfer.h'} (from $LEVIT_TRT_HEADERS_DIR); "
            "set LEVIT_TRT_HEADERS_DIR=DIR where DIR/11.1/NvInfer.h is TensorRT 11.1's include/NvInfer.h") in " ".join(
                result.stdout.split())
