"""evaluate(backend, batches) -> top-1/top-5, and the accuracy JSON that reports read."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from levit_trt.backends.base import Backend
from levit_trt.data import UNREADABLE_LABEL, Batch, normalize
from levit_trt.variants import Variant, resolve_variant


class NonFiniteLogitsError(RuntimeError):
    """A backend produced NaN or infinite logits."""


class EvaluationInputError(ValueError):
    """Batches or logits that cannot be scored: wrong dtype or shape, labels outside the classes."""


@dataclass(frozen=True)
class AccuracyResult:
    """One evaluation; `to_json` is one entry of the accuracy file's `results` list."""

    variant: str
    backend: str
    precision: str
    device: str
    weights: str
    images: int
    top1: float  # percent
    top5: float
    images_per_s: float  # over the whole pass, loading included
    seconds: float
    loader_wait_s: float  # of `seconds`, spent waiting for the next batch: near 0 when model-bound
    unreadable: int = 0
    unreadable_examples: tuple[str, ...] = ()
    backend_info: dict[str, Any] = field(default_factory=dict)  # backend.describe()
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Pending:
    """A scored batch whose counts are still on the device (read one batch later, so the GPU never idles)."""

    stats: torch.Tensor  # [top-1 hits, top-5 hits, rows with NaN, rows with inf]
    non_finite: torch.Tensor  # [N] bool
    indices: torch.Tensor  # [N] into samples


def evaluate(
    backend: Backend,
    batches: Iterable[Batch],
    *,
    variant: Variant | str,
    weights: str,
    samples: list[tuple[Path, int]],
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> AccuracyResult:
    """Top-1/top-5 of `backend` over uint8 `(images, labels, indices)` batches (`imagenet_loader`,
    `DecodedImages.batches`); `samples` are the `(path, label)` the indices point into.

    Images are normalised on the backend's device. Undecodable images (label -1) are excluded,
    counted and named; NaN/inf logits stop the run naming the images that produced them.
    """
    from tqdm import tqdm

    from levit_trt.environment import module_versions

    variant = resolve_variant(variant)
    top1 = top5 = seen = 0
    unreadable: list[int] = []
    pending: _Pending | None = None
    waiting = 0.0
    started = time.perf_counter()
    batch_iterator = iter(batches)
    with tqdm(total=len(samples), unit="img", desc=f"{variant.name} {backend.name} {backend.precision}",
              disable=not progress) as bar:
        while True:
            asked = time.perf_counter()
            batch = next(batch_iterator, None)
            waiting += time.perf_counter() - asked
            if batch is None:
                break
            images, labels, indices = batch
            readable = labels != UNREADABLE_LABEL
            if not bool(readable.all()):
                unreadable.extend(indices[~readable].tolist())
                images, labels, indices = images[readable], labels[readable], indices[readable]
            if len(labels):
                scored = _score(backend, variant, images, labels, indices)
                if pending is not None:
                    top1, top5 = _resolve(pending, backend, variant, samples, top1, top5)
                pending = scored
                seen += len(labels)
            bar.update(len(readable))
        if pending is not None:
            top1, top5 = _resolve(pending, backend, variant, samples, top1, top5)
    elapsed = time.perf_counter() - started
    if seen == 0:
        raise EvaluationInputError(f"no readable images to evaluate ({len(unreadable)} unreadable)")
    return AccuracyResult(
        variant=variant.name, backend=backend.name, precision=backend.precision, device=str(backend.device),
        weights=weights, images=seen, top1=100.0 * top1 / seen, top5=100.0 * top5 / seen,
        images_per_s=seen / elapsed, seconds=elapsed, loader_wait_s=waiting,
        unreadable=len(unreadable), unreadable_examples=tuple(str(samples[i][0]) for i in unreadable[:10]),
        backend_info=backend.describe(), versions=module_versions(), extra=dict(extra or {}),
    )


def _score(backend: Backend, variant: Variant, images: torch.Tensor, labels: torch.Tensor,
           indices: torch.Tensor) -> _Pending:
    """Run one batch and count its hits on the device, without waiting for the result."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise EvaluationInputError(
            f"evaluate() takes uint8 [N,3,H,W] crops (from imagenet_loader or DecodedImages), "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    inputs = normalize(images.to(backend.device, non_blocking=True), variant)
    logits = backend(backend.prepare_input(inputs))
    if logits.ndim != 2 or logits.shape[0] != len(labels) or logits.shape[1] < 5:
        raise EvaluationInputError(
            f"{backend.name} {backend.precision} returned logits of shape {tuple(logits.shape)} for "
            f"{len(labels)} images; expected [{len(labels)}, classes] with at least 5 classes"
        )
    if int(labels.max()) >= logits.shape[1]:
        raise EvaluationInputError(
            f"label {int(labels.max())} is outside the model's {logits.shape[1]} classes: the dataset has "
            f"more class folders than the model has outputs"
        )
    logits = logits.float()
    target = labels.to(logits.device, non_blocking=True).unsqueeze(1)
    top = logits.topk(5, dim=1).indices
    has_nan = logits.isnan().any(dim=1)
    has_inf = logits.isinf().any(dim=1)
    stats = torch.stack([
        (top[:, :1] == target).sum(), (top == target).any(dim=1).sum(), has_nan.sum(), has_inf.sum(),
    ])
    return _Pending(stats, has_nan | has_inf, indices)


def _resolve(pending: _Pending, backend: Backend, variant: Variant, samples: list[tuple[Path, int]],
             top1: int, top5: int) -> tuple[int, int]:
    hits1, hits5, nan_rows, inf_rows = pending.stats.tolist()
    if nan_rows or inf_rows:
        bad = pending.indices[pending.non_finite.cpu()].tolist()
        raise NonFiniteLogitsError(
            f"{backend.name} {backend.precision} on {variant.name} produced non-finite logits for "
            f"{len(bad)} of {len(pending.indices)} images in a batch ({nan_rows} with NaN, {inf_rows} with inf; "
            f"e.g. {', '.join(str(samples[i][0]) for i in bad[:3])}). The inputs were finite (uint8 crops), "
            f"so the backend overflowed or is broken: compare it with --backends torch --precisions fp32"
        )
    return top1 + hits1, top5 + hits5


def append_results(path: Path, results: Iterable[AccuracyResult], machine: dict[str, Any]) -> None:
    """Append results to an accuracy JSON file (`{"machine": ..., "results": [...]}`).

    Locked, so parallel test workers appending to one file lose nothing; written atomically.
    """
    from levit_trt.cache import atomic_output, file_lock
    from levit_trt.runs import load_accuracy_document

    path = Path(path)
    with file_lock(path.with_name(f".{path.name}.lock")):
        document: dict[str, Any] = load_accuracy_document(path) if path.exists() else {"machine": machine, "results": []}
        document["results"].extend(r.to_json() for r in results)
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(document, indent=2))
