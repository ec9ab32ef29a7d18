"""TensorRT-RTX builds in a child process, so a parser or builder that aborts (SIGABRT) becomes a Python error.

Measured with tensorrt_rtx 1.7.1: when its ONNX parser meets a plugin node it dlopens
`libtensorrt_rtx.so`, but the wheel ships only `libtensorrt_rtx.so.1`; the C++ exception that
follows terminates the process. The child's LD_LIBRARY_PATH (read by the loader when a process
starts, hence a child) leads first to a directory in the artifact cache with a `libtensorrt_rtx.so`
link to the wheel's library, which makes that parse work. The job travels as JSON (no torch in
the child, so it starts fast); the child writes the engine and its layer JSON, or the error it raised.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from importlib import util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from levit_trt.plugins import PluginMismatchError, PluginNotBuiltError
from levit_trt.tensorrt.options import BuildPlan, EngineOptions

if TYPE_CHECKING:
    from levit_trt.tensorrt.builder import NetworkBuild
    from levit_trt.tensorrt.engine_cache import BuildJob

LIBRARY_LINK_KIND = "tensorrt-rtx-libs"
RTX_LIBRARY = "libtensorrt_rtx.so"
_RTX_LIBS_PACKAGE = "tensorrt_rtx_libs"  # the wheel that holds libtensorrt_rtx.so.1
# Errors the child re-raises in the parent by name; anything else becomes a RuntimeError.
_ERROR_TYPES: dict[str, type[Exception]] = {
    "ValueError": ValueError, "FileNotFoundError": FileNotFoundError, "PluginMismatchError": PluginMismatchError,
    "PluginNotBuiltError": PluginNotBuiltError,
}
_STDERR_QUOTED = 2000  # characters of a dead child's stderr quoted in the error


def rtx_library_link_dir(cache_dir: Path) -> Path:
    """A cache directory holding `libtensorrt_rtx.so` -> the wheel's `libtensorrt_rtx.so.1` (made once, atomically)."""
    spec = util.find_spec(_RTX_LIBS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    targets = [Path(location) / f"{RTX_LIBRARY}.1" for location in locations if (Path(location) / f"{RTX_LIBRARY}.1").is_file()]
    if not targets:
        raise RuntimeError(f"cannot find {RTX_LIBRARY}.1 in the {_RTX_LIBS_PACKAGE} package; reinstall tensorrt-rtx "
                           '(pip install -e ".[rtx]")')
    directory = Path(cache_dir) / LIBRARY_LINK_KIND
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / RTX_LIBRARY
    if not link.is_symlink() or link.resolve() != targets[0].resolve():
        temporary = directory / f".{RTX_LIBRARY}.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(targets[0])
        os.replace(temporary, link)
    return directory


def _job_json(job: BuildJob) -> dict[str, Any]:
    options = dataclasses.asdict(job.options)
    for name in ("timing_cache", "calib_dir"):
        options[name] = None if options[name] is None else str(options[name])
    return {"onnx": str(job.onnx_path), "options": options, "plan": dataclasses.asdict(job.plan),
            "plugin_libraries": [str(path) for path in job.plugin_libraries]}


# LeViT builds took 1-2 s each on 2 cores (../shared/notes/tensorrt-rtx.md): an hour means a hung parser.
BUILD_TIMEOUT_SECONDS = 3600
PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def build_in_child(job: BuildJob, cache_dir: Path) -> NetworkBuild:
    """Build `job` with TensorRT-RTX in a child process; its errors come back as exceptions of the same kind, and a
    child killed by a signal as a RuntimeError naming the ONNX file."""
    from levit_trt.tensorrt.builder import NetworkBuild

    if job.calibration is not None:
        raise ValueError("TensorRT-RTX has no implicit INT8 calibration; build from a Q/DQ ONNX")
    link_dir = rtx_library_link_dir(cache_dir)
    with tempfile.TemporaryDirectory(prefix="levit-trt-rtx-build-") as scratch:
        work = Path(scratch)
        (work / "job.json").write_text(json.dumps(_job_json(job)))
        environment = dict(os.environ)
        environment["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(link_dir), *filter(None, [os.environ.get("LD_LIBRARY_PATH")])])
        # The child imports the levit_trt this process runs, wherever that came from.
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(PACKAGE_PARENT), *filter(None, [os.environ.get("PYTHONPATH")])])
        try:
            result = subprocess.run([sys.executable, "-m", __name__, str(work)], env=environment, capture_output=True,
                                    text=True, check=False, timeout=BUILD_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the TensorRT-RTX build of {job.onnx_path} did not finish in {BUILD_TIMEOUT_SECONDS} s "
                               "(the child was stopped)") from None
        sys.stderr.write(result.stderr)
        if result.returncode < 0:
            name = signal.Signals(-result.returncode).name
            raise RuntimeError(f"TensorRT-RTX died of {name} while parsing or building {job.onnx_path} (in a child "
                               f"process, so this one lives on); its last words: {result.stderr[-_STDERR_QUOTED:]}")
        error_file = work / "error.json"
        if error_file.is_file():
            error = json.loads(error_file.read_text())
            raise _ERROR_TYPES.get(error["type"], RuntimeError)(error["message"])
        if result.returncode != 0:
            raise RuntimeError(f"the TensorRT-RTX build of {job.onnx_path} failed (exit status {result.returncode}): "
                               f"{result.stderr[-_STDERR_QUOTED:]}")
        return NetworkBuild((work / "engine.plan").read_bytes(), (work / "information.json").read_text())


def _run(work: Path) -> None:
    from levit_trt.tensorrt.builder import build_network

    job = json.loads((work / "job.json").read_text())
    fields = job["options"]
    for name in ("float_op_types", "float_nodes", "compute_capabilities"):
        fields[name] = tuple(fields[name])
    plan = job["plan"]
    plan["builder_flags"] = tuple(plan["builder_flags"])
    built = build_network("rtx", Path(job["onnx"]), EngineOptions(**fields), BuildPlan(**plan),
                          tuple(Path(path) for path in job["plugin_libraries"]))
    (work / "engine.plan").write_bytes(built.serialized)
    (work / "information.json").write_text(built.engine_information)


def main(argv: list[str]) -> int:
    work = Path(argv[0])
    try:
        _run(work)
    except Exception as error:  # noqa: BLE001 - every error goes back to the parent, which raises it
        (work / "error.json").write_text(json.dumps({"type": type(error).__name__, "message": str(error)}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
