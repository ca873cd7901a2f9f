"""ADE20K (ADEChallengeData2016 layout) for training and evaluation, with the reference's augmentation.

Layout: ``<root>/images/<split>/*.jpg`` with ``<root>/annotations/<split>/<same name>.png``. Raw label 0
is "unlabelled" and ignored, labels ``1..num_classes`` become train ids ``0..num_classes-1`` (the
reference's ``reduce_zero_label``), 255 stays ignored. Problems with the data raise
:class:`SegDataError` naming the file and what is wrong: a missing annotation, an annotation of
another size than its image, label values above the class count that are not the ignore value,
unreadable files.

Training samples follow the official pipeline (mmseg 0.24 ``Resize``, ``RandomCrop``, ``RandomFlip``,
``PhotoMetricDistortion``, ``Normalize``, ``Pad``): random rescale of ``scale`` (long, short side) by a
ratio in ``ratio_range`` keeping the aspect ratio, random crop (at most ``cat_max_ratio`` of one class,
10 tries), horizontal flip, photometric distortion (:func:`photometric_distortion`, in OpenCV's HSV),
normalisation, padding to the crop (image 0, label 255). Evaluation is the official ``AlignResize``:
rescale to ``eval_scale`` keeping the ratio (short side 512 for ADE20K), then resize (not pad) to
multiples of ``size_divisor``; the metric is taken at the annotation's original size. Images are decoded
and resized with OpenCV, as mmcv does (bilinear without antialiasing; labels nearest).

Augmentation randomness is a function of ``(seed, rank, position in the rank's sample stream)``, so
any data-loader worker layout and a resumed run produce the same samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

__all__ = ["IGNORE_INDEX", "ADE20KDataset", "AugmentConfig", "Distortion", "SegDataError", "class_names",
           "draw_distortion", "eval_image", "photometric_distortion", "read_pair", "rescale_size", "scan_split"]

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class SegDataError(ValueError):
    """A dataset file that is missing, unreadable or inconsistent; the message names the file."""


@dataclass(frozen=True)
class AugmentConfig:
    """The reference's ADE20K pipeline settings (mmseg ``ade20k.py``), sizes in pixels."""

    scale: Tuple[int, int] = (2048, 512)
    ratio_range: Tuple[float, float] = (0.5, 2.0)
    crop_size: int = 512
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    mean: Tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: Tuple[float, float, float] = (58.395, 57.12, 57.375)
    eval_scale: Tuple[int, int] = (2048, 512)
    size_divisor: int = 32


