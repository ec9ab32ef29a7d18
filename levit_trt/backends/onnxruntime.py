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
from levit_trt.engine_options import Int8Source
from levit_trt.export import INPUT_NAME, NUM_CLASSES, OUTPUT_NAME

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def _import_onnxruntime() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as error:
        raise BackendUnavailable(f"onnxruntime is not installed ({error}); pip install onnxruntime") from error
    return onnxruntime


def onnxruntime_version() -> str | None:
    try:
        return _import_onnxruntime().__version__
    except BackendUnavailable:
        return None


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
        policy: str = "default",
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
        if precision != "int8" and (policy != "default" or float_op_types or float_nodes or calib_dir is not None):
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
    """The cached Q/DQ ONNX of `source` and where its scales came from."""
    from levit_trt.calibration import load_calibration_set, synthetic_calibration_set
    from levit_trt.precision_policy import resolve_policy
    from levit_trt.quantize import cached_qdq_onnx

    policy = resolve_policy(policy_name, float_op_types, float_nodes)
    calibration = (load_calibration_set(calib_dir, source.variant) if calib_dir is not None
                   else synthetic_calibration_set(source.variant, calib_images))
    path = cached_qdq_onnx(source.onnx_path(), calibration, policy, source.cache_dir)
    source_int8 = Int8Source("qdq", policy.name, policy.float_op_types, policy.float_node_names, calibration.identity)
    return path, source_int8, calibration.description
