"""ImageFolder datasets that report bad input clearly, and the samplers used for training and evaluation.

Images are read through timm's :class:`~timm.data.ImageDataset`, but the folder is listed and checked
here first: a missing or empty split, an empty class folder, images outside a class folder, or a
validation class unknown to the model each raise :class:`DatasetError` naming the folder. A file that
cannot be decoded raises :class:`ImageReadError` naming the file (timm's dataset would skip it with a
warning and silently train on another sample).
"""
from __future__ import annotations

import math
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import ImageDataset
from timm.data.readers.class_map import load_class_map
from timm.data.readers.img_extensions import get_img_extensions
from timm.data.readers.reader import Reader
from timm.utils.misc import natural_key
from torch.utils.data import Sampler

__all__ = [
    "DatasetError",
    "posterize_to_any_bits",
    "ImageReadError",
    "scan_split",
    "CheckedImageDataset",
    "build_dataset",
    "ShardSampler",
    "read_class_map",
]


class DatasetError(ValueError):
    """An ImageFolder split whose layout cannot be used as it is."""


class ImageReadError(RuntimeError):
    """An image file that cannot be opened or decoded."""


def _listing(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def scan_split(
    split_dir: str, class_names: Optional[Sequence[str]] = None
) -> Tuple[List[Tuple[str, int]], List[str]]:
    """List ``split_dir/<class>/<image>`` and check the layout.

    Returns ``(samples, class_names)``: ``(path, class index)`` pairs in natural order, and the class
    names in index order. Without ``class_names`` the class folders found define them (natural sort, as
    timm and torchvision do); with them, every class folder found must be one of them (a split may lack
    some classes, as long as the indices stay those of the model).
    """
    if not os.path.isdir(split_dir):
        raise DatasetError(f"dataset split folder not found: {split_dir!r} (expected <root>/<split>/<class>/<image>)")
    extensions = get_img_extensions(as_set=True)
    entries = sorted(os.scandir(split_dir), key=lambda e: natural_key(e.name))
    folders = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    loose = [e.name for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in extensions]
    if loose:
        raise DatasetError(
            f"{split_dir!r} has images directly inside it ({_listing(loose)}); every image must be in a class "
            "folder: <split>/<class>/<image>"
        )
    if not folders:
        raise DatasetError(f"dataset split {split_dir!r} is empty: it has no class folders (<split>/<class>/<image>)")
    images: Dict[str, List[str]] = {}
    nested: List[str] = []
    for folder in folders:
        files = sorted(os.scandir(folder.path), key=lambda e: natural_key(e.name))
        images[folder.name] = [
            f.path for f in files if f.is_file() and os.path.splitext(f.name)[1].lower() in extensions
        ]
        nested += [f.path for f in files if f.is_dir() and not f.name.startswith(".")]
    if nested:
        raise DatasetError(
            f"class folders in {split_dir!r} contain sub-folders ({_listing(nested)}); images must sit directly in "
            "<split>/<class>/"
        )
    empty = [name for name, paths in images.items() if not paths]
    if empty:
        kinds = "/".join(sorted(extensions))
        raise DatasetError(
            f"{len(empty)} class folder(s) in {split_dir!r} contain no images ({_listing(empty)}); add images "
            f"({kinds}) or remove the folder(s), since an empty class would shift the class indices"
        )
    if class_names is None:
        class_names = list(images)
    else:
        class_names = list(class_names)
        unknown = [name for name in images if name not in class_names]
        if unknown:
            raise DatasetError(
                f"{split_dir!r} has class folders the model does not know ({_listing(unknown)}); the model's "
                f"{len(class_names)} classes are {_listing(class_names)}"
            )
    index = {name: i for i, name in enumerate(class_names)}
    samples = [(path, index[name]) for name, paths in images.items() for path in paths]
    return samples, class_names


def read_class_map(path: str) -> List[str]:
    """Class names in index order from a timm class-map file (``.txt``: one name per line, or ``.csv``)."""
    mapping = load_class_map(path)
    names = sorted(mapping, key=mapping.get)
    if [mapping[n] for n in names] != list(range(len(names))):
        raise DatasetError(f"class map {path!r} must number its classes 0..{len(names) - 1} without gaps")
    return names


class _ListReader(Reader):
    """A timm reader over a fixed list of ``(path, target)`` samples."""

    def __init__(self, samples: List[Tuple[str, int]]):
        super().__init__()
        self.samples = samples

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        return path, target

    def __len__(self) -> int:
        return len(self.samples)

    def _filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        path = self.samples[index][0]
        if basename:
            return os.path.basename(path)
        return os.path.abspath(path) if absolute else path


class CheckedImageDataset(ImageDataset):
    """timm's ImageDataset over a checked sample list; unreadable images raise :class:`ImageReadError`."""

    def __init__(self, samples: List[Tuple[str, int]], class_names: Sequence[str], transform=None):
        super().__init__(root="", reader=_ListReader(samples), transform=transform)
        self.class_names = list(class_names)

    def __getitem__(self, index: int):
        path, target = self.reader[index]
        try:
            with Image.open(path) as img:
                img = img.convert(self.input_img_mode)
        except Exception as err:  # PIL raises several types for damaged or non-image files
            raise ImageReadError(f"cannot read image {path!r} (sample {index}): {type(err).__name__}: {err}") from None
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def build_dataset(
    root: str, split: str, class_names: Optional[Sequence[str]] = None, transform=None
) -> CheckedImageDataset:
    """A checked dataset for ``root/split`` (see :func:`scan_split`)."""
    samples, names = scan_split(os.path.join(root, split), class_names)
    return CheckedImageDataset(samples, names, transform)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order: every sample is evaluated exactly once across
    processes (no padding, unlike a DistributedSampler), so summed counts give exact accuracies."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return max(0, math.ceil((self.size - self.rank) / self.world_size))


def class_counts(dataset: CheckedImageDataset) -> torch.Tensor:
    """Images per class, ``[num_classes]``."""
    targets = torch.tensor([t for _, t in dataset.reader.samples], dtype=torch.long)
    return torch.bincount(targets, minlength=len(dataset.class_names))


def _posterize(img: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """timm's posterize with Pillow < 12's result at 0 bits kept (a black image), where Pillow 12 raises."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.fromarray(np.zeros_like(np.asarray(img)), img.mode)
    return ImageOps.posterize(img, bits_to_keep)


def posterize_to_any_bits(transform: object) -> object:
    """``transform`` (timm's) with its RandAugment posterize ops made to accept 0 bits, in place.

    timm's ``rand-m9-mstd0.5-inc1`` draws magnitudes up to 10, where "PosterizeIncreasing" keeps 0 bits:
    Pillow before 12 returned a black image, Pillow 12 raises ``ValueError: bits must be between or equal
    to 1 and 8`` in the data loader, some way into training. The black image is what the official recipe
    trained with."""
    for t in getattr(transform, "transforms", ()):
        posterize_to_any_bits(t)
    for op in getattr(transform, "ops", ()):
        if "Posterize" in getattr(op, "name", ""):
            op.aug_fn = _posterize
    return transform
