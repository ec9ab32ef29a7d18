"""Machine information saved with every run: versions read from package metadata, not imports."""

from __future__ import annotations

import onnx
import onnxruntime
import timm
import torch

from levit_trt import environment
from levit_trt.environment import machine_info, module_versions


def test_versions_are_those_of_the_imported_modules() -> None:
    versions = module_versions()
    # torch.__version__ carries the build's local tag (e.g. +cu130); the distribution's version may not.
    assert versions["torch"] == torch.__version__.split("+")[0]
    assert (versions["timm"], versions["onnx"], versions["onnxruntime"]) == (
        timm.__version__, onnx.__version__, onnxruntime.__version__)


def test_tensorrt_version_comes_from_the_library_not_its_type_stubs(monkeypatch) -> None:
    installed = {"tensorrt-stubs": "10.13.0.35.1", "tensorrt-cu12-bindings": "10.7.0"}
    monkeypatch.setattr(environment, "package_version", installed.get)
    monkeypatch.setattr(environment.metadata, "packages_distributions",
                        lambda: {"tensorrt": ["tensorrt-stubs", "tensorrt-cu12-bindings"]})
    assert module_versions(("tensorrt",)) == {"tensorrt": "10.7.0"}
    monkeypatch.setattr(environment.metadata, "packages_distributions", lambda: {"tensorrt": ["tensorrt-stubs"]})
    assert module_versions(("tensorrt",)) == {}


def test_machine_info_describes_this_machine() -> None:
    info = machine_info()
    assert info["cpu"] and info["cpu_threads"] == torch.get_num_threads()
    assert info["torch_cuda"] == torch.version.cuda
    if torch.cuda.is_available():
        assert info["gpu"] == torch.cuda.get_device_name(0) and "." in info["gpu_compute_capability"]
    else:
        assert info["gpu"] is None
