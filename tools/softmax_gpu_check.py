"""Correctness and speed of the `levit_trt::softmax` op against `torch.softmax`, on a CUDA GPU.

Run from the repository root after building the op (cmake -S . -B build && cmake --build build):

    python3 tools/softmax_gpu_check.py [--sweep] [--rounds N]

1. Correctness: every row length the issue names (1 .. 4096), fp32 and fp16, fresh random inputs
   (and rows scaled to large magnitudes), output buffers poisoned with NaN first; compared with
   float64 softmax by ||out - ref|| / ||ref|| (limits 1e-6 fp32, 2e-3 fp16).
2. Copy bandwidth: one large device-to-device copy (1 GiB each way, far beyond L2), bytes read +
   written over the median time: the ceiling the softmax times are compared with.
3. Speed at LeViT's attention shapes (from levit_trt.variants, 224x224 input, batches 1/8/16/64)
   and the issue's reference shapes, fp16 and fp32.

How both implementations are timed (identically): `torch.softmax(x, -1)` and `levit_trt::softmax(x)`,
functional form, each captured `--calls` times back-to-back in one CUDA graph and replayed; each
round replays the torch graph, the plugin's and a same-size copy's (`out.copy_(x)`) in turn
(levit_trt.timing.time_cuda_graphs_interleaved), so a slow spell of the GPU lands on all three; the
per-call median over `--rounds` rounds is reported.
"hot" columns reuse one input tensor, so the input (at most ~30 MB here) stays in the 50 MB L2
between calls -- as in the network, where softmax reads the scores the previous matmul just wrote --
and GB/s can exceed the DRAM copy bandwidth. "cold" columns (reference shapes only) rotate over
enough distinct inputs (> 2x L2) that every call reads its input from DRAM.
Bytes moved per call = input read once + output written once = 2 * numel * element size.

Writes everything to $OUT/softmax.json when OUT is set. Exits 1 if any correctness check fails.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from levit_trt import plugins
from levit_trt.attention_shapes import LEVIT_ATTENTION_SHAPES
from levit_trt.timing import time_cuda_events, time_cuda_graphs_interleaved

ROW_LENGTHS = (1, 16, 17, 49, 196, 1000, 1025, 4096)
TOLERANCE = {torch.float32: 1e-6, torch.float16: 2e-3}
BATCHES = (1, 8, 16, 64)
# The issue's reference shapes, with torch.softmax's time there on an H100 (issue 5).
REFERENCE_SHAPES: tuple[tuple[tuple[int, ...], torch.dtype, float], ...] = (
    ((16, 6, 196, 196), torch.float16, 10.0),
    ((16, 4, 196, 196), torch.float16, 7.6),
    ((8, 3, 196, 196), torch.float16, 3.9),
    ((16, 12, 49, 49), torch.float16, 3.1),
    ((16, 6, 196, 196), torch.float32, 13.1),
)
PATHS = {"auto": 0, "registers": 1, "staged": 2}  # SoftmaxPath in plugins/softmax/softmax_launch.h
STAGED_MAX_COLS = 1024
SWEEP_SHAPES: tuple[tuple[tuple[int, ...], torch.dtype], ...] = (
    *((shape, dtype) for shape, dtype, _ in REFERENCE_SHAPES),
    ((64, 9, 49, 49), torch.float16), ((64, 5, 49, 49), torch.float16), ((64, 12, 16, 49), torch.float16),
    ((1, 6, 49, 49), torch.float16), ((64, 8, 16, 16), torch.float16), ((64, 9, 49, 49), torch.float32),
    ((64, 5, 49, 49), torch.float32), ((1, 6, 49, 49), torch.float32), ((64, 16, 16, 49), torch.float32),
    ((8, 5, 49, 49), torch.float32), ((16, 8, 49, 49), torch.float32), ((16, 9, 49, 49), torch.float32),
    ((64, 4, 196, 196), torch.float16), ((1, 8, 16, 16), torch.float16),
)


@dataclass(frozen=True)
class LaunchConfig:
    """Arguments of levit_trt::softmax_tuned after (x, out); 0 = the dispatcher's choice."""

    path: str
    lanes: int = 0
    rows_per_group: int = 0
    warps: int = 0
    grid_blocks: int = 0

    @property
    def key(self) -> str:
        grid = f"g{self.grid_blocks}" if self.grid_blocks else ""
        return f"{self.path[0]}-l{self.lanes}r{self.rows_per_group}w{self.warps}{grid}"

    def bind(self, x: torch.Tensor, out: torch.Tensor):
        return partial(torch.ops.levit_trt.softmax_tuned, x, out, self.rows_per_group, self.warps, self.lanes,
                       PATHS[self.path], self.grid_blocks)


