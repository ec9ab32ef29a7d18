"""Correctness and speed of the fused `levit_trt::attention` op against SDPA and the explicit torch form.

Run from the repository root after building the op (cmake -S . -B build && cmake --build build):

    python3 tools/attention_gpu_check.py [--correctness-only] [--sweep] [--rounds N] [--calls N]

1. Correctness: every LeViT attention shape (levit_trt.attention_shapes), fp16 and fp32, batches 1
   and 3, also with biases of magnitude ~30; q, k, v as the strided views the projections give;
   output poisoned with NaN first; against float64 by ||out - ref|| / ||ref|| (limits 2e-3 fp16,
   1e-5 fp32, as in tests/test_attention_plugin.py). --correctness-only stops here, after batch 1
   only (for compute-sanitizer).
2. Ceilings: a 1 GiB device-to-device copy (bytes read + written per second) and an 8192^3 fp16
   matrix product through torch (TFLOP/s), both on random data.
3. Speed at every distinct LeViT attention shape, batches 1, 16 and 64, fp16 and fp32: in ONE
   interleaved run per shape (levit_trt.timing.time_cuda_graphs_interleaved: --calls calls per
   CUDA graph, each round replays every graph in turn, median over --rounds rounds, per call):
   - plugin:   levit_trt::attention(q, k, v, bias, scale)
   - sdpa:     F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale) on the permuted
               views, its [B, H, Nq, Dv] output copied into a preallocated [B, Nq, H*Dv] tensor
   - explicit: (softmax(q @ k^T * scale + bias) @ v).transpose(1, 2).reshape(B, Nq, H*Dv)
   Each shape's floors: its bytes (q, k, v, bias read once, out written once) over the copy rate,
   and its flops (both products) over the matrix rate. The table gives speed-ups and the issue's
   targets (fp16, batches 16 and 64): >= 2x SDPA and >= 4x explicit where there are 196 keys,
   >= 1.5x the faster of the two elsewhere, never slower than either (batch 1 included).

4. --sweep: at every fp16 shape and timing batch, the launch shapes `levit_trt::attention_tuned`
   can force (warps per CTA 1, 2, 4; value columns per CTA 32, 64, 128 up to the head's width) and the
   dispatcher's choice, in one interleaved run per row, for choosing the dispatcher's rules.

Writes $OUT/attention.json (and attention-sweep.json) when OUT is set. Exits 1 if any correctness
check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from softmax_gpu_check import check_arguments, copy_bandwidth_gbs, device_summary, report_correctness, times_per_call_us

from levit_trt import plugins
from levit_trt.attention_reference import model_inputs, reference_attention, relative_error
from levit_trt.attention_shapes import LEVIT_ATTENTION_SHAPES, AttentionShape
from levit_trt.timing import time_cuda_events

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3}
DTYPES = (torch.float16, torch.float32)
CORRECTNESS_BATCHES = (1, 3)
SANITIZER_BATCHES = (1,)  # --correctness-only: racecheck runs each launch ~100x slower
TIMING_BATCHES = (1, 16, 64)
TARGET_BATCHES = (16, 64)  # the speed targets are stated at these batches
MATMUL_SIZE = 8192


@dataclass
class CorrectnessResult:
    shape: str
    batch: int
    dtype: str
    bias_scale: float
    relative_error: float
    all_written: bool
    passed: bool


def label(shape: AttentionShape) -> str:
    return f"[H{shape.heads} Nq{shape.queries} Nk{shape.keys} Dq{shape.key_dim} Dv{shape.value_dim}]"


def check_correctness(op, batches: tuple[int, ...]) -> list[CorrectnessResult]:
    results = []
    for shape in LEVIT_ATTENTION_SHAPES:
        for dtype in DTYPES:
            for batch in batches:
                for bias_scale in (1.0, 30.0):
                    q, k, v, bias = model_inputs(shape, batch, dtype, bias_scale=bias_scale)
                    out = torch.full((batch, shape.queries, shape.heads * shape.value_dim), float("nan"),
                                     device="cuda", dtype=dtype)
                    op(q, k, v, bias, shape.scale, out=out)
                    torch.cuda.synchronize()
                    written = bool(torch.isfinite(out).all())
                    error = relative_error(out, reference_attention(q, k, v, bias, shape.scale))
                    results.append(CorrectnessResult(f"{shape.variant} {shape.layer} {label(shape)}", batch,
                                                     str(dtype).replace("torch.", ""), bias_scale, error, written,
                                                     written and error <= TOLERANCE[dtype]))
    return results


def matmul_tflops() -> float:
    """fp16 8192^3 matrix product through torch on random data, TFLOP/s (median of 20)."""
    a = torch.randn((MATMUL_SIZE, MATMUL_SIZE), device="cuda", dtype=torch.float16)
    b = torch.randn((MATMUL_SIZE, MATMUL_SIZE), device="cuda", dtype=torch.float16)
    timing = time_cuda_events(partial(torch.matmul, a, b), warmup=5, rounds=20)
    return 2 * MATMUL_SIZE**3 / (timing.median_ms * 1e-3) / 1e12


def explicit_attention(q, k, v, bias, scale):
    batch, queries, heads, _ = q.shape
    scores = q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1) * scale + bias
    out = torch.softmax(scores, dim=-1) @ v.permute(0, 2, 1, 3)
    return out.transpose(1, 2).reshape(batch, queries, heads * v.shape[-1])


def sdpa_attention(q, k, v, bias, scale, out):
    o = F.scaled_dot_product_attention(q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3),
                                       attn_mask=bias, scale=scale)
    out.view(q.shape[0], q.shape[1], q.shape[2], v.shape[-1]).copy_(o.transpose(1, 2))
    return out


@dataclass
class SpeedResult:
    shapes: str  # the (variant, layer) pairs with this shape
    shape: str
    batch: int
    dtype: str
    plugin_us: float
    sdpa_us: float
    explicit_us: float
    plugin_p10_p90_us: tuple[float, float]
    flops: int
    bytes: int
    bytes_floor_us: float
    flops_floor_us: float
    target: str  # the target at this row, or "" where none applies
    target_met: bool | None

    @property
    def vs_sdpa(self) -> float:
        return self.sdpa_us / self.plugin_us

    @property
    def vs_explicit(self) -> float:
        return self.explicit_us / self.plugin_us


def target_for(shape: AttentionShape, batch: int, dtype: torch.dtype, sdpa_us: float, explicit_us: float,
               plugin_us: float) -> tuple[str, bool | None]:
    never_slower = plugin_us <= min(sdpa_us, explicit_us)
    if dtype != torch.float16:
        return "", None
    if batch not in TARGET_BATCHES:
        return "never slower", never_slower
    if shape.keys == 196:
        return ">=2x sdpa, >=4x explicit", sdpa_us / plugin_us >= 2 and explicit_us / plugin_us >= 4
    return ">=1.5x faster peer", min(sdpa_us, explicit_us) / plugin_us >= 1.5


def measure(shape: AttentionShape, names: list[str], batch: int, dtype: torch.dtype, op, copy_gbs: float,
            tflops: float, args) -> SpeedResult:
    q, k, v, bias = model_inputs(shape, batch, dtype)
    scale = shape.scale
    error = relative_error(op(q, k, v, bias, scale), reference_attention(q, k, v, bias, scale))
    if not error <= TOLERANCE[dtype]:
        raise AssertionError(f"{label(shape)} batch {batch} {dtype}: plugin relative error {error:.3g} before timing")
    sdpa_out = torch.empty((batch, shape.queries, shape.heads * shape.value_dim), device="cuda", dtype=dtype)
    fns = {
        "plugin": partial(op, q, k, v, bias, scale),
        "sdpa": partial(sdpa_attention, q, k, v, bias, scale, sdpa_out),
        "explicit": partial(explicit_attention, q, k, v, bias, scale),
    }
    times = times_per_call_us(fns, args.rounds, args.calls)
    element = torch.empty((), dtype=dtype).element_size()
    flops, moved = shape.flops(batch), shape.min_bytes(batch, element)
    plugin_us, sdpa_us, explicit_us = (times[key]["median_us"] for key in ("plugin", "sdpa", "explicit"))
    target, met = target_for(shape, batch, dtype, sdpa_us, explicit_us, plugin_us)
    return SpeedResult(", ".join(names), label(shape), batch, str(dtype).replace("torch.", ""), plugin_us, sdpa_us,
                       explicit_us, (times["plugin"]["p10_us"], times["plugin"]["p90_us"]), flops, moved,
                       moved / (copy_gbs * 1e9) * 1e6, flops / (tflops * 1e12) * 1e6, target, met)


def sweep_launch_shapes(shape: AttentionShape, batch: int, args: argparse.Namespace) -> dict[str, object]:
    """Per-call times of every forced (warps, value columns) launch and the dispatcher's (`auto`), fp16."""
    q, k, v, bias = model_inputs(shape, batch, torch.float16)
    out = torch.empty((batch, shape.queries, shape.heads * shape.value_dim), device="cuda", dtype=torch.float16)
    tuned = torch.ops.levit_trt.attention_tuned
    fns = {"auto": partial(tuned, q, k, v, bias, shape.scale, out, 0, 0)}
    for warps in (1, 2, 4):
        for columns in (c for c in (32, 64, 128) if c <= shape.value_dim):
            fns[f"w{warps}-c{columns}"] = partial(tuned, q, k, v, bias, shape.scale, out, warps, columns)
    times = times_per_call_us(fns, args.rounds, args.calls)
    medians = {name: t["median_us"] for name, t in times.items()}
    best = min((n for n in medians if n != "auto"), key=medians.__getitem__)
    return {"shape": label(shape), "batch": batch, "median_us": medians, "best": best,
            "auto_vs_best": medians["auto"] / medians[best]}


