"""End-to-end LeViT forwards of every attention form, replayed as CUDA graphs in interleaved rounds.

The latency suite times one case after another; a speed-up quoted between two forms must come from
one run in which a slow spell of the GPU lands on both. This captures, per variant and batch, one CUDA
graph of a forward of the prepared model with explicit attention (`graph-explicit`: what
`torch --cuda-graphs` and `torch-cudagraph` replay), with `F.scaled_dot_product_attention`
(`graph-sdpa`: `torch-sdpa --cuda-graphs`), with the fused `levit_trt::attention` op (`graph-fused`:
`torch-plugin --cuda-graphs`), and of each of those through `torch.compile` in its default mode and
then captured here (`compile-explicit` and so on; the `torch-compile*` backends use mode
reduce-overhead, whose graphs are inductor's own), and times them with
`levit_trt.timing.time_cuda_graphs_interleaved`. Each form's logits are compared with the fp32
prepared model (strict fp32) against the fp16 agreement floor before timing (`meets_floor`).

    python3 tools/end_to_end_interleaved.py --variants all --batches 16 --json $OUT/end_to_end.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from levit_trt.backends.base import set_tf32
from levit_trt.models import load_model, set_attention, to_device
from levit_trt.thresholds import AGREEMENT_FLOORS, agreement
from levit_trt.timing import time_cuda_graphs_interleaved
from levit_trt.variants import resolve_variants
from levit_trt.weights import parse_weights, synthetic_images

FORMS = ("explicit", "sdpa", "fused")
BASELINE = "graph-explicit"


def forward_functions(model: torch.nn.Module, images: torch.Tensor, forms: list[str], compiled: bool
                      ) -> dict[str, Callable[[], torch.Tensor]]:
    """One zero-argument forward per form (and per compiled form), each on its own model copy."""
    functions: dict[str, Callable[[], torch.Tensor]] = {}
    # Each form is a class of its own, so every (variant, batch, form) recompiles LeViT's forward:
    # start each set afresh rather than run into dynamo's recompile limit (8) by the third variant.
    torch._dynamo.reset()
    for form in forms:
        eager = set_attention(copy.deepcopy(model), form)
        functions[f"graph-{form}"] = partial(eager, images)
        if compiled:
            started = time.perf_counter()
            graph_ready = torch.compile(set_attention(copy.deepcopy(model), form), mode="default", fullgraph=True)
            with torch.no_grad():
                graph_ready(images)
                torch.cuda.synchronize()
            print(f"  compiled {form} in {time.perf_counter() - started:.1f} s", flush=True)
            functions[f"compile-{form}"] = partial(graph_ready, images)
    return functions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="384", help="variants, e.g. 128S,384 or all (default 384)")
    parser.add_argument("--batches", default="16", help="batch sizes (default 16)")
    parser.add_argument("--forms", default="explicit,sdpa,fused", help="attention forms (default all three)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile forms")
    parser.add_argument("--weights", default="random", help="weights (default random: the stand-in recipe)")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    set_tf32(False)
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    unknown = sorted(set(forms) - set(FORMS))
    if unknown:
        parser.error(f"unknown forms {unknown}; choose from {', '.join(FORMS)}")
    weights = parse_weights(args.weights)
    floor = AGREEMENT_FLOORS["fp16"]
    results: list[dict[str, object]] = []
    failed = []
    torch.set_grad_enabled(False)
    for variant in resolve_variants(args.variants):
        base = load_model(variant, weights)
        reference_model = to_device(copy.deepcopy(base), "cuda", torch.float32)
        model = to_device(base, "cuda", torch.float16)
        for batch in (int(b) for b in args.batches.split(",")):
            images = synthetic_images(batch, variant.input_size, seed=batch).cuda()
            reference = reference_model(images).float()
            half_images = images.half()
            print(f"{variant.display} fp16 batch {batch}", flush=True)
            functions = forward_functions(model, half_images, forms, compiled=not args.no_compile)
            agreements = {}
            for name, fn in functions.items():
                measured = agreement(fn().float(), reference)
                agreements[name] = measured
                if not measured.meets(floor):
                    failed.append(f"{variant.display} bs{batch} {name}: {measured}")
            timings = time_cuda_graphs_interleaved(functions, warmup=args.warmup, rounds=args.rounds)
            baseline = timings[BASELINE].median_ms if BASELINE in timings else None
            for name, timing in timings.items():
                row = {"variant": variant.name, "batch": batch, "precision": "fp16", "form": name,
                       "median_ms": timing.median_ms, "p10_ms": timing.percentile_ms(10),
                       "p90_ms": timing.percentile_ms(90), "rounds": args.rounds,
                       "speedup_vs_graph_explicit": baseline / timing.median_ms if baseline else None,
                       "meets_floor": agreements[name].meets(floor),
                       "top1_agreement": agreements[name].top1, "cosine_mean": agreements[name].cosine,
                       "cosine_min": agreements[name].cosine_min}
                results.append(row)
                speedup = f"{row['speedup_vs_graph_explicit']:.2f}x" if baseline else "-"
                print(f"  {name:28s} {timing.median_ms:8.3f} ms  (p10-p90 {row['p10_ms']:.3f}-{row['p90_ms']:.3f})"
                      f"  {speedup:>6s}  top-1 {agreements[name].top1:.3f} cosine {agreements[name].cosine:.6f}",
                      flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                         "weights": weights.describe(), "floor": floor.__dict__,
                                         "results": results}, indent=1))
    if failed:
        print("below the fp16 agreement floor:\n  " + "\n  ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
