"""Carrying a `BuildJob` out: ONNX parser, builder config, optimisation profile, timing cache -> serialized engine.

`TensorRTBuilder` is the real `engine_cache.EngineBuilder`. TensorRT (10/11) builds in this process
on the GPU it targets. TensorRT-RTX builds ahead of time without a GPU, in a child process
(`build_process`): its ONNX parser aborts the process it runs in on some inputs, which a child
turns into an error. `build_network` is the build itself, shared by both.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from levit_trt.cache import atomic_output, file_lock
from levit_trt.tensorrt.binding import tensorrt_logger, tensorrt_module, tensorrt_version, wheel_cuda_major
from levit_trt.tensorrt.calibrator import (
    CalibrationResult,
    calibration_errors_first,
    entropy_calibrator,
    pin_float_layers,
)
from levit_trt.tensorrt.deserialize import dims_tuple, engine_information, try_deserialize
from levit_trt.tensorrt.devices import cuda_device, current_gpu
from levit_trt.tensorrt.layer_report import layers_from_build_log
from levit_trt.tensorrt.options import BuildPlan, EngineOptions, Flavor, GpuIdentity, plan_major
from levit_trt.tensorrt.plugin_libraries import load_plugin_libraries

if TYPE_CHECKING:
    import tensorrt as trt
    import torch

    from levit_trt.tensorrt.engine_cache import BuildJob, BuiltEngine, CalibrationJob


def network_flags(flavor: Flavor, strongly_typed: bool) -> int:
    """NetworkDefinitionCreationFlag bits: STRONGLY_TYPED on TensorRT 10 only (ignored in 11 and RTX, always on)."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = tensorrt_module(flavor)
    if strongly_typed and plan_major(flavor, trt.__version__) < 11:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def parse_onnx(flavor: Flavor, parser: trt.OnnxParser, path: Path) -> None:
    """Parse `path` into the parser's network; ValueError naming each failing node."""
    if parser.parse_from_file(str(path)):
        return
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    details = "; ".join(f"node {error.node_name()!r} ({error.node_operator()}, #{error.node()}): {error.desc()}"
                        for error in errors)
    raise ValueError(f"{flavor} {tensorrt_version(flavor)}'s ONNX parser cannot read {path}: "
                     f"{details or 'no error recorded'}")


def configure(flavor: Flavor, config: trt.IBuilderConfig, options: EngineOptions, plan: BuildPlan) -> None:
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = tensorrt_module(flavor)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if "TF32" not in plan.builder_flags:
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default in TensorRT 10, 11 and RTX; fp32 here means fp32
    config.builder_optimization_level = options.opt_level
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer, tactic and precision in the report
    if options.compute_capabilities:  # RTX only (EngineOptions checks it); the tensorrt stubs lack these names
        rtx_config: Any = config
        rtx_module: Any = trt
        rtx_targets = rtx_module.ComputeCapability
        rtx_config.num_compute_capabilities = len(options.compute_capabilities)
        for index, target in enumerate(options.compute_capabilities):
            rtx_config.set_compute_capability(getattr(rtx_targets, f"SM{target}"), index)


def _read_timing_cache(config: trt.IBuilderConfig, path: Path) -> trt.ITimingCache | None:
    """The timing cache in the file at `path` (a new empty one where there is none); None when TensorRT cannot read it."""
    # The stubs promise an ITimingCache, but TensorRT returns None (a null pointer) for a corrupt blob.
    cache: trt.ITimingCache | None = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
    return cache


def _load_timing_cache(flavor: Flavor, config: trt.IBuilderConfig, path: Path) -> trt.ITimingCache:
    """Start from the measured tactic timings at `path`; an unreadable cache, or one from another TensorRT or GPU,
    is replaced by a new one (said on stderr). The caller holds the returned cache until the build is over."""
    cache = _read_timing_cache(config, path)
    if cache is not None and config.set_timing_cache(cache, False):
        return cache
    why = "is unreadable (corrupt or truncated)" if cache is None else "does not match this TensorRT/GPU"
    print(f"levit_trt: timing cache {path} {why}; starting a new one, which replaces it after this build",
          file=sys.stderr)
    logger = tensorrt_logger(flavor)
    since = logger.mark()
    fresh: trt.ITimingCache | None = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, False):
        raise RuntimeError(f"TensorRT could not create a new timing cache for {path}: {logger.recent_errors(since)}")
    return fresh


def _save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Write this build's timings to `path`, combined under the lock with what other builds wrote there meanwhile."""
    cache = config.get_timing_cache()
    with file_lock(path.with_name(f"{path.name}.lock")):
        on_disk = _read_timing_cache(config, path)
        if on_disk is not None:
            cache.combine(on_disk, False)  # refused (False) for another TensorRT/GPU's file, which ours replaces
        with atomic_output(path) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))


def _network_input(network: trt.INetworkDefinition) -> tuple[str, tuple[int, ...]]:
    """The network's one input name and its dimensions after the batch; ValueError for other layouts."""
    if network.num_inputs != 1:
        raise ValueError(f"expected a network with one input, got {network.num_inputs}")
    tensor = network.get_input(0)
    dims = dims_tuple(tensor.shape)
    if not dims or dims[0] != -1 or -1 in dims[1:]:
        raise ValueError(f"input {tensor.name!r} has shape {list(dims)}; TensorRT engines here need a dynamic batch "
                         "dimension and fixed others (export with levit-trt export)")
    return tensor.name, dims[1:]


