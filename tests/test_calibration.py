"""Calibration sets: reproducible, spread over classes, the one eval transform, atomic, clear errors."""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from levit_trt import calibration as calibration_module
from levit_trt.calibration import (
    IMAGES_NAME,
    MANIFEST_NAME,
    CalibrationError,
    load_calibration_set,
    synthetic_calibration_set,
    write_calibration_set,
)
from levit_trt.data import eval_transform, write_synthetic_imagenet
from levit_trt.variants import resolve_variant
from levit_trt.weights import synthetic_images

VARIANT = resolve_variant("128S")


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x 3 images in train/, 2 x 1 in val/."""
    root = tmp_path_factory.mktemp("imagenet")
    write_synthetic_imagenet(root, num_classes=4, images_per_class=3, split="train")
    write_synthetic_imagenet(root, num_classes=2, images_per_class=1, split="val", seed=5)
    return root


@pytest.fixture(scope="module")
def written(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("calib") / "set"
    write_calibration_set(image_root, VARIANT, 8, out, seed=3, progress=False)
    return out


def _manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST_NAME).read_text())


def test_picks_are_spread_over_classes_and_preprocessed_by_the_eval_transform(written: Path, image_root: Path) -> None:
    manifest = _manifest(written)
    per_class = collections.Counter(Path(name).parent.name for name in manifest["images"])
    assert sorted(per_class.values()) == [2, 2, 2, 2]  # 8 images over 4 classes
    calibration = load_calibration_set(written, VARIANT)
    assert calibration.num_images == 8 and calibration.variant == "levit_128s"
    transform = eval_transform(VARIANT)
    for row, name in zip(calibration.images, manifest["images"]):
        with Image.open(image_root / "train" / name) as image:
            expected = transform(image.convert("RGB"))
        assert torch.equal(torch.from_numpy(np.array(row)), expected)


def test_same_seed_same_set_other_seed_other_set(written: Path, image_root: Path, tmp_path: Path) -> None:
    again = write_calibration_set(image_root, VARIANT, 8, tmp_path / "again", seed=3, progress=False)
    other = write_calibration_set(image_root, VARIANT, 8, tmp_path / "other", seed=4, progress=False)
    first = load_calibration_set(written)
    assert again.identity == first.identity
    assert (tmp_path / "again" / IMAGES_NAME).read_bytes() == (written / IMAGES_NAME).read_bytes()
    assert other.identity != first.identity
    assert _manifest(tmp_path / "other")["images"] != _manifest(written)["images"]
    assert _manifest(written)["sha256"] in first.identity and _manifest(written)["seed"] == 3


def test_batches_cover_the_set_in_order(written: Path) -> None:
    calibration = load_calibration_set(written)
    batches = list(calibration.batches(3))
    assert [tuple(b.shape) for b in batches] == [(3, 3, 224, 224), (3, 3, 224, 224), (2, 3, 224, 224)]
    assert all(b.dtype == torch.float32 and b.device.type == "cpu" for b in batches)
    assert torch.equal(torch.cat(batches), torch.from_numpy(np.array(calibration.images)))


def test_synthetic_set_holds_the_synthetic_images() -> None:
    calibration = synthetic_calibration_set("128S", 5, seed=2)
    assert torch.equal(torch.cat(list(calibration.batches(2))), synthetic_images(5, 224, seed=2))
    assert calibration.identity == synthetic_calibration_set(VARIANT, 5, seed=2).identity
    assert calibration.identity != synthetic_calibration_set(VARIANT, 5, seed=3).identity
    assert calibration.identity != synthetic_calibration_set(VARIANT, 4, seed=2).identity


def test_val_split_only_when_asked(image_root: Path, tmp_path: Path) -> None:
    val = write_calibration_set(image_root, VARIANT, 2, tmp_path / "val", split="val", progress=False)
    assert val.num_images == 2 and _manifest(tmp_path / "val")["split"] == "val"
    only_val = tmp_path / "only-val"
    write_synthetic_imagenet(only_val, num_classes=1, images_per_class=2, split="val")
    with pytest.raises(CalibrationError, match=r"no 'train/' folder.*pass --split val"):
        write_calibration_set(only_val, VARIANT, 2, tmp_path / "x", progress=False)
    with pytest.raises(CalibrationError, match="unknown split 'test'"):
        write_calibration_set(image_root, VARIANT, 2, tmp_path / "x", split="test", progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("num_images", "message"), [
    (13, r"has only 12 images, fewer than the 13 asked for; ask for at most 12"),
    (0, r"--num-images must be at least 1"),
])
def test_too_few_images_is_an_error(image_root: Path, tmp_path: Path, num_images: int, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        write_calibration_set(image_root, VARIANT, num_images, tmp_path / "set", progress=False)
    assert not (tmp_path / "set").exists()


def test_undecodable_image_is_named(tmp_path: Path) -> None:
    root = write_synthetic_imagenet(tmp_path / "imagenet", num_classes=1, images_per_class=1, split="train")
    (root / "train" / "n00000000" / "broken.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(CalibrationError, match=r"cannot decode 1 image\(s\), e\.g\. .*broken\.JPEG"):
        write_calibration_set(root, VARIANT, 2, tmp_path / "set", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imagenet"]  # no set, no temporary left


def test_interrupted_write_leaves_the_old_set(written: Path, image_root: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "set"
    before = write_calibration_set(image_root, VARIANT, 4, out, progress=False)

    def interrupted(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(calibration_module, "_data_sha256", interrupted)  # after the images, before the manifest
    with pytest.raises(KeyboardInterrupt):
        write_calibration_set(image_root, VARIANT, 8, out, progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    assert load_calibration_set(out).identity == before.identity


def test_written_set_gets_the_umask_permissions(image_root: Path, tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        write_calibration_set(image_root, VARIANT, 1, tmp_path / "set", progress=False)
    finally:
        os.umask(previous)
    assert (tmp_path / "set").stat().st_mode & 0o777 == 0o755  # a folder mkdir would make, not mkdtemp's 0o700


def test_out_folder_with_other_files_is_refused(image_root: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CalibrationError, match="exists and is not a calibration set"):
        write_calibration_set(image_root, VARIANT, 2, tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _copy_set(source: Path, target: Path) -> Path:
    target.mkdir()
    for name in (IMAGES_NAME, MANIFEST_NAME):
        (target / name).write_bytes((source / name).read_bytes())
    return target


def test_missing_empty_or_foreign_folder(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"does not exist; write one with: levit-trt calibrate"):
        load_calibration_set(tmp_path / "nowhere")
    with pytest.raises(CalibrationError, match=r"is not a calibration set .*found: nothing"):
        load_calibration_set(tmp_path)


def test_corrupt_files_are_reported(written: Path, tmp_path: Path) -> None:
    truncated = _copy_set(written, tmp_path / "truncated")
    data = (truncated / IMAGES_NAME).read_bytes()
    (truncated / IMAGES_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(CalibrationError, match="is corrupt"):
        load_calibration_set(truncated)
    flipped = _copy_set(written, tmp_path / "flipped")
    images = np.load(flipped / IMAGES_NAME)
    images[0, 0, 0, 0] += 1.0
    np.save(flipped / IMAGES_NAME, images)
    with pytest.raises(CalibrationError, match="is corrupt: images.npy .* does not match manifest.json"):
        load_calibration_set(flipped)
    (flipped / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(CalibrationError, match="is corrupt"):
        load_calibration_set(flipped)
    (flipped / MANIFEST_NAME).write_text('{"format": 1}')
    with pytest.raises(CalibrationError, match=r"manifest.json is corrupt \(no variant, num_images"):
        load_calibration_set(flipped)


@pytest.mark.parametrize(("shape", "dtype"), [((4, 3, 112, 112), np.float32), ((4, 3, 224, 224), np.float64),
                                              ((4, 224, 224), np.float32), ((0, 3, 224, 224), np.float32)])
def test_wrong_shape_or_dtype_is_reported(written: Path, tmp_path: Path, shape: tuple[int, ...], dtype: type) -> None:
    directory = _copy_set(written, tmp_path / "set")
    images = np.zeros(shape, dtype=dtype)
    np.save(directory / IMAGES_NAME, images)
    manifest = _manifest(directory)
    manifest.update(sha256=calibration_module._data_sha256(images) if images.ndim == 4 else "x", num_images=shape[0])
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))
    message = "holds no images" if shape[0] == 0 and dtype == np.float32 and len(shape) == 4 else \
        r"needs float32 \[N, 3, 224, 224\]"
    with pytest.raises(CalibrationError, match=message):
        load_calibration_set(directory)


def test_set_of_another_variant_is_refused(written: Path) -> None:
    with pytest.raises(CalibrationError, match="was made for LeViT-128S, not LeViT-384; write one with --variant levit_384"):
        load_calibration_set(written, "384")
