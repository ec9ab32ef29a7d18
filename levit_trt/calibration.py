"""Calibration data for INT8: preprocessed images written once, read by every quantizer.

A calibration set on disk is a directory with `images.npy` (float32 [N, 3, H, W], already through
the one eval transform) and `manifest.json` (variant, count, seed, source, sha256 of the array).
The directory is written under a temporary name and renamed into place, so an interrupted run
leaves nothing that `load_calibration_set` would accept. The same `CalibrationSet` feeds ONNX
Runtime's Q/DQ calibration and TensorRT 10's implicit calibrator.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from levit_trt.cache import set_default_permissions
from levit_trt.variants import Variant, resolve_variant

if TYPE_CHECKING:  # torch is imported where batches are made, so EngineOptions can read the default below cheaply
    import torch

IMAGES_NAME = "images.npy"
MANIFEST_NAME = "manifest.json"
# Bump when the on-disk layout changes; older sets are then refused with a message to rewrite them.
CALIBRATION_FORMAT = 1
CALIBRATION_SPLITS = ("train", "val")
# Synthetic images when no calibration folder is given (both INT8 backends). On levit_128s
# (random weights, default policy, two seeds) 32, 64 and 128 images gave mean logit cosines to fp32
# of 0.940/0.956, 0.937/0.958 and 0.945/0.924: more synthetic images did not help, and each costs
# about 0.15 s of calibration on 2 cores.
SYNTHETIC_CALIBRATION_IMAGES = 64


class CalibrationError(ValueError):
    """Calibration data that cannot be written or used; the message names the folder and the fix."""


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """Preprocessed fp32 images [N, 3, H, W] and a hash of them (`identity`) for cache keys.

    `images` may be a read-only memory map of `images.npy`, so a large set is not read at once.
    """

    images: np.ndarray
    identity: str
    variant: str
    description: str

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Consecutive fp32 CPU batches [B, 3, H, W]; the last one may be smaller."""
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, self.num_images, batch_size):
            yield torch.from_numpy(np.array(self.images[start:start + batch_size], dtype=np.float32))


def _data_sha256(images: np.ndarray, block: int = 64) -> str:
    """sha256 over the shape and the raw float32 bytes, a few images at a time."""
    digest = hashlib.sha256(repr(tuple(images.shape)).encode())
    for start in range(0, images.shape[0], block):
        digest.update(np.ascontiguousarray(images[start:start + block], dtype=np.float32).tobytes())
    return digest.hexdigest()


def synthetic_calibration_set(variant: Variant | str, num_images: int, seed: int = 0) -> CalibrationSet:
    """An in-memory set of `weights.synthetic_images`: for tests and for builds without image data."""
    from levit_trt.weights import synthetic_images

    variant = resolve_variant(variant)
    if num_images < 1:
        raise CalibrationError(f"a calibration set needs at least one image, got num_images={num_images}")
    images = synthetic_images(num_images, variant.input_size, seed=seed).numpy()
    return CalibrationSet(images, f"sha256:{_data_sha256(images)}", variant.name,
                          f"synthetic ({num_images} images, seed {seed})")


