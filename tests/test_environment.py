"""Machine information saved with every run: versions read from package metadata, not imports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime
import pytest
import timm
import torch

from levit_trt import environment
from levit_trt.environment import machine_info, module_versions
from levit_trt.plugins import REPO_ROOT


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


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_commit_is_ours_only_where_git_top_level_is_the_project(tmp_path: Path) -> None:
    """A copy of the project (not a checkout) inside another repository must not take that repository's commit."""
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    outer = tmp_path / "other-repository"
    copy = outer / "vendored" / "levit_trt_copy"
    shutil.copytree(REPO_ROOT / "levit_trt", copy / "levit_trt", ignore=shutil.ignore_patterns("__pycache__"))
    (outer / "README").write_text("another project\n")
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    _git(outer, "init", "-q")
    _git(outer, "add", "README")
    _git(outer, *identity, "commit", "-q", "-m", "theirs")
    probe = ("import json, levit_trt, levit_trt.environment as e; "
             "print(json.dumps({'file': levit_trt.__file__, 'commit': e.project_commit()}))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=copy, capture_output=True, text=True, check=False,
                            env={**os.environ, "PYTHONPATH": str(copy)})
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout)
    assert Path(found["file"]).resolve().is_relative_to(copy.resolve())  # the copy was imported, not this checkout
    assert found["commit"]["id"] == "unknown" and found["commit"]["id"] != _git(outer, "rev-parse", "HEAD")
    assert f"{copy} is not a git checkout (git's top level there is {outer}" in found["commit"]["unknown_because"]

    # Not inside any repository at all: unknown too, with git's own reason.
    alone = tmp_path / "alone"
    shutil.copytree(copy, alone)
    commit = environment.project_commit(alone)
    assert commit["id"] == "unknown" and "not a usable git checkout" in commit["unknown_because"]


def test_commit_of_this_checkout() -> None:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip(f"{REPO_ROOT} is not a git checkout")
    commit = machine_info()["commit"]
    assert commit["id"] == _git(REPO_ROOT, "rev-parse", "HEAD") and isinstance(commit["dirty"], bool)


def test_saved_runs_take_our_commit_not_the_working_directorys(pytestconfig) -> None:
    """pytest-benchmark reads the commit of the working directory's repository; the conftest hook replaces it."""
    commit_info = {"id": "0000000000000000000000000000000000000000", "dirty": False, "branch": "theirs"}
    pytestconfig.hook.pytest_benchmark_update_commit_info(config=pytestconfig, commit_info=commit_info)
    assert commit_info == environment.project_commit()
