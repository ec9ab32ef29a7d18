"""TensorRT: engines built from the exported ONNX and run on PyTorch CUDA tensors. The only module importing tensorrt.

Kept thin on purpose: what to build and when (which ONNX, cache keys, calibration caches, layer
reports) is decided in `levit_trt.engines` and `levit_trt.engine_options`, which run anywhere;
this module carries a `BuildJob` out with TensorRT's builder (`TensorRTBuilder`), loads engines
and runs them (`EngineRunner`). `tensorrt` is imported inside functions, so the package imports
and the backend says why it is unavailable where TensorRT is missing. A real TensorRT is told
from the empty `tensorrt` namespace package that `tensorrt-stubs` alone installs by its `Builder`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
import torch

from levit_trt.backends.base import Availability, Backend, BackendUnavailable, ModelSource
from levit_trt.cache import atomic_output, ensure_cache_dir, file_lock
from levit_trt.engine_options import (
    BuildPlan,
    EngineOptions,
    EnginePrecision,
    GpuIdentity,
    check_batch_in_profile,
    tensorrt_major,
)
from levit_trt.engine_report import onnx_node_names
from levit_trt.engines import (
    BuildJob,
    BuiltEngine,
    CachedEngine,
    CalibrationJob,
    ExportedOnnx,
    GivenOnnx,
    cached_engine,
    int8_inputs_loader,
    write_engine_file,
)
from levit_trt.plugins import (
    TRT_PLUGIN_LIBRARY_NAME,
    PluginMismatchError,
    PluginNotBuiltError,
    check_trt_plugin_library,
    softmax_plugin_identity,
    trt_plugin_library,
)

if TYPE_CHECKING:
    import tensorrt as trt
    from typing_extensions import Buffer

# TensorRT errors kept for exception messages: an exception quotes those logged since its call began,
# so the few most recent suffice, and a long-running process must not keep every error it ever saw.
_KEPT_ERRORS = 64
_TORCH_DTYPES = {  # trt.DataType member name -> torch dtype
    "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
    "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool,
}


def require_tensorrt() -> str:
    """TensorRT's version; BackendUnavailable saying why when no real TensorRT can be imported."""
    try:
        import tensorrt as trt
    except ImportError as error:
        raise BackendUnavailable(f"TensorRT is not installed ({error}); pip install tensorrt") from error
    if not hasattr(trt, "Builder"):
        raise BackendUnavailable(
            "TensorRT is not installed: `import tensorrt` finds only an empty package (tensorrt-stubs installs type "
            "stubs alone); pip install tensorrt")
    return trt.__version__


@lru_cache(maxsize=1)
def _logger() -> _RecordingLogger:
    """One logger per process, as TensorRT asks: the builder, runtime and parser all report to it."""
    return _RecordingLogger.create()


class _ErrorLog:
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


class _RecordingLogger:
    """Prints TensorRT's warnings and errors to stderr and keeps the recent errors, so exceptions can quote them."""

    def __init__(self, logger: trt.ILogger, errors: _ErrorLog) -> None:
        self.logger = logger
        self.errors = errors

    @classmethod
    def create(cls) -> _RecordingLogger:
        import tensorrt as trt

        errors = _ErrorLog()

        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
                if severity <= trt.ILogger.Severity.WARNING:
                    print(f"[TensorRT {severity.name}] {msg}", file=sys.stderr)
                if severity <= trt.ILogger.Severity.ERROR:
                    errors.append(msg)

        return cls(Logger(), errors)

    def mark(self) -> int:
        return self.errors.mark()

    def recent_errors(self, since: int) -> str:
        """The errors logged since `since` (a former `mark()`), for an exception message."""
        return self.errors.since(since)


_plugin_lock = threading.Lock()
_loaded_plugins: dict[Path, object] = {}


