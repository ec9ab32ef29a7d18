"""Measure each precision's agreement with PyTorch fp32 on the stand-in weights: the numbers behind
levit_trt.thresholds.AGREEMENT_FLOORS.

    python3 tools/agreement_floors_table.py [--variants 128S] [--seeds 0,1,2] [--cache-dir DIR]

What the agreement suite (accuracy/test_agreement.py) measures on a CPU, for every backend and
precision that runs here: ONNX Runtime fp32, PyTorch fp16 and bf16 (the prepared model cast on the
CPU) and the onnxruntime INT8 backend (default policy, its default synthetic calibration), against
timm's own model in fp32, on the suite's images. Prints top-1 agreement, mean and worst logit cosine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accuracy.conftest import AGREEMENT_IMAGES, AGREEMENT_SEED
from levit_trt.backends.base import DTYPES, ModelSource
from levit_trt.backends.registry import create_backend
from levit_trt.stability import cast_logits
from levit_trt.thresholds import agreement
from levit_trt.variants import resolve_variant
from levit_trt.weights import create_model, parse_weights, synthetic_images

CASES = (("onnxruntime", "fp32"), ("torch-cast", "fp16"), ("torch-cast", "bf16"), ("onnxruntime", "int8"))


def backend_logits(source: ModelSource, name: str, precision: str, images: torch.Tensor) -> torch.Tensor:
    if name == "torch-cast":  # the prepared model cast on the CPU (the torch backend runs fp16/bf16 only on CUDA)
        return cast_logits(source.torch_model(), images, DTYPES[precision])
    backend = create_backend(name, source, precision, "cpu")
    return torch.cat([backend(backend.prepare_input(chunk)).float().cpu() for chunk in images.split(16)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="128S")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/levit_trt-floors-cache"))
    args = parser.parse_args()
    print(f"{'variant':11s} seed {'backend':12s} precision  top-1  cos-mean   cos-min")
    for name in args.variants.split(","):
        variant = resolve_variant(name)
        images = synthetic_images(AGREEMENT_IMAGES, variant.input_size, seed=AGREEMENT_SEED)
        for seed in (int(s) for s in args.seeds.split(",")):
            weights = parse_weights(f"random:{seed}")
            with torch.inference_mode():
                reference = create_model(variant, weights)(images)
            source = ModelSource(variant, weights, args.cache_dir)
            for backend_name, precision in CASES:
                measured = agreement(backend_logits(source, backend_name, precision, images), reference)
                print(f"{variant.display:11s} {seed:4d} {backend_name:12s} {precision:9s} {measured.top1:6.3f} "
                      f"{measured.cosine:9.6f} {measured.cosine_min:9.6f}", flush=True)


if __name__ == "__main__":
    main()
