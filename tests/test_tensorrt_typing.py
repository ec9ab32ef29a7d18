"""mypy --strict on the levit_trt.tensorrt package against the tensorrt-stubs type stubs (TensorRT 10.13's API).

This is how the TensorRT module is checked where TensorRT cannot be installed. tensorrt-stubs
10.13.0.35.1 installs its stubs as `tensorrt/` and `tensorrt_bindings/` without a py.typed
marker, and `tensorrt_bindings/tensorrt.pyi` does not parse (parameters named `in`, a parameter
without a default after defaulted ones) and declares a module-level `bool: DataType` that shadows
the builtin in every annotation. A copy with exactly those lines repaired goes on mypy's path;
errors inside the stubs themselves are not reported, errors in our module are. A probe that misuses
the API must fail, which shows the stubs are really read rather than skipped as Any.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from levit_trt.cache import cached_build

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "levit_trt/tensorrt"
STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")
REPAIR_RECIPE = 1
PROBE = '''
import tensorrt as trt

def configure(config: trt.IBuilderConfig) -> None:
    config.builder_optimization_level = "highest"
    config.set_flag(trt.BuilderFlag.NOT_A_FLAG)
'''


def repair_stubs(source_root: Path, target: Path) -> None:
    """Copy the stub packages, fixing only what keeps mypy from reading them (see the module docstring)."""
    for package in STUB_PACKAGES:
        shutil.copytree(source_root / package, target / package)
    bindings = target / "tensorrt_bindings" / "tensorrt.pyi"
    text = bindings.read_text()
    text = re.sub(r"([(,] ?)in: ", r"\1in_: ", text)
    text = text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = ...)")
    text = re.sub(r"^bool: DataType.*$", "", text, flags=re.MULTILINE)
    bindings.write_text(text)


@pytest.fixture(scope="module")
def stub_dir(cache_dir: Path) -> Path:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[dev]')")
    try:
        distribution = metadata.distribution("tensorrt-stubs")
    except metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    init = Path(str(distribution.locate_file("tensorrt/__init__.pyi")))
    if not init.is_file():
        pytest.skip(f"tensorrt-stubs {distribution.version} has no tensorrt/__init__.pyi")
    manifest = {"artifact": "repaired-tensorrt-stubs", "stubs": distribution.version, "recipe": REPAIR_RECIPE}
    return cached_build(cache_dir, "mypy-stubs", manifest, lambda out: repair_stubs(init.parent.parent, out))


def run_mypy(stub_dir: Path, cache_dir: Path, *files: Path | str) -> subprocess.CompletedProcess[str]:
    config = cache_dir / "mypy-stubs" / "mypy.ini"
    config.write_text(
        "[mypy]\npython_version = 3.11\nstrict = True\nfollow_imports = silent\n"
        f"mypy_path = {stub_dir}\ncache_dir = {cache_dir / 'mypy-cache'}\n"
        "[mypy-tensorrt.*,tensorrt_bindings.*]\nignore_errors = True\n"
        "[mypy-tensorrt_libs.*]\nignore_missing_imports = True\n")
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), *map(str, files)],
                          check=False, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)


def test_tensorrt_module_passes_mypy_strict_against_the_stubs(stub_dir: Path, cache_dir: Path) -> None:
    probe = cache_dir / "mypy-stubs" / "tensorrt_api_probe.py"  # a fixed path: mypy's cache keys results by module
    probe.write_text(PROBE)
    result = run_mypy(stub_dir, cache_dir, PACKAGE, "levit_trt/backends/tensorrt.py", probe)
    lines = result.stdout.splitlines()
    ours = [line for line in lines if line.startswith("levit_trt/")]
    assert ours == [], "\n".join(ours)
    probe_errors = [line for line in lines if line.startswith(str(probe))]
    assert any('incompatible types in assignment (expression has type "str", variable has type "int")' in line.lower()
               for line in probe_errors), result.stdout + result.stderr
    assert any("NOT_A_FLAG" in line for line in probe_errors), result.stdout + result.stderr
