"""Finding and loading the built softmax plugin libraries, and the PyTorch op they provide.

The one place that knows where CMake puts the libraries (`$LEVIT_TRT_PLUGIN_DIR`, else
`<repo>/build`), what the TensorRT plugin is called (read from the C++ header that states it,
shipped in the package as `levit_trt/plugin_identities/`, so the ONNX rewrite and the library
cannot disagree), and how to say what to do when a library is
missing or was built for another TensorRT. It never imports tensorrt (backends/tensorrt.py does,
and passes `trt_plugin_library()` to `registry.load_library`), and imports torch only when the
PyTorch op is asked for, so it imports on any machine.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR_ENV = "LEVIT_TRT_PLUGIN_DIR"
TORCH_OP_LIBRARY_NAME = "liblevit_softmax_torch.so"
TRT_PLUGIN_LIBRARY_NAME = "liblevit_softmax_trt.so"
# Package data (pyproject.toml), so an installed levit_trt has them too; CMake compiles the same files in.
PLUGIN_IDENTITY_DIR = Path(__file__).resolve().parent / "plugin_identities"
SOFTMAX_IDENTITY_HEADER = "softmax_plugin_identity.h"
_IDENTITY_HEADER_SUFFIX = "_plugin_identity.h"
TORCH_OP_NAME = "levit_trt::softmax"


class PluginNotBuiltError(RuntimeError):
    """A plugin library is not where levit_trt looks for it; the message says how to build it."""


class PluginMismatchError(RuntimeError):
    """A plugin library was built for another TensorRT major version, torch, or plugin identity."""


@dataclass(frozen=True)
class PluginIdentity:
    """What TensorRT's registry (and the ONNX parser) know the plugin by."""

    name: str
    version: str
    namespace: str


@cache
def plugin_identity(header_name: str) -> PluginIdentity:
    """Name, version and namespace from `levit_trt/plugin_identities/<op>_plugin_identity.h`, which
    states them as `#define LEVIT_<OP>_PLUGIN_{NAME,VERSION,NAMESPACE} "..."`."""
    if not header_name.endswith(_IDENTITY_HEADER_SUFFIX):
        raise ValueError(f"plugin identity header {header_name!r} must be named <op>{_IDENTITY_HEADER_SUFFIX}")
    path = PLUGIN_IDENTITY_DIR / header_name
    try:
        text = path.read_text()
    except OSError as error:
        raise FileNotFoundError(
            f"cannot read the plugin identity header {path} ({error.strerror or error}); it is package data of "
            "levit_trt: reinstall the package (pip install .), or add the header next to the others"
        ) from error
    prefix = f"LEVIT_{header_name.removesuffix(_IDENTITY_HEADER_SUFFIX).upper()}_PLUGIN_"
    values = {}
    for key in ("NAME", "VERSION", "NAMESPACE"):
        match = re.search(rf'^#define {prefix}{key} "([^"]*)"$', text, re.MULTILINE)
        if match is None:
            raise ValueError(f"{path}: no line '#define {prefix}{key} \"...\"'")
        values[key] = match.group(1)
    return PluginIdentity(values["NAME"], values["VERSION"], values["NAMESPACE"])


def softmax_plugin_identity() -> PluginIdentity:
    """The softmax plugin's name, version and namespace (its identity header)."""
    return plugin_identity(SOFTMAX_IDENTITY_HEADER)


def plugin_dir() -> Path:
    """Where the built libraries are: $LEVIT_TRT_PLUGIN_DIR if set, else <repo root>/build."""
    configured = os.environ.get(PLUGIN_DIR_ENV)
    return Path(configured).expanduser() if configured else REPO_ROOT / "build"


def build_instructions() -> str:
    """The commands that build both libraries, for error messages."""
    return (
        f"Build the plugin libraries from the repository root ({REPO_ROOT}):\n"
        f"    cmake -S . -B build -DTENSORRT_INCLUDE_DIR=<TensorRT include dir> "
        f"-DPython3_EXECUTABLE={sys.executable}\n"
        "    cmake --build build -j\n"
        "(add -DCMAKE_CUDA_ARCHITECTURES=90 to build for one GPU only; without TensorRT headers only "
        f"the PyTorch op is built), or set {PLUGIN_DIR_ENV} to the directory that holds the libraries."
    )


