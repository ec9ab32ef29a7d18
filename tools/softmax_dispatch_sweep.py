"""Where odd rows should switch from the register kernel to the staged kernel: a warp per row, a
group sized to the row (one row each), the staged kernel, the dispatcher's choice ("auto") and
torch.softmax, timed at mid-size LeViT-like tensors of 49-element rows.

Run from the repository root on a CUDA machine after building the op:

    python3 tools/softmax_dispatch_sweep.py

Timing as in tools/softmax_gpu_check.py (20 calls per CUDA graph, median of 50 interleaved rounds, per call).
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import softmax_gpu_check as check

SHAPES = ((8, 5, 49, 49), (8, 8, 49, 49), (8, 9, 49, 49), (16, 5, 49, 49), (16, 6, 49, 49), (16, 8, 49, 49),
          (16, 9, 49, 49), (16, 12, 49, 49), (8, 16, 16, 49), (16, 12, 16, 49), (16, 16, 16, 49))
CONFIGS = {"warp/row": check.LaunchConfig("registers", 32, 1, 8), "group/row": check.LaunchConfig("registers", 0, 1, 4),
           "staged": check.LaunchConfig("staged"),
           "auto": check.LaunchConfig("auto")}


def main() -> None:
    check.plugins.load_torch_op()
    properties = torch.cuda.get_device_properties(0)
    resident_warps = properties.multi_processor_count * properties.max_threads_per_multi_processor // 32
    print("resident warps", resident_warps)
    for shape in SHAPES:
        for dtype in (torch.float16, torch.float32):
            x = torch.randn(shape, device="cuda").to(dtype)
            rows = x.numel() // shape[-1]
            fns = {"torch": partial(torch.softmax, x, -1),
                   **{name: config.bind(x, torch.empty_like(x)) for name, config in CONFIGS.items()}}
            times = {name: t["median_us"] for name, t in check.times_per_call_us(fns, 50, 20).items()}
            print(f"{list(shape)!s:>18} {str(dtype)[6:]:>8} rows {rows:6d} ({rows / resident_warps:.2f} of resident) "
                  + " ".join(f"{k} {v:.2f}" for k, v in times.items()), flush=True)


if __name__ == "__main__":
    main()
