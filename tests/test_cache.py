"""The artifact cache: keyed by every manifest field, atomic, locked, and clear about bad directories."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from levit_trt import cache
from levit_trt.cache import (
    CacheError,
    atomic_output,
    atomic_outputs,
    cache_key,
    cached_build,
    ensure_cache_dir,
    remove_stale_temporaries,
)


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


@pytest.fixture
def umask_027() -> Iterator[None]:
    previous = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(previous)


def test_published_files_and_entries_get_the_umask_permissions(tmp_path: Path, umask_027: None) -> None:
    """Not mkstemp's 0o600 / mkdtemp's 0o700: what open() and mkdir() would give under the umask."""
    with atomic_output(tmp_path / "out.bin") as tmp:
        tmp.write_text("complete")
    entry = cached_build(tmp_path, "kind", {"x": 1}, lambda d: (d / "artifact").write_text("v1"))
    plain_file, plain_dir = tmp_path / "plain.bin", tmp_path / "plain"
    plain_file.write_text("")
    plain_dir.mkdir()
    mode = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "out.bin", entry, plain_file, plain_dir)}
    assert mode == {"out.bin": 0o640, entry.name: 0o750, "plain.bin": 0o640, "plain": 0o750}


def test_atomic_outputs_replace_all_or_none(tmp_path: Path) -> None:
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    with atomic_outputs(first, second) as (tmp_a, tmp_b):
        tmp_a.write_text("a1")
        tmp_b.write_text("b1")
    with pytest.raises(RuntimeError), atomic_outputs(first, second) as (tmp_a, tmp_b):
        tmp_a.write_text("a2")
        raise RuntimeError("interrupted before the second file was written")
    assert (first.read_text(), second.read_text()) == ("a1", "b1")
    blocked = tmp_path / "c.bin"
    blocked.mkdir()  # the rename onto it fails after a.bin was replaced
    with pytest.raises(IsADirectoryError), atomic_outputs(first, blocked) as (tmp_a, tmp_c):
        tmp_a.write_text("a3")
        tmp_c.write_text("c3")
    assert first.read_text() == "a1" and sorted(os.listdir(tmp_path)) == ["a.bin", "b.bin", "c.bin"]


def _dead_pid() -> int:
    """The PID of a process that has exited (the kernel does not hand it out again this soon)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(child.stdout)


def test_a_killed_writer_leaves_litter_that_the_next_write_removes(tmp_path: Path) -> None:
    """SIGKILL in the middle of an output write and of a cache build, as a killed `levit-trt export` is."""
    out = tmp_path / "out" / "levit.onnx"
    killed = (
        "import os, signal, sys; from pathlib import Path; from levit_trt.cache import atomic_output, cached_build\n"
        "def build(directory):\n"
        "    (directory / 'model.onnx').write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "with atomic_output(Path(sys.argv[1])):\n"
        "    cached_build(Path(sys.argv[2]), 'onnx', {'x': 1}, build)\n"
    )
    result = subprocess.run([sys.executable, "-c", killed, str(out), str(tmp_path / "cache")], check=False,
                            cwd=Path(__file__).parents[1])
    assert result.returncode == -signal.SIGKILL
    (left_output,) = out.parent.glob(".levit.onnx.tmp-*")
    (left_entry,) = (tmp_path / "cache" / "onnx").glob("*.tmp-*")
    assert left_output.stat().st_size == 0 and (left_entry / "model.onnx").is_file()

    cached_build(tmp_path / "cache", "onnx", {"x": 1}, lambda d: (d / "model.onnx").write_bytes(b"whole"))
    assert not left_entry.exists()
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"whole")
    assert not left_output.exists() and os.listdir(out.parent) == ["levit.onnx"]


def test_only_temporaries_of_dead_writers_on_this_host_are_removed(tmp_path: Path) -> None:
    out, host = tmp_path / "a.onnx", socket.gethostname()
    dead = _dead_pid()
    stale = [tmp_path / f".a.onnx.tmp-{dead}@{host}+abc_12", tmp_path / f".a.onnx.tmp-{dead}@{host}+abc_12.old"]
    kept = [
        tmp_path / f".a.onnx.tmp-{os.getpid()}@{host}+live01",  # a writer that is still running
        tmp_path / f".a.onnx.tmp-{dead}@{host}.other-domain+x1",  # same PID, another host: cannot tell
        tmp_path / ".a.onnx.tmp-k2j4h5",  # no owner in the name (written before owners were recorded)
        tmp_path / f".b.onnx.tmp-{dead}@{host}+abc_12",  # another output's
    ]
    for path in stale + kept:
        path.write_bytes(b"")
    assert sorted(remove_stale_temporaries(out)) == sorted(stale)
    assert all(path.exists() for path in kept) and not any(path.exists() for path in stale)
    with atomic_output(out) as tmp:
        assert tmp.name.startswith(f".a.onnx.tmp-{os.getpid()}@{host}+")  # its own owner is in its name
        tmp.write_text("new")
    assert sorted(os.listdir(tmp_path)) == sorted(["a.onnx", *(path.name for path in kept)])


def test_a_running_build_keeps_its_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second builder of the same entry waits for the lock; it never removes the first one's directory."""
    started, release, second_at_lock = threading.Event(), threading.Event(), threading.Event()
    temporaries: list[Path] = []
    real_lock = cache.file_lock

    @contextmanager
    def observed_lock(path: Path) -> Iterator[None]:
        if threading.current_thread().name == "second builder":
            second_at_lock.set()
        with real_lock(path):
            yield

    monkeypatch.setattr(cache, "file_lock", observed_lock)

    def slow_build(directory: Path) -> None:
        temporaries.append(directory)
        started.set()
        release.wait(10)
        (directory / "artifact").write_text("first")

    first = threading.Thread(target=cached_build, args=(tmp_path, "kind", {"x": 1}, slow_build))
    first.start()
    started.wait(10)
    second_result: list[Path] = []
    second = threading.Thread(target=lambda: second_result.append(
        cached_build(tmp_path, "kind", {"x": 1}, lambda d: (d / "artifact").write_text("second"))),
        name="second builder")
    second.start()
    other = cached_build(tmp_path, "kind", {"x": 2}, lambda d: (d / "artifact").write_text("other"))  # another key
    assert second_at_lock.wait(10)
    assert temporaries[0].is_dir() and other.is_dir()
    release.set()
    first.join(10)
    second.join(10)
    assert (second_result[0] / "artifact").read_text() == "first"
