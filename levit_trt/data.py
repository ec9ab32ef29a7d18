"""The one evaluation transform, ImageNet-layout datasets and loaders, and synthetic test trees.

Preprocessing is split where it is cheapest to move: workers decode, resize and crop to uint8
(a quarter of the bytes of float32 through worker pipes and host-to-device copies), and
`normalize` turns a uint8 batch into the model's input on whatever device runs the model.
`eval_transform` is the two composed, for callers that want one image at a time.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from levit_trt.variants import Variant

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
IMAGENET_CLASSES = 1000
IMAGENET_VAL_IMAGES = 50_000  # 50 per class in ILSVRC2012 val
UNREADABLE_LABEL = -1

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # uint8 images [N,3,H,W], labels [N], indices [N]


class ImageNetLayoutError(ValueError):
    """A dataset folder that is not `ROOT/<split>/<wnid>/<image>`; the message says what is wrong."""


def _crop_steps(variant: Variant) -> list[Callable]:
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    return [
        transforms.Resize(variant.resize_size, interpolation=InterpolationMode(variant.interpolation)),
        transforms.CenterCrop(variant.input_size),
        transforms.PILToTensor(),
    ]


def crop_transform(variant: Variant) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the shorter side and centre-crop: a uint8 [3, H, W] tensor, not yet normalised."""
    from torchvision import transforms

    return transforms.Compose(_crop_steps(variant))


