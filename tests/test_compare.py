"""`levit-trt compare`: cases matched by id, new/old per case, regressions beyond a threshold.

The new fixture differs from the old one in known ways (tests/data/run_h100_new.json): torch fp32
bs1 8.0 -> 7.2 ms, TensorRT fp16 bs1 0.5 -> 0.6 ms, TensorRT fp16 bs16 1.5 -> 1.62 ms, the plugin
softmax 6.2 -> 9.3 us; LeViT-384 TensorRT only in old, ONNX Runtime bs1 only in new.
The runs are made up but complete pytest-benchmark files: the stats besides min, max, mean, stddev and
median (q1, q3, iqr, ld15iqr, hd15iqr, outliers, ops, total) are derived from those five.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from levit_trt.cli import main
from levit_trt.report import MachineMismatchError, compare
from levit_trt.runs import RunFileError

DATA = Path(__file__).parent / "data"
OLD = DATA / "run_h100_old.json"
NEW = DATA / "run_h100_new.json"


def test_ratios_per_case() -> None:
    comparison = compare(OLD, NEW)
    ratios = {change.id: round(change.ratio, 6) for change in comparison.changes}
    assert ratios == {
        "levit_384-torch-fp32-bs16": 1.0,
        "levit_128s-torch-fp32-bs1": 0.9,
        "levit_128s-torch-fp16-bs1": 1.0,
        "levit_128s-tensorrt-fp16-bs1": 1.2,
        "levit_128s-torch-fp32-bs16": 1.0,
        "levit_128s-torch-cudagraph-fp16-bs16": 1.0,
        "levit_128s-tensorrt-fp16-bs16": 1.08,
        "softmax-plugin-fp16-16x4x196x196": 1.5,
    }
    assert {change.metric for change in comparison.changes} == {"gpu median"}
    assert comparison.only_old == ("levit_384-tensorrt-fp16-bs16",)
    assert comparison.only_new == ("levit_128s-onnxruntime-fp32-bs1",)
    assert comparison.regressions == ()  # no threshold, nothing flagged


def test_regressions_beyond_the_threshold() -> None:
    assert [c.id for c in compare(OLD, NEW, fail_above_pct=10).regressions] == [
        "levit_128s-tensorrt-fp16-bs1", "softmax-plugin-fp16-16x4x196x196"]
    assert [c.id for c in compare(OLD, NEW, fail_above_pct=5).regressions] == [
        "levit_128s-tensorrt-fp16-bs1", "levit_128s-tensorrt-fp16-bs16", "softmax-plugin-fp16-16x4x196x196"]
    assert compare(OLD, NEW, fail_above_pct=60).regressions == ()


def test_wall_clock_when_either_run_lacks_gpu_time(tmp_path: Path) -> None:
    document = json.loads(NEW.read_text())
    del document["benchmarks"][0]["extra_info"]["gpu_median_ms"]  # levit_384 torch fp32 bs16
    new = tmp_path / "new.json"
    new.write_text(json.dumps(document))
    (change,) = [c for c in compare(OLD, new).changes if c.id == "levit_384-torch-fp32-bs16"]
    assert change.metric == "wall median" and change.old_ms == change.new_ms == pytest.approx(8.9)


def test_markdown_flags_and_lists_unmatched_cases() -> None:
    text = compare(OLD, NEW, fail_above_pct=10).to_markdown()
    assert "| levit_128s-tensorrt-fp16-bs1 | gpu median | 0.500 | 0.600 | 1.200 | REGRESSION (> +10%) |" in text
    assert "| levit_128s-torch-fp32-bs1 | gpu median | 8.00 | 7.20 | 0.900 |  |" in text
    assert "| softmax-plugin-fp16-16x4x196x196 | gpu median | 0.00620 | 0.00930 | 1.500 | REGRESSION (> +10%) |" in text
    assert "only in old: levit_384-tensorrt-fp16-bs16" in text
    assert "only in new: levit_128s-onnxruntime-fp32-bs1" in text
    assert text.endswith("2 of 8 cases slower by more than 10%.\n")


def test_cli_exit_status(capsys) -> None:
    assert main(["compare", str(OLD), str(NEW)]) == 0
    assert main(["compare", str(OLD), str(NEW), "--fail-above", "60"]) == 0
    assert main(["compare", str(OLD), str(NEW), "--fail-above", "10"]) == 1
    assert "2 of 8 cases slower by more than 10%." in capsys.readouterr().out


def test_bad_input(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match=r"have no case in common \(old has e.g. levit_384-torch-fp32-bs16, new has "
                                         r"e.g. levit_384-torch-fp32-bs16\)"):
        compare(OLD, _renamed(tmp_path))
    with pytest.raises(RunFileError, match="accuracy_h100.json is not a pytest-benchmark run"):
        compare(OLD, DATA / "accuracy_h100.json")
    with pytest.raises(ValueError, match="--fail-above must be a percentage >= 0, got -5"):
        compare(OLD, NEW, fail_above_pct=-5)
    assert main(["compare", str(OLD), str(DATA / "accuracy_h100.json")]) == 2
    assert "levit-trt compare: error:" in capsys.readouterr().err


def _renamed(tmp_path: Path) -> Path:
    """A run whose cases come from another test file, so none matches the old run's ids."""
    document = json.loads(NEW.read_text())
    for bench in document["benchmarks"]:
        bench["fullname"] = bench["fullname"].replace("benchmarks/", "elsewhere/")
    path = tmp_path / "renamed.json"
    path.write_text(json.dumps(document))
    return path


