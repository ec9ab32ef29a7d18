"""Running a one-input, one-output engine on PyTorch CUDA tensors, on a stream of its own.

`EngineRunner` enqueues on its own CUDA stream, made to wait for the caller's current stream
before and to be waited for by it after: TensorRT synchronises (and warns) on every enqueue to the
legacy default stream, which is the caller's stream unless it set one. TensorRT-RTX engines get a
runtime cache for the kernels RTX compiles on first run, kept in the artifact cache.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from levit_trt.cache import atomic_output
from levit_trt.tensorrt.binding import tensorrt_logger, tensorrt_module
from levit_trt.tensorrt.deserialize import deserialize_engine, dims_tuple
from levit_trt.tensorrt.devices import cuda_device
from levit_trt.tensorrt.engine_cache import check_engine_flavor
from levit_trt.tensorrt.options import Flavor, check_batch_in_profile

if TYPE_CHECKING:
    import tensorrt as trt

# IExecutionContext::setTensorAddress: "The pointer must have at least 256-byte alignment" (NvInferRuntime.h).
TENSOR_ADDRESS_ALIGNMENT = 256
_TORCH_DTYPES = {  # trt.DataType member name -> torch dtype
    "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
    "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool,
}


def _torch_dtype(dtype: trt.DataType) -> torch.dtype:
    try:
        return _TORCH_DTYPES[dtype.name]
    except KeyError:
        raise ValueError(f"engine tensor type {dtype.name} has no PyTorch counterpart") from None


def aligned(x: torch.Tensor) -> torch.Tensor:
    """`x`, or a copy of it where its data does not start on a 256-byte boundary (a view with a storage offset),
    which TensorRT would refuse as a tensor address."""
    return x if x.data_ptr() % TENSOR_ADDRESS_ALIGNMENT == 0 else x.clone()


def bind_tensor(context: trt.IExecutionContext, name: str, address: int, what: str) -> None:
    """Set a tensor address; RuntimeError when it is misaligned or TensorRT refuses it (the context would
    otherwise keep the address of the previous call)."""
    if address % TENSOR_ADDRESS_ALIGNMENT:
        raise RuntimeError(f"{what}: tensor {name!r} at {address:#x} is not {TENSOR_ADDRESS_ALIGNMENT}-byte aligned")
    if not context.set_tensor_address(name, address):
        raise RuntimeError(f"{what} refused the address {address:#x} for tensor {name!r}")


@dataclasses.dataclass
class _CapturedGraph:
    shape: tuple[int, ...]
    graph: torch.cuda.CUDAGraph
    input: torch.Tensor
    output: torch.Tensor


class EngineRunner:
    """Runs a one-input, one-output engine on PyTorch CUDA tensors.

    The input shape is set on every call and a batch outside the optimisation profile is a
    ValueError. With `cuda_graph=True` the enqueue is captured once per input shape (recaptured when
    the shape changes) and replayed; the returned tensor is then the graph's output buffer, which
    the next call overwrites. `runtime_cache` (TensorRT-RTX): the file of first-run compiled kernels,
    read at load and written after the first call, whose duration is `first_run_seconds`.
    """

    def __init__(self, flavor: Flavor, engine: trt.ICudaEngine, device: torch.device | str, *,
                 runtime: trt.Runtime | None = None, cuda_graph: bool = False, name: str = "the engine",
                 runtime_cache: Path | None = None) -> None:
        if TYPE_CHECKING:
            import tensorrt as trt
        else:
            trt = tensorrt_module(flavor)
        self.flavor: Flavor = flavor
        self.engine = engine
        self._runtime = runtime  # a deserialized engine must not outlive its runtime
        self.device = cuda_device(device)
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
        shape = dims_tuple(engine.get_tensor_shape(self.input_name))
        if shape[0] == -1:
            low, _, high = engine.get_tensor_profile_shape(self.input_name, 0)
            self.batch_range = (low[0], high[0])
        else:
            self.batch_range = (shape[0], shape[0])
        self.sample_shape = shape[1:]
        self.runtime_cache_path = runtime_cache
        self.first_run_seconds: float | None = None
        self._runtime_cache: Any = None  # tensorrt_rtx.IRuntimeCache
        with torch.cuda.device(self.device):
            context = self._create_context(engine)
            self.stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        if context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {name} (out of GPU memory?)")
        self.context = context
        self._graph: _CapturedGraph | None = None

    def _create_context(self, engine: trt.ICudaEngine) -> trt.IExecutionContext | None:
        if self.runtime_cache_path is None:
            return engine.create_execution_context()
        # TensorRT-RTX only (the tensorrt stubs lack IRuntimeConfig): kernels compiled on first run are kept.
        rtx_engine: Any = engine
        config = rtx_engine.create_runtime_config()
        cache = config.create_runtime_cache()
        if self.runtime_cache_path.is_file() and not cache.deserialize(self.runtime_cache_path.read_bytes()):
            print(f"levit_trt: ignoring unreadable RTX runtime cache {self.runtime_cache_path}", file=sys.stderr)
        config.set_runtime_cache(cache)
        self._runtime_cache = cache
        context: trt.IExecutionContext | None = rtx_engine.create_execution_context(config)
        return context

    @classmethod
    def load(cls, flavor: Flavor, path: Path, device: torch.device | str, *, cuda_graph: bool = False,
             runtime_cache: Path | None = None) -> EngineRunner:
        """Deserialize the engine file on `device` (TensorRT puts an engine on the current device), after its
        manifest says this flavor built it."""
        check_engine_flavor(Path(path), flavor)
        resolved = cuda_device(device)
        with torch.cuda.device(resolved):
            runtime, engine = deserialize_engine(flavor, Path(path).read_bytes(), str(path))
        return cls(flavor, engine, resolved, runtime=runtime, cuda_graph=cuda_graph, name=str(path),
                   runtime_cache=runtime_cache)

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
        x = aligned(x.contiguous())
        with torch.cuda.device(self.device):  # the engine's context and a graph capture belong to its device
            caller = torch.cuda.current_stream(self.device)
            first = self.first_run_seconds is None and self.runtime_cache_path is not None
            started = time.perf_counter()
            self.stream.wait_stream(caller)  # x was written on the caller's stream
            out = self._replay(x) if self.cuda_graph else self._enqueue(x)
            caller.wait_stream(self.stream)  # the caller reads the output on its stream
            if first:
                self.stream.synchronize()
                self.first_run_seconds = time.perf_counter() - started
                self._save_runtime_cache()
            return out

    def _save_runtime_cache(self) -> None:
        if self._runtime_cache is None or self.runtime_cache_path is None:
            return
        data = bytes(self._runtime_cache.serialize())
        self.runtime_cache_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.runtime_cache_path) as tmp:
            tmp.write_bytes(data)

    def _enqueue(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Enqueue on the runner's stream; the output is allocated on the current (caller's) stream."""
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise ValueError(f"{self.name} rejected input shape {tuple(x.shape)}")
        if out is None:
            out = torch.empty(dims_tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype,
                              device=self.device)
        bind_tensor(self.context, self.input_name, x.data_ptr(), self.name)
        bind_tensor(self.context, self.output_name, out.data_ptr(), self.name)
        logger = tensorrt_logger(self.flavor)
        since = logger.mark()
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT could not enqueue {self.name}: {logger.recent_errors(since)}")
        return out

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if self._graph is None or self._graph.shape != shape:
            self._graph = self._capture(shape)
        with torch.cuda.stream(self.stream):
            self._graph.input.copy_(x)
            self._graph.graph.replay()
        return self._graph.output

    def _capture(self, shape: tuple[int, ...]) -> _CapturedGraph:
        """Capture one enqueue for `shape` into a CUDA graph on the runner's stream, after one uncaptured enqueue
        of that shape on the same stream (NVIDIA's advice: it lets TensorRT finish shape-dependent set-up outside
        the capture)."""
        self._graph = None
        static_input = torch.zeros(shape, dtype=self.input_dtype, device=self.device)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        static_output = self._enqueue(static_input)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                self._enqueue(static_input, out=static_output)
        except RuntimeError as error:
            raise RuntimeError(f"cannot capture {self.name} in a CUDA graph ({error}); run it with cuda_graph=False"
                               ) from error
        return _CapturedGraph(shape, graph, static_input, static_output)

    def profile_layers(self, images: torch.Tensor, iterations: int) -> list[tuple[str, float]]:
        """Per layer, the mean milliseconds per inference over `iterations` uncaptured runs, from TensorRT's
        IProfiler on this runner's execution context (in the engine's layer order)."""
        if TYPE_CHECKING:
            import tensorrt as trt
        else:
            trt = tensorrt_module(self.flavor)
        if iterations < 1:
            raise ValueError(f"profile_layers needs at least one iteration, got {iterations}")
        totals: collections.OrderedDict[str, float] = collections.OrderedDict()

        class LayerTimes(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                totals[layer_name] = totals.get(layer_name, 0.0) + ms

        self.check_input(images)
        x = aligned(images.contiguous())
        profiler = LayerTimes()
        self.context.profiler = profiler
        try:
            with torch.cuda.device(self.device):
                self.stream.wait_stream(torch.cuda.current_stream(self.device))
                for _ in range(iterations):
                    self._enqueue(x)
                    self.stream.synchronize()  # TensorRT reports a run's layer times once it has finished
        finally:
            self.context.profiler = None  # type: ignore[assignment]  # TensorRT takes None: no profiler
        return [(name, total / iterations) for name, total in totals.items()]
