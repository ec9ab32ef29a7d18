"""The TensorRT Python module of each flavor, imported here and nowhere else, and its one logger per process.

Flavor "tensorrt" is the `tensorrt` module (TensorRT 10 or 11: builds and runs on one GPU);
flavor "rtx" is `tensorrt_rtx` (TensorRT-RTX: builds ahead of time, with no GPU, for target
compute capabilities, and compiles kernels on the GPU at first run). Both are imported on first
use, so the package imports where neither is installed. Other modules of this package type their
code against the `tensorrt` stubs inside `if TYPE_CHECKING:` and take the module object at run
time from `tensorrt_module(flavor)`: RTX's Python API is TensorRT 11's, less what RTX lacks.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import re
import sys
from collections.abc import Iterator
from functools import cache
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any

from levit_trt.tensorrt.options import FLAVORS, Flavor

if TYPE_CHECKING:
    import tensorrt as trt

MODULE_NAMES: dict[str, str] = {"tensorrt": "tensorrt", "rtx": "tensorrt_rtx"}
INSTALL_COMMANDS: dict[str, str] = {"tensorrt": 'pip install -e ".[tensorrt]"', "rtx": 'pip install -e ".[rtx]"'}
# TensorRT errors kept for exception messages: an exception quotes those logged since its call began,
# so the few most recent suffice, and a long-running process must not keep every error it ever saw.
_KEPT_ERRORS = 64
# With ProfilingVerbosity.DETAILED the builder logs its engine's layers as one VERBOSE message that
# starts with this line (measured on TensorRT-RTX 1.7.1); layer_report.layers_from_build_log reads it.
BUILD_LOG_LAYERS_HEADER = "Layers:\n"


class TensorRTNotInstalled(RuntimeError):
    """The flavor's Python module cannot be imported; the message says what to install."""


def tensorrt_module(flavor: Flavor) -> ModuleType:
    """The Python module of `flavor`; TensorRTNotInstalled saying what to install where it is missing.

    A real TensorRT is told from the empty `tensorrt` namespace package that tensorrt-stubs alone
    installs by its `Builder`.
    """
    if flavor not in FLAVORS:
        raise ValueError(f"unknown TensorRT flavor {flavor!r}; valid flavors: {', '.join(FLAVORS)}")
    name = MODULE_NAMES[flavor]
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        raise TensorRTNotInstalled(f"the {flavor} flavor needs the {name} Python module, which is not installed "
                                   f"({error}); {INSTALL_COMMANDS[flavor]}") from error
    if not hasattr(module, "Builder"):
        raise TensorRTNotInstalled(f"`import {name}` finds only an empty package (tensorrt-stubs installs type stubs "
                                   f"alone), not the {flavor} flavor; {INSTALL_COMMANDS[flavor]}")
    return module


def tensorrt_version(flavor: Flavor) -> str:
    """The flavor's version string ('10.13.0.35', '1.7.1.116'); TensorRTNotInstalled where it is missing."""
    return str(tensorrt_module(flavor).__version__)


@cache
def wheel_cuda_major(flavor: Flavor) -> str | None:
    """The CUDA major version the installed wheels were built for ('12', '13'), from their distribution names
    (tensorrt-cu12-libs, tensorrt_rtx_cu13, ...); None where no such wheel is installed (a local build).

    cu12 and cu13 wheels report the same module version, so this enters the engine cache key beside it.
    """
    pattern = re.compile(rf"^{MODULE_NAMES[flavor]}_cu(\d+)(_|$)")
    for distribution in metadata.distributions():
        name = re.sub(r"[-_.]+", "_", str(distribution.metadata["Name"] or "")).lower()
        match = pattern.match(name)
        if match:
            return match.group(1)
    return None


class ErrorLog:
    """The last `limit` error messages, numbered, so a caller can quote those logged after its `mark()`."""

    def __init__(self, limit: int = _KEPT_ERRORS) -> None:
        self._recent: collections.deque[str] = collections.deque(maxlen=limit)
        self._count = 0

    def append(self, message: str) -> None:
        self._recent.append(message)
        self._count += 1

    def mark(self) -> int:
        return self._count

    def since(self, mark: int) -> str:
        """The errors logged since `mark` (as many as are kept), for an exception message."""
        recent = list(self._recent)
        return "; ".join(recent[len(recent) - min(self._count - mark, len(recent)):]) or "no error was logged"


class RecordingLogger:
    """Prints TensorRT's warnings and errors to stderr, keeps the recent errors (exceptions quote them) and the
    last build log of the engine's layers."""

    def __init__(self, logger: trt.ILogger, errors: ErrorLog, state: dict[str, str]) -> None:
        self.logger = logger
        self.errors = errors
        self._state = state

    @classmethod
    def create(cls, flavor: Flavor) -> RecordingLogger:
        if TYPE_CHECKING:
            import tensorrt as trt
        else:
            trt = tensorrt_module(flavor)
        errors = ErrorLog()
        state: dict[str, str] = {}

        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
                if severity <= trt.ILogger.Severity.WARNING and "quiet" not in state:
                    print(f"[{MODULE_NAMES[flavor]} {severity.name}] {msg}", file=sys.stderr)
                if severity <= trt.ILogger.Severity.ERROR:
                    errors.append(msg)
                elif msg.startswith(BUILD_LOG_LAYERS_HEADER):
                    state["layers"] = msg

        return cls(Logger(), errors, state)

    def mark(self) -> int:
        return self.errors.mark()

    def recent_errors(self, since: int) -> str:
        """The errors logged since `since` (a former `mark()`), for an exception message."""
        return self.errors.since(since)

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Print nothing while a failure is expected and handled (errors are still kept for messages)."""
        self._state["quiet"] = "yes"
        try:
            yield
        finally:
            self._state.pop("quiet", None)

    def take_layer_log(self) -> str | None:
        """The builder's last per-layer log message (see BUILD_LOG_LAYERS_HEADER), forgotten once taken."""
        return self._state.pop("layers", None)


@cache
def tensorrt_logger(flavor: Flavor) -> RecordingLogger:
    """One logger per flavor and process, as TensorRT asks: its builder, runtime and parser all report to it."""
    return RecordingLogger.create(flavor)


def describe_flavors() -> dict[str, Any]:
    """Per flavor: its version where installed, else why not (for levit-trt info)."""
    found: dict[str, Any] = {}
    for flavor in FLAVORS:
        try:
            found[flavor] = {"installed": True, "version": tensorrt_version(flavor),
                             "cuda": wheel_cuda_major(flavor)}
        except TensorRTNotInstalled as error:
            found[flavor] = {"installed": False, "reason": str(error)}
    return found