CPU_RUN = DATA / "run_cpu.json"


def test_unlike_machines_are_refused_naming_the_fields(tmp_path: Path, capsys) -> None:
    with pytest.raises(MachineMismatchError, match=r"different machines or software \(device: 'cuda' -> 'cpu'; "
                                                   r"cpu: 'AMD EPYC 9454 48-Core Processor' -> 'Intel\(R\) Xeon\(R\) "
                                                   r"Processor'\).*--allow-different-machines"):
        compare(NEW, CPU_RUN)
    document = json.loads(NEW.read_text())
    document["machine_info"]["levit_trt"]["versions"]["tensorrt"] = "10.13.0"
    document["machine_info"]["levit_trt"]["gpu"] = "NVIDIA H200"
    upgraded = tmp_path / "upgraded.json"
    upgraded.write_text(json.dumps(document))
    with pytest.raises(MachineMismatchError, match=r"gpu: 'NVIDIA H100 80GB HBM3' -> 'NVIDIA H200'; "
                                                   r"tensorrt: '10.7.0' -> '10.13.0'\)"):
        compare(OLD, upgraded)
    assert main(["compare", str(OLD), str(upgraded)]) == 2
    captured = capsys.readouterr()
    assert "levit-trt compare: error:" in captured.err and "tensorrt: '10.7.0' -> '10.13.0'" in captured.err
    assert captured.out == ""  # no table of meaningless ratios


def test_unlike_machines_compared_on_request_with_a_loud_warning(capsys) -> None:
    comparison = compare(NEW, CPU_RUN, allow_different_machines=True)
    assert [d.field for d in comparison.machine_differences] == ["device", "cpu"]
    assert "**WARNING: these runs come from different machines or software" in comparison.to_markdown()
    assert main(["compare", str(NEW), str(CPU_RUN), "--allow-different-machines"]) == 0
    captured = capsys.readouterr()
    assert "WARNING: these runs come from different machines" in captured.err
    assert "device: 'cuda' -> 'cpu'" in captured.err
    assert compare(OLD, NEW).machine_warning() is None  # the same machine: no warning


def test_the_saved_runs_here_are_complete_pytest_benchmark_files() -> None:
    """pytest-benchmark's own `compare` reads tests/data's runs (it needs every stats field, iqr included)."""
    runs = [DATA / "run_h100_old.json", DATA / "run_h100_new.json", CPU_RUN]
    result = subprocess.run([sys.executable, "-c", "from pytest_benchmark.cli import main; main()", "compare",
                             *(run.name for run in runs), "--columns", "min,median,iqr,ops"], capture_output=True,
                            text=True, cwd=DATA, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    for run in runs:
        assert f"test_latency[levit_128s-torch-fp32-bs1] ({run.stem})" in result.stdout
