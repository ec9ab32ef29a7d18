"""Runs the fused `levit_trt::attention` op at one LeViT attention shape, for Nsight Compute.

    ncu --clock-control none -k regex:attention --launch-skip 2 --launch-count 1 \
        python3 tools/attention_launch.py --variant 384 --layer downsample1 --batch 64

Launches the op (the dispatcher's choice, fp16 unless --dtype fp32) --calls times on the model's
strided q, k, v views, so that ncu can skip the first launches (one-time shared-memory set-up) and
profile a steady one. tools/gpu_session.sh's `ncu` stage runs it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from levit_trt import plugins
from levit_trt.attention_reference import model_inputs
from levit_trt.attention_shapes import variant_attention_shapes
from levit_trt.backends.base import DTYPES
from levit_trt.variants import UnknownVariantError, resolve_variant


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="384", help="LeViT variant: 128s, 128, 192, 256 or 384")
    parser.add_argument("--layer", default="downsample1",
                        help="stage1, downsample1, stage2, downsample2 or stage3")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16")  # the kernels' two
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    if args.batch < 1 or args.calls < 1:
        parser.error(f"--batch and --calls must be at least 1; got {args.batch} and {args.calls} "
                     "(under ncu --launch-skip 2, --calls 3 or more)")
    try:
        variant = resolve_variant(args.variant)
    except UnknownVariantError as error:
        parser.error(str(error))
    shapes = variant_attention_shapes(variant)
    matches = [s for s in shapes if s.layer == args.layer]
    if not matches:
        parser.error(f"{variant.display} has no attention {args.layer!r}; its layers: {', '.join(s.layer for s in shapes)}")
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    plugins.load_attention_op()
    shape = matches[0]
    q, k, v, bias = model_inputs(shape, args.batch, DTYPES[args.dtype])
    for _ in range(args.calls):
        torch.ops.levit_trt.attention(q, k, v, bias, shape.scale)
    torch.cuda.synchronize()
    print(f"{variant.display} {args.layer} batch {args.batch} {args.dtype}: [{shape.heads} heads, {shape.queries} queries, "
          f"{shape.keys} keys, q/k {shape.key_dim}, v {shape.value_dim}], {args.calls} launches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