def sweep_configs(sms: int, paths: set[str]) -> list[LaunchConfig]:
    registers = [LaunchConfig("registers", lanes, rows, warps)
                 for lanes, rows, warps in itertools.product((0, 8, 16, 32), (1, 2), (4, 8))]
    capped = [LaunchConfig("registers", grid_blocks=sms * per_sm) for per_sm in (4, 8, 16, 32)]
    staged = [LaunchConfig("staged", lanes, rows, warps)
              for lanes, rows, warps in itertools.product((0, 1, 2, 4, 8, 16, 32), (1, 2, 4), (2, 4, 8))]
    return [c for c in (LaunchConfig("auto"), *registers, *capped, *staged) if c.path in paths]


def sweep_paths(text: str) -> set[str]:
    """--sweep-paths: kernel names from PATHS, comma-separated."""
    paths = set(text.split(","))
    if not paths <= set(PATHS):
        raise argparse.ArgumentTypeError(f"unknown kernel {sorted(paths - set(PATHS))}; choose from {', '.join(PATHS)}")
    return paths


def levit_attention_shapes(batch: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    """[B, heads, queries, keys] of every attention in each variant (levit_trt.attention_shapes)."""
    return [(f"{s.variant} {s.layer}", (batch, s.heads, s.queries, s.keys)) for s in LEVIT_ATTENTION_SHAPES]


def relative_error(out: torch.Tensor, x: torch.Tensor) -> float:
    reference = torch.softmax(x.double(), dim=-1)
    return ((out.double() - reference).norm() / reference.norm()).item()


@dataclass
class CorrectnessResult:
    shape: tuple[int, ...]
    dtype: str
    inputs: str
    relative_error: float
    all_written: bool
    passed: bool


def check_correctness(op) -> list[CorrectnessResult]:
    """The default dispatch, and the staged path forced, at every row length it takes."""
    kernels = {"auto": op, "staged": lambda x, out: LaunchConfig("staged").bind(x, out)()}
    results = []
    for cols, dtype, leading, kind, kernel in itertools.product(
        ROW_LENGTHS, (torch.float32, torch.float16), ((37,), (4, 9)), ("randn*3", "large"), kernels
    ):
        if kernel == "staged" and cols > STAGED_MAX_COLS:
            continue
        shape = (*leading, cols)
        if kind == "randn*3":
            x = (torch.randn(shape, device="cuda") * 3).to(dtype)
        elif dtype == torch.float32:
            x = torch.randn(shape, device="cuda") * 1e4
        else:
            x = ((torch.rand(shape, device="cuda") * 2 - 1) * 6e4).to(dtype)
        out = torch.full_like(x, float("nan"))
        kernels[kernel](x, out=out)
        torch.cuda.synchronize()
        written = bool(torch.isfinite(out).all())
        error = relative_error(out, x)
        results.append(CorrectnessResult(shape, str(dtype), f"{kind} {kernel}", error, written,
                                         written and error <= TOLERANCE[dtype]))
    return results


def device_summary() -> dict[str, object]:
    """The GPU these numbers come from, printed and returned for the JSON."""
    properties = torch.cuda.get_device_properties(0)
    device = {"name": properties.name, "sms": properties.multi_processor_count,
              "l2_mb": properties.L2_cache_size / 1e6, "torch": torch.__version__}
    print(f"device: {device}")
    return device


def report_correctness(results: list, describe: Callable[[Any], str]) -> list:
    """Print how many checks passed, the worst error per dtype and each failure (`describe`); return the failures.

    `results` are the check tools' CorrectnessResult rows: each has dtype, relative_error and passed."""
    failures = [r for r in results if not r.passed]
    worst = {d: max(r.relative_error for r in results if r.dtype == d) for d in {r.dtype for r in results}}
    print(f"correctness: {len(results) - len(failures)}/{len(results)} passed; worst relative error "
          + ", ".join(f"{d} {e:.3g}" for d, e in sorted(worst.items())))
    for failure in failures:
        print(f"  FAILED {describe(failure)}: error {failure.relative_error:.3g}, all written {failure.all_written}")
    return failures


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy of 1 GiB: (bytes read + bytes written) / median time, in GB/s."""
    source = torch.randint(0, 255, (1 << 30,), dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    timing = time_cuda_events(partial(target.copy_, source), warmup=5, rounds=30)
    del source, target  # free the 2 GiB before the softmax timings
    torch.cuda.empty_cache()
    return 2 * (1 << 30) / (timing.median_ms * 1e-3) / 1e9


def times_per_call_us(fns: Mapping[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, dict[str, float]]:
    """Median, 10th and 90th percentile µs per call of each function, timed in interleaved rounds."""
    timings = time_cuda_graphs_interleaved(fns, warmup=10, rounds=rounds, calls_per_graph=calls)
    return {key: {"median_us": t.median_ms * 1e3, "p10_us": t.percentile_ms(10) * 1e3,
                  "p90_us": t.percentile_ms(90) * 1e3} for key, t in timings.items()}


def rotating(fn, inputs: list[torch.Tensor]):
    """fn over the inputs in turn, so that consecutive calls in a graph read different tensors."""
    cycle = itertools.cycle(inputs)
    return lambda: fn(next(cycle))


@dataclass
class SpeedResult:
    label: str
    shape: tuple[int, ...]
    dtype: str
    inputs: str  # "hot" (one input, L2-resident) or "cold" (rotating inputs, read from DRAM)
    torch_us: float
    plugin_us: float
    speedup: float
    plugin_gbs: float
    copy_fraction: float  # of the 1 GiB device copy rate
    same_size_copy_us: float  # out.copy_(x) for this tensor, timed in the same rounds
    issue_torch_us: float | None = None
    torch_p10_p90_us: tuple[float, float] = (0.0, 0.0)
    plugin_p10_p90_us: tuple[float, float] = (0.0, 0.0)


def measure(label, shape, dtype, op, copy_gbs, args, inputs="hot", issue_us=None) -> SpeedResult:
    x = torch.randn(shape, device="cuda").to(dtype)
    error = relative_error(op(x), x)
    if error > TOLERANCE[dtype]:
        raise AssertionError(f"{shape} {dtype}: plugin relative error {error:.3g} before timing")
    calls = args.calls
    if inputs == "cold":
        count = max(2, -(-2 * torch.cuda.get_device_properties(0).L2_cache_size // x.nbytes))
        tensors = [torch.randn(shape, device="cuda").to(dtype) for _ in range(count)]
        calls = count * max(1, args.calls // count)
        torch_fn = rotating(lambda t: torch.softmax(t, -1), tensors)
        plugin_fn = rotating(op, tensors)
        copy_out = torch.empty_like(x)
        copy_fn = rotating(copy_out.copy_, tensors)
    else:
        torch_fn = lambda: torch.softmax(x, -1)
        plugin_fn = lambda: op(x)
        copy_fn = partial(torch.empty_like(x).copy_, x)
    times = times_per_call_us({"torch": torch_fn, "plugin": plugin_fn, "copy": copy_fn}, args.rounds, calls)
    torch_t, plugin_t = times["torch"], times["plugin"]
    moved = 2 * x.numel() * x.element_size()
    gbs = moved / (plugin_t["median_us"] * 1e-6) / 1e9
    return SpeedResult(label, tuple(shape), str(dtype).replace("torch.", ""), inputs, torch_t["median_us"],
                       plugin_t["median_us"], torch_t["median_us"] / plugin_t["median_us"], gbs, gbs / copy_gbs,
                       times["copy"]["median_us"], issue_us, (torch_t["p10_us"], torch_t["p90_us"]),
                       (plugin_t["p10_us"], plugin_t["p90_us"]))


def tuning_sweep(args) -> list[dict[str, object]]:
    """Median µs of every launch configuration (and of torch.softmax) at the sweep shapes (hot).

    Each configuration is checked against float64 before it is timed; configurations the kernel
    refuses (lanes that cannot cover the row, a staged tile over the shared-memory limit) are left out.
    A shape's configurations are timed in interleaved rounds, so they share any slow spell.
    """
    rows = []
    configs = sweep_configs(torch.cuda.get_device_properties(0).multi_processor_count, args.sweep_paths)
    for shape, dtype in SWEEP_SHAPES:
        x = torch.randn(shape, device="cuda").to(dtype)
        fns = {"torch": partial(torch.softmax, x, -1)}
        for config in configs:
            out = torch.full_like(x, float("nan"))
            tuned = config.bind(x, out)
            try:
                tuned()
            except RuntimeError:
                continue  # a launch shape this row cannot take
            error = relative_error(out, x)
            if not error <= TOLERANCE[dtype]:
                raise AssertionError(f"{config.key} at {shape} {dtype}: relative error {error:.3g}")
            fns[config.key] = tuned
        times = times_per_call_us(fns, args.rounds, args.calls)
        rows.append({"shape": shape, "dtype": str(dtype).replace("torch.", ""),
                     **{key: t["median_us"] for key, t in times.items()}})
    return rows


def print_sweep(sweep: list[dict[str, object]]) -> None:
    for row in sweep:
        timings = {k: v for k, v in row.items() if k not in ("shape", "dtype")}
        best = sorted((v, k) for k, v in timings.items() if k != "torch")[:5]
        auto = f" auto {row['a-l0r0w0']:.2f}" if "a-l0r0w0" in row else ""
        print(f"sweep {row['shape']} {row['dtype']}: torch {row['torch']:.2f}{auto} best "
              + ", ".join(f"{k} {v:.2f}" for v, k in best))
        print("   ", " ".join(f"{k}={v:.2f}" for k, v in timings.items()))


def check_arguments(description: str, rounds: int, sweep_help: str) -> argparse.ArgumentParser:
    """The options both GPU check tools take: timing rounds and calls, --sweep, --correctness-only."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=rounds, help="timed graph replays per measurement")
    parser.add_argument("--calls", type=int, default=20, help="calls captured per graph")
    parser.add_argument("--sweep", action="store_true", help=sweep_help)
    parser.add_argument("--correctness-only", action="store_true",
                        help="only the correctness checks (small and quick: for compute-sanitizer)")
    return parser


def main() -> int:
    parser = check_arguments(__doc__.splitlines()[0], 50, "also time every launch shape (tuning)")
    parser.add_argument("--sweep-paths", type=sweep_paths, default=set(PATHS),
                        help=f"comma-separated kernels the sweep covers, of {','.join(PATHS)} (default: all)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    op = plugins.load_torch_op()
    device = device_summary()

    correctness = check_correctness(op)
    failures = report_correctness(correctness, lambda r: f"{r.shape} {r.dtype} {r.inputs}")
    if args.correctness_only:
        return 1 if failures else 0

    copy_gbs = copy_bandwidth_gbs()
    print(f"device copy bandwidth (1 GiB D2D, read + write): {copy_gbs:.0f} GB/s")

    sweep = tuning_sweep(args) if args.sweep else []
    print_sweep(sweep)

    speed: list[SpeedResult] = []
    for repeat in range(2):  # twice: the spread between passes is the noise floor
        for shape, dtype, issue_us in REFERENCE_SHAPES:
            speed.append(measure(f"reference (pass {repeat + 1})", shape, dtype, op, copy_gbs, args,
                                 issue_us=issue_us))
    for shape, dtype, issue_us in REFERENCE_SHAPES:
        speed.append(measure("reference", shape, dtype, op, copy_gbs, args, inputs="cold", issue_us=issue_us))
    labels: dict[tuple[tuple[int, ...], torch.dtype], list[str]] = {}
    for batch in BATCHES:
        for label, shape in levit_attention_shapes(batch):
            for dtype in (torch.float16, torch.float32):
                labels.setdefault((shape, dtype), []).append(label)
    for (shape, dtype), names in sorted(labels.items(), key=lambda item: (str(item[0][1]), item[0][0])):
        speed.append(measure(", ".join(names), shape, dtype, op, copy_gbs, args))

    print(f"\n{'shape':>20} {'dtype':>7} {'in':>4} {'torch us':>9} {'plugin us':>9} {'speedup':>7} "
          f"{'GB/s':>6} {'of copy':>7} {'copy us':>7}  where")
    for r in speed:
        issue = f" (issue: torch {r.issue_torch_us} us)" if r.issue_torch_us else ""
        print(f"{list(r.shape)!s:>20} {r.dtype:>7} {r.inputs:>4} {r.torch_us:9.2f} {r.plugin_us:9.2f} "
              f"{r.speedup:7.2f} {r.plugin_gbs:6.0f} {r.copy_fraction:7.2f} {r.same_size_copy_us:7.2f}  "
              f"{r.label[:60]}{issue}")
    slower = [r for r in speed if r.speedup < 1.0]
    print(f"\nshapes where the plugin is slower than torch.softmax: {len(slower)} of {len(speed)}")

    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "softmax.json"
        path.write_text(json.dumps({
            "device": device, "copy_bandwidth_gbs": copy_gbs,
            "args": {**vars(args), "sweep_paths": sorted(args.sweep_paths)},
            "correctness": [asdict(r) for r in correctness], "sweep": sweep,
            "speed": [asdict(r) for r in speed],
        }, indent=1))
        print(f"wrote {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