def _check_images(images: np.ndarray, variant: Variant, where: Path) -> None:
    expected = (3, variant.input_size, variant.input_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected or images.dtype != np.float32:
        raise CalibrationError(
            f"{where} holds {images.dtype} images of shape {list(images.shape)}, but {variant.display} "
            f"needs float32 [N, {', '.join(map(str, expected))}]; rewrite it with levit-trt calibrate "
            f"--variant {variant.name}"
        )
    if images.shape[0] == 0:
        raise CalibrationError(f"{where} holds no images; rewrite it with levit-trt calibrate --num-images N")


def load_calibration_set(directory: Path | str, variant: Variant | str | None = None) -> CalibrationSet:
    """Open a set written by `write_calibration_set`, checking it is complete and uncorrupted.

    With `variant`, the set must have been made for it (same input size and preprocessing).
    """
    directory = Path(directory).expanduser()
    hint = "write one with: levit-trt calibrate --data-path ROOT --num-images N --out DIR"
    if not directory.is_dir():
        raise CalibrationError(f"calibration directory {directory} does not exist; {hint}")
    manifest_path, images_path = directory / MANIFEST_NAME, directory / IMAGES_NAME
    if not manifest_path.is_file() or not images_path.is_file():
        found = ", ".join(sorted(p.name for p in directory.iterdir())[:5]) or "nothing"
        raise CalibrationError(
            f"{directory} is not a calibration set (needs {MANIFEST_NAME} and {IMAGES_NAME}; found: {found}); {hint}")
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        images = np.load(images_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CalibrationError(f"calibration set {directory} is corrupt ({error}); rewrite it. {hint}") from error
    missing = [k for k in ("format", "variant", "num_images", "seed", "split", "source_root", "sha256")
               if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise CalibrationError(f"{manifest_path} is corrupt (no {', '.join(missing)}); rewrite the set. {hint}")
    if manifest.get("format") != CALIBRATION_FORMAT:
        raise CalibrationError(f"{manifest_path} has format {manifest.get('format')!r}, this version reads "
                               f"{CALIBRATION_FORMAT}; rewrite the set. {hint}")
    made_for = resolve_variant(manifest["variant"])
    if variant is not None and resolve_variant(variant) != made_for:
        raise CalibrationError(f"calibration set {directory} was made for {made_for.display}, not "
                               f"{resolve_variant(variant).display}; write one with --variant {resolve_variant(variant).name}")
    _check_images(images, made_for, images_path)
    digest = _data_sha256(images)
    if digest != manifest.get("sha256") or images.shape[0] != manifest.get("num_images"):
        raise CalibrationError(
            f"calibration set {directory} is corrupt: {IMAGES_NAME} ({images.shape[0]} images, sha256 {digest[:12]}…) "
            f"does not match {MANIFEST_NAME} ({manifest.get('num_images')} images, "
            f"sha256 {str(manifest.get('sha256'))[:12]}…); rewrite it. {hint}")
    description = (f"{manifest['num_images']} images from {manifest['source_root']}/{manifest['split']} "
                   f"(seed {manifest['seed']})")
    return CalibrationSet(images, f"sha256:{digest}", made_for.name, description)


def write_calibration_set(
    data_root: Path | str,
    variant: Variant | str,
    num_images: int,
    out_dir: Path | str,
    *,
    split: str = "train",
    seed: int = 0,
    progress: bool = True,
    workers: int = 0,
) -> CalibrationSet:
    """Pick `num_images` images of `data_root/split` spread over classes (seeded), preprocess, write.

    Calibrating on `val` makes the accuracy measured on val optimistic, so it is used only when
    asked for; a missing `train/` folder is an error, not a silent switch.
    """
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from levit_trt.data import ImageNetFolder, ImageNetLayoutError, balanced_subset_indices, eval_transform

    variant = resolve_variant(variant)
    out_dir = Path(out_dir).expanduser()
    if split not in CALIBRATION_SPLITS:
        raise CalibrationError(f"unknown split {split!r}; choose one of {', '.join(CALIBRATION_SPLITS)}")
    if num_images < 1:
        raise CalibrationError(f"--num-images must be at least 1, got {num_images}")
    _check_replaceable(out_dir)
    try:
        dataset = ImageNetFolder(data_root, eval_transform(variant), split, image_size=variant.input_size)
    except ImageNetLayoutError as error:
        other = "val" if split == "train" else "train"
        raise CalibrationError(f"{error} (to calibrate on the {other} images instead, pass --split {other})") from error
    if len(dataset) < num_images:
        raise CalibrationError(
            f"{dataset.split_dir} has only {len(dataset)} images, fewer than the {num_images} asked for; "
            f"ask for at most {len(dataset)} with --num-images, or point --data-path at a larger folder")
    indices = balanced_subset_indices(dataset.labels, num_images, seed)
    loader = DataLoader(Subset(dataset, indices), batch_size=32, shuffle=False, num_workers=workers)
    shape = (num_images, 3, variant.input_size, variant.input_size)

    def fill(directory: Path) -> np.ndarray:
        images = np.lib.format.open_memmap(directory / IMAGES_NAME, mode="w+", dtype=np.float32, shape=shape)
        written = 0
        bar = tqdm(total=num_images, desc=f"calibration images ({variant.display})", unit="img", disable=not progress)
        for batch, labels, batch_indices in loader:
            unreadable = [str(dataset.samples[int(i)][0]) for i, label in zip(batch_indices, labels) if label < 0]
            if unreadable:
                raise CalibrationError(f"cannot decode {len(unreadable)} image(s), e.g. {unreadable[0]}; "
                                       f"remove or replace them, or change --seed to pick others")
            images[written:written + len(batch)] = batch.numpy()
            written += len(batch)
            bar.update(len(batch))
        bar.close()
        images.flush()
        return images

    def build(directory: Path) -> None:
        images = fill(directory)
        manifest = {
            "format": CALIBRATION_FORMAT, "variant": variant.name, "num_images": num_images, "seed": seed,
            "split": split, "source_root": str(Path(data_root).expanduser().resolve()),
            "images": [str(dataset.samples[i][0].relative_to(dataset.split_dir)) for i in indices],
            "sha256": _data_sha256(images), "shape": list(shape), "dtype": "float32",
            "transform": {"resize": variant.resize_size, "crop": variant.input_size,
                          "interpolation": variant.interpolation, "mean": variant.mean, "std": variant.std},
        }
        del images  # close the memory map before the directory is renamed
        (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))

    _replace_directory(out_dir, build)
    return load_calibration_set(out_dir, variant)


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to overwrite a folder that holds anything but an earlier calibration set."""
    if out_dir.exists() and (not out_dir.is_dir() or (
            any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file())):
        raise CalibrationError(f"--out {out_dir} exists and is not a calibration set; choose a new or empty folder")


def _replace_directory(out_dir: Path, build: Callable[[Path], None]) -> None:
    """Build into a temporary sibling, then swap it in; on any failure the old `out_dir` is kept."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    old = out_dir.parent / f"{tmp.name}.old"
    try:
        build(tmp)
        set_default_permissions(tmp)
        if out_dir.exists():
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if old.exists():
                os.replace(old, out_dir)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
