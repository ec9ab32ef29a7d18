"""The whole chain on this machine: pytest runs a tiny latency matrix and saves it (`--benchmark-json`
and `--benchmark-autosave`), then `report`, `compare` and pytest-benchmark's own `compare` read it.

The matrix includes a backend that returns logits of the wrong shape (tests/data/broken_backend.py):
its cases must fail the run, while the others are saved.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from levit_trt.environment import project_commit
from levit_trt.report import compare, latency_rows, report_markdown
from levit_trt.runs import Run, load_run

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
IDS = [f"levit_128s-{backend}-fp32-bs{batch}" for backend in ("torch", "onnxruntime") for batch in (1, 2)]


def run_pytest(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(DATA), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], capture_output=True,
                          text=True, cwd=REPO_ROOT, env=env, timeout=600, check=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, cache_dir: Path) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """(the pytest run, its --benchmark-json file, its --benchmark-autosave file)."""
    out = tmp_path_factory.mktemp("run")
    result = run_pytest(
        "benchmarks/test_latency.py", "-p", "broken_backend", "-q", "-rs",
        "--variants", "128S", "--backends", "torch,onnxruntime,broken", "--precisions", "fp32",
        "--batch-sizes", "1,2", "--device", "cpu", "--rounds", "2", "--warmup-rounds", "1",
        "--cache-dir", str(cache_dir), "--benchmark-json", str(out / "run.json"),
        "--benchmark-autosave", "--benchmark-storage", f"file://{out / 'storage'}",
    )
    autosaved = sorted((out / "storage").glob("*/*.json"))
    assert len(autosaved) == 1, f"no autosaved run:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result, out / "run.json", autosaved[0]


def test_broken_case_fails_the_run_and_the_rest_are_saved(saved) -> None:
    result, json_path, _ = saved
    assert result.returncode == 1, result.stdout[-3000:]
    assert "2 failed, 4 passed" in result.stdout
    assert "levit_128s-broken-fp32-bs1 returned logits of shape (1, 10)" in result.stdout
    assert sorted(case.id for case in load_run(json_path).cases) == sorted(IDS)


def test_saved_run_carries_machine_and_case_information(saved) -> None:
    run: Run = load_run(saved[1])
    assert run.environment["versions"]["torch"] and run.environment["cpu"]
    assert "gpu" in run.environment  # None here; the GPU's name on a GPU machine
    # The saved run's commit is the checkout's. (That the conftest hook replaces pytest-benchmark's own
    # is tested in test_environment.py: the child here runs in this checkout, where the two agree anyway.)
    assert run.environment["commit"]["id"] == project_commit()["id"]
    case = next(c for c in run.cases if c.id == "levit_128s-onnxruntime-fp32-bs2")
    assert {k: case.extra_info[k] for k in ("variant", "backend", "precision", "batch", "device", "cuda_graphs")} == {
        "variant": "levit_128s", "backend": "onnxruntime", "precision": "fp32", "batch": 2, "device": "cpu",
        "cuda_graphs": False}
    assert case.extra_info["setup_seconds"] >= 0 and case.latency_ms == case.wall_median_ms > 0


def test_report_and_compare_read_the_saved_run(saved) -> None:
    _, json_path, autosaved = saved
    run = load_run(json_path)
    report = report_markdown(run)
    for batch in (1, 2):
        table = report.split(f"## LeViT-128S, batch {batch}, cpu")[1].split("##")[0]
        assert "| torch | fp32 |" in table and "| onnxruntime | fp32 |" in table and "1.00×" in table
    assert len(latency_rows(run)) == 4
    comparison = compare(json_path, autosaved, fail_above_pct=0)  # the same run saved two ways
    assert sorted(c.id for c in comparison.changes) == sorted(IDS)
    assert [c.ratio for c in comparison.changes] == [1.0] * 4 and comparison.regressions == ()


def test_pytest_benchmark_compare_still_reads_it(saved) -> None:
    autosaved = saved[2]
    result = subprocess.run([sys.executable, "-c", "from pytest_benchmark.cli import main; main()", "compare",
                             str(autosaved), "--columns", "median"], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test_latency[levit_128s-onnxruntime-fp32-bs2]" in result.stdout


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--variants", "512"], "unknown LeViT variant '512'"), (["--backends", "trt"], "unknown backend 'trt'")],
)
def test_unknown_variant_or_backend_is_a_usage_error(option: list[str], message: str) -> None:
    result = run_pytest("benchmarks", "--collect-only", "-q", *option)
    assert result.returncode == 4 and message in result.stderr, result.stderr[-3000:]


def test_a_run_ends_with_its_skip_reasons_grouped(tmp_path: Path) -> None:
    """Without -rs, the skips of a run are summed up by reason at its end, with how to tabulate the saved run."""
    saved = tmp_path / "out.json"
    result = run_pytest("benchmarks/test_softmax.py", "--device", "cpu", "--benchmark-json", str(saved))
    lines = result.stdout.splitlines()
    (header,) = [index for index, line in enumerate(lines) if "skipped, by reason (-rs lists each)" in line]
    count = int(lines[header].strip("= ").split()[0])
    assert count > 0 and f"{count} skipped" in lines[-1], result.stdout[-3000:]
    first_reason = next(line for line in lines[header + 1:] if line.strip())
    assert first_reason.split(maxsplit=1) == [
        str(count), "softmax benchmarks run on a CUDA device (--device cpu, or torch.cuda.is_available() is False)"]
    assert f"latency tables of this run: levit-trt report {saved}" in result.stdout
    listed = run_pytest("benchmarks/test_softmax.py", "--device", "cpu", "-rs")
    assert "by reason" not in listed.stdout and "SKIPPED" in listed.stdout  # -rs lists them; no second summary