def normalize(images: torch.Tensor, variant: Variant) -> torch.Tensor:
    """uint8 images ([3,H,W] or [N,3,H,W]) -> float32 normalised with the variant's mean/std, on their device.

    The same operations in the same order as torchvision's ToTensor + Normalize, so the result is
    bit-identical to timm's eval transform.
    """
    mean = torch.tensor(variant.mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    std = torch.tensor(variant.std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    return images.float().div(255).sub(mean).div(std)


def eval_transform(variant: Variant) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the shorter side, centre-crop, normalise: timm's eval pipeline for `variant`.

    Written out from the variant table rather than taken from timm at run time, so calibration,
    accuracy and benchmarks share one definition; `tests/test_data.py` compares it with timm's.
    """
    from torchvision import transforms

    return transforms.Compose([*_crop_steps(variant), partial(normalize, variant=variant)])


class ImageNetFolder(Dataset):
    """`ROOT/<split>/<wnid>/<image>` with classes in sorted wnid order, optionally a balanced subset.

    Items are `(image, label, index)`, `index` into `samples`. An image that cannot be decoded
    yields the transform of a black image with label -1, so the evaluator can count and name it
    instead of the loader dropping it silently. `expected_classes`/`expected_images` are checked
    on the whole folder, before `limit` picks a seeded class-balanced subset.
    """

    def __init__(
        self,
        root: Path | str,
        transform: Callable[[Image.Image], torch.Tensor],
        split: str = "val",
        expected_classes: int | None = None,
        image_size: int = 224,
        *,
        expected_images: int | None = None,
        limit: int | None = None,
        seed: int = 0,
    ) -> None:
        self.root = Path(root).expanduser()
        self.split_dir = self.root / split
        self.transform = transform
        self.image_size = image_size
        self.classes, samples = _scan(self.split_dir, self.root, split)
        if expected_classes is not None and len(self.classes) != expected_classes:
            raise ImageNetLayoutError(
                f"{self.split_dir} has {len(self.classes)} class folders, expected {expected_classes}: labels are the "
                f"folders' positions in sorted order, so a missing or extra folder shifts every later label (a "
                f"subset run needs them all too; --classes / --imagenet-classes N for a tree of another size)"
            )
        if expected_images is not None and len(samples) != expected_images:
            raise ImageNetLayoutError(
                f"{self.split_dir} has {len(samples)} images, expected {expected_images} for the full "
                f"ImageNet {split} set, on which the published accuracy was measured (pass a limit, "
                f"--limit / --imagenet-limit N, to evaluate a subset)"
            )
        if limit is not None:
            samples = [samples[i] for i in balanced_subset_indices([s[1] for s in samples], limit, seed)]
        self.samples: list[tuple[Path, int]] = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                return self.transform(image.convert("RGB")), label, index
        except (OSError, UnidentifiedImageError, ValueError):
            blank = Image.new("RGB", (self.image_size, self.image_size))
            return self.transform(blank), UNREADABLE_LABEL, index

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
    """`limit` indices spread evenly over classes, reproducible for a seed.

    Round-robin over shuffled per-class lists, visiting classes in a shuffled order so that
    when `limit` is not a multiple of the class count the extra images go to random classes.
    """
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    queues = [rng.sample(indices, len(indices)) for _, indices in sorted(by_class.items())]
    rng.shuffle(queues)
    chosen: list[int] = []
    while len(chosen) < min(limit, len(labels)):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop())
    return sorted(chosen)


def default_workers() -> int:
    """Decoding workers: one per CPU core this process may use, less one for the process running the model."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


@dataclass(frozen=True)
class LoaderOptions:
    batch_size: int = 64  # inside the default TensorRT profile (1-64, levit_trt/engine_options.py)
    workers: int | None = None  # None: default_workers()
    limit: int | None = None  # seeded, class-balanced subset of this many images
    seed: int = 0
    split: str = "val"
    # Class folders the split must hold: labels are folder positions, so this is checked with or
    # without a limit. None accepts any number (the small trees tests write).
    classes: int | None = IMAGENET_CLASSES


def imagenet_dataset(root: Path | str, variant: Variant, options: LoaderOptions = LoaderOptions()) -> ImageNetFolder:
    """The folder as uint8 crops; it must hold `options.classes` classes, and without a limit the
    ImageNet val split must be the full 1000 x 50 set."""
    full = options.limit is None and options.split == "val" and options.classes == IMAGENET_CLASSES
    return ImageNetFolder(
        root, crop_transform(variant), options.split,
        expected_classes=options.classes, image_size=variant.input_size,
        expected_images=IMAGENET_VAL_IMAGES if full else None, limit=options.limit, seed=options.seed,
    )


def imagenet_loader(root: Path | str, variant: Variant, options: LoaderOptions = LoaderOptions()) -> DataLoader:
    """Batches of uint8 `(images, labels, indices)` from an ImageNet-layout folder, decoded in parallel workers.

    Pinned memory on CUDA machines so host-to-device copies run asynchronously; persistent
    workers so a loader iterated once per backend does not restart its processes each time.
    """
    dataset = imagenet_dataset(root, variant, options)
    workers = default_workers() if options.workers is None else options.workers
    return DataLoader(
        dataset,
        batch_size=options.batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


@dataclass(frozen=True)
class DecodedImages:
    """A whole dataset decoded once into one uint8 tensor, so later passes cost no decoding at all."""

    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]; UNREADABLE_LABEL where decoding failed
    samples: list[tuple[Path, int]]

    def __len__(self) -> int:
        return len(self.samples)

    def batches(self, batch_size: int = LoaderOptions.batch_size) -> Iterator[Batch]:
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield self.images[start:stop], self.labels[start:stop], torch.arange(start, stop)


def decode_images(loader: DataLoader, progress: bool = True) -> DecodedImages:
    """Run `loader` (an `imagenet_loader`) once and keep its uint8 crops, pinned on CUDA machines."""
    from tqdm import tqdm

    dataset: ImageNetFolder = loader.dataset  # type: ignore[assignment]
    first, _, _ = dataset[0]
    images = torch.empty((len(dataset), *first.shape), dtype=torch.uint8, pin_memory=torch.cuda.is_available())
    labels = torch.empty(len(dataset), dtype=torch.int64)
    with tqdm(total=len(dataset), unit="img", desc="decoding", disable=not progress) as bar:
        for batch_images, batch_labels, indices in loader:
            images[indices] = batch_images
            labels[indices] = batch_labels
            bar.update(len(indices))
    return DecodedImages(images, labels, list(dataset.samples))


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