def load_plugin_libraries(libraries: Sequence[Path]) -> None:
    """Register each library's plugin creators with TensorRT, once per process, before parsing or deserializing.

    The softmax plugin library is first checked against this TensorRT's major version and the
    plugin identity of this source tree (a stale library would load and then fail obscurely).
    """
    import tensorrt as trt

    registry = trt.get_plugin_registry()
    with _plugin_lock:
        for library in (Path(path).resolve() for path in libraries):
            if library in _loaded_plugins:
                continue
            if library.name == TRT_PLUGIN_LIBRARY_NAME:
                check_trt_plugin_library(tensorrt_major(trt.__version__), library)
            since = _logger().mark()
            handle = registry.load_library(str(library))
            if handle is None:
                raise PluginMismatchError(f"TensorRT could not load the plugin library {library}: "
                                          f"{_logger().recent_errors(since)}")
            _loaded_plugins[library] = handle


def current_gpu(device: torch.device) -> GpuIdentity:
    props = torch.cuda.get_device_properties(device)
    return GpuIdentity(props.name, f"{props.major}.{props.minor}")


def _cuda_device(device: torch.device | str) -> torch.device:
    """`device` with its index filled in, so it compares equal to a tensor's device."""
    resolved = torch.device(device)
    if resolved.type != "cuda":
        raise ValueError(f"TensorRT runs on CUDA devices, not {resolved}")
    return torch.device("cuda", resolved.index if resolved.index is not None else torch.cuda.current_device())


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(dims[i] for i in range(len(dims)))


def _torch_dtype(dtype: trt.DataType) -> torch.dtype:
    try:
        return _TORCH_DTYPES[dtype.name]
    except KeyError:
        raise ValueError(f"engine tensor type {dtype.name} has no PyTorch counterpart") from None


def _network_flags(strongly_typed: bool) -> int:
    import tensorrt as trt

    # TensorRT 11 networks are always strongly typed; its kSTRONGLY_TYPED is deprecated and ignored.
    if strongly_typed and tensorrt_major(trt.__version__) < 11:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def _parse_onnx(parser: trt.OnnxParser, path: Path) -> None:
    """Parse `path` into the parser's network; ValueError naming each failing node."""
    import tensorrt as trt

    if parser.parse_from_file(str(path)):
        return
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    details = "; ".join(f"node {error.node_name()!r} ({error.node_operator()}, #{error.node()}): {error.desc()}"
                        for error in errors)
    raise ValueError(f"TensorRT {trt.__version__}'s ONNX parser cannot read {path}: {details or 'no error recorded'}")


def _configure(config: trt.IBuilderConfig, options: EngineOptions, plan: BuildPlan) -> None:
    import tensorrt as trt

    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if "TF32" not in plan.builder_flags:
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default in TensorRT 10 and 11; fp32 here means fp32
    config.builder_optimization_level = options.opt_level
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer, tactic and precision in the report


def _read_timing_cache(config: trt.IBuilderConfig, path: Path) -> trt.ITimingCache | None:
    """The timing cache in the file at `path` (a new empty one where there is none); None when TensorRT cannot read it."""
    # The stubs promise an ITimingCache, but TensorRT returns None (a null pointer) for a corrupt blob.
    cache: trt.ITimingCache | None = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
    return cache


def _load_timing_cache(config: trt.IBuilderConfig, path: Path) -> trt.ITimingCache:
    """Start from the measured tactic timings at `path`; an unreadable cache, or one from another TensorRT or GPU,
    is replaced by a new one (said on stderr). The caller holds the returned cache until the build is over."""
    cache = _read_timing_cache(config, path)
    if cache is not None and config.set_timing_cache(cache, False):
        return cache
    why = "is unreadable (corrupt or truncated)" if cache is None else "does not match this TensorRT/GPU"
    print(f"levit_trt: timing cache {path} {why}; starting a new one, which replaces it after this build",
          file=sys.stderr)
    since = _logger().mark()
    fresh: trt.ITimingCache | None = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, False):
        raise RuntimeError(f"TensorRT could not create a new timing cache for {path}: "
                           f"{_logger().recent_errors(since)}")
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
    dims = _dims(tensor.shape)
    if not dims or dims[0] != -1 or -1 in dims[1:]:
        raise ValueError(f"input {tensor.name!r} has shape {list(dims)}; TensorRT engines here need a dynamic batch "
                         "dimension and fixed others (export with levit-trt export)")
    return tensor.name, dims[1:]


@dataclasses.dataclass
class _CalibrationResult:
    cache: bytes | None = None  # what the calibrator wrote
    error: BaseException | None = None  # raised while TensorRT was calling the calibrator


