"""CMake builds both plugin libraries with nvcc (compile and link only; no GPU needed).

The TensorRT plugin is built against each TensorRT header set in $LEVIT_TRT_HEADERS_DIR (default
../shared/tensorrt-headers; the `tensorrt_headers` fixture) for one CUDA architecture, without
libnvinfer; the PyTorch op against the torch this interpreter imports; and the README's own command
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
CUDA_ARCH = "80"  # one architecture keeps the compile short


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def require_toolchain() -> str:
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found on PATH")
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda)")
    return nvcc


def cmake_build(build_dir: Path, nvcc: str, *options: str) -> subprocess.CompletedProcess:
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = [
        "cmake", "-S", str(REPO_ROOT), "-B", str(build_dir), *generator,
        f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={CUDA_ARCH}",
        "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_CXX_FLAGS=-Werror", *options,
    ]
    result = subprocess.run(configure, capture_output=True, text=True, check=False)
    if result.returncode == 0:
        build = ["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2)]
        result = subprocess.run(build, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(result.args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


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
def test_trt_plugin_builds_against_headers(tmp_path, version, tensorrt_headers):
    nvcc = require_toolchain()
    headers = tensorrt_headers(version)

    cmake_build(tmp_path, nvcc, f"-DTENSORRT_INCLUDE_DIR={headers}", "-DLEVIT_BUILD_TORCH_OP=OFF")
    library = tmp_path / plugins.TRT_PLUGIN_LIBRARY_NAME
    assert library.is_file()
    assert not (tmp_path / plugins.TORCH_OP_LIBRARY_NAME).exists()

    # TensorRT is left to be resolved where the library is loaded: no libnvinfer dependency.
    assert not [name for name in needed_libraries(library) if "nvinfer" in name]
    # What IPluginRegistry::loadLibrary looks up, and what levit_trt reads through ctypes.
    handle = ctypes.CDLL(str(library))
    for symbol in ("getCreators", "setLoggerFinder", "levit_softmax_trt_compiled_major"):
        assert hasattr(handle, symbol), f"{library.name} does not export {symbol}"
    assert plugins.trt_plugin_compiled_major(library) == header_major(headers)
    assert plugins.trt_plugin_library_identity(library) == plugins.softmax_plugin_identity()
    plugins.check_trt_plugin_library(header_major(headers), library)
    with pytest.raises(plugins.PluginMismatchError, match="rebuild"):
        plugins.check_trt_plugin_library(header_major(headers) + 1, library)


def test_torch_op_builds_and_registers(tmp_path):
    nvcc = require_toolchain()
    torch = pytest.importorskip("torch")
    if torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is a CPU-only build (no CUDA headers)")

    cmake_build(tmp_path, nvcc, "-DLEVIT_BUILD_TRT_PLUGIN=OFF", f"-DPython3_EXECUTABLE={sys.executable}")
    library = tmp_path / plugins.TORCH_OP_LIBRARY_NAME
    assert library.is_file()
    assert not (tmp_path / plugins.TRT_PLUGIN_LIBRARY_NAME).exists()

    # Load it in a fresh interpreter through levit_trt (not in this one: a registered op library
    # cannot be unloaded) and run the Meta kernel, which needs no GPU.
    probe = (
        "import torch; from levit_trt import plugins; op = plugins.load_torch_op(); "
        "y = op(torch.empty((8, 6, 196, 196), device='meta', dtype=torch.float16)); "
        "print(tuple(y.shape), y.dtype, y.device.type)"
    )
    env = {**os.environ, plugins.PLUGIN_DIR_ENV: str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                            check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1] == "(8, 6, 196, 196) torch.float16 meta"


README_BUILD_COMMAND = "cmake -S . -B build && cmake --build build -j"
# What the build reads from the source tree; the test builds a copy so the checkout's build/ stays untouched.
BUILD_SOURCES = ("CMakeLists.txt", "plugins", "levit_trt/plugin_identities")


def test_readme_build_command_works_with_default_generator(tmp_path):
    """The README's command, as written, with CMake's default generator (Makefiles): CMake 3.25 once
    stopped at generate there with "requires the language dialect CUDA20", while Ninja built."""
    nvcc = require_toolchain()
    torch = pytest.importorskip("torch")
    if torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is a CPU-only build (no CUDA headers)")
    assert README_BUILD_COMMAND in (REPO_ROOT / "README.md").read_text(), "the README no longer says how to build"
    source = tmp_path / "levit_trt_copy"
    source.mkdir()
    for name in BUILD_SOURCES:
        copy = shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy2
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        copy(REPO_ROOT / name, source / name)  # type: ignore[operator]
    env = {name: value for name, value in os.environ.items() if name not in ("CMAKE_GENERATOR", "CUDACXX")}
    # The command as written finds nvcc and python3 on PATH; CUDAARCHS (read by CMake itself) keeps it to one
    # architecture so the test stays short.
    env.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), str(Path(nvcc).parent), env.get("PATH", "")]),
               CUDAARCHS=CUDA_ARCH)
    result = subprocess.run(["bash", "-c", README_BUILD_COMMAND], cwd=source, env=env, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, f"{README_BUILD_COMMAND} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert (source / "build" / "Makefile").is_file(), "not built with the default (Makefiles) generator"
    assert (source / "build" / plugins.TORCH_OP_LIBRARY_NAME).is_file()


def test_missing_library_error_says_how_to_build(tmp_path, monkeypatch):
    monkeypatch.setenv(plugins.PLUGIN_DIR_ENV, str(tmp_path))
    for find in (plugins.trt_plugin_library, plugins.torch_op_library):
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
