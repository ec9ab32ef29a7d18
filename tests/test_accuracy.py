"""The evaluator on a fake backend with known logits, the accuracy JSON, the threshold tables, the suites' plumbing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from levit_trt.accuracy import AccuracyResult, EvaluationInputError, NonFiniteLogitsError, append_results, evaluate
from levit_trt.backends.base import PRECISIONS, Backend
from levit_trt.data import UNREADABLE_LABEL, DecodedImages
from levit_trt.thresholds import AGREEMENT_FLOORS, TOP1_ALLOWANCE, agreement, top1_threshold

ROOT = Path(__file__).parents[1]
CLASSES = 10


class ReplayBackend(Backend):
    """Returns preset logits row by row, in the order images arrive, and records what it was given."""

    name = "replay"
    supported: ClassVar[dict[str, tuple[str, ...]]] = {"cpu": ("fp32",)}

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__("fp32", "cpu")
        self.logits = logits
        self.given: list[torch.Tensor] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        start = sum(len(batch) for batch in self.given)
        self.given.append(images)
        return self.logits[start:start + len(images)]


def ranked(order: list[int]) -> torch.Tensor:
    """Logits whose classes rank in `order` (first is the top-1), the rest below."""
    row = torch.full((CLASSES,), -10.0)
    for rank, cls in enumerate(order):
        row[cls] = 10.0 - rank
    return row


def images_of(labels: list[int]) -> DecodedImages:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (len(labels), 3, 8, 8), dtype=torch.uint8, generator=generator)
    return DecodedImages(images, torch.tensor(labels), [(Path(f"val/c{lab}/img{i}.JPEG"), lab) for i, lab in enumerate(labels)])


def run(backend: Backend, data: DecodedImages, batch_size: int = 2) -> AccuracyResult:
    return evaluate(backend, data.batches(batch_size), variant="128S", weights="random:0", samples=data.samples,
                    progress=False)


def test_exact_top1_and_top5_on_known_logits() -> None:
    labels = [3, 3, 5, 1, 0, 7, 2]
    logits = torch.stack([
        ranked([3, 0, 1, 2, 4]),  # top-1 hit
        ranked([0, 1, 2, 4, 3]),  # label 5th: top-5 hit only
        ranked([0, 1, 2, 4, 6, 5]),  # label 6th: miss
        ranked([1]),  # top-1 hit
        ranked([9, 0]),  # top-5 hit
        ranked([2, 3, 4, 5, 6]),  # miss
        ranked([2]),  # top-1 hit
    ])
    backend = ReplayBackend(logits)
    result = run(backend, images_of(labels), batch_size=3)
    assert (result.images, result.unreadable) == (7, 0)
    assert result.top1 == pytest.approx(100 * 3 / 7) and result.top5 == pytest.approx(100 * 5 / 7)
    assert (result.variant, result.backend, result.precision, result.device) == ("levit_128s", "replay", "fp32", "cpu")
    assert result.backend_info == backend.describe() and "torch" in result.versions
    assert result.images_per_s > 0 and 0 <= result.loader_wait_s <= result.seconds


def test_backend_gets_normalised_float_images() -> None:
    data = images_of([1, 2])
    backend = ReplayBackend(torch.stack([ranked([1]), ranked([2])]))
    run(backend, data)
    from levit_trt.variants import resolve_variant

    mean, std = torch.tensor(resolve_variant("128S").mean), torch.tensor(resolve_variant("128S").std)
    expected = (data.images.double() / 255 - mean.view(-1, 1, 1).double()) / std.view(-1, 1, 1).double()
    torch.testing.assert_close(backend.given[0].double(), expected, atol=1e-6, rtol=0)  # float32 rounding


def test_unreadable_images_are_excluded_counted_and_named() -> None:
    data = images_of([4, UNREADABLE_LABEL, 6, UNREADABLE_LABEL])
    backend = ReplayBackend(torch.stack([ranked([4]), ranked([0, 6])]))
    result = run(backend, data)
    assert (result.images, result.top1, result.top5, result.unreadable) == (2, 50.0, 100.0, 2)
    assert result.unreadable_examples == ("val/c-1/img1.JPEG", "val/c-1/img3.JPEG")
    assert [len(batch) for batch in backend.given] == [1, 1]  # the placeholders never reach the model


def test_all_unreadable_is_an_error() -> None:
    with pytest.raises(EvaluationInputError, match=r"no readable images to evaluate \(2 unreadable\)"):
        run(ReplayBackend(torch.zeros(0, CLASSES)), images_of([UNREADABLE_LABEL, UNREADABLE_LABEL]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_fail_naming_backend_and_images(bad: float) -> None:
    logits = torch.stack([ranked([1]), ranked([2]), ranked([3]), ranked([4])])
    logits[3, 5] = bad
    kind = "1 with NaN, 0 with inf" if math.isnan(bad) else "0 with NaN, 1 with inf"
    with pytest.raises(NonFiniteLogitsError, match=rf"replay fp32 on levit_128s produced non-finite logits for 1 of 2 "
                                                   rf"images in a batch \({kind}; e.g. val/c4/img3.JPEG\)"):
        run(ReplayBackend(logits), images_of([1, 2, 3, 4]))


def test_bad_batches_and_logits_are_clear_errors() -> None:
    data = images_of([1, 2])
    with pytest.raises(EvaluationInputError, match=r"returned logits of shape \(2, 4\) for 2 images; expected \[2, classes\] "
                                                   r"with at least 5 classes"):
        run(ReplayBackend(torch.zeros(2, 4)), data)
    with pytest.raises(EvaluationInputError, match="label 12 is outside the model's 10 classes"):
        run(ReplayBackend(torch.zeros(2, CLASSES)), images_of([1, 12]))
    floats = [(data.images.float(), data.labels, torch.arange(2))]
    with pytest.raises(EvaluationInputError, match=r"takes uint8 \[N,3,H,W\] crops .* got torch.float32"):
        evaluate(ReplayBackend(torch.zeros(2, CLASSES)), floats, variant="128S", weights="w", samples=data.samples,
                 progress=False)


def test_accuracy_json_appends_in_the_report_format(tmp_path: Path) -> None:
    result = run(ReplayBackend(torch.stack([ranked([1]), ranked([0])])), images_of([1, 2]))
    path = tmp_path / "acc.json"
    append_results(path, [result], {"gpu": "none"})
    append_results(path, [result], {"gpu": "ignored once the file exists"})
    document = json.loads(path.read_text())
    assert document["machine"] == {"gpu": "none"} and len(document["results"]) == 2
    entry = document["results"][0]
    assert {k: entry[k] for k in ("variant", "backend", "precision", "top1", "top5", "images")} == {
        "variant": "levit_128s", "backend": "replay", "precision": "fp32", "top1": 50.0, "top5": 50.0, "images": 2}
    assert {"images_per_s", "weights", "versions", "backend_info", "unreadable"} <= set(entry)


@pytest.mark.parametrize(("content", "message"), [("not json", "not JSON"), ('{"benchmarks": []}', "no 'results' list")])
def test_appending_to_a_foreign_file_is_an_error_and_leaves_it(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "run.json"
    path.write_text(content)
    result = run(ReplayBackend(torch.stack([ranked([1])])), images_of([1]))
    with pytest.raises(ValueError, match=rf"run.json is not a levit_trt accuracy file \({message}"):
        append_results(path, [result], {})
    assert path.read_text() == content


def test_every_precision_has_an_allowance_and_a_floor() -> None:
    assert set(TOP1_ALLOWANCE) == set(AGREEMENT_FLOORS) == set(PRECISIONS)
    assert (TOP1_ALLOWANCE["fp32"], TOP1_ALLOWANCE["fp16"], TOP1_ALLOWANCE["int8"]) == (0.3, 0.3, 1.0)  # issue 7


def test_full_set_threshold_is_reference_minus_allowance() -> None:
    assert top1_threshold(76.6, "fp32", 50_000, full_set=True).required == pytest.approx(76.3)
    assert top1_threshold(82.6, "int8", 50_000, full_set=True).required == pytest.approx(81.6)
    with pytest.raises(KeyError, match="no top-1 allowance for precision 'fp8'"):
        top1_threshold(76.6, "fp8", 100, full_set=False)


def test_subset_threshold_widens_by_three_binomial_standard_errors() -> None:
    threshold = top1_threshold(76.6, "fp16", 1000, full_set=False)
    # sqrt(0.766 * 0.234 / 1000) = 0.013388 -> 1.3388 points; 76.6 - 0.3 - 3 * 1.3388 = 72.2835
    assert threshold.sampling_error == pytest.approx(1.3388, abs=1e-4)
    assert threshold.required == pytest.approx(72.2835, abs=1e-3)
    assert "3 x sampling error 1.34" in threshold.explain()


def test_subset_threshold_rarely_fails_a_correct_engine_and_catches_a_bad_one() -> None:
    """Simulated 2000-image subsets (one standard error: 0.89 points) of an engine exactly at the
    allowance, and of one 5 points worse than the reference."""
    rng = np.random.default_rng(0)
    required = top1_threshold(80.0, "fp32", 2000, full_set=False).required
    at_allowance = 100 * rng.binomial(2000, 0.797, size=20_000) / 2000
    five_points_worse = 100 * rng.binomial(2000, 0.75, size=20_000) / 2000
    assert (at_allowance < required).mean() < 0.005  # three sigmas: ~0.1% expected
    assert (five_points_worse < required).mean() > 0.95


def test_agreement_on_hand_computed_logits() -> None:
    reference = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    measured = agreement(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), reference)
    assert (measured.top1, measured.cosine, measured.cosine_min, measured.images) == (0.5, 0.5, 0.0, 2)
    with pytest.raises(ValueError, match=r"logits of shape \(2, 3\) cannot be compared with the reference's \(2, 2\)"):
        agreement(torch.zeros(2, 3), reference)


def test_agreement_floors_reject_a_backend_that_mixes_up_images() -> None:
    logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(0)) + torch.linspace(0, 1, 1000)
    shuffled = agreement(logits.roll(1, dims=0), logits)
    assert all(not shuffled.meets(floor) for floor in AGREEMENT_FLOORS.values())
    assert all(agreement(logits, logits).meets(floor) for floor in AGREEMENT_FLOORS.values())


def run_suite(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "accuracy/test_imagenet.py", "-q", "-rs",
                           "-p", "no:cacheprovider", "--variants", "128S", "--backends", "torch", *args],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_imagenet_suite_skips_with_random_weights(tmp_path: Path) -> None:
    output = run_suite("--imagenet-root", str(tmp_path), "--weights", "random").stdout
    assert "1 skipped" in output and "random weights have no published accuracy" in output


def test_imagenet_suite_fails_a_poor_model_and_records_it(tmp_path: Path) -> None:
    """A checkpoint of random weights scores ~0% on a synthetic tree: the suite must fail it, saying why."""
    from levit_trt.data import write_synthetic_imagenet
    from levit_trt.variants import resolve_variant
    from levit_trt.weights import create_model, parse_weights

    root = write_synthetic_imagenet(tmp_path / "imagenet", num_classes=3, images_per_class=3)
    checkpoint = tmp_path / "random.pth"
    torch.save(create_model(resolve_variant("128S"), parse_weights("random:0")).state_dict(), checkpoint)
    results = tmp_path / "acc.json"
    completed = run_suite("--imagenet-root", str(root), "--imagenet-limit", "6", "--imagenet-classes", "3",
                          "--weights", str(checkpoint), "--accuracy-json", str(results),
                          "--cache-dir", str(tmp_path / "cache"))
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "1 failed" in completed.stdout
    assert "on 6 images is below reference 76.52 - allowance 0.30 - 3 x sampling error 17.30" in completed.stdout
    assert "timm's measured top-1 of levit_128s.fb_dist_in1k; the paper reports 76.6" in completed.stdout
    (entry,) = json.loads(results.read_text())["results"]
    assert (entry["variant"], entry["backend"], entry["images"], entry["weights"]) == (
        "levit_128s", "torch", 6, str(checkpoint))
    assert entry["extra"]["limit"] == 6


def test_imagenet_suite_refuses_a_tree_with_a_missing_class(tmp_path: Path) -> None:
    """Without --imagenet-classes, a limited run on a tree that lacks class folders is a layout error."""
    from levit_trt.data import write_synthetic_imagenet

    root = write_synthetic_imagenet(tmp_path / "imagenet", num_classes=3, images_per_class=2)
    completed = run_suite("--imagenet-root", str(root), "--imagenet-limit", "6", "--weights", "pretrained")
    assert completed.returncode != 0
    assert "has 3 class folders, expected 1000" in completed.stdout + completed.stderr
