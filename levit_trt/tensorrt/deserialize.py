"""Serialized engine -> ICudaEngine, and the inspector's per-layer JSON of a loaded engine.

No torch here, so the RTX build process (`build_process`) can use it; the runner deserializes
under `torch.cuda.device` itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from levit_trt.tensorrt.binding import tensorrt_logger, tensorrt_module
from levit_trt.tensorrt.options import Flavor

if TYPE_CHECKING:
    import tensorrt as trt


def dims_tuple(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(dims[i] for i in range(len(dims)))


def try_deserialize(flavor: Flavor, data: bytes) -> tuple[trt.Runtime, trt.ICudaEngine | None]:
    """The engine in `data` (None when the runtime refuses it) and the runtime that must outlive it."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = tensorrt_module(flavor)
    runtime = trt.Runtime(tensorrt_logger(flavor).logger)
    engine: trt.ICudaEngine | None = runtime.deserialize_cuda_engine(data)  # None, despite the stubs, on failure
    return runtime, engine


def deserialize_engine(flavor: Flavor, data: bytes, what: str) -> tuple[trt.Runtime, trt.ICudaEngine]:
    """The engine in `data` and the runtime that must outlive it; RuntimeError quoting TensorRT's errors."""
    logger = tensorrt_logger(flavor)
    since = logger.mark()
    runtime, engine = try_deserialize(flavor, data)
    if engine is None:
        raise RuntimeError(f"{flavor} {tensorrt_module(flavor).__version__} could not load {what} (engines only load "
                           "in the TensorRT version, and on the GPU or target compute capability, that built them): "
                           f"{logger.recent_errors(since)}")
    return runtime, engine


def engine_information(flavor: Flavor, engine: trt.ICudaEngine) -> str:
    """The inspector's per-layer JSON (name, type, tactic, tensor formats and types, ONNX nodes), asked through an
    execution context whose input has the profile's opt shape: without one, a dynamic-shape engine's inspector
    shows -1 for shape-dependent values and no format information (NvInferRuntime.h, IEngineInspector)."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = tensorrt_module(flavor)
    inspector = engine.create_engine_inspector()
    context = engine.create_execution_context()
    if context is None:
        raise RuntimeError("TensorRT could not create an execution context to inspect the engine (out of GPU memory?)")
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT and -1 in dims_tuple(engine.get_tensor_shape(name)):
            _, opt, _ = engine.get_tensor_profile_shape(name, 0)
            if not context.set_input_shape(name, opt):
                raise RuntimeError(f"the engine refused its own opt shape {dims_tuple(opt)} for input {name!r}")
    inspector.execution_context = context
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)
