"""Real images for the models: calibration folders and labelled evaluation folders, preprocessed as
ImageNet models expect (shorter side resized to 256/224 of the crop, centre crop, scaled to [0, 1],
normalized by ImageNet's channel mean and std).

A calibration folder holds images (any depth of subfolders) or ``.npy`` arrays already preprocessed
(3 x S x S or N x 3 x S x S). An evaluation folder holds one subfolder per class, in the order of
the model's classes when sorted by name (the layout torchvision's ImageFolder reads).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class ImageFolderError(ValueError):
    """A folder of images that is missing, empty, or holds a file that cannot be used."""


def preprocess(path: Path, image_size: int) -> Tensor:
    """One image file as a normalized 3 x image_size x image_size tensor."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = round(image_size * 256 / 224) / min(image.size)
            image = image.resize((max(image_size, round(image.width * scale)), max(image_size, round(image.height * scale))),
                                 Image.Resampling.BILINEAR)
            left, top = (image.width - image_size) // 2, (image.height - image_size) // 2
            pixels = np.asarray(image.crop((left, top, left + image_size, top + image_size)), dtype=np.float32)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ImageFolderError(f"{path}: not a readable image ({exc})") from None
    array = (pixels / 255.0 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def _load_array(path: Path, image_size: int) -> Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ImageFolderError(f"{path}: not a readable .npy array ({exc})") from None
    expected = (3, image_size, image_size)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1:] != expected:
        raise ImageFolderError(f"{path}: shape {array.shape}, expected {expected} or (N, {', '.join(map(str, expected))}) "
                               f"for {image_size} px inputs")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | {".npy"})


def _check_folder(folder: str | os.PathLike, flag: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageFolderError(f"{flag} {folder}: not a folder")
    return folder


def load_calibration(folder: str | os.PathLike, image_size: int, limit: int | None = None,
                     flag: str = "--calib-data") -> Tensor:
    """Every image and array under ``folder`` (sorted by path, at most ``limit`` inputs) as one
    N x 3 x S x S batch."""
    folder = _check_folder(folder, flag)
    files = _files(folder)
    if not files:
        raise ImageFolderError(f"{flag} {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) or .npy arrays in it")
    batches, count = [], 0
    for path in files:
        batch = _load_array(path, image_size) if path.suffix == ".npy" else preprocess(path, image_size)[None]
        batches.append(batch)
        count += len(batch)
        if limit is not None and count >= limit:
            break
    return torch.cat(batches)[:limit]


def load_labelled(folder: str | os.PathLike, image_size: int, limit: int | None = None,
                  flag: str = "--eval-data") -> tuple[Tensor, Tensor]:
    """Images in one subfolder per class (class index = the subfolder's place in name order) and
    their labels; at most ``limit`` images, taken evenly across classes."""
    folder = _check_folder(folder, flag)
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    labelled = [(path, label) for label, cls in enumerate(classes) for path in _files(cls) if path.suffix != ".npy"]
    if not labelled:
        raise ImageFolderError(f"{flag} {folder}: no class subfolders holding images")
    if limit is not None and len(labelled) > limit:
        step = len(labelled) / limit
        labelled = [labelled[int(i * step)] for i in range(limit)]
    images = torch.stack([preprocess(path, image_size) for path, _ in labelled])
    return images, torch.tensor([label for _, label in labelled])
