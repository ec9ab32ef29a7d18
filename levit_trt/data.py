"""The one evaluation transform, ImageNet-layout datasets and loaders, and synthetic test trees."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset

from levit_trt.variants import Variant

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
IMAGENET_CLASSES = 1000
UNREADABLE_LABEL = -1


class ImageNetLayoutError(ValueError):
    """A dataset folder that is not `ROOT/<split>/<wnid>/<image>`; the message says what is wrong."""


def eval_transform(variant: Variant) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the shorter side, centre-crop, normalise: timm's eval pipeline for `variant`.

    Written out from the variant table rather than taken from timm at run time, so calibration,
    accuracy and benchmarks share one definition; `tests/test_data.py` compares it with timm's.
    """
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    return transforms.Compose([
        transforms.Resize(variant.resize_size, interpolation=InterpolationMode(variant.interpolation)),
        transforms.CenterCrop(variant.input_size),
        transforms.ToTensor(),
        transforms.Normalize(variant.mean, variant.std),
    ])


class ImageNetFolder(Dataset):
    """`ROOT/<split>/<wnid>/<image>` with classes in sorted wnid order.

    Items are `(image, label, index)`. An image that cannot be decoded yields a zero tensor with
    label -1, so the evaluator can count and name it instead of the loader dropping it silently.
    """

    def __init__(
        self,
        root: Path | str,
        transform: Callable[[Image.Image], torch.Tensor],
        split: str = "val",
        expected_classes: int | None = None,
        image_size: int = 224,
    ) -> None:
        self.root = Path(root).expanduser()
        self.split_dir = self.root / split
        self.transform = transform
        self.image_size = image_size
        self.classes, self.samples = _scan(self.split_dir, self.root, split)
        if expected_classes is not None and len(self.classes) != expected_classes:
            raise ImageNetLayoutError(
                f"{self.split_dir} has {len(self.classes)} class folders, expected {expected_classes} "
                f"for the full ImageNet {split} set (use a limit for a subset run)"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                return self.transform(image.convert("RGB")), label, index
        except (OSError, UnidentifiedImageError, ValueError):
            return torch.zeros(3, self.image_size, self.image_size), UNREADABLE_LABEL, index

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]


def _scan(split_dir: Path, root: Path, split: str) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise ImageNetLayoutError(f"ImageNet root {root} does not exist or is not a directory")
    if not split_dir.is_dir():
        raise ImageNetLayoutError(
            f"no '{split}/' folder in {root}: expected {root}/{split}/<wnid>/<image>.JPEG "
            f"(found: {', '.join(sorted(p.name for p in root.iterdir())[:5]) or 'nothing'})"
        )
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise ImageNetLayoutError(
            f"{split_dir} has no class folders: expected one folder per wnid (e.g. n01440764/) "
            f"holding that class's images"
        )
    samples: list[tuple[Path, int]] = []
    for label, wnid in enumerate(classes):
        images = sorted(p for p in (split_dir / wnid).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ImageNetLayoutError(f"class folder {split_dir / wnid} has no images ({', '.join(IMAGE_SUFFIXES)})")
        samples.extend((path, label) for path in images)
    return classes, samples


def balanced_subset_indices(labels: Sequence[int], limit: int, seed: int = 0) -> list[int]:
    """`limit` indices spread evenly over classes (round-robin over shuffled per-class lists)."""
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    queues = [rng.sample(indices, len(indices)) for _, indices in sorted(by_class.items())]
    chosen: list[int] = []
    while len(chosen) < min(limit, len(labels)):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop())
    return sorted(chosen)


@dataclass(frozen=True)
class LoaderOptions:
    batch_size: int = 64
    workers: int = 4
    limit: int | None = None  # seeded, class-balanced subset of this many images
    seed: int = 0
    split: str = "val"


def imagenet_loader(root: Path | str, variant: Variant, options: LoaderOptions = LoaderOptions()) -> DataLoader:
    """Batches of `(images, labels, indices)` from an ImageNet-layout folder, decoded in workers.

    Without a limit on the val split the folder must hold all 1000 classes.
    """
    expected = IMAGENET_CLASSES if options.limit is None and options.split == "val" else None
    dataset = ImageNetFolder(root, eval_transform(variant), options.split, expected, variant.input_size)
    data: Dataset = dataset
    if options.limit is not None:
        data = Subset(dataset, balanced_subset_indices(dataset.labels, options.limit, options.seed))
    return DataLoader(
        data,
        batch_size=options.batch_size,
        shuffle=False,
        num_workers=options.workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def write_synthetic_imagenet(
    root: Path | str,
    num_classes: int = 4,
    images_per_class: int = 3,
    split: str = "val",
    seed: int = 0,
    size: tuple[int, int] = (300, 260),
) -> Path:
    """Write a small ImageNet-layout tree of generated JPEGs (class-dependent colours and stripes)."""
    import numpy as np

    root = Path(root)
    rng = np.random.default_rng(seed)
    for label in range(num_classes):
        folder = root / split / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.uniform(0, 255, size=3)
        for index in range(images_per_class):
            height, width = size
            stripes = np.sin(np.arange(width) / (3.0 + label))[None, :, None] * 60
            noise = rng.normal(0, 25, size=(height, width, 3))
            pixels = np.clip(base + stripes + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{index:04d}.JPEG", quality=90)
    return root
