"""`levit-trt report`: tables from hand-written saved runs (tests/data), speed-ups against a chosen
baseline, the top-1 join, the PNG plot, and clear errors for files that are not what they should be.

Expected numbers are worked out by hand from the fixtures: e.g. LeViT-128S batch 1, torch fp32
8.0 ms / TensorRT fp16 0.5 ms = 16.00x.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from levit_trt.backends.registry import UnknownBackendError
from levit_trt.cli import main
from levit_trt.report import LatencyRow, latency_figure, latency_rows, report_markdown, save_plot
from levit_trt.runs import RunFileError, load_run, load_top1

DATA = Path(__file__).parent / "data"
GPU_RUN = DATA / "run_h100_old.json"
CPU_RUN = DATA / "run_cpu.json"
ACCURACY = DATA / "accuracy_h100.json"

EXPECTED_GPU_REPORT = """\
# Latency: run_h100_old.json

2026-11-20T10:00:00.000000+00:00 · NVIDIA H100 80GB HBM3 (CC 9.0, driver 550.54.15, CUDA 12.4) · torch 2.5.1, \
timm 1.0.11, onnxruntime 1.20.1, tensorrt 10.7.0 · commit 0123456789

Latency: median per batch. On a GPU, CUDA-event time per call with calls issued back to back (device time \
where the GPU is the bottleneck, launch time where the host is), and the wall-clock median of one synchronised \
call (single call); on a CPU, pytest-benchmark's wall clock. Speed-up: torch fp32 latency / latency, same \
variant, batch and device.

## LeViT-128S, batch 1, cuda

| backend | precision | top-1 (%) | top-1 images | latency (ms) | single call (ms) | speed-up vs torch fp32 |
|---|---|--:|--:|--:|--:|--:|
| torch | fp32 | 76.53 | 50,000 | 8.00 | 8.40 | 1.00× |
| torch | fp16 | – | – | 10.00 | 10.40 | 0.80× |
| tensorrt | fp16 | 76.50 | 50,000 | 0.500 | 0.700 | 16.00× |

## LeViT-128S, batch 16, cuda

| backend | precision | top-1 (%) | top-1 images | latency (ms) | single call (ms) | speed-up vs torch fp32 |
|---|---|--:|--:|--:|--:|--:|
| torch | fp32 | 76.53 | 50,000 | 9.00 | 9.30 | 1.00× |
| torch-cudagraph | fp16 | – | – | 1.20 | 1.40 | 7.50× |
| tensorrt | fp16 | 76.50 | 50,000 | 1.50 | 1.70 | 6.00× |

## LeViT-384, batch 16, cuda

| backend | precision | top-1 (%) | top-1 images | latency (ms) | single call (ms) | speed-up vs torch fp32 |
|---|---|--:|--:|--:|--:|--:|
| torch | fp32 | 82.59 | 5,000 | 8.60 | 8.90 | 1.00× |
| tensorrt | fp16 | – | – | 1.72 | 1.90 | 5.00× |

(1 other benchmark (e.g. softmax) not tabulated here; `levit-trt compare` and `pytest-benchmark compare` show \
every case.)
"""


def test_gpu_report_is_the_reference_table() -> None:
    """GPU median per case with the single-call wall clock beside it, tables in variant-table order, last
    top-1 of a key wins; the single-call column is pytest-benchmark's median (tests/data: 8.4 ms for 8.0)."""
    assert report_markdown(load_run(GPU_RUN), load_top1(ACCURACY)) == EXPECTED_GPU_REPORT


def test_speed_up_against_a_chosen_baseline() -> None:
    report = report_markdown(load_run(GPU_RUN), baseline="torch-cudagraph-fp16")
    batch16 = report.split("## LeViT-128S, batch 16, cuda")[1].split("##")[0]
    assert "| backend | precision | latency (ms) | single call (ms) | speed-up vs torch-cudagraph fp16 |" in batch16
    # 9.0 / 1.2 ms -> 1.2 / 9.0; 1.2 / 1.5 ms
    assert "| torch | fp32 | 9.00 | 9.30 | 0.13× |" in batch16 and "| tensorrt | fp16 | 1.50 | 1.70 | 0.80× |" in batch16
    # tables without the baseline say so instead of inventing a ratio
    assert "| tensorrt | fp16 | 0.500 | 0.700 | – |" in report


def test_cpu_run_uses_the_wall_clock_median() -> None:
    report = report_markdown(load_run(CPU_RUN))
    assert "## LeViT-128S, batch 1, cpu" in report
    assert "| torch | fp32 | 25.00 | 1.00× |" in report and "| onnxruntime | fp32 | 4.00 | 6.25× |" in report
    assert "top-1" not in report  # no accuracy file, no column


def test_rows_come_from_extra_info_not_from_a_backend_list() -> None:
    rows = latency_rows(load_run(GPU_RUN))
    assert len(rows) == 8  # the softmax case is not a latency row
    assert rows[0] == LatencyRow("levit_384", "torch", "fp32", 16, "cuda", False, 8.6, 8.9)
    assert rows[-2] == LatencyRow("levit_128s", "torch-cudagraph", "fp16", 16, "cuda", False, 1.2, 1.4)


def test_graph_rows_are_labelled_and_can_be_the_baseline(tmp_path: Path) -> None:
    document = json.loads(GPU_RUN.read_text())
    graph = json.loads(json.dumps(document["benchmarks"][5]))  # levit_128s torch fp32 bs16, 9.0 ms
    graph["fullname"] += "-graph"
    graph["extra_info"].update(cuda_graphs=True, gpu_median_ms=4.5)
    document["benchmarks"].append(graph)
    run = tmp_path / "run.json"
    run.write_text(json.dumps(document))
    report = report_markdown(load_run(run), baseline="torch-graph-fp32")
    assert "| torch-graph | fp32 | 4.50 | 9.30 | 1.00× |" in report and "| torch | fp32 | 9.00 | 9.30 | 0.50× |" in report