def distinct_shapes() -> dict[AttentionShape, list[str]]:
    """Each distinct kernel shape once, with the (variant, layer) pairs that have it."""
    shapes: dict[AttentionShape, list[str]] = {}
    for s in LEVIT_ATTENTION_SHAPES:
        key = AttentionShape("", "", s.heads, s.queries, s.keys, s.key_dim, s.value_dim)
        shapes.setdefault(key, []).append(f"{s.variant.removeprefix('levit_')} {s.layer}")
    return shapes


def print_table(speed: list[SpeedResult]) -> None:
    print(f"\n{'shape':>32} {'B':>3} {'dtype':>7} {'plugin':>8} {'sdpa':>8} {'explicit':>8} {'xSDPA':>6} "
          f"{'xExpl':>6} {'floorB':>7} {'floorF':>7}  target        where")
    for r in speed:
        verdict = "" if r.target_met is None else ("met " if r.target_met else "MISSED ") + r.target
        print(f"{r.shape:>32} {r.batch:>3} {r.dtype:>7} {r.plugin_us:8.2f} {r.sdpa_us:8.2f} {r.explicit_us:8.2f} "
              f"{r.vs_sdpa:6.2f} {r.vs_explicit:6.2f} {r.bytes_floor_us:7.2f} {r.flops_floor_us:7.2f}  "
              f"{verdict:<36} {r.shapes[:50]}")
    judged = [r for r in speed if r.target_met is not None]
    missed = [r for r in judged if not r.target_met]
    print(f"\nfp16 targets met: {len(judged) - len(missed)} of {len(judged)}")
    slower = [r for r in speed if r.plugin_us > min(r.sdpa_us, r.explicit_us)]
    print(f"rows (any dtype) where the plugin is slower than SDPA or explicit: {len(slower)} of {len(speed)}")


