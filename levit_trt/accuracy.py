"""evaluate(backend, loader) -> top-1/top-5, and the accuracy JSON that reports read."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from levit_trt.backends.base import Backend
from levit_trt.data import UNREADABLE_LABEL


class NonFiniteLogitsError(RuntimeError):
    """A backend produced NaN or infinite logits."""


@dataclass(frozen=True)
class AccuracyResult:
    variant: str
    backend: str
    precision: str
    weights: str
    images: int
    top1: float  # percent
    top5: float
    images_per_s: float
    unreadable: int = 0
    unreadable_examples: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Counts:
    seen: int = 0
    top1: int = 0
    top5: int = 0
    unreadable: list[int] = field(default_factory=list)


def evaluate(
    backend: Backend,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    variant: str,
    weights: str,
    samples: list[tuple[Path, int]] | None = None,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> AccuracyResult:
    """Top-1/top-5 of `backend` over `(images, labels, indices)` batches.

    Images that could not be decoded (label -1) are excluded and counted; `samples` (the
    dataset's `(path, label)` list) lets the result name them.
    """
    from tqdm import tqdm

    counts = _Counts()
    started = time.perf_counter()
    bar = tqdm(batches, desc=f"{variant} {backend.name} {backend.precision}", unit="batch", disable=not progress)
    for images, labels, indices in bar:
        readable = labels != UNREADABLE_LABEL
        counts.unreadable.extend(indices[~readable].tolist())
        if not bool(readable.any()):
            continue
        logits = backend(backend.prepare_input(images[readable])).float().cpu()
        if not torch.isfinite(logits).all():
            raise NonFiniteLogitsError(
                f"{backend.name} {backend.precision} on {variant} produced non-finite logits "
                f"(NaN/inf in {int((~torch.isfinite(logits)).any(dim=1).sum())} of {len(logits)} images)"
            )
        top5 = logits.topk(5, dim=1).indices
        target = labels[readable].unsqueeze(1)
        counts.top1 += int((top5[:, :1] == target).sum())
        counts.top5 += int((top5 == target).any(dim=1).sum())
        counts.seen += len(target)
        bar.set_postfix(img_s=f"{counts.seen / (time.perf_counter() - started):.0f}")
    if counts.seen == 0:
        raise RuntimeError(f"no readable images to evaluate ({len(counts.unreadable)} unreadable)")
    elapsed = time.perf_counter() - started
    return AccuracyResult(
        variant=variant, backend=backend.name, precision=backend.precision, weights=weights,
        images=counts.seen, top1=100.0 * counts.top1 / counts.seen, top5=100.0 * counts.top5 / counts.seen,
        images_per_s=counts.seen / elapsed, unreadable=len(counts.unreadable),
        unreadable_examples=tuple(str(samples[i][0]) for i in counts.unreadable[:10]) if samples else (),
        extra=dict(extra or {}),
    )


def append_results(path: Path, results: Iterable[AccuracyResult], machine: dict[str, Any]) -> None:
    """Append results to an accuracy JSON file (`{"machine": ..., "results": [...]}`)."""
    path = Path(path)
    document: dict[str, Any] = {"machine": machine, "results": []}
    if path.exists():
        document = json.loads(path.read_text())
        if not isinstance(document, dict) or "results" not in document:
            raise ValueError(f"{path} is not a levit_trt accuracy file (no 'results' list)")
    document["results"].extend(r.to_json() for r in results)
    from levit_trt.cache import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2))
