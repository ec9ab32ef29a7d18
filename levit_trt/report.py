"""Tables, plots and comparisons from saved runs (`levit-trt report`, `levit-trt compare`).

A latency row is a `benchmarks/test_latency.py` case, recognised by the extra_info it records
(variant, backend, precision, batch, device, cuda_graphs); other benchmarks (the softmax ones)
are compared by id but not tabulated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from levit_trt.backends.base import PRECISIONS
from levit_trt.backends.registry import backend_class
from levit_trt.runs import BenchmarkCase, Run, Top1, load_run
from levit_trt.variants import VARIANTS, resolve_variant

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_BASELINE = "torch-fp32"
GRAPH_SUFFIX = "-graph"  # how a case id and a row label say the case replayed a captured CUDA graph
_LATENCY_FIELDS = ("variant", "backend", "precision", "batch", "device")


@dataclass(frozen=True)
class LatencyRow:
    """One latency case: what ran, and its median time per batch."""

    variant: str
    backend: str
    precision: str
    batch: int
    device: str
    cuda_graphs: bool
    latency_ms: float
    single_call_ms: float | None = None  # wall clock of one synchronised call, beside GPU event time

    @property
    def label(self) -> str:
        """The backend as the case id names it (`torch-graph` when a captured graph was replayed)."""
        return self.backend + (GRAPH_SUFFIX if self.cuda_graphs else "")

    @property
    def table_key(self) -> tuple[int, int, str]:
        """Which table the row belongs to: variant (in table order), batch, device."""
        return list(VARIANTS).index(self.variant), self.batch, self.device


@dataclass(frozen=True)
class Baseline:
    """What speed-ups are measured against: a backend label and a precision, e.g. torch-fp32."""

    label: str
    precision: str

    @classmethod
    def parse(cls, text: str) -> Baseline:
        label, _, precision = text.strip().rpartition("-")
        if not label or precision not in PRECISIONS:
            raise ValueError(f"baseline {text!r} must be BACKEND-PRECISION, e.g. torch-fp32 or torch-cudagraph-fp16 "
                             f"(precisions: {', '.join(PRECISIONS)})")
        return cls(label, precision)

    def __str__(self) -> str:
        return f"{self.label} {self.precision}"

    def matches(self, row: LatencyRow) -> bool:
        return row.label == self.label and row.precision == self.precision


def latency_row(case: BenchmarkCase) -> LatencyRow | None:
    """The case as a latency row, or None when it is not a latency case."""
    info = case.extra_info
    if any(name not in info for name in _LATENCY_FIELDS):
        return None
    return LatencyRow(
        variant=resolve_variant(info["variant"]).name, backend=str(info["backend"]),
        precision=str(info["precision"]), batch=int(info["batch"]),
        device=str(info["device"]).split(":")[0], cuda_graphs=bool(info.get("cuda_graphs", False)),
        latency_ms=case.latency_ms,
        single_call_ms=case.wall_median_ms if case.gpu_median_ms is not None else None,
    )


def latency_rows(run: Run) -> list[LatencyRow]:
    """Every latency case of the run, in run order; ValueError if there is none."""
    rows = [row for row in map(latency_row, run.cases) if row is not None]
    if not rows:
        raise ValueError(f"{run.path} holds no latency cases (benchmarks/test_latency.py); "
                         f"its {len(run.cases)} benchmarks are e.g. {run.cases[0].id}")
    return rows


def _ms(value: float) -> str:
    """Two decimals from 1 ms up, three significant digits below (softmax calls take microseconds)."""
    return f"{value:.2f}" if value >= 1 else f"{value:#.3g}"


def _environment_line(run: Run) -> str:
    env = run.environment
    versions = env.get("versions", {})
    software = ", ".join(f"{name} {versions[name]}" for name in ("torch", "timm", "onnxruntime", "tensorrt")
                         if name in versions)
    hardware = env.get("gpu") or env.get("cpu") or run.machine.get("cpu", {}).get("brand_raw", "unknown machine")
    if env.get("gpu"):
        hardware += f" (CC {env.get('gpu_compute_capability')}, driver {env.get('driver')}, CUDA {env.get('torch_cuda')})"
    commit = str(run.commit.get("id", ""))[:10] + ("+dirty" if run.commit.get("dirty") else "")
    parts = [run.datetime or "undated", hardware, software, f"commit {commit}" if commit else ""]
    return " · ".join(part for part in parts if part)


def report_markdown(
    run: Run,
    top1: Mapping[tuple[str, str, str], Top1] | None = None,
    baseline: str | Baseline = DEFAULT_BASELINE,
) -> str:
    """One Markdown table per variant, batch and device: backend, precision, top-1 and the number of
    images it was measured on (when `top1` is given), median latency, and speed-up against `baseline`."""
    base = baseline if isinstance(baseline, Baseline) else Baseline.parse(baseline)
    rows = latency_rows(run)
    if not any(base.matches(row) for row in rows):
        # A backend the run has is valid even if this checkout does not register it; any other
        # name must at least be one the registry knows (UnknownBackendError lists them).
        backend_class(base.label.removesuffix(GRAPH_SUFFIX))
        present = ", ".join(dict.fromkeys(f"{row.label}-{row.precision}" for row in rows))
        raise ValueError(f"{run.path} has no {base} case to measure speed-ups against; "
                         f"choose --baseline from: {present}")
    tables: dict[tuple[int, int, str], list[LatencyRow]] = {}
    for row in rows:
        tables.setdefault(row.table_key, []).append(row)

    lines = [f"# Latency: {run.path.name}", "", _environment_line(run), "",
             ("Latency: median per batch. On a GPU, CUDA-event time per call with calls issued back to back "
              "(device time where the GPU is the bottleneck, launch time where the host is), and the "
              "wall-clock median of one synchronised call (single call); on a CPU, pytest-benchmark's wall "
              f"clock. Speed-up: {base} latency / latency, same variant, batch and device.")]
    for key in sorted(tables):
        group = tables[key]
        first = group[0]
        reference = next((row.latency_ms for row in group if base.matches(row)), None)
        single_call = any(row.single_call_ms is not None for row in group)
        header = ["backend", "precision", *(["top-1 (%)", "top-1 images"] if top1 is not None else []), "latency (ms)",
                  *(["single call (ms)"] if single_call else []), f"speed-up vs {base}"]
        lines += ["", f"## {resolve_variant(first.variant).display}, batch {first.batch}, {first.device}", "",
                  "| " + " | ".join(header) + " |",
                  "|" + "|".join(["---", "---"] + ["--:"] * (len(header) - 2)) + "|"]
        for row in group:
            cells = [row.label, row.precision]
            if top1 is not None:
                known = top1.get((row.variant, row.backend, row.precision))
                cells.append("–" if known is None else f"{known.top1:.2f}")
                cells.append("–" if known is None or known.images is None else f"{known.images:,}")
            cells.append(_ms(row.latency_ms))
            if single_call:
                cells.append("–" if row.single_call_ms is None else _ms(row.single_call_ms))
            cells.append("–" if reference is None else f"{reference / row.latency_ms:.2f}×")
            lines.append("| " + " | ".join(cells) + " |")
    others = len(run.cases) - len(rows)
    if others:
        lines += ["", (f"({others} other benchmark{'s' if others > 1 else ''} (e.g. softmax) not tabulated here; "
                       "`levit-trt compare` and `pytest-benchmark compare` show every case.)")]
    return "\n".join(lines) + "\n"


def latency_figure(rows: Sequence[LatencyRow]) -> Figure:
    """Latency against batch, one line per backend and precision, one panel per variant and device."""
    from matplotlib.figure import Figure  # lazily: the CLI and the library import without matplotlib

    panels: dict[tuple[int, str], dict[str, list[tuple[int, float]]]] = {}
    for row in rows:
        panel = panels.setdefault((row.table_key[0], row.device), {})
        panel.setdefault(f"{row.label} {row.precision}", []).append((row.batch, row.latency_ms))
    figure = Figure(figsize=(6.4, 4.2 * len(panels)), layout="constrained")
    for axes, ((variant_index, device), lines) in zip(figure.subplots(len(panels), 1, squeeze=False)[:, 0],
                                                       sorted(panels.items())):
        for name, points in lines.items():
            batches, latencies = zip(*sorted(points))
            axes.plot(batches, latencies, marker="o", label=name)
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_title(f"{list(VARIANTS.values())[variant_index].display} ({device})")
        axes.set_xlabel("batch size")
        axes.set_ylabel("median latency per batch (ms)")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small")
    return figure


def save_plot(rows: Sequence[LatencyRow], path: Path | str) -> Path:
    """Write `latency_figure(rows)` as a PNG, atomically (no half-written file on failure)."""
    from levit_trt.cache import atomic_output

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"--plot writes a PNG image; name the file *.png, not {path.name!r}")
    figure = latency_figure(rows)
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    return path


class MachineMismatchError(ValueError):
    """Two runs from different machines or software, compared without saying that is meant."""


@dataclass(frozen=True)
class MachineDifference:
    """One machine field (levit_trt.runs.Run.machine_fields) that two runs disagree on."""

    field: str
    old: str
    new: str

    def __str__(self) -> str:
        return f"{self.field}: {self.old!r} -> {self.new!r}"


def machine_differences(old: Run, new: Run) -> tuple[MachineDifference, ...]:
    """Fields both runs record and that differ (a field one run lacks, as older runs do, is not compared)."""
    new_fields = new.machine_fields()
    return tuple(MachineDifference(name, old_value, new_value) for name, old_value in old.machine_fields().items()
                 if old_value is not None and (new_value := new_fields[name]) is not None and old_value != new_value)


@dataclass(frozen=True)
class CaseChange:
    """One case in both runs: its median per call before and after."""

    id: str
    old_ms: float
    new_ms: float
    metric: str  # "gpu median" when both runs timed it on a GPU, else "wall median"

    @property
    def ratio(self) -> float:
        return self.new_ms / self.old_ms


@dataclass(frozen=True)
class Comparison:
    """Cases matched by id between two runs; regressions are beyond `fail_above_pct` slower."""

    old: Run
    new: Run
    changes: tuple[CaseChange, ...]
    only_old: tuple[str, ...]
    only_new: tuple[str, ...]
    fail_above_pct: float | None = None
    machine_differences: tuple[MachineDifference, ...] = ()  # non-empty only when allowed explicitly

    def machine_warning(self) -> str | None:
        """The loud line a comparison of unlike machines carries, or None."""
        if not self.machine_differences:
            return None
        return ("WARNING: these runs come from different machines or software, so new/old is not a code change: "
                + "; ".join(map(str, self.machine_differences)))

    def is_regression(self, change: CaseChange) -> bool:
        return self.fail_above_pct is not None and change.ratio > 1 + self.fail_above_pct / 100

    @property
    def regressions(self) -> tuple[CaseChange, ...]:
        return tuple(change for change in self.changes if self.is_regression(change))

    def to_markdown(self) -> str:
        warning = self.machine_warning()
        lines = [f"# {self.old.path.name} → {self.new.path.name}", "", *([f"**{warning}**", ""] if warning else []),
                 f"old: {_environment_line(self.old)}", f"new: {_environment_line(self.new)}", "",
                 "| case | metric | old (ms) | new (ms) | new/old | |", "|---|---|--:|--:|--:|---|"]
        for change in self.changes:
            flag = f"REGRESSION (> +{self.fail_above_pct:g}%)" if self.is_regression(change) else ""
            lines.append(f"| {change.id} | {change.metric} | {_ms(change.old_ms)} | {_ms(change.new_ms)} "
                         f"| {change.ratio:.3f} | {flag} |")
        for title, ids in (("only in old", self.only_old), ("only in new", self.only_new)):
            if ids:
                lines += ["", f"{title}: {', '.join(ids)}"]
        if self.fail_above_pct is not None:
            lines += ["", (f"{len(self.regressions)} of {len(self.changes)} cases slower by more than "
                           f"{self.fail_above_pct:g}%.")]
        return "\n".join(lines) + "\n"


def _change(old: BenchmarkCase, new: BenchmarkCase) -> CaseChange:
    old_gpu, new_gpu = old.gpu_median_ms, new.gpu_median_ms
    if old_gpu is not None and new_gpu is not None:
        return CaseChange(new.id, old_gpu, new_gpu, "gpu median")
    return CaseChange(new.id, old.wall_median_ms, new.wall_median_ms, "wall median")


def compare(old: Run | Path | str, new: Run | Path | str, fail_above_pct: float | None = None,
            allow_different_machines: bool = False) -> Comparison:
    """Match the cases of two runs by id and take new/old of each median (GPU time where both have it).

    Runs whose machine fields differ (device, GPU, CPU, driver, CUDA, torch/TensorRT/ONNX Runtime)
    raise MachineMismatchError naming them, unless `allow_different_machines`; then the comparison
    carries a warning.
    """
    if fail_above_pct is not None and fail_above_pct < 0:
        raise ValueError(f"--fail-above must be a percentage >= 0, got {fail_above_pct}")
    old_run = old if isinstance(old, Run) else load_run(old)
    new_run = new if isinstance(new, Run) else load_run(new)
    differences = machine_differences(old_run, new_run)
    if differences and not allow_different_machines:
        raise MachineMismatchError(
            f"{old_run.path} and {new_run.path} come from different machines or software ("
            + "; ".join(map(str, differences)) + "), so their ratios would not measure a code change; "
            "compare runs of one machine, or pass --allow-different-machines to compare them anyway")
    old_cases = {case.key: case for case in old_run.cases}
    new_cases = {case.key: case for case in new_run.cases}
    common = [key for key in new_cases if key in old_cases]
    if not common:
        raise ValueError(f"{old_run.path} and {new_run.path} have no case in common (old has e.g. "
                         f"{old_run.cases[0].id}, new has e.g. {new_run.cases[0].id}); compare runs of the same "
                         "suite and matrix options")
    return Comparison(
        old_run, new_run, tuple(_change(old_cases[key], new_cases[key]) for key in common),
        tuple(case.id for key, case in old_cases.items() if key not in new_cases),
        tuple(case.id for key, case in new_cases.items() if key not in old_cases),
        fail_above_pct, differences,
    )