def build_serialized(flavor: Flavor, builder: trt.Builder, network: trt.INetworkDefinition,
                     config: trt.IBuilderConfig, what: str) -> bytes:
    logger = tensorrt_logger(flavor)
    since = logger.mark()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{flavor} {tensorrt_version(flavor)} could not build {what}: {logger.recent_errors(since)}")
    return bytes(serialized)


@dataclass(frozen=True)
class NetworkBuild:
    serialized: bytes
    engine_information: str
    calibration_cache: bytes | None = None


def build_network(flavor: Flavor, onnx_path: Path, options: EngineOptions, plan: BuildPlan,
                  plugin_libraries: tuple[Path, ...], calibration: CalibrationJob | None = None,
                  device: torch.device | None = None) -> NetworkBuild:
    """Parse, configure, build; then the layer report's JSON: the inspector's where the engine deserializes here,
    else (TensorRT-RTX without a GPU it runs on) the builder's per-layer log. `calibration` (TensorRT 10) needs
    the CUDA `device`."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = tensorrt_module(flavor)
    logger = tensorrt_logger(flavor)
    load_plugin_libraries(flavor, plugin_libraries)
    builder = trt.Builder(logger.logger)
    network = builder.create_network(network_flags(flavor, plan.strongly_typed))
    parser = trt.OnnxParser(network, logger.logger)
    parse_onnx(flavor, parser, onnx_path)
    config = builder.create_builder_config()
    configure(flavor, config, options, plan)
    name, sample_shape = _network_input(network)
    profile = builder.create_optimization_profile()
    profile.set_shape(name, *(trt.Dims([batch, *sample_shape]) for batch in
                              (options.min_batch, options.opt_batch, options.max_batch)))
    config.add_optimization_profile(profile)
    result = CalibrationResult()
    # Held here: the builder config keeps only a raw pointer to the calibrator during the build.
    calibrator = None
    if calibration is not None:
        assert device is not None, "the entropy calibrator feeds a CUDA buffer"
        calibrator = _set_up_calibration(builder, network, config, calibration, name, device, result)
    # Held here too: TensorRT asks that a timing cache outlive the builds that use it.
    timing_path = options.timing_cache
    timing_cache = _load_timing_cache(flavor, config, timing_path) if timing_path is not None else None
    logger.take_layer_log()  # a former build's
    with calibration_errors_first(result):
        serialized = build_serialized(flavor, builder, network, config, f"an engine from {onnx_path}")
    layer_log = logger.take_layer_log()
    if timing_path is not None:
        _save_timing_cache(config, timing_path)
    del calibrator, timing_cache
    if flavor == "rtx":
        with logger.quiet():  # RTX builds where it cannot run (no GPU, or one it does not support): expected
            runtime, engine = try_deserialize(flavor, serialized)
    else:
        runtime, engine = try_deserialize(flavor, serialized)
    if engine is not None:
        information = engine_information(flavor, engine)
    elif flavor == "rtx" and layer_log is not None:
        information = json.dumps(layers_from_build_log(layer_log))
    else:
        raise RuntimeError(f"{flavor} could not load the engine it just built from {onnx_path}")
    del engine, runtime
    return NetworkBuild(serialized, information, result.cache)


def _set_up_calibration(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
                        job: CalibrationJob, input_name: str, device: torch.device,
                        result: CalibrationResult) -> trt.IInt8EntropyCalibrator2:
    """TensorRT 10 implicit INT8: the entropy calibrator (returned), its one-shape profile, the float constraints."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = tensorrt_module("tensorrt")
    calibrator = entropy_calibrator(job, device, result)
    config.int8_calibrator = calibrator
    profile = builder.create_optimization_profile()
    dims = trt.Dims([job.batch_size, *job.input_shape])
    profile.set_shape(input_name, dims, dims, dims)  # calibration runs at the profile's kOPT shape
    config.set_calibration_profile(profile)
    pin_float_layers(network, job)
    return calibrator


class TensorRTBuilder:
    """An `engine_cache.EngineBuilder` for one flavor: TensorRT builds here for one GPU, TensorRT-RTX builds in a
    child process for its target compute capabilities (no GPU needed; `cache_dir` holds what the child needs)."""

    def __init__(self, flavor: Flavor = "tensorrt", device: torch.device | str = "cuda", *,
                 cache_dir: Path | None = None) -> None:
        self.flavor: Flavor = flavor
        self.tensorrt_version = tensorrt_version(flavor)
        self.cuda_major = wheel_cuda_major(flavor)
        self.cache_dir = cache_dir
        self.gpu: GpuIdentity | None = None
        self.device: torch.device | None = None
        if flavor == "tensorrt":
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError("TensorRT needs a CUDA device to build on; torch.cuda.is_available() is False here "
                                   "(the rtx flavor builds without one: --flavor rtx)")
            self.device = cuda_device(device)
            self.gpu = current_gpu(self.device)

    def build(self, job: BuildJob) -> BuiltEngine:
        from levit_trt.tensorrt.engine_cache import BuiltEngine

        if self.flavor == "rtx":
            from levit_trt.tensorrt.build_process import build_in_child

            if self.cache_dir is None:
                raise ValueError("a TensorRT-RTX build needs the artifact cache directory (TensorRTBuilder(cache_dir=))")
            built = build_in_child(job, self.cache_dir)
        else:
            import torch

            with torch.cuda.device(self.device):
                built = build_network(self.flavor, job.onnx_path, job.options, job.plan, job.plugin_libraries,
                                      job.calibration, self.device)
        return BuiltEngine(built.serialized, built.engine_information, built.calibration_cache)
