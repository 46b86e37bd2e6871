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
            image = _eight_bit(image).convert("RGB")
            scale = round(image_size * 256 / 224) / min(image.size)
            image = image.resize((max(image_size, round(image.width * scale)), max(image_size, round(image.height * scale))),
                                 Image.Resampling.BILINEAR)
            left, top = (image.width - image_size) // 2, (image.height - image_size) // 2
            pixels = np.asarray(image.crop((left, top, left + image_size, top + image_size)), dtype=np.float32)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        # DecompressionBombError: a header claiming more pixels than PIL's guard allows (89 M).
        raise ImageFolderError(f"{path}: not a readable image ({exc})") from None
    array = (pixels / 255.0 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def _eight_bit(image):
    """``image`` with 8-bit channels. PIL's convert("RGB") clips a 16-bit greyscale image's values
    at 255 (most of its pixels white) rather than scaling them; here they are scaled."""
    from PIL import Image

    if image.mode.startswith("I"):  # I;16, I;16B, I;16L (16-bit PNG, TIFF) and I (16-bit PNG on older PIL)
        pixels = np.asarray(image, dtype=np.float64)
        if pixels.min() < 0 or pixels.max() > 65535:
            raise ValueError(f"{image.mode} pixels outside 0..65535 (min {pixels.min():g}, max {pixels.max():g})")
        return Image.fromarray(np.round(pixels / 65535 * 255).astype(np.uint8))
    if image.mode == "F":
        raise ValueError("32-bit floating-point pixels: save it as an 8- or 16-bit image, or as a preprocessed .npy")
    return image


def _load_array(path: Path, image_size: int) -> Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ImageFolderError(f"{path}: not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        kind = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        raise ImageFolderError(f"{path}: holds {kind} values; a preprocessed input is an array of real numbers")
    expected = (3, image_size, image_size)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1:] != expected:
        raise ImageFolderError(f"{path}: shape {array.shape}, expected {expected} or (N, {', '.join(map(str, expected))}) "
                               f"for {image_size} px inputs")
    if not len(array):
        raise ImageFolderError(f"{path}: holds no inputs (shape {array.shape})")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused next
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not torch.isfinite(tensor).all():
        raise ImageFolderError(f"{path}: holds NaN or infinite values (or values beyond float32's range); "
                               "calibration would derive its scales from them")
    return tensor


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | {".npy"})


def _check_folder(folder: str | os.PathLike, flag: str) -> Path:
    if not os.fspath(folder).strip():
        raise ImageFolderError(f"{flag} {os.fspath(folder)!r}: give a folder")
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
        batch = _load_array(path, image_size) if path.suffix.lower() == ".npy" else preprocess(path, image_size)[None]
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
    # A hidden folder (.ipynb_checkpoints) is not a class: sorting first, it would shift every label.
    # An empty class folder is one: a subset of ImageNet keeps all 1000 folders to keep the indices.
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    labelled = [(path, label) for label, cls in enumerate(classes) for path in _files(cls)
                if path.suffix.lower() != ".npy"]
    if not labelled:
        raise ImageFolderError(f"{flag} {folder}: no class subfolders holding images")
    if limit is not None and len(labelled) > limit:
        step = len(labelled) / limit
        labelled = [labelled[int(i * step)] for i in range(limit)]
    images = torch.stack([preprocess(path, image_size) for path, _ in labelled])
    return images, torch.tensor([label for _, label in labelled])
