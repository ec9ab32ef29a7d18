"""Finding and loading the built softmax plugin libraries, and the PyTorch op they provide.

The one place that knows where CMake puts the libraries (`$LEVIT_TRT_PLUGIN_DIR`, else
`<repo>/build`), what the TensorRT plugin is called (read from the C++ header that states it, so
the ONNX rewrite and the library cannot disagree), and how to say what to do when a library is
missing or was built for another TensorRT. It never imports tensorrt (levit_trt.tensorrt does, and
passes `trt_plugin_library()` to `registry.load_library`), and imports torch only when the
PyTorch op is asked for, so it imports on any machine.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import sys
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR_ENV = "LEVIT_TRT_PLUGIN_DIR"
TORCH_OP_LIBRARY_NAME = "liblevit_softmax_torch.so"
TRT_PLUGIN_LIBRARY_NAME = "liblevit_softmax_trt.so"
PLUGIN_IDENTITY_HEADER = REPO_ROOT / "plugins" / "softmax" / "softmax_plugin_identity.h"
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


@lru_cache(maxsize=1)
def softmax_plugin_identity() -> PluginIdentity:
    """Name, version and namespace from plugins/softmax/softmax_plugin_identity.h."""
    try:
        text = PLUGIN_IDENTITY_HEADER.read_text()
    except OSError as error:
        raise FileNotFoundError(
            f"cannot read the plugin identity header {PLUGIN_IDENTITY_HEADER} ({error}); "
            "levit_trt expects to run from its source tree"
        ) from error
    values = {}
    for key in ("NAME", "VERSION", "NAMESPACE"):
        match = re.search(rf'^#define LEVIT_SOFTMAX_PLUGIN_{key} "([^"]*)"$', text, re.MULTILINE)
        if match is None:
            raise ValueError(f"{PLUGIN_IDENTITY_HEADER}: no line '#define LEVIT_SOFTMAX_PLUGIN_{key} \"...\"'")
        values[key] = match.group(1)
    return PluginIdentity(values["NAME"], values["VERSION"], values["NAMESPACE"])


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


def check_trt_plugin_library(accepted_majors: Collection[int], path: Path | None = None,
                             runtime: str = "this TensorRT") -> Path:
    """The plugin library's path, after checking it suits this TensorRT and this source tree.

    `accepted_majors` are the TensorRT header majors the installed TensorRT loads plugins of
    (levit_trt.tensorrt.options.plugin_header_majors: its own major; 11 for TensorRT-RTX, whose
    plugin interfaces are TensorRT 11's). A library built for another major would load and then
    fail obscurely, or crash.
    """
    library = path if path is not None else trt_plugin_library()
    compiled = trt_plugin_compiled_major(library)
    if compiled not in accepted_majors:
        wanted = " or ".join(f"{major}.x" for major in sorted(accepted_majors))
        raise PluginMismatchError(
            f"{library} was compiled against TensorRT {compiled}.x headers but {runtime} loads plugins built "
            f"against TensorRT {wanted} headers; rebuild it against those headers.\n{build_instructions()}"
        )
    built = trt_plugin_library_identity(library)
    expected = softmax_plugin_identity()
    if built != expected:
        raise PluginMismatchError(
            f"{library} registers {built} but {PLUGIN_IDENTITY_HEADER} says {expected}; the library is stale, "
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