@contextlib.contextmanager
def _calibration_errors_first(result: _CalibrationResult) -> Iterator[None]:
    """Raise the calibrator's stored error after the build, even when the build failed: TensorRT only saw "no more
    batches" and fails with a message of its own, which then hangs off the real cause as its __context__."""
    try:
        yield
    finally:
        if result.error is not None:
            raise result.error


def _entropy_calibrator(job: CalibrationJob, device: torch.device,
                        result: _CalibrationResult) -> trt.IInt8EntropyCalibrator2:
    """TensorRT 10's IInt8EntropyCalibrator2 fed from the job's batches through one PyTorch CUDA buffer."""
    import tensorrt as trt

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.buffer = torch.empty((job.batch_size, *job.input_shape), dtype=torch.float32, device=device)
            self.batches = job.batches()

        def get_batch_size(self) -> int:
            return job.batch_size

        def get_batch(self, names: list[str]) -> list[int]:
            try:
                batch = next(self.batches)
            except StopIteration:
                return []  # no more batches
            except Exception as error:  # noqa: BLE001 - any data error: TensorRT cannot carry it, raised after the build
                result.error = error
                return []
            self.buffer.copy_(batch)
            torch.cuda.synchronize(device)  # TensorRT reads the buffer on its own stream
            return [self.buffer.data_ptr()]

        def read_calibration_cache(self) -> bytes | None:  # None means "no cache: calibrate" (TensorRT's docs)
            return job.cache

        def write_calibration_cache(self, cache: Buffer) -> None:
            result.cache = bytes(cache)

    return EntropyCalibrator()


def _pin_float_layers(network: trt.INetworkDefinition, job: CalibrationJob) -> None:
    """fp32 precision and output types on the layers the policy keeps float (OBEY_PRECISION_CONSTRAINTS holds them)."""
    import tensorrt as trt

    layers = [network.get_layer(i) for i in range(network.num_layers)]
    for index in job.layers_kept_float([onnx_node_names(layer.metadata) for layer in layers]):
        layer = layers[index]
        outputs = [i for i in range(layer.num_outputs) if layer.get_output(i).dtype in (trt.float32, trt.float16)]
        if not outputs:
            continue  # shape and index layers have no float precision to keep
        layer.precision = trt.float32
        for output in outputs:
            layer.set_output_type(output, trt.float32)


def _build_serialized(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
                      what: str) -> bytes:
    import tensorrt as trt

    since = _logger().mark()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT {trt.__version__} could not build {what}: {_logger().recent_errors(since)}")
    return bytes(serialized)


def deserialize_engine(data: bytes, what: str) -> tuple[trt.Runtime, trt.ICudaEngine]:
    """The engine in `data` and the runtime that must outlive it; RuntimeError quoting TensorRT's errors."""
    import tensorrt as trt

    since = _logger().mark()
    runtime = trt.Runtime(_logger().logger)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise RuntimeError(f"TensorRT {trt.__version__} could not load {what} (engines only load in the TensorRT "
                           f"version and on the GPU model that built them): {_logger().recent_errors(since)}")
    return runtime, engine


def engine_information(engine: trt.ICudaEngine) -> str:
    """The inspector's per-layer JSON (name, type, tactic, tensor formats and types, ONNX nodes)."""
    import tensorrt as trt

    return engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)


