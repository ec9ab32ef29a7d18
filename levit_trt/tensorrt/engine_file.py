"""`levit-trt build`: the engine for a user's ONNX, through the engine cache, written to a user-named file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from levit_trt.cache import ensure_cache_dir
from levit_trt.tensorrt.builder import TensorRTBuilder
from levit_trt.tensorrt.engine_cache import (
    CachedEngine,
    GivenOnnx,
    cached_engine,
    int8_inputs_loader,
    write_engine_file,
)
from levit_trt.tensorrt.options import EngineOptions


def build_engine_file(
    onnx_path: Path,
    engine_path: Path,
    options: EngineOptions,
    *,
    plugin_libraries: Sequence[Path] = (),
    cache_dir: Path | None = None,
    device: str = "cuda",
) -> CachedEngine:
    """Build (or find in the cache) the engine for `onnx_path` with `options` (its flavor included) and write it
    to `engine_path` with its layer report beside it (`<engine>.layers.json`)."""
    onnx = GivenOnnx.read(onnx_path)
    cache = ensure_cache_dir(cache_dir)
    builder = TensorRTBuilder(options.flavor, device, cache_dir=cache)
    engine = cached_engine(builder, onnx, options, cache, int8=int8_inputs_loader(options, None),
                           plugin_libraries=plugin_libraries)
    write_engine_file(engine, engine_path)
    return engine
