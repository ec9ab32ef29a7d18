"""The artifact cache: keyed by every manifest field, atomic, locked, and clear about bad directories."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from levit_trt.cache import CacheError, atomic_output, cache_key, cached_build, ensure_cache_dir


def test_key_changes_with_any_field_and_ignores_order() -> None:
    base = {"a": 1, "b": {"c": "x"}}
    assert cache_key(base) == cache_key({"b": {"c": "x"}, "a": 1})
    assert cache_key(base) != cache_key({"a": 2, "b": {"c": "x"}})
    assert cache_key(base) != cache_key({"a": 1, "b": {"c": "y"}})


def test_entry_is_built_once_and_reused(tmp_path: Path) -> None:
    builds = []

    def build(directory: Path) -> None:
        builds.append(directory)
        (directory / "artifact").write_text("v1")

    first = cached_build(tmp_path, "kind", {"x": 1}, build)
    second = cached_build(tmp_path, "kind", {"x": 1}, build)
    assert first == second and len(builds) == 1 and (first / "artifact").read_text() == "v1"
    assert json.loads((first / "manifest.json").read_text()) == {"x": 1}


def test_entry_with_a_tampered_manifest_is_rebuilt(tmp_path: Path) -> None:
    entry = cached_build(tmp_path, "kind", {"x": 1}, lambda d: (d / "artifact").write_text("v1"))
    (entry / "manifest.json").write_text(json.dumps({"x": 1, "stale": True}))
    rebuilt = cached_build(tmp_path, "kind", {"x": 1}, lambda d: (d / "artifact").write_text("v2"))
    assert rebuilt == entry and (rebuilt / "artifact").read_text() == "v2"


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def failing(directory: Path) -> None:
        (directory / "artifact").write_text("half")
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="builder crashed"):
        cached_build(tmp_path, "kind", {"x": 1}, failing)
    assert [p.name for p in (tmp_path / "kind").iterdir()] == [f"{cache_key({'x': 1})}.lock"]


def test_parallel_builders_build_once(tmp_path: Path) -> None:
    builds = []
    gate = threading.Barrier(4)

    def build(directory: Path) -> None:
        builds.append(1)
        (directory / "artifact").write_text("ok")

    def worker() -> None:
        gate.wait()
        cached_build(tmp_path, "kind", {"x": 1}, build)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1


def test_atomic_output_only_publishes_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("interrupted")
    assert not target.exists() and os.listdir(tmp_path) == []
    with atomic_output(target) as tmp:
        tmp.write_text("complete")
    assert target.read_text() == "complete"


def test_unwritable_cache_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CacheError, match=r"cache directory .*file/cache is not writable.*--cache-dir"):
        ensure_cache_dir(blocker / "cache")


def test_default_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LEVIT_TRT_CACHE", str(tmp_path / "c"))
    assert ensure_cache_dir() == tmp_path / "c"
