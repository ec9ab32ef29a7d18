"""mypy over the whole levit_trt package, with the project's own settings (pyproject.toml [tool.mypy]).

The TensorRT package has its own stricter check against the TensorRT stubs (test_tensorrt_typing.py);
this one keeps the rest typed as the style asks ("type hints on public functions") rather than
drifting: before it, 29 errors had gathered in two modules with nothing to report them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_package_passes_mypy(tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[dev]')")
    cache = tmp_path_factory.mktemp("mypy-cache")
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), "levit_trt"],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