def scan_split(root: str | Path, split: str) -> List[Tuple[Path, Path]]:
    """(image, annotation) pairs of a split, sorted by name; every image must have its annotation."""
    root = Path(root)
    image_dir, ann_dir = root / "images" / split, root / "annotations" / split
    for folder in (image_dir, ann_dir):
        if not folder.is_dir():
            raise SegDataError(
                f"{folder} does not exist: expected the ADEChallengeData2016 layout "
                f"<root>/images/{split}/*.jpg and <root>/annotations/{split}/*.png under root {root}"
            )
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SegDataError(f"{image_dir} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    pairs = [(image, ann_dir / (image.stem + ".png")) for image in images]
    missing = [ann for _, ann in pairs if not ann.is_file()]
    if missing:
        shown = ", ".join(str(m) for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise SegDataError(f"annotation file missing for {len(missing)} image(s) of {image_dir}: {shown}{more}")
    return pairs


def class_names(root: str | Path, num_classes: int) -> List[str]:
    """Class names from ADE20K's ``objectInfo150.txt`` (or a ``class_names.txt``, one per line),
    else ``class_<i>``."""
    root = Path(root)
    info, plain = root / "objectInfo150.txt", root / "class_names.txt"
    names: List[str] = []
    if info.is_file():
        lines = info.read_text(encoding="utf-8").splitlines()[1:]
        names = [line.split("\t")[-1].split(";")[0].strip() for line in lines if line.strip()]
    elif plain.is_file():
        names = [line.strip() for line in plain.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != num_classes:
        names = [f"class_{i}" for i in range(num_classes)]
    return names


def read_pair(image_path: Path, ann_path: Path, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """Image ``[H, W, 3]`` uint8 RGB and train-id labels ``[H, W]`` uint8 (255 ignored), validated. As mmseg's
    loaders: the image decoded by OpenCV (``cv2.imdecode``, colour), the annotation by Pillow."""
    try:
        decoded = cv2.imdecode(np.fromfile(image_path, np.uint8), cv2.IMREAD_COLOR)
    except (OSError, ValueError, cv2.error) as err:
        raise SegDataError(f"cannot read image {image_path}: {err}") from err
    if decoded is None:
        raise SegDataError(f"cannot read image {image_path}: OpenCV cannot decode it (not an image file?)")
    image = np.ascontiguousarray(decoded[..., ::-1])  # BGR -> RGB
    try:
        with Image.open(ann_path) as ann:
            mode, raw = ann.mode, np.asarray(ann)
    except (OSError, ValueError) as err:
        raise SegDataError(f"cannot read annotation {ann_path}: {err}") from err
    if mode not in ("L", "P", "I;16", "I"):
        raise SegDataError(f"annotation {ann_path} has image mode {mode!r}; expected a single-channel label map "
                           "(8-bit grayscale or palette PNG holding class indices)")
    if raw.shape != image.shape[:2]:
        raise SegDataError(
            f"annotation {ann_path} is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image {image_path} is "
            f"{image.shape[1]}x{image.shape[0]}: they must have the same size"
        )
    bad = (raw > num_classes) & (raw != IGNORE_INDEX)
    if bad.any():
        raise SegDataError(
            f"annotation {ann_path} has label values {np.unique(raw[bad])[:10].tolist()} above the class count "
            f"({num_classes}; 0 and {IGNORE_INDEX} are ignored) in {int(bad.sum())} pixel(s)"
        )
    labels = raw.astype(np.int32) - 1
    labels[(raw == 0) | (raw == IGNORE_INDEX)] = IGNORE_INDEX
    return image, labels.astype(np.uint8)


def _resize(image: np.ndarray, labels: Optional[np.ndarray], size: Tuple[int, int]):
    """Resize to ``size`` = (width, height) as mmcv's ``imresize`` (OpenCV): bilinear image (no antialiasing),
    nearest labels; the same size returns the same pixels."""
    out = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    if labels is None:
        return out, None
    return out, cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)


def rescale_size(height: int, width: int, scale: Tuple[float, float]) -> Tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size with long side <= scale[0] and short side <= scale[1]."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def _crop_box(
    labels: np.ndarray, crop: int, rng: np.random.Generator, cat_max_ratio: float
) -> Tuple[int, int, int, int]:
    h, w = labels.shape

    def draw() -> Tuple[int, int, int, int]:
        top = int(rng.integers(0, max(h - crop, 0) + 1))
        left = int(rng.integers(0, max(w - crop, 0) + 1))
        return top, min(top + crop, h), left, min(left + crop, w)

    box = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            patch = labels[box[0] : box[1], box[2] : box[3]]
            counts = np.bincount(patch[patch != IGNORE_INDEX].ravel())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = draw()
    return box


#: mmseg 0.24 ``PhotoMetricDistortion``'s defaults (the official config uses them): brightness delta,
#: contrast and saturation factor ranges, hue delta (OpenCV's uint8 hue: 0..179, two degrees a step).
BRIGHTNESS_DELTA, CONTRAST_RANGE, SATURATION_RANGE, HUE_DELTA = 32, (0.5, 1.5), (0.5, 1.5), 18


@dataclass(frozen=True)
class Distortion:
    """One draw of the photometric distortion: each step's parameter, None for a step not applied."""

    brightness: Optional[float] = None  # added to every channel
    contrast: Optional[float] = None  # multiplies every channel
    contrast_first: bool = False  # contrast right after brightness (else after hue)
    saturation: Optional[float] = None  # multiplies HSV saturation
    hue: Optional[int] = None  # added to HSV hue, modulo 180


def draw_distortion(rng: np.random.Generator) -> Distortion:
    """mmseg's draws, in its order: each step applied with probability 0.5 (its parameter drawn only then);
    brightness delta uniform in +-32, contrast and saturation factors uniform in [0.5, 1.5], the contrast
    step first or last with probability 0.5, hue delta an integer in [-18, 18) (numpy's ``randint`` excludes
    its upper end, so mmseg shifts hue by -18..17)."""
    brightness = float(rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)) if rng.integers(2) else None
    contrast_first = bool(rng.integers(2))
    contrast = None
    if contrast_first and rng.integers(2):
        contrast = float(rng.uniform(*CONTRAST_RANGE))
    saturation = float(rng.uniform(*SATURATION_RANGE)) if rng.integers(2) else None
    hue = int(rng.integers(-HUE_DELTA, HUE_DELTA)) if rng.integers(2) else None
    if not contrast_first and rng.integers(2):
        contrast = float(rng.uniform(*CONTRAST_RANGE))
    return Distortion(brightness, contrast, contrast_first, saturation, hue)


def _affine_uint8(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``x * alpha + beta`` in float32, clipped to 0..255 and truncated back to uint8 (mmseg's ``convert``)."""
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, d: Distortion) -> np.ndarray:
    """mmseg 0.24's ``PhotoMetricDistortion`` with the parameters ``d`` on an RGB uint8 image ``[H, W, 3]``:
    brightness, contrast (first or last), saturation and hue, each back to uint8 after its step. Saturation
    and hue are changed in OpenCV's uint8 HSV (``cv2.cvtColor``: H 0..179, S and V 0..255), as mmcv's
    ``bgr2hsv``/``hsv2bgr``; RGB in with ``COLOR_RGB2HSV`` gives the H, S, V that mmseg's BGR image gives
    with ``COLOR_BGR2HSV``."""
    img = np.ascontiguousarray(image, dtype=np.uint8)
    if d.brightness is not None:
        img = _affine_uint8(img, beta=d.brightness)
    if d.contrast_first and d.contrast is not None:
        img = _affine_uint8(img, alpha=d.contrast)
    if d.saturation is not None:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = _affine_uint8(hsv[..., 1], alpha=d.saturation)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if d.hue is not None:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + d.hue) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not d.contrast_first and d.contrast is not None:
        img = _affine_uint8(img, alpha=d.contrast)
    return img


def _normalize(image: np.ndarray, cfg: AugmentConfig) -> torch.Tensor:
    """``[H, W, 3]`` 0-255 image -> normalised ``[3, H, W]`` float tensor."""
    return TF.normalize(torch.from_numpy(np.array(image, np.float32)).permute(2, 0, 1), cfg.mean, cfg.std)


def eval_image(image: np.ndarray, cfg: AugmentConfig, scale: Optional[Tuple[float, float]] = None) -> torch.Tensor:
    """The official ``AlignResize`` of an RGB uint8 image ``[H, W, 3]``: keep-ratio rescale to ``scale``
    (default ``cfg.eval_scale``), then a second resize (not padding) to multiples of ``cfg.size_divisor``;
    returns the normalised ``[3, h, w]`` float tensor."""
    height, width = image.shape[:2]
    image, _ = _resize(image, None, rescale_size(height, width, scale or cfg.eval_scale))
    div = cfg.size_divisor
    height, width = image.shape[:2]
    image, _ = _resize(image, None, (math.ceil(width / div) * div, math.ceil(height / div) * div))
    return _normalize(image, cfg)


class ADE20KDataset(Dataset):
    """Training split (``train=True``) or evaluation split of an ADE20K-layout folder.

    Training items are ``(index, stream position)`` pairs from :class:`fec_backbone.training.ResumableSampler`
    (``positions=True``) and return ``(image [3, crop, crop] float, labels [crop, crop] int64)`` through the
    reference augmentation; evaluation items are indices and return ``(image [3, h, w]`` at the evaluation
    scale aligned to ``size_divisor``, ``labels [H, W] int64`` at the original size).
    """

    def __init__(self, root: str | Path, split: str, num_classes: int, cfg: AugmentConfig, seed: int = 0,
                 rank: int = 0, train: bool = True):
        self.pairs = scan_split(root, split)
        self.num_classes, self.cfg, self.seed, self.rank, self.train = num_classes, cfg, seed, rank, train

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: int | Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if not self.train:
            image, labels = read_pair(*self.pairs[item], self.num_classes)
            return eval_image(image, cfg), torch.from_numpy(labels.astype(np.int64))
        index, position = item
        rng = np.random.default_rng([self.seed, self.rank, position])
        image, labels = read_pair(*self.pairs[index], self.num_classes)
        ratio = rng.uniform(*cfg.ratio_range)  # mmseg's Resize truncates the scaled target to whole pixels
        size = rescale_size(*labels.shape, (int(cfg.scale[0] * ratio), int(cfg.scale[1] * ratio)))
        image, labels = _resize(image, labels, size)
        top, bottom, left, right = _crop_box(labels, cfg.crop_size, rng, cfg.cat_max_ratio)
        image, labels = image[top:bottom, left:right], labels[top:bottom, left:right]
        if rng.random() < cfg.flip_prob:
            image, labels = image[:, ::-1], labels[:, ::-1]
        if cfg.photometric:
            image = photometric_distortion(image, draw_distortion(rng))
        # padded to the crop: image 0, labels ignored
        pad = (0, cfg.crop_size - labels.shape[1], 0, cfg.crop_size - labels.shape[0])
        target = torch.from_numpy(labels.astype(np.int64))
        return F.pad(_normalize(image, cfg), pad), F.pad(target, pad, value=IGNORE_INDEX)
