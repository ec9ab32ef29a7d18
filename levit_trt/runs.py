"""Reading saved results: pytest-benchmark runs (`--benchmark-json`, `--benchmark-autosave`) and
levit_trt accuracy files, into plain records that reports and comparisons use.

Only reads; the files stay in pytest-benchmark's own format, so its `compare` works on them too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from levit_trt.variants import resolve_variant

# Libraries whose version changes the measured time; `compare` refuses runs that differ in them.
MACHINE_VERSIONS = ("torch", "tensorrt", "onnxruntime")
SAVE_A_RUN = "`pytest benchmarks --benchmark-json RUN.json` (or --benchmark-autosave)"


class RunFileError(ValueError):
    """A file that is not the kind of result file a command expects; the message names it."""


@dataclass(frozen=True)
class BenchmarkCase:
    """One benchmark of a run: its ids, its extra_info and its median time."""

    key: str  # pytest's full test name: the same case in two runs has the same key
    id: str  # the readable parametrisation id, e.g. `levit_384-tensorrt-fp16-bs16`
    group: str | None
    wall_median_ms: float  # pytest-benchmark's median (wall clock around each call)
    extra_info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def gpu_median_ms(self) -> float | None:
        """The CUDA-event median per call, where the case ran on a GPU."""
        value = self.extra_info.get("gpu_median_ms")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def latency_ms(self) -> float:
        """GPU time where measured (asynchronous work timed on the device), else wall clock."""
        gpu = self.gpu_median_ms
        return gpu if gpu is not None else self.wall_median_ms


@dataclass(frozen=True)
class Run:
    """A saved pytest-benchmark run."""

    path: Path
    datetime: str | None
    machine: Mapping[str, Any]  # pytest-benchmark's machine_info (ours under "levit_trt")
    commit: Mapping[str, Any]
    cases: tuple[BenchmarkCase, ...]

    @property
    def environment(self) -> Mapping[str, Any]:
        """levit_trt.environment.machine_info() as the conftest hook saved it ({} for older runs)."""
        return self.machine.get("levit_trt") or {}

    def machine_fields(self) -> dict[str, str | None]:
        """What must match for two runs' times to be comparable: the devices the cases ran on, the
        hardware and the software that does the work; None where the run does not say."""
        env = self.environment
        versions = env.get("versions") or {}
        devices = sorted({str(case.extra_info["device"]).split(":")[0] for case in self.cases
                          if "device" in case.extra_info})
        fields = {
            "device": ",".join(devices) or None,
            "gpu": env.get("gpu"),
            "gpu_compute_capability": env.get("gpu_compute_capability"),
            "driver": env.get("driver"),
            "cuda": env.get("torch_cuda"),
            "cpu": env.get("cpu") or (self.machine.get("cpu") or {}).get("brand_raw"),
            **{name: versions.get(name) for name in MACHINE_VERSIONS},
        }
        return {name: None if value is None else str(value) for name, value in fields.items()}


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFileError(f"{path} is not a {what} (not JSON: {error})") from error


def load_run(path: Path | str) -> Run:
    """Read a pytest-benchmark JSON file; RunFileError naming the file if it is not one."""
    path = Path(path)
    document = _read_json(path, "pytest-benchmark run")
    if not isinstance(document, dict) or not isinstance(document.get("benchmarks"), list):
        hint = (" It looks like a levit_trt accuracy file: pass it with --accuracy."
                if isinstance(document, dict) and "results" in document else "")
        raise RunFileError(f"{path} is not a pytest-benchmark run (no 'benchmarks' list).{hint} Save a run with {SAVE_A_RUN}.")
    cases = []
    for index, entry in enumerate(document["benchmarks"]):
        stats = entry.get("stats") if isinstance(entry, dict) else None
        if not isinstance(stats, dict) or not isinstance(stats.get("median"), (int, float)) or "name" not in entry:
            raise RunFileError(f"{path}: benchmark #{index} has no name or no stats.median; save runs with {SAVE_A_RUN}")
        name = str(entry["name"])
        cases.append(BenchmarkCase(
            key=str(entry.get("fullname") or name),
            id=str(entry.get("param") or name),
            group=entry.get("group"),
            wall_median_ms=float(stats["median"]) * 1e3,
            extra_info=dict(entry.get("extra_info") or {}),
        ))
    if not cases:
        raise RunFileError(f"{path} holds no benchmarks (were they all skipped, or run with --benchmark-disable?)")
    return Run(path, document.get("datetime"), document.get("machine_info") or {},
               document.get("commit_info") or {}, tuple(cases))


def load_accuracy_document(path: Path | str) -> dict[str, Any]:
    """An accuracy file (`{"machine": ..., "results": [...]}`) as written by
    `levit_trt.accuracy.append_results`; RunFileError naming the file if it is not one."""
    path = Path(path)
    document = _read_json(path, "levit_trt accuracy file")
    if not isinstance(document, dict) or not isinstance(document.get("results"), list):
        hint = " It looks like a pytest-benchmark run." if isinstance(document, dict) and "benchmarks" in document else ""
        raise RunFileError(f"{path} is not a levit_trt accuracy file (no 'results' list).{hint} "
                           "Write one with `levit-trt eval ... --out ACC.json` or `pytest accuracy --accuracy-json`.")
    return document


@dataclass(frozen=True)
class Top1:
    """A top-1 (%) from an accuracy file and how many images it was measured on (None if the file does not say)."""

    top1: float
    images: int | None


def load_top1(path: Path | str) -> dict[tuple[str, str, str], Top1]:
    """Top-1 by (variant name, backend, precision) from an accuracy file; a later result for the
    same key replaces an earlier one."""
    top1 = {}
    for index, result in enumerate(load_accuracy_document(path)["results"]):
        try:
            key = (resolve_variant(result["variant"]).name, str(result["backend"]), str(result["precision"]))
            images = result.get("images")
            top1[key] = Top1(float(result["top1"]), None if images is None else int(images))
        except (KeyError, TypeError, ValueError) as error:
            raise RunFileError(f"{path}: result #{index} lacks a valid variant/backend/precision/top1 ({error})") from error
    return top1
