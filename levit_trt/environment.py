"""What machine and software a result came from: GPU, driver, CUDA, CPU and library versions."""

from __future__ import annotations

import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from levit_trt.plugins import REPO_ROOT

# Modules whose versions a result depends on. Each version is read from the metadata of the
# distribution that installs the module (onnxruntime-gpu for onnxruntime, tensorrt-cu12-bindings
# for tensorrt, ...), so nothing is imported and type-stub packages are not mistaken for a library.
_MODULES = ("torch", "timm", "onnx", "onnxruntime", "tensorrt", "numpy")


def package_version(name: str) -> str | None:
    """Installed version of a distribution, read from metadata (the package is not imported)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def module_versions(modules: tuple[str, ...] = _MODULES) -> dict[str, str]:
    """Version of each installed module in `modules`, by import name; absent ones are left out."""
    providers = metadata.packages_distributions()
    versions: dict[str, str] = {}
    for module in modules:
        for distribution in providers.get(module, ()):
            version = None if distribution.endswith("-stubs") else package_version(distribution)
            if version:
                versions[module] = version
                break
    return versions


def _driver_version() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform's answer below
    return platform.processor() or platform.machine()


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True)
    return result.stdout.strip()


def project_commit(root: Path = REPO_ROOT) -> dict[str, Any]:
    """The commit of the checkout levit_trt runs from, in pytest-benchmark's commit_info fields.

    Recorded only when git's top level is `root` itself: a copy of the project that is not a
    checkout, placed inside another repository, would otherwise be credited with that repository's
    commit. Otherwise the id is "unknown" and `unknown_because` says why.
    """
    unknown = {"id": "unknown", "time": None, "author_time": None, "dirty": False, "project": root.name,
               "branch": "(unknown)"}
    if shutil.which("git") is None:
        return {**unknown, "unknown_because": "git is not installed"}
    try:
        top_level = Path(_git(root, "rev-parse", "--show-toplevel")).resolve()
        if top_level != root.resolve():
            return {**unknown, "unknown_because": f"{root} is not a git checkout (git's top level there is {top_level})"}
        commit, commit_time, author_time = _git(root, "log", "-1", "--format=%H%n%cI%n%aI").splitlines()
        branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        reason = getattr(error, "stderr", None) or error
        return {**unknown, "unknown_because": f"{root} is not a usable git checkout ({str(reason).strip()})"}
    return {"id": commit, "time": commit_time, "author_time": author_time, "dirty": dirty, "project": root.name,
            "branch": "(detached head)" if branch == "HEAD" else branch}


def machine_info() -> dict[str, Any]:
    """A flat description of this machine for saved runs and accuracy files."""
    info: dict[str, Any] = {
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": module_versions(),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "commit": project_commit(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update({
            "gpu": props.name,
            "gpu_compute_capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpu_count": torch.cuda.device_count(),
            "driver": _driver_version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        })
    else:
        info["gpu"] = None
    return info
