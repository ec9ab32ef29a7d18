"""Backend names -> classes, imported lazily so a missing heavy library only affects its own backend."""

from __future__ import annotations

import importlib
from typing import Any

from levit_trt.backends.base import Availability, Backend, ModelSource

# name -> "module:Class", imported on first use, so a missing heavy library (onnxruntime; TensorRT, which only
# levit_trt.tensorrt.binding imports) affects only its own backends.
BACKENDS: dict[str, str] = {
    "torch": "levit_trt.backends.torch_eager:TorchEagerBackend",
    "torch-sdpa": "levit_trt.backends.torch_eager:TorchSdpaBackend",
    "torch-plugin": "levit_trt.backends.torch_eager:TorchPluginBackend",
    "torch-compile": "levit_trt.backends.torch_compiled:TorchCompileBackend",
    "torch-compile-sdpa": "levit_trt.backends.torch_compiled:TorchCompileSdpaBackend",
    "torch-compile-plugin": "levit_trt.backends.torch_compiled:TorchCompilePluginBackend",
    "torch-cudagraph": "levit_trt.backends.torch_compiled:TorchCudaGraphBackend",
    "onnxruntime": "levit_trt.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "levit_trt.backends.tensorrt:TensorRTBackend",
    "tensorrt-plugin": "levit_trt.backends.tensorrt:TensorRTPluginBackend",
    "tensorrt-rtx": "levit_trt.backends.tensorrt:TensorRTRtxBackend",
    "tensorrt-rtx-plugin": "levit_trt.backends.tensorrt:TensorRTRtxPluginBackend",
}


class UnknownBackendError(ValueError):
    """A backend name that is not in the registry."""


def backend_class(name: str) -> type[Backend]:
    target = BACKENDS.get(name)
    if target is None:
        raise UnknownBackendError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def availability(name: str, device: str) -> Availability:
    return backend_class(name).availability(device)


def create_backend(name: str, source: ModelSource, precision: str, device: str, **options: Any) -> Backend:
    """Build backend `name`; raises BackendUnavailable with the reason where it cannot run here."""
    from levit_trt.backends.base import BackendUnavailable

    cls = backend_class(name)
    cls.check_supported(precision, device)
    status = cls.availability_for(device, **options)
    if not status.available:
        raise BackendUnavailable(f"backend {name!r} on {device}: {status.reason}")
    # Concrete backends take (source, precision, device, **options); the abstract base does not.
    return cls(source, precision=precision, device=device, **options)  # type: ignore[call-arg, misc, arg-type]


def parse_backends(names: str | list[str]) -> list[str]:
    """Validate a comma-separated list of backend names (`all` means every registered one)."""
    items = names.split(",") if isinstance(names, str) else list(names)
    items = [n.strip() for n in items if n.strip()]
    if items == ["all"]:
        return list(BACKENDS)
    for name in items:
        backend_class(name)
    return items
