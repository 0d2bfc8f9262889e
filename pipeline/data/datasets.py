"""What the encoders read: images decoded lazily per item, titles tokenised per batch.

Image transforms take their mean, std and interpolation from the backbone's timm data config, so
normalisation always matches the weights. Training augmentations are reseeded per item from the
epoch's seed and the item's index, so an epoch's pictures are the same whatever the number of
workers and whether the run was resumed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from pipeline.data.contract import DataError
from pipeline.data.titles import clean_title

_INTERPOLATION = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


def _size_and_interpolation(data_config: dict[str, Any]) -> tuple[tuple[int, int], int]:
    _, height, width = data_config["input_size"]
    return (height, width), _INTERPOLATION.get(data_config.get("interpolation", "bilinear"), cv2.INTER_LINEAR)


def train_transform(data_config: dict[str, Any]) -> A.Compose:
    """Random crop (60-100 % of the area), flip, brightness/contrast, cut-out holes, normalise."""
    (height, width), interpolation = _size_and_interpolation(data_config)
    return A.Compose(
        [
            A.RandomResizedCrop(
                size=(height, width), scale=(0.6, 1.0), interpolation=interpolation, area_for_downscale="image"
            ),
            A.HorizontalFlip(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.CoarseDropout(
                num_holes_range=(1, 4), hole_height_range=(0.05, 0.2), hole_width_range=(0.05, 0.2), fill=0, p=0.5
            ),
            A.Normalize(mean=data_config["mean"], std=data_config["std"]),
            ToTensorV2(),
        ]
    )


def eval_transform(data_config: dict[str, Any]) -> A.Compose:
    """Resize to the model's input size (no crop: a product may fill the frame) and normalise."""
    (height, width), interpolation = _size_and_interpolation(data_config)
    return A.Compose(
        [
            A.Resize(height, width, interpolation=interpolation, area_for_downscale="image"),
            A.Normalize(mean=data_config["mean"], std=data_config["std"]),
            ToTensorV2(),
        ]
    )


def read_image(path: str | os.PathLike, min_size: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image file.

    Args:
        path: the image file.
        min_size: when set, a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale that keeps both
            sides at least this large, which is several times faster on Shopee's ~1000 px photos.

    Raises:
        DataError: naming the file, when it is missing or cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            if min_size:
                im.draft("RGB", (min_size, min_size))
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e})") from e


class ImageDataset(Dataset):
    """Images read from disk one item at a time.

    Args:
        paths: image files.
        labels: class ids (0..C-1) per image; None for inference, when items are tensors alone.
        transform: an albumentations pipeline ending in ``ToTensorV2``.
        min_size: passed to :func:`read_image`; the model's input side is a safe value.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int] | np.ndarray | None = None,
        transform: A.Compose | None = None,
        min_size: int | None = None,
    ):
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(paths)} images but {len(labels)} labels")
        if transform is None:
            raise ValueError("ImageDataset needs a transform (see train_transform / eval_transform)")
        self.paths = [str(p) for p in paths]
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.min_size = min_size
        self.epoch_seed: int | None = None

    def set_epoch_seed(self, seed: int | None) -> None:
        """Make item i's augmentation a function of (seed, i); None leaves them unseeded."""
        self.epoch_seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        pixels = read_image(self.paths[i], self.min_size)
        if self.epoch_seed is not None:
            item_seed = np.random.SeedSequence([self.epoch_seed, i]).generate_state(1)[0]
            self.transform.set_random_seed(int(item_seed))
        x = self.transform(image=pixels)["image"]  # (3, H, W) float32
        if self.labels is None:
            return x
        return x, int(self.labels[i])


class TitleDataset(Dataset):
    """Raw titles (and class ids); tokenisation happens per batch in :class:`TitleCollate`."""

    def __init__(self, titles: Sequence[str], labels: Sequence[int] | np.ndarray | None = None):
        if labels is not None and len(labels) != len(titles):
            raise ValueError(f"{len(titles)} titles but {len(labels)} labels")
        self.titles = [str(t) for t in titles]
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.titles)

    def __getitem__(self, i: int):
        if self.labels is None:
            return self.titles[i]
        return self.titles[i], int(self.labels[i])


class TitleCollate:
    """Tokenise a batch of titles, padded to its longest one; a class (not a closure) so workers can pickle it."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, batch: list) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], torch.Tensor]:
        if batch and isinstance(batch[0], tuple):
            titles, labels = zip(*batch)
            return tokenize_titles(self.tokenizer, list(titles), self.max_length), torch.tensor(labels)
        return tokenize_titles(self.tokenizer, list(batch), self.max_length)


def tokenize_titles(tokenizer, titles: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """:func:`~pipeline.data.titles.clean_title` then the tokenizer, padding to the batch's longest title."""
    cleaned = [clean_title(t) for t in titles]
    batch = tokenizer(cleaned, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return dict(batch)


def label_index(label_groups: Sequence | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map label groups to class ids.

    Returns:
        (N,) int64 ids in 0..C-1, and the (C,) sorted distinct label groups (``classes[ids]`` gives
        the labels back).
    """
    classes, ids = np.unique(np.asarray(label_groups), return_inverse=True)
    return ids.astype(np.int64).reshape(-1), classes


def make_dataset(
    model, items: Sequence, labels: Sequence[int] | np.ndarray | None = None, *, train: bool = False
) -> tuple[Dataset, Callable | None]:
    """The dataset and collate function that feed ``model`` (an encoder from :mod:`pipeline.models.encoders`).

    Args:
        model: an ``ImageEncoder`` (items are image paths) or ``TextEncoder`` (items are titles).
        items: paths or titles.
        labels: class ids for training; None for inference.
        train: random augmentations (images); titles are the same either way.
    """
    if model.modality == "image":
        config = model.data_config()
        transform = train_transform(config) if train else eval_transform(config)
        return ImageDataset(items, labels, transform, min_size=max(config["input_size"][1:])), None
    if model.modality == "text":
        return TitleDataset(items, labels), TitleCollate(model.tokenizer, model.cfg.max_length)
    raise ValueError(f"no dataset for modality {model.modality!r}")