def _built_library(name: str, what: str) -> Path:
    path = plugin_dir() / name
    if not path.is_file():
        raise PluginNotBuiltError(f"{what} library not found: {path}\n{build_instructions()}")
    return path


def torch_op_library() -> Path:
    """Path of the built PyTorch op library; PluginNotBuiltError if it is not there."""
    return _built_library(TORCH_OP_LIBRARY_NAME, f"PyTorch op ({TORCH_OP_NAME})")


def trt_plugin_library() -> Path:
    """Path of the built TensorRT plugin library; PluginNotBuiltError if it is not there."""
    return _built_library(TRT_PLUGIN_LIBRARY_NAME, "TensorRT softmax plugin")


def library_sha256(path: Path) -> str:
    """Hex sha256 of a library file, for cache keys of engines that embed the plugin."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plugin_library_handle(path: Path) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(str(path))
    except OSError as error:
        raise PluginMismatchError(f"cannot load {path}: {error}\n{build_instructions()}") from error


def trt_plugin_compiled_major(path: Path | None = None) -> int:
    """The TensorRT major version (NV_TENSORRT_MAJOR) the plugin library was compiled against."""
    library = _plugin_library_handle(path if path is not None else trt_plugin_library())
    function = library.levit_softmax_trt_compiled_major
    function.restype = ctypes.c_int32
    function.argtypes = []
    return int(function())


def trt_plugin_library_identity(path: Path | None = None) -> PluginIdentity:
    """Name, version and namespace compiled into the plugin library."""
    library = _plugin_library_handle(path if path is not None else trt_plugin_library())
    values = []
    for symbol in ("levit_softmax_plugin_name", "levit_softmax_plugin_version", "levit_softmax_plugin_namespace"):
        function = getattr(library, symbol)
        function.restype = ctypes.c_char_p
        function.argtypes = []
        values.append(function().decode())
    return PluginIdentity(*values)


def check_trt_plugin_library(tensorrt_major: int, path: Path | None = None) -> Path:
    """The plugin library's path, after checking it suits this TensorRT and this source tree.

    `tensorrt_major` comes from the caller (backends/tensorrt.py reads `tensorrt.__version__`).
    A library built for another major version would load and then fail obscurely, or crash.
    """
    library = path if path is not None else trt_plugin_library()
    compiled = trt_plugin_compiled_major(library)
    if compiled != tensorrt_major:
        raise PluginMismatchError(
            f"{library} was compiled against TensorRT {compiled}.x headers but TensorRT {tensorrt_major}.x is "
            f"installed; rebuild it against this TensorRT's headers.\n{build_instructions()}"
        )
    built = trt_plugin_library_identity(library)
    expected = softmax_plugin_identity()
    if built != expected:
        raise PluginMismatchError(
            f"{library} registers {built} but {PLUGIN_IDENTITY_DIR / SOFTMAX_IDENTITY_HEADER} says {expected}; "
            "the library is stale, "
            f"rebuild it.\n{build_instructions()}"
        )
    return library


_torch_op_lock = threading.Lock()
_softmax_op: Callable[[torch.Tensor], torch.Tensor] | None = None


def load_torch_op() -> Callable[[torch.Tensor], torch.Tensor]:
    """Load the PyTorch op library once per process and return `torch.ops.levit_trt.softmax`."""
    global _softmax_op
    with _torch_op_lock:
        if _softmax_op is not None:
            return _softmax_op
        import torch

        path = torch_op_library()
        try:
            torch.ops.load_library(str(path))
        except OSError as error:
            raise PluginMismatchError(
                f"cannot load {path} into torch {torch.__version__}: {error}\n"
                f"It was probably built for another torch; rebuild it.\n{build_instructions()}"
            ) from error
        _softmax_op = torch.ops.levit_trt.softmax
        return _softmax_op


def plugin_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis through `levit_trt::softmax` (CUDA fp32/fp16 tensors).

    Once loaded, this is a plain op call, so torch.compile(fullgraph=True) traces through it.
    """
    op = _softmax_op if _softmax_op is not None else load_torch_op()
    return op(x)
