"""Every backend and precision of the matrix against PyTorch fp32, without ImageNet.

The reference is timm's own LeViT (batch norms unfolded, timm's attention) in fp32 on the CPU,
on the same non-degenerate weights (`--weights`, default random) and the same images, so even
the PyTorch fp32 case checks something: that the prepared model computes timm's function.
Floors: levit_trt.thresholds.AGREEMENT_FLOORS. Runs on a CPU (PyTorch and ONNX Runtime).
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from levit_trt.thresholds import AGREEMENT_FLOORS, agreement

CHUNK = 16  # the default TensorRT profile's optimal batch


def test_agrees_with_pytorch_fp32(every_precision_case, backend_for, agreement_images, reference_logits,
                                  record_property) -> None:
    case = every_precision_case
    backend = backend_for(case)
    images = agreement_images(case.variant)
    logits = torch.cat([backend(backend.prepare_input(chunk)).float().cpu() for chunk in images.split(CHUNK)])
    non_finite = int((~torch.isfinite(logits)).any(dim=1).sum())
    assert non_finite == 0, f"{case.model_id} produced NaN/inf logits for {non_finite} of {len(images)} images"
    measured = agreement(logits, reference_logits(case.variant))
    floor = AGREEMENT_FLOORS[case.precision]
    record_property("agreement", asdict(measured))
    assert measured.meets(floor), (
        f"{case.model_id} vs PyTorch fp32 on {measured.images} images: top-1 agreement {measured.top1:.3f} "
        f"(floor {floor.top1}), mean logit cosine {measured.cosine:.6f} (floor {floor.cosine}), "
        f"worst image cosine {measured.cosine_min:.6f}"
    )
