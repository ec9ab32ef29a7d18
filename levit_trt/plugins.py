"""Finding and loading the built plugin libraries (softmax, fused attention) and their PyTorch ops.

The one place that knows where CMake puts the libraries (`$LEVIT_TRT_PLUGIN_DIR`, else
`<repo>/build`), what each TensorRT plugin is called (read from the C++ header that states it,
shipped in the package as `levit_trt/plugin_identities/`, so the ONNX rewrite and the library
cannot disagree), and how to say what to do when a library is missing or was built for another
TensorRT. It never imports tensorrt (levit_trt.tensorrt does, and passes `trt_plugin_library()`
to `registry.load_library`), and imports torch only when the
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
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

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


def _library_function(library: Path, symbol: str) -> Any:
    """`symbol` of the plugin library; PluginMismatchError where it lacks it (a stale or foreign library)."""
    try:
        return getattr(_plugin_library_handle(library), symbol)
    except AttributeError:
        raise PluginMismatchError(f"{library} has no symbol {symbol}: not a levit_trt plugin library of this "
                                  f"source tree; rebuild it.\n{build_instructions()}") from None


def _compiled_major(library: Path, symbol_prefix: str) -> int:
    function = _library_function(library, f"{symbol_prefix}_trt_compiled_major")
    function.restype = ctypes.c_int32
    function.argtypes = []
    return int(function())


def _compiled_identity(library: Path, symbol_prefix: str) -> PluginIdentity:
    values = []
    for part in ("name", "version", "namespace"):
        function = _library_function(library, f"{symbol_prefix}_plugin_{part}")
        function.restype = ctypes.c_char_p
        function.argtypes = []
        values.append(function().decode())
    return PluginIdentity(*values)


def _checked_trt_library(library: Path, accepted_majors: Collection[int], symbol_prefix: str,
                         expected: PluginIdentity, header: str, runtime: str) -> Path:
    """`library`, after checking it was built for headers `runtime` loads plugins of and registers `expected`.

    `accepted_majors` are the TensorRT header majors the installed TensorRT loads plugins of
    (levit_trt.tensorrt.options.plugin_header_majors: its own major; 11 for TensorRT-RTX, whose
    plugin interfaces are TensorRT 11's). A library built for another major would load and then
    fail obscurely, or crash.
    """
    compiled = _compiled_major(library, symbol_prefix)
    if compiled not in accepted_majors:
        wanted = " or ".join(f"{major}.x" for major in sorted(accepted_majors))
        raise PluginMismatchError(
            f"{library} was compiled against TensorRT {compiled}.x headers but {runtime} loads plugins built "
            f"against TensorRT {wanted} headers; rebuild it against those headers.\n{build_instructions()}"
        )
    built = _compiled_identity(library, symbol_prefix)
    if built != expected:
        raise PluginMismatchError(
            f"{library} registers {built} but {PLUGIN_IDENTITY_DIR / header} says {expected}; the library is stale, "
            f"rebuild it.\n{build_instructions()}"
        )
    return library


def trt_plugin_compiled_major(path: Path | None = None) -> int:
    """The TensorRT major version (NV_TENSORRT_MAJOR) the plugin library was compiled against."""
    return _compiled_major(path if path is not None else trt_plugin_library(), "levit_softmax")


def trt_plugin_library_identity(path: Path | None = None) -> PluginIdentity:
    """Name, version and namespace compiled into the plugin library."""
    return _compiled_identity(path if path is not None else trt_plugin_library(), "levit_softmax")


def check_trt_plugin_library(accepted_majors: Collection[int], path: Path | None = None,
                             runtime: str = "this TensorRT") -> Path:
    """The softmax plugin library's path, after checking it suits this TensorRT and this source tree."""
    library = path if path is not None else trt_plugin_library()
    return _checked_trt_library(library, accepted_majors, "levit_softmax", softmax_plugin_identity(),
                                SOFTMAX_IDENTITY_HEADER, runtime)


def _load_op_library(path: Path) -> None:
    """torch.ops.load_library, with the error saying to rebuild when the library does not fit this torch."""
    import torch

    try:
        torch.ops.load_library(str(path))
    except OSError as error:
        raise PluginMismatchError(
            f"cannot load {path} into torch {torch.__version__}: {error}\n"
            f"It was probably built for another torch; rebuild it.\n{build_instructions()}"
        ) from error


_torch_op_lock = threading.Lock()
_softmax_op: Callable[[torch.Tensor], torch.Tensor] | None = None


def load_torch_op() -> Callable[[torch.Tensor], torch.Tensor]:
    """Load the PyTorch op library once per process and return `torch.ops.levit_trt.softmax`."""
    global _softmax_op
    with _torch_op_lock:
        if _softmax_op is not None:
            return _softmax_op
        import torch

        _load_op_library(torch_op_library())
        _softmax_op = torch.ops.levit_trt.softmax
        return _softmax_op


def plugin_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis through `levit_trt::softmax` (CUDA fp32/fp16 tensors).

    Once loaded, this is a plain op call, so torch.compile(fullgraph=True) traces through it.
    """
    op = _softmax_op if _softmax_op is not None else load_torch_op()
    return op(x)


# ---- Fused attention (plugins/attention/) ----------------------------------------------------------

ATTENTION_TORCH_OP_LIBRARY_NAME = "liblevit_attention_torch.so"
ATTENTION_TRT_PLUGIN_LIBRARY_NAME = "liblevit_attention_trt.so"
ATTENTION_IDENTITY_HEADER = "attention_plugin_identity.h"
ATTENTION_TORCH_OP_NAME = "levit_trt::attention"


def attention_plugin_identity() -> PluginIdentity:
    """The fused attention plugin's name, version and namespace (its identity header)."""
    return plugin_identity(ATTENTION_IDENTITY_HEADER)


def attention_torch_op_library() -> Path:
    """Path of the built fused-attention PyTorch op library; PluginNotBuiltError if it is not there."""
    return _built_library(ATTENTION_TORCH_OP_LIBRARY_NAME, f"PyTorch op ({ATTENTION_TORCH_OP_NAME})")


def attention_trt_plugin_library() -> Path:
    """Path of the built fused-attention TensorRT plugin library; PluginNotBuiltError if it is not there."""
    return _built_library(ATTENTION_TRT_PLUGIN_LIBRARY_NAME, "TensorRT attention plugin")


def check_attention_trt_plugin_library(accepted_majors: Collection[int], path: Path | None = None,
                                       runtime: str = "this TensorRT") -> Path:
    """The attention plugin library's path, after checking it suits this TensorRT and this source tree."""
    library = path if path is not None else attention_trt_plugin_library()
    return _checked_trt_library(library, accepted_majors, "levit_attention", attention_plugin_identity(),
                                ATTENTION_IDENTITY_HEADER, runtime)


class AttentionOp(Protocol):
    """`torch.ops.levit_trt.attention`'s signature."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
                 hardswish: bool = False) -> torch.Tensor: ...


_attention_op: AttentionOp | None = None


def load_attention_op() -> AttentionOp:
    """Load the attention op library once per process and return `torch.ops.levit_trt.attention`."""
    global _attention_op
    with _torch_op_lock:
        if _attention_op is None:
            import torch

            _load_op_library(attention_torch_op_library())
            _attention_op = torch.ops.levit_trt.attention
        return _attention_op


def plugin_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                     scale: float, hardswish: bool = False) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v as [B, Nq, H*Dv], through `levit_trt::attention` (CUDA fp16/fp32).

    q [B, Nq, H, Dq], k [B, Nk, H, Dq], v [B, Nk, H, Dv] may be the strided views the projections
    give (last axis contiguous); bias [H, Nq, Nk]. `hardswish` applies F.hardswish to the output in
    the kernel (LeViT's activation before each attention's projection), saving its own launch. Once
    loaded, this is a plain op call, so torch.compile(fullgraph=True) traces through it.
    """
    op = _attention_op if _attention_op is not None else load_attention_op()
    return op(q, k, v, bias, scale, hardswish=hardswish)
