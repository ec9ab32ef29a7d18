"""On-disk cache of built artifacts (ONNX files, engines), keyed by everything that changes them.

An entry is a directory holding the artifact files and a `manifest.json` that lists every input
of the build. The directory is built under a temporary name and renamed into place with its
manifest already inside, under a file lock: a killed build leaves only a `*.tmp-*` directory that
is never read, and parallel test workers build each entry once.

What killed work leaves behind is removed by the next write of the same thing, only where its
owner is provably gone: an entry's temporary directory is made only by the holder of the entry's
lock, so whoever holds the lock may remove any other; a user-named output has no lock, so its
temporary file carries its writer's PID and host, and is removed only when that PID is no longer
alive on this host (a reused PID keeps it: the safe side).
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
# After an output's `.NAME.tmp-`: the writer's PID@host, '+', mkstemp's random part, and `.old` on a backup.
# '+' and '@' cannot occur in a host name, so the fields split unambiguously.
_OWNED_TEMPORARY = re.compile(r"(\d+)@([^+]+)\+[a-z0-9_]+(?:\.old)?")
_umask_lock = threading.Lock()


class CacheError(RuntimeError):
    """The cache directory cannot be used; the message says which and why."""


def default_cache_dir() -> Path:
    """`$LEVIT_TRT_CACHE`, else `$XDG_CACHE_HOME/levit_trt`, else `~/.cache/levit_trt`."""
    explicit = os.environ.get("LEVIT_TRT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "levit_trt"


def ensure_cache_dir(path: Path | str | None = None) -> Path:
    """Create the cache directory if needed and prove it is writable."""
    root = Path(path).expanduser() if path is not None else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as error:
        raise CacheError(
            f"cache directory {root} is not writable ({error.strerror or error}); "
            f"choose another with --cache-dir or LEVIT_TRT_CACHE"
        ) from error
    return root


def canonical_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(manifest: Mapping[str, Any]) -> str:
    """Short, stable hash of a manifest; any changed field gives another key."""
    return hashlib.sha256(canonical_json(manifest).encode()).hexdigest()[:20]


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on `path` (created if missing), released on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _umask() -> int:
    """The process umask (Python can only read it by setting it; the lock keeps our threads from racing)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def set_default_permissions(path: Path) -> None:
    """Give a file or directory made by mkstemp/mkdtemp (0o600/0o700) the mode a plain open/mkdir gives.

    Called before publishing: cached engines and user-named outputs must be readable by whoever the
    umask lets read ordinary files, like every other file the tools write.
    """
    full = 0o777 if path.is_dir() else 0o666
    os.chmod(path, full & ~_umask())


def read_manifest(entry: Path) -> dict[str, Any] | None:
    try:
        manifest: dict[str, Any] = json.loads((entry / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest


def cached_entry(root: Path, kind: str, manifest: Mapping[str, Any]) -> Path | None:
    """The complete entry for `manifest` if the cache holds one; nothing is built or locked."""
    wanted = json.loads(canonical_json(manifest))
    entry = root / kind / cache_key(wanted)
    return entry if entry.is_dir() and read_manifest(entry) == wanted else None


def cached_build(
    root: Path,
    kind: str,
    manifest: Mapping[str, Any],
    build: Callable[[Path], None],
) -> Path:
    """Return the entry directory for `manifest`, building it with `build(tmp_dir)` if absent.

    An existing entry is used only when its manifest equals `manifest` field for field; an entry
    whose manifest differs or is unreadable is replaced. `build` writes its files into the
    directory it is given; if it raises, nothing is left under the entry's name.
    """
    wanted = json.loads(canonical_json(manifest))
    entry = root / kind / cache_key(wanted)
    with file_lock(root / kind / f"{entry.name}.lock"):
        # Only a holder of this lock makes these, so any found now was left by a killed build.
        for stale in entry.parent.glob(glob.escape(entry.name) + ".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if cached_entry(root, kind, wanted) is not None:
            return entry
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f"{entry.name}.tmp-"))
        try:
            build(tmp)
            (tmp / MANIFEST_NAME).write_text(json.dumps(wanted, indent=2, sort_keys=True))
            set_default_permissions(tmp)
            if entry.exists():
                shutil.rmtree(entry)
            os.replace(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    For user-named outputs (`--out`, `--engine`): an interrupted write never leaves a file that
    looks complete.
    """
    with atomic_outputs(path) as (tmp,):
        yield tmp


@contextmanager
def atomic_outputs(*paths: Path) -> Iterator[tuple[Path, ...]]:
    """`atomic_output` for files that belong together (an engine and its report): all of them are
    replaced, or, if the block or a rename fails, none (files already renamed get their old content back)."""
    temps: list[Path] = []
    backups: list[tuple[Path, Path | None]] = []  # (published path, its former file moved aside, if any)
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}@{socket.gethostname()}+")
            os.close(fd)
            temps.append(Path(name))
        yield tuple(temps)
        try:
            for tmp, path in zip(temps, paths):
                set_default_permissions(tmp)
                backup = None
                if path.is_file():
                    backup = tmp.with_name(f"{tmp.name}.old")
                    os.replace(path, backup)
                backups.append((path, backup))
                os.replace(tmp, path)
        except BaseException:
            for path, backup in reversed(backups):
                if backup is not None:
                    os.replace(backup, path)
                elif path.is_file():
                    path.unlink()
            raise
        for path in paths:  # after publishing: a killed writer's backup is then surely obsolete
            remove_stale_temporaries(path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        for _, backup in backups:
            if backup is not None:
                backup.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries `atomic_outputs` left beside `path` in writers that died on this host;
    return them. Those of a live PID, another host, or without an owner in their name are kept."""
    prefix = f".{path.name}.tmp-"
    removed = []
    for candidate in path.parent.glob(glob.escape(prefix) + "*"):
        owner = _OWNED_TEMPORARY.fullmatch(candidate.name[len(prefix):])
        if owner and owner.group(2) == socket.gethostname() and not _process_alive(int(owner.group(1))):
            try:
                candidate.unlink(missing_ok=True)
            except OSError:  # another user's leftover: the write that called this has succeeded all the same
                continue
            removed.append(candidate)
    return removed
