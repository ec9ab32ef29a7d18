"""ONNX Runtime: the exported graph on CPU (or CUDA with onnxruntime-gpu). Only module importing onnxruntime."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from levit_trt.backends.base import Availability, Backend, BackendUnavailable, ModelSource
from levit_trt.export import INPUT_NAME, OUTPUT_NAME, NUM_CLASSES

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def _import_onnxruntime():  # noqa: ANN202 - the module object
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
    name = "onnxruntime"
    supported = {"cpu": ("fp32",), "cuda": ("fp32",)}

    def __init__(
        self,
        source: ModelSource,
        precision: str = "fp32",
        device: str = "cpu",
        onnx_path: Path | None = None,
    ) -> None:
        super().__init__(precision, device)
        ort = _import_onnxruntime()
        started = time.perf_counter()
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
