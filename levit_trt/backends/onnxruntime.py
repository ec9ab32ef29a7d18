"""ONNX Runtime: the exported graph on CPU (or CUDA with onnxruntime-gpu). Only module importing onnxruntime.

INT8 (CPU) runs the Q/DQ ONNX that `levit_trt.quantize` makes from the exported graph: the same
file TensorRT's explicit INT8 path builds from, so its accuracy here predicts that engine's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import torch

from levit_trt.backends.base import Availability, Backend, BackendUnavailable, ModelSource
from levit_trt.calibration import SYNTHETIC_CALIBRATION_IMAGES
from levit_trt.export import INPUT_NAME, NUM_CLASSES, OUTPUT_NAME
from levit_trt.precision_policy import DEFAULT_POLICY
from levit_trt.tensorrt.engine_cache import load_int8_inputs
from levit_trt.tensorrt.options import Int8Source

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def _import_onnxruntime() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as error:
        raise BackendUnavailable(f"onnxruntime is not installed ({error}); pip install onnxruntime") from error
    return onnxruntime


class OnnxRuntimeBackend(Backend):
    """`onnx_path` runs that file instead of the exported graph. INT8 quantizes the exported graph
    with `policy` (plus `float_op_types`/`float_nodes`), calibrated on `calib_dir` (levit-trt
    calibrate) or, without one, on `calib_images` synthetic images."""

    name = "onnxruntime"
    supported: ClassVar[dict[str, tuple[str, ...]]] = {"cpu": ("fp32", "int8"), "cuda": ("fp32",)}

    def __init__(
        self,
        source: ModelSource,
        precision: str = "fp32",
        device: str = "cpu",
        onnx_path: Path | None = None,
        *,
        policy: str = DEFAULT_POLICY,
        float_op_types: Sequence[str] = (),
        float_nodes: Sequence[str] = (),
        calib_dir: Path | None = None,
        calib_images: int = SYNTHETIC_CALIBRATION_IMAGES,
    ) -> None:
        super().__init__(precision, device)
        ort = _import_onnxruntime()
        started = time.perf_counter()
        self.int8: Int8Source | None = None
        self.calibration = ""  # what the INT8 scales were measured on
        if precision != "int8" and (policy != DEFAULT_POLICY or float_op_types or float_nodes or calib_dir is not None):
            raise ValueError(f"policy, float_op_types, float_nodes and calib_dir choose how INT8 is made; "
                             f"they do nothing for precision {precision}")
        if precision == "int8":
            if onnx_path is not None:
                raise ValueError("onnxruntime int8 quantizes the exported graph itself; to run a Q/DQ ONNX of "
                                 "your own, pass it as onnx_path with precision fp32 (its Q/DQ nodes decide)")
            onnx_path, self.int8, self.calibration = _qdq_onnx(
                source, policy, float_op_types, float_nodes, calib_dir, calib_images)
        self.onnx_path = onnx_path or source.onnx_path()
        provider = _PROVIDERS[self.device.type]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=[provider])
        self.setup_seconds = time.perf_counter() - started

    @classmethod
    def availability(cls, device: str) -> Availability:
        try:
            ort = _import_onnxruntime()
        except BackendUnavailable as error:
            return Availability(False, str(error))
        provider = _PROVIDERS.get(torch.device(device).type)
        if provider not in ort.get_available_providers():
            return Availability(False, f"onnxruntime has no {provider} here (install onnxruntime-gpu for CUDA)")
        return super().availability(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: images.contiguous().numpy()})
            return torch.from_numpy(logits)
        return self._run_on_cuda(images.contiguous())

    def _run_on_cuda(self, images: torch.Tensor) -> torch.Tensor:
        """Bind torch CUDA buffers directly, so no copy goes through host memory."""
        logits = torch.empty((images.shape[0], NUM_CLASSES), device=images.device, dtype=torch.float32)
        binding = self.session.io_binding()
        index = images.device.index or 0
        binding.bind_input(INPUT_NAME, "cuda", index, np.float32, tuple(images.shape), images.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda", index, np.float32, tuple(logits.shape), logits.data_ptr())
        torch.cuda.current_stream().synchronize()  # ORT runs on its own stream
        self.session.run_with_iobinding(binding)
        return logits

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.int8 is not None:
            info.update(self.int8.describe(), int8_calibration_source=self.calibration,
                        int8_float_op_types=list(self.int8.float_op_types),
                        int8_float_nodes=list(self.int8.float_node_names))
        return info


def _qdq_onnx(
    source: ModelSource,
    policy_name: str,
    float_op_types: Sequence[str],
    float_nodes: Sequence[str],
    calib_dir: Path | None,
    calib_images: int,
) -> tuple[Path, Int8Source, str]:
    """The cached Q/DQ ONNX of `source` (the one TensorRT's Q/DQ path builds from the same inputs) and where
    its scales came from."""
    inputs = load_int8_inputs(policy_name, float_op_types, float_nodes, calib_dir=calib_dir, variant=source.variant,
                              calib_images=calib_images)
    path = inputs.quantize(source.onnx_path(), inputs.calibration, inputs.policy, source.cache_dir)
    return path, inputs.source("qdq"), inputs.calibration.description
