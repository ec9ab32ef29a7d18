"""Preprocessing against timm's own eval transform, ImageNet-layout folders and their errors, subsets, loaders."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.models import PretrainedCfg

from levit_trt.data import (
    UNREADABLE_LABEL,
    ImageNetFolder,
    ImageNetLayoutError,
    LoaderOptions,
    balanced_subset_indices,
    crop_transform,
    decode_images,
    default_workers,
    eval_transform,
    imagenet_dataset,
    imagenet_loader,
    normalize,
    write_synthetic_imagenet,
)
from levit_trt.variants import VARIANTS, Variant, resolve_variant


def timm_pretrained_cfg(variant: Variant) -> PretrainedCfg:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(variant.timm_pretrained_name)
    assert cfg is not None, f"timm {timm.__version__} has no pretrained config {variant.timm_pretrained_name}"
    return cfg


def timm_eval_transform(variant: Variant) -> Callable[[Image.Image], torch.Tensor]:
    """timm's transform built from its pretrained config for the variant: the independent reference."""
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config(pretrained_cfg=timm_pretrained_cfg(variant).to_dict()))


def generated_image(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour gradients plus noise, so resampling filters and crops both show up in the pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    pixels = np.clip(smooth + rng.normal(0, 30, size=(height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_synthetic_imagenet(tmp_path_factory.mktemp("imagenet"), num_classes=4, images_per_class=5)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_eval_config_is_timms_pretrained_config(name: str) -> None:
    variant = VARIANTS[name]
    cfg = timm_pretrained_cfg(variant)
    assert cfg.input_size == (3, variant.input_size, variant.input_size)
    assert (cfg.crop_pct, cfg.interpolation, cfg.crop_mode) == (variant.crop_pct, variant.interpolation, "center")
    assert (tuple(cfg.mean), tuple(cfg.std)) == (variant.mean, variant.std)


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("size", [(300, 260), (260, 300), (500, 375), (224, 224), (120, 90)])
def test_eval_transform_equals_timms(name: str, size: tuple[int, int]) -> None:
    variant = VARIANTS[name]
    image = generated_image(*size, seed=sum(size))
    ours = eval_transform(variant)(image)
    # Same operations in the same order (PIL resize/crop, /255, -mean, /std): bit-identical.
    assert torch.equal(ours, timm_eval_transform(variant)(image))
    assert ours.shape == (3, variant.input_size, variant.input_size)


def test_loader_batches_normalised_equal_timms_transform_of_the_files(tree: Path) -> None:
    variant = resolve_variant("128S")
    loader = imagenet_loader(tree, variant, LoaderOptions(batch_size=8, workers=0, limit=12, classes=None))
    dataset: ImageNetFolder = loader.dataset  # type: ignore[assignment]
    reference = timm_eval_transform(variant)
    seen = 0
    for images, labels, indices in loader:
        assert images.dtype == torch.uint8
        for image, label, index in zip(normalize(images, variant), labels, indices):
            path, expected_label = dataset.samples[index]
            with Image.open(path) as file:
                assert torch.equal(image, reference(file.convert("RGB")))
            assert label == expected_label
            seen += 1
    assert seen == 12


def test_classes_in_sorted_wnid_order(tree: Path) -> None:
    dataset = ImageNetFolder(tree, crop_transform(resolve_variant("128S")))
    assert dataset.classes == sorted(dataset.classes) == [f"n{i:08d}" for i in range(4)]
    assert [dataset.classes[label] for path, label in dataset.samples] == [p.parent.name for p, _ in dataset.samples]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "does not exist or is not a directory"),
        (lambda root: (root / "train" / "n01").mkdir(parents=True), r"no 'val/' folder in .*found: train"),
        (lambda root: (root / "val").mkdir(parents=True), "has no class folders: expected one folder per wnid"),
        (lambda root: write_synthetic_imagenet(root, 2, 1) and (root / "val" / "n99999999").mkdir(),
         r"class folder .*n99999999 has no images"),
        (lambda root: write_synthetic_imagenet(root, 1, 1) and (root / "val" / "n00000000" / "x.txt").write_text("."),
         None),
        (lambda root: (root / "val" / "n01").mkdir(parents=True) or (root / "val" / "n01" / "notes.txt").write_text("."),
         r"n01 has no images \(.jpeg"),
    ],
    ids=["no-root", "no-val", "no-class-folders", "empty-class-folder", "non-image-files-ignored", "only-non-images"],
)
def test_layout_errors_name_the_problem(tmp_path: Path, make, message: str | None) -> None:
    root = tmp_path / "imagenet"
    make(root)
    transform = crop_transform(resolve_variant("128S"))
    if message is None:
        assert len(ImageNetFolder(root, transform)) == 1
        return
    with pytest.raises(ImageNetLayoutError, match=message):
        ImageNetFolder(root, transform)


def test_a_full_run_needs_all_classes_and_images(tree: Path) -> None:
    variant = resolve_variant("128S")
    with pytest.raises(ImageNetLayoutError, match=r"has 4 class folders, expected 1000: labels are the folders' "
                                                  r"positions"):
        imagenet_dataset(tree, variant)
    with pytest.raises(ImageNetLayoutError, match="has 20 images, expected 50000 for the full ImageNet val set"):
        ImageNetFolder(tree, crop_transform(variant), expected_classes=4, expected_images=50_000)
    assert len(imagenet_dataset(tree, variant, LoaderOptions(limit=6, classes=4))) == 6  # a subset: not all images


def test_a_subset_still_needs_every_class_folder(tree: Path) -> None:
    """A missing folder would shift the labels of every later class, and a limit must not hide that."""
    variant = resolve_variant("128S")
    with pytest.raises(ImageNetLayoutError, match="has 4 class folders, expected 5"):
        imagenet_dataset(tree, variant, LoaderOptions(limit=6, classes=5))
    with pytest.raises(ImageNetLayoutError, match="has 4 class folders, expected 1000"):
        imagenet_dataset(tree, variant, LoaderOptions(limit=6))


def test_unreadable_images_are_labelled_not_dropped(tmp_path: Path) -> None:
    root = write_synthetic_imagenet(tmp_path / "imagenet", num_classes=2, images_per_class=2)
    (root / "val" / "n00000000" / "empty.JPEG").write_bytes(b"")
    good = root / "val" / "n00000001" / "img_0000.JPEG"
    (root / "val" / "n00000001" / "truncated.JPEG").write_bytes(good.read_bytes()[:400])
    variant = resolve_variant("128S")
    dataset = ImageNetFolder(root, crop_transform(variant), image_size=variant.input_size)
    items = {dataset.samples[i][0].relative_to(root / "val").as_posix(): dataset[i] for i in range(len(dataset))}
    assert len(items) == 6
    for name in ("n00000000/empty.JPEG", "n00000001/truncated.JPEG"):
        image, label, _ = items[name]
        assert label == UNREADABLE_LABEL and image.shape == (3, 224, 224) and image.dtype == torch.uint8
    assert sum(label == UNREADABLE_LABEL for _, label, _ in items.values()) == 2


def test_balanced_subset_spreads_over_classes_and_is_seeded() -> None:
    labels = [0] * 30 + [1] * 30 + [2] * 3 + [3] * 30  # class 2 has fewer images than its share
    chosen = balanced_subset_indices(labels, 25, seed=7)
    counts = Counter(labels[i] for i in chosen)
    assert len(chosen) == len(set(chosen)) == 25 and chosen == sorted(chosen)
    assert counts[2] == 3 and sorted(counts[c] for c in (0, 1, 3)) == [7, 7, 8]  # the rest spread evenly
    assert balanced_subset_indices(labels, 25, seed=7) == chosen
    assert balanced_subset_indices(labels, 25, seed=8) != chosen
    assert balanced_subset_indices(labels, 1000) == list(range(len(labels)))
    with pytest.raises(ValueError, match="limit must be positive, got 0"):
        balanced_subset_indices(labels, 0)


def test_remainder_images_go_to_random_classes() -> None:
    labels = [c for c in range(10) for _ in range(5)]
    extra_classes = {
        next(c for c, n in Counter(labels[i] for i in balanced_subset_indices(labels, 11, seed)).items() if n == 2)
        for seed in range(20)
    }
    assert len(extra_classes) > 3  # not always the first class


def test_loader_defaults_decode_in_parallel(tree: Path) -> None:
    loader = imagenet_loader(tree, resolve_variant("128S"), LoaderOptions(limit=4, classes=None))
    assert loader.num_workers == default_workers() >= 1
    assert loader.persistent_workers and loader.pin_memory == torch.cuda.is_available()
    assert imagenet_loader(tree, resolve_variant("128S"), LoaderOptions(limit=4, workers=0, classes=None)).num_workers == 0


def test_decoded_images_equal_the_streamed_batches(tree: Path) -> None:
    variant = resolve_variant("128S")
    streamed = imagenet_loader(tree, variant, LoaderOptions(batch_size=3, workers=0, limit=10, classes=None))
    decoded = decode_images(imagenet_loader(tree, variant, LoaderOptions(batch_size=4, workers=1, limit=10, classes=None)),
                            progress=False)
    assert decoded.samples == imagenet_dataset(tree, variant, LoaderOptions(limit=10, classes=None)).samples and len(decoded) == 10
    ours = [torch.cat(parts) for parts in zip(*decoded.batches(batch_size=3))]
    theirs = [torch.cat(parts) for parts in zip(*streamed)]
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