class TensorRTBuilder:
    """An `engines.EngineBuilder`: carries a `BuildJob` out with TensorRT's builder on one GPU."""

    def __init__(self, device: torch.device | str = "cuda") -> None:
        self.tensorrt_version = require_tensorrt()
        if not torch.cuda.is_available():
            raise BackendUnavailable("TensorRT needs a CUDA device; torch.cuda.is_available() is False here")
        self.device = _cuda_device(device)
        self.gpu = current_gpu(self.device)

    def build(self, job: BuildJob) -> BuiltEngine:
        import tensorrt as trt

        with torch.cuda.device(self.device):
            load_plugin_libraries(job.plugin_libraries)
            builder = trt.Builder(_logger().logger)
            network = builder.create_network(_network_flags(job.plan.strongly_typed))
            parser = trt.OnnxParser(network, _logger().logger)
            _parse_onnx(parser, job.onnx_path)
            config = builder.create_builder_config()
            _configure(config, job.options, job.plan)
            name, sample_shape = _network_input(network)
            profile = builder.create_optimization_profile()
            profile.set_shape(name, *(trt.Dims([batch, *sample_shape]) for batch in
                                      (job.options.min_batch, job.options.opt_batch, job.options.max_batch)))
            config.add_optimization_profile(profile)
            calibration = _CalibrationResult()
            # Held here: the builder config keeps only a raw pointer to the calibrator during the build.
            calibrator = (self._set_up_calibration(builder, network, config, job.calibration, name, calibration)
                          if job.calibration is not None else None)
            # Held here too: TensorRT asks that a timing cache outlive the builds that use it.
            timing_path = job.options.timing_cache
            timing_cache = _load_timing_cache(config, timing_path) if timing_path is not None else None
            with _calibration_errors_first(calibration):
                serialized = _build_serialized(builder, network, config, f"an engine from {job.onnx_path}")
            if timing_path is not None:
                _save_timing_cache(config, timing_path)
            del calibrator, timing_cache
            _, engine = deserialize_engine(serialized, "the engine it just built")
            return BuiltEngine(serialized, engine_information(engine), calibration.cache)

    def _set_up_calibration(self, builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
                            job: CalibrationJob, input_name: str,
                            result: _CalibrationResult) -> trt.IInt8EntropyCalibrator2:
        """TensorRT 10 implicit INT8: the entropy calibrator (returned), its one-shape profile, the float constraints."""
        import tensorrt as trt

        calibrator = _entropy_calibrator(job, self.device, result)
        config.int8_calibrator = calibrator
        profile = builder.create_optimization_profile()
        dims = trt.Dims([job.batch_size, *job.input_shape])
        profile.set_shape(input_name, dims, dims, dims)  # calibration runs at the profile's kOPT shape
        config.set_calibration_profile(profile)
        _pin_float_layers(network, job)
        return calibrator


@dataclasses.dataclass
class _CapturedGraph:
    shape: tuple[int, ...]
    graph: torch.cuda.CUDAGraph
    input: torch.Tensor
    output: torch.Tensor