def test_plot_is_a_png_with_one_line_per_backend_and_precision(tmp_path: Path) -> None:
    rows = latency_rows(load_run(GPU_RUN))
    axes = latency_figure(rows).axes
    assert [a.get_title() for a in axes] == ["LeViT-128S (cuda)", "LeViT-384 (cuda)"]
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes[0].get_lines()}
    assert lines == {"torch fp32": ([1, 16], [8.0, 9.0]), "torch fp16": ([1], [10.0]),
                     "tensorrt fp16": ([1, 16], [0.5, 1.5]), "torch-cudagraph fp16": ([16], [1.2])}
    path = save_plot(rows, tmp_path / "latency.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["latency.png"]  # no temporary left beside it


def test_plot_name_must_be_png(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--plot writes a PNG image; name the file \*\.png, not 'latency.svg'"):
        save_plot(latency_rows(load_run(CPU_RUN)), tmp_path / "latency.svg")
    assert list(tmp_path.iterdir()) == []


def test_cli_report_with_accuracy_and_plot(tmp_path: Path, capsys) -> None:
    plot = tmp_path / "latency.png"
    assert main(["report", str(GPU_RUN), "--accuracy", str(ACCURACY), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(EXPECTED_GPU_REPORT) and out.endswith(f"wrote {plot}\n")
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("baseline", "error", "message"),
    [
        ("tensorflow-fp32", UnknownBackendError, "unknown backend 'tensorflow'; valid backends: torch"),
        ("torch", ValueError, "baseline 'torch' must be BACKEND-PRECISION, e.g. torch-fp32"),
        ("onnxruntime-fp32", ValueError, ("has no onnxruntime fp32 case to measure speed-ups against; choose "
                                          "--baseline from: torch-fp32, tensorrt-fp16, torch-fp16")),
    ],
)
def test_bad_baseline_is_a_clear_error(baseline: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        report_markdown(load_run(GPU_RUN), baseline=baseline)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_files_that_are_not_runs_are_named_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(RunFileError, match=r"accuracy_h100.json is not a pytest-benchmark run .*pass it with "
                                           r"--accuracy. Save a run with `pytest benchmarks --benchmark-json"):
        load_run(ACCURACY)
    with pytest.raises(RunFileError, match=r"notes.txt is not a pytest-benchmark run \(not JSON"):
        load_run(_write(tmp_path, "notes.txt", "median: 3 ms"))
    with pytest.raises(RunFileError, match=r"benchmark #0 has no name or no stats.median"):
        load_run(_write(tmp_path, "cut.json", '{"benchmarks": [{"name": "test_latency[x]"}]}'))
    with pytest.raises(RunFileError, match=r"holds no benchmarks \(were they all skipped"):
        load_run(_write(tmp_path, "empty.json", '{"benchmarks": []}'))
    with pytest.raises(FileNotFoundError, match="pytest-benchmark run .*missing.json does not exist"):
        load_run(tmp_path / "missing.json")


def test_top1_says_how_many_images_it_came_from(tmp_path: Path) -> None:
    top1 = load_top1(ACCURACY)
    assert (top1[("levit_384", "torch", "fp32")].images, top1[("levit_128s", "torch", "fp32")].images) == (5000, 50000)
    unsized = _write(tmp_path, "acc.json", '{"results": [{"variant": "128S", "backend": "torch", "precision": "fp32", '
                                           '"top1": 76.5}]}')  # an older file without the image count
    report = report_markdown(load_run(GPU_RUN), load_top1(unsized))
    assert "| torch | fp32 | 76.50 | – | 8.00 |" in report


def test_accuracy_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(RunFileError, match=r"run_cpu.json is not a levit_trt accuracy file .*a pytest-benchmark run"):
        load_top1(CPU_RUN)
    bad = _write(tmp_path, "acc.json", '{"results": [{"variant": "512", "backend": "torch", "precision": "fp32", '
                                       '"top1": 1.0}]}')
    with pytest.raises(RunFileError, match=r"acc.json: result #0 lacks a valid .*unknown LeViT variant '512'"):
        load_top1(bad)


def test_run_without_latency_cases(tmp_path: Path) -> None:
    document = json.loads(GPU_RUN.read_text())
    document["benchmarks"] = document["benchmarks"][-1:]  # the softmax case only
    with pytest.raises(ValueError, match=r"holds no latency cases .*e.g. softmax-plugin-fp16-16x4x196x196"):
        report_markdown(load_run(_write(tmp_path, "softmax.json", json.dumps(document))))


def test_cli_errors_exit_2(capsys) -> None:
    assert main(["report", str(ACCURACY)]) == 2
    assert "is not a pytest-benchmark run" in capsys.readouterr().err
    assert main(["report", str(GPU_RUN), "--baseline", "trt-fp16"]) == 2
    assert "unknown backend 'trt'" in capsys.readouterr().err


def test_a_run_from_uncommitted_code_says_so(tmp_path: Path) -> None:
    document = json.loads(GPU_RUN.read_text())
    document["commit_info"]["dirty"] = True
    run = tmp_path / "run.json"
    run.write_text(json.dumps(document))
    assert "· commit 0123456789+dirty\n" in report_markdown(load_run(run))
