"""A non-editable install (`pip install .`) carries what levit_trt reads at run time: the plugin identity headers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from levit_trt import plugins

REPO_ROOT = plugins.REPO_ROOT
# What a build of the distribution reads; copied so the build's own build/ and *.egg-info stay out of the checkout
# (its build/ is CMake's).
DISTRIBUTION_SOURCES = ("pyproject.toml", "README.md", "levit_trt")


def test_installed_package_finds_the_plugin_identity(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "site"
    source.mkdir()
    for name in DISTRIBUTION_SOURCES:
        copy = shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy2
        copy(REPO_ROOT / name, source / name)  # type: ignore[operator]
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)], capture_output=True, text=True, check=False, timeout=300)
    if install.returncode != 0 and "No module named pip" in install.stderr:
        pytest.skip("pip is not installed for this interpreter")
    assert install.returncode == 0, install.stderr[-3000:]
    assert (target / "levit_trt" / "plugin_identities" / plugins.SOFTMAX_IDENTITY_HEADER).is_file()

    shutil.rmtree(source)  # nothing may be read from a source tree
    probe = ("import json; from levit_trt import plugins; "
             "print(json.dumps([plugins.__file__, plugins.softmax_plugin_identity().__dict__]))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=False,
                            env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    module_file, identity = json.loads(result.stdout)
    assert Path(module_file).is_relative_to(target)  # the installed copy, not this checkout
    assert identity == plugins.softmax_plugin_identity().__dict__ == {
        "name": "LevitSoftmax", "version": "1", "namespace": "levit_trt"}


def test_identity_header_errors_name_the_file(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"'softmax\.h' must be named <op>_plugin_identity\.h"):
        plugins.plugin_identity("softmax.h")
    monkeypatch.setattr(plugins, "PLUGIN_IDENTITY_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/gone_plugin_identity\.h .*reinstall the package"):
        plugins.plugin_identity("gone_plugin_identity.h")
    (tmp_path / "odd_plugin_identity.h").write_text('#define LEVIT_ODD_PLUGIN_NAME "Odd"\n')
    with pytest.raises(ValueError, match=r"odd_plugin_identity\.h: no line '#define LEVIT_ODD_PLUGIN_VERSION"):
        plugins.plugin_identity("odd_plugin_identity.h")