def main() -> int:
    args = check_arguments(__doc__.splitlines()[0], 30, "also time every forced launch shape (fp16)").parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 products stay fp32, as in the model's fp32 runs
    plugins.load_attention_op()
    op = torch.ops.levit_trt.attention
    device = device_summary()

    correctness = check_correctness(op, SANITIZER_BATCHES if args.correctness_only else CORRECTNESS_BATCHES)
    failures = report_correctness(correctness, lambda r: f"{r.shape} batch {r.batch} {r.dtype} bias x{r.bias_scale}")
    if args.correctness_only or failures:
        return 1 if failures else 0

    copy_gbs = copy_bandwidth_gbs()
    tflops = matmul_tflops()
    print(f"ceilings: device copy {copy_gbs:.0f} GB/s (1 GiB, read + write); fp16 {MATMUL_SIZE}^3 matmul "
          f"{tflops:.0f} TFLOP/s")
    speed = []
    for dtype in DTYPES:
        for shape, names in distinct_shapes().items():
            for batch in TIMING_BATCHES:
                result = measure(shape, names, batch, dtype, op, copy_gbs, tflops, args)
                speed.append(result)
                print(f"  {result.shape} B{batch} {result.dtype}: plugin {result.plugin_us:.2f} sdpa "
                      f"{result.sdpa_us:.2f} explicit {result.explicit_us:.2f} us", flush=True)
    print_table(speed)
    sweep = []
    if args.sweep:
        print("\nlaunch-shape sweep, fp16 (us per call; auto = the dispatcher's choice)")
        for shape in distinct_shapes():
            for batch in TIMING_BATCHES:
                row = sweep_launch_shapes(shape, batch, args)
                sweep.append(row)
                medians = row["median_us"]
                print(f"  {row['shape']:>30} B{batch:<3} auto {medians['auto']:7.2f}  best {row['best']} "
                      f"{medians[row['best']]:7.2f}  auto/best {row['auto_vs_best']:.3f}  "
                      + " ".join(f"{n}={t:.2f}" for n, t in medians.items() if n != "auto"), flush=True)

    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "attention.json"
        path.write_text(json.dumps({
            "device": device, "copy_bandwidth_gbs": copy_gbs, "matmul_fp16_tflops": tflops, "args": vars(args),
            "correctness": [asdict(r) for r in correctness],
            "speed": [{**asdict(r), "vs_sdpa": r.vs_sdpa, "vs_explicit": r.vs_explicit} for r in speed],
        }, indent=1))
        print(f"wrote {path}")
        if sweep:
            (Path(os.environ["OUT"]) / "attention-sweep.json").write_text(json.dumps(sweep, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
