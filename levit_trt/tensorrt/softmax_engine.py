"""A one-layer softmax engine (TensorRT's ISoftmaxLayer or the levit_trt plugin) for the softmax micro-benchmark.

TensorRT flavor only: TensorRT-RTX's Python INetworkDefinition has no add_plugin_v3 (its plugin
layers come in through the ONNX parser).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from levit_trt.plugins import PluginMismatchError, PluginNotBuiltError, softmax_plugin_identity, trt_plugin_library
from levit_trt.tensorrt.binding import tensorrt_logger, tensorrt_module
from levit_trt.tensorrt.builder import build_serialized, network_flags
from levit_trt.tensorrt.deserialize import deserialize_engine
from levit_trt.tensorrt.devices import cuda_device
from levit_trt.tensorrt.plugin_libraries import load_plugin_libraries
from levit_trt.tensorrt.runner import EngineRunner

if TYPE_CHECKING:
    import tensorrt as trt


def _softmax_plugin() -> trt.IPluginV3:
    """The softmax plugin (last axis) from TensorRT's plugin registry; its library must be loaded."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = tensorrt_module("tensorrt")
    identity = softmax_plugin_identity()
    creator = trt.get_plugin_registry().get_creator(identity.name, identity.version, identity.namespace)
    if creator is None:
        raise PluginNotBuiltError(f"TensorRT's plugin registry has no {identity} after loading {trt_plugin_library()}")
    # The PluginField keeps raw pointers to its name and data: both stay referenced here until create_plugin
    # has read them (a FallbackString passed as a temporary would be freed first).
    name = trt.FallbackString("axis")
    axis = np.array([-1], dtype=np.int32)
    fields = trt.PluginFieldCollection([trt.PluginField(name, axis, trt.PluginFieldType.INT32)])
    plugin: trt.IPluginV3 | None = creator.create_plugin(identity.name, trt.PluginFieldCollection_(fields),
                                                         trt.TensorRTPhase.BUILD)
    del name, axis
    if plugin is None:
        raise PluginMismatchError(f"the {identity.name} plugin creator refused axis=-1")
    return plugin


def softmax_engine(shape: tuple[int, ...], dtype: torch.dtype, use_plugin: bool) -> EngineRunner:
    """Softmax over the last axis of a fixed-`shape` tensor, by TensorRT's ISoftmaxLayer or by the plugin.
    Calling it enqueues on the runner's stream (ordered against the current one) and returns a new output
    tensor. The network is strongly typed, so fp16 in means the layer runs in fp16."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = tensorrt_module("tensorrt")
    trt_dtypes = {torch.float32: trt.float32, torch.float16: trt.float16}
    if dtype not in trt_dtypes:
        raise ValueError(f"softmax_engine takes float32 or float16, not {dtype}")
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"softmax_engine needs a rank >= 2 shape of positive sizes, got {shape}")
    device = cuda_device("cuda")
    with torch.cuda.device(device):
        if use_plugin:
            load_plugin_libraries("tensorrt", [trt_plugin_library()])
        builder = trt.Builder(tensorrt_logger("tensorrt").logger)
        network = builder.create_network(network_flags("tensorrt", strongly_typed=True))
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
        serialized = build_serialized("tensorrt", builder, network, builder.create_builder_config(), what)
        runtime, engine = deserialize_engine("tensorrt", serialized, what)
    return EngineRunner("tensorrt", engine, device, runtime=runtime, name=what)