class EngineRunner:
    """Runs a one-input, one-output engine on PyTorch CUDA tensors, on the caller's current stream.

    The input shape is set on every call and a batch outside the optimisation profile is a
    ValueError. With `cuda_graph=True` the enqueue is captured once per input shape (recaptured when
    the shape changes) and replayed; the returned tensor is then the graph's output buffer, which
    the next call overwrites.
    """

    def __init__(self, engine: trt.ICudaEngine, device: torch.device | str, *, runtime: trt.Runtime | None = None,
                 cuda_graph: bool = False, name: str = "the engine") -> None:
        import tensorrt as trt

        self.engine = engine
        self._runtime = runtime  # a deserialized engine must not outlive its runtime
        self.device = _cuda_device(device)
        self.name = name
        self.cuda_graph = cuda_graph
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{name} has inputs {inputs} and outputs {outputs}; EngineRunner runs one of each")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = _torch_dtype(engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _torch_dtype(engine.get_tensor_dtype(self.output_name))
        shape = _dims(engine.get_tensor_shape(self.input_name))
        if shape[0] == -1:
            low, _, high = engine.get_tensor_profile_shape(self.input_name, 0)
            self.batch_range = (low[0], high[0])
        else:
            self.batch_range = (shape[0], shape[0])
        self.sample_shape = shape[1:]
        with torch.cuda.device(self.device):
            context = engine.create_execution_context()
        if context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {name} (out of GPU memory?)")
        self.context = context
        self._graph: _CapturedGraph | None = None

    @classmethod
    def load(cls, path: Path, device: torch.device | str, *, cuda_graph: bool = False) -> EngineRunner:
        runtime, engine = deserialize_engine(Path(path).read_bytes(), str(path))
        return cls(engine, device, runtime=runtime, cuda_graph=cuda_graph, name=str(path))

    def check_input(self, x: torch.Tensor) -> None:
        """ValueError unless `x` is a tensor this engine can take (device, dtype, shape, batch in profile)."""
        if x.device != self.device:
            raise ValueError(f"input is on {x.device}, but {self.name} runs on {self.device}")
        if x.dtype != self.input_dtype:
            raise ValueError(f"input is {x.dtype}, but {self.name} takes {self.input_dtype}")
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"input has shape {tuple(x.shape)}, but {self.name} takes [N, "
                             f"{', '.join(map(str, self.sample_shape))}]")
        check_batch_in_profile(x.shape[0], *self.batch_range, where=self.name)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = x.contiguous()
        with torch.cuda.device(self.device):  # the engine's context and a graph capture belong to its device
            if self.cuda_graph:
                return self._replay(x)
            return self._enqueue(x, torch.cuda.current_stream(self.device))

    def _enqueue(self, x: torch.Tensor, stream: torch.cuda.Stream, out: torch.Tensor | None = None) -> torch.Tensor:
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise ValueError(f"{self.name} rejected input shape {tuple(x.shape)}")
        if out is None:
            out = torch.empty(_dims(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype,
                              device=self.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        since = _logger().mark()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT could not enqueue {self.name}: {_logger().recent_errors(since)}")
        return out

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if self._graph is None or self._graph.shape != shape:
            self._graph = self._capture(shape)
        self._graph.input.copy_(x)
        self._graph.graph.replay()
        return self._graph.output

    def _capture(self, shape: tuple[int, ...]) -> _CapturedGraph:
        """Capture one enqueue for `shape` into a CUDA graph, after one uncaptured enqueue of that shape
        (NVIDIA's advice: it lets TensorRT finish shape-dependent set-up outside the capture)."""
        self._graph = None
        static_input = torch.zeros(shape, dtype=self.input_dtype, device=self.device)
        static_output = self._enqueue(static_input, torch.cuda.current_stream(self.device))
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._enqueue(static_input, torch.cuda.current_stream(self.device), out=static_output)
        except RuntimeError as error:
            raise RuntimeError(f"cannot capture {self.name} in a CUDA graph ({error}); run it with cuda_graph=False"
                               ) from error
        return _CapturedGraph(shape, graph, static_input, static_output)


def _softmax_plugin() -> trt.IPluginV3:
    """The softmax plugin (last axis) from TensorRT's plugin registry; its library must be loaded."""
    import tensorrt as trt

    identity = softmax_plugin_identity()
    creator = trt.get_plugin_registry().get_creator(identity.name, identity.version, identity.namespace)
    if creator is None:
        raise PluginNotBuiltError(f"TensorRT's plugin registry has no {identity} after loading {trt_plugin_library()}")
    axis = np.array([-1], dtype=np.int32)
    fields = trt.PluginFieldCollection([trt.PluginField(trt.FallbackString("axis"), axis, trt.PluginFieldType.INT32)])
    plugin: trt.IPluginV3 | None = creator.create_plugin(identity.name, trt.PluginFieldCollection_(fields),
                                                         trt.TensorRTPhase.BUILD)
    if plugin is None:
        raise PluginMismatchError(f"the {identity.name} plugin creator refused axis=-1")
    return plugin


def softmax_engine(shape: tuple[int, ...], dtype: torch.dtype, use_plugin: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """A one-layer engine for the softmax micro-benchmark: softmax over the last axis of a fixed-`shape` tensor,
    by TensorRT's ISoftmaxLayer or by the plugin. Calling it enqueues on the current stream and returns a new
    output tensor. The network is strongly typed, so fp16 in means the layer runs in fp16."""
    require_tensorrt()
    import tensorrt as trt

    trt_dtypes = {torch.float32: trt.float32, torch.float16: trt.float16}
    if dtype not in trt_dtypes:
        raise ValueError(f"softmax_engine takes float32 or float16, not {dtype}")
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"softmax_engine needs a rank >= 2 shape of positive sizes, got {shape}")
    device = _cuda_device("cuda")
    with torch.cuda.device(device):
        if use_plugin:
            load_plugin_libraries([trt_plugin_library()])
        builder = trt.Builder(_logger().logger)
        network = builder.create_network(_network_flags(strongly_typed=True))
        scores = network.add_input("scores", trt_dtypes[dtype], trt.Dims(list(shape)))
        if use_plugin:
            layer: trt.ILayer = network.add_plugin_v3([scores], [], _softmax_plugin())
        else:
            softmax = network.add_softmax(scores)
            softmax.axes = 1 << (len(shape) - 1)
            layer = softmax
        probabilities = layer.get_output(0)
        probabilities.name = "probabilities"
        network.mark_output(probabilities)
        what = f"a {'plugin' if use_plugin else 'TensorRT'} softmax engine for {dtype} {shape}"
        serialized = _build_serialized(builder, network, builder.create_builder_config(), what)
        runtime, engine = deserialize_engine(serialized, what)
    return EngineRunner(engine, device, runtime=runtime, name=what)


class TensorRTBackend(Backend):
    """LeViT as a TensorRT engine built from the exported ONNX, cached per manifest, run on the caller's stream.

    Options: `engine_options` (batch range, optimisation level, workspace, timing cache, TF32, INT8
    path and policy; its precision is the backend's), `cuda_graph` (replay a captured graph for
    repeated same-shape calls), `plugin_libraries` (extra TensorRT plugin libraries to load).
    """

    name = "tensorrt"
    supported: ClassVar[dict[str, tuple[str, ...]]] = {"cuda": ("fp32", "fp16", "int8")}
    softmax_plugin: ClassVar[bool] = False

    def __init__(
        self,
        source: ModelSource,
        precision: str = "fp32",
        device: str = "cuda",
        *,
        engine_options: EngineOptions | None = None,
        cuda_graph: bool = False,
        plugin_libraries: Sequence[Path] = (),
    ) -> None:
        super().__init__(precision, device)
        started = time.perf_counter()
        options = dataclasses.replace(engine_options or EngineOptions(), precision=cast(EnginePrecision, precision))
        builder = TensorRTBuilder(self.device)
        self.tensorrt_version = builder.tensorrt_version
        int8 = int8_inputs_loader(options, source.variant) if precision == "int8" else None
        self.engine: CachedEngine = cached_engine(builder, ExportedOnnx(source, self.softmax_plugin), options,
                                                  source.cache_dir, int8=int8, plugin_libraries=plugin_libraries)
        load_plugin_libraries(self.engine.plugin_libraries)
        self.runner = EngineRunner.load(self.engine.engine_path, self.device, cuda_graph=cuda_graph)
        self.setup_seconds = time.perf_counter() - started

    @classmethod
    def availability(cls, device: str) -> Availability:
        try:
            require_tensorrt()
        except BackendUnavailable as error:
            return Availability(False, str(error))
        return super().availability(device)

    @property
    def input_dtype(self) -> torch.dtype:
        """The engine's input type: fp16 only for engines parsed from an fp16 ONNX."""
        return self.runner.input_dtype

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.runner(images)

    def describe(self) -> dict[str, Any]:
        info = {**super().describe(), "tensorrt": self.tensorrt_version, "engine_key": self.engine.key,
                "strongly_typed": self.engine.plan.strongly_typed, "onnx_form": self.engine.plan.onnx_form,
                "batch_range": list(self.runner.batch_range), "cuda_graph": self.runner.cuda_graph,
                "layer_precisions": self.engine.precision_summary()}
        if self.engine.int8 is not None:
            info.update(self.engine.int8.describe())
        return info


class TensorRTPluginBackend(TensorRTBackend):
    """TensorRT with attention's softmax replaced by the levit_trt softmax plugin."""

    name = "tensorrt-plugin"
    softmax_plugin = True

    @classmethod
    def availability(cls, device: str) -> Availability:
        return super().availability(device).requiring(trt_plugin_library)


def build_engine_file(
    onnx_path: Path,
    engine_path: Path,
    options: EngineOptions,
    *,
    plugin_libraries: Sequence[Path] = (),
    cache_dir: Path | None = None,
    device: str = "cuda",
) -> CachedEngine:
    """`levit-trt build`: the engine for a user's ONNX (through the engine cache), written to `engine_path`
    with its layer report beside it (`<engine>.layers.json`)."""
    onnx = GivenOnnx.read(onnx_path)
    builder = TensorRTBuilder(device)
    engine = cached_engine(builder, onnx, options, ensure_cache_dir(cache_dir), int8=int8_inputs_loader(options, None),
                           plugin_libraries=plugin_libraries)
    write_engine_file(engine, engine_path)
    return engine
