"""Which TensorRT plugin libraries an ONNX needs, and loading them into a flavor's plugin registry.

One table (`PLUGIN_LIBRARIES`) maps a plugin op type (the ONNX node's op_type, which the parser
looks up as the creator's name) to the library that registers it and the check that library must
pass before it is loaded: the softmax plugin and the fused attention plugin. An ONNX loads exactly
the libraries its plugin nodes need.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from levit_trt.plugins import (
    ATTENTION_TRT_PLUGIN_LIBRARY_NAME,
    TRT_PLUGIN_LIBRARY_NAME,
    PluginMismatchError,
    attention_plugin_identity,
    attention_trt_plugin_library,
    check_attention_trt_plugin_library,
    check_trt_plugin_library,
    softmax_plugin_identity,
    trt_plugin_library,
)
from levit_trt.tensorrt.binding import tensorrt_logger, tensorrt_module, tensorrt_version
from levit_trt.tensorrt.options import Flavor, plugin_header_majors

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class PluginLibrary:
    """A levit_trt TensorRT plugin library: the plugin choice it serves (backends.base.PLUGINS), the op type it
    registers, its file, where it is built, its check."""

    plugin: str
    op_type: Callable[[], str]  # the creator name, read from the plugin's identity header
    file_name: str
    locate: Callable[[], Path]  # the built library; PluginNotBuiltError with build instructions if missing
    check: Callable[[Collection[int], Path, str], Path]  # (accepted header majors, path, runtime) -> path


PLUGIN_LIBRARIES: tuple[PluginLibrary, ...] = (
    PluginLibrary("softmax", lambda: softmax_plugin_identity().name, TRT_PLUGIN_LIBRARY_NAME, trt_plugin_library,
                  check_trt_plugin_library),
    PluginLibrary("attention", lambda: attention_plugin_identity().name, ATTENTION_TRT_PLUGIN_LIBRARY_NAME,
                  attention_trt_plugin_library, check_attention_trt_plugin_library),
)


def plugin_library(plugin: str) -> PluginLibrary:
    """The table's entry for a plugin choice ('softmax' or 'attention'); ValueError naming the choices otherwise."""
    for library in PLUGIN_LIBRARIES:
        if library.plugin == plugin:
            return library
    raise ValueError(f"no TensorRT plugin library for {plugin!r}; choose one of "
                     f"{', '.join(library.plugin for library in PLUGIN_LIBRARIES)}")


def needed_plugin_libraries(model: onnx.ModelProto) -> list[PluginLibrary]:
    """The table's libraries whose plugin nodes appear anywhere in `model` (graphs, subgraphs, local functions)."""
    from levit_trt.onnx_rewrites import plugin_op_types

    used = plugin_op_types(model)
    return [library for library in PLUGIN_LIBRARIES if library.op_type() in used]


def uses_plugins(model: onnx.ModelProto) -> bool:
    return bool(needed_plugin_libraries(model))


def plugin_libraries_for(model: onnx.ModelProto, given: Sequence[Path]) -> tuple[Path, ...]:
    """The plugin libraries to load before parsing: those given, and each built levit_trt library the graph uses
    (unless a library of that name is among those given)."""
    missing = [str(path) for path in given if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"plugin library not found: {', '.join(missing)}")
    libraries = [Path(path).resolve() for path in given]
    for library in needed_plugin_libraries(model):
        if not any(path.name == library.file_name for path in libraries):
            libraries.append(library.locate().resolve())
    return tuple(dict.fromkeys(libraries))


_plugin_lock = threading.Lock()
_loaded_plugins: dict[tuple[str, Path], object] = {}


def load_plugin_libraries(flavor: Flavor, libraries: Sequence[Path]) -> None:
    """Register each library's plugin creators with the flavor's registry, once per process, before parsing or
    deserializing. Our own libraries are first checked against the header majors this flavor takes and the
    plugin identity of this source tree (a stale library would load and then fail obscurely)."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = tensorrt_module(flavor)
    version = tensorrt_version(flavor)
    checks = {library.file_name: library.check for library in PLUGIN_LIBRARIES}
    registry = trt.get_plugin_registry()
    logger = tensorrt_logger(flavor)
    with _plugin_lock:
        for library in (Path(path).resolve() for path in libraries):
            if (flavor, library) in _loaded_plugins:
                continue
            check = checks.get(library.name)
            if check is not None:
                check(plugin_header_majors(flavor, version), library, f"{flavor} {version}")
            since = logger.mark()
            handle = registry.load_library(str(library))
            if handle is None:
                raise PluginMismatchError(f"{flavor} {version} could not load the plugin library {library}: "
                                          f"{logger.recent_errors(since)}")
            _loaded_plugins[(flavor, library)] = handle
