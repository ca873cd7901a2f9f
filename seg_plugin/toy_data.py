"""A small generated dataset in the ADEChallengeData2016 layout whose labels need grouping across the image.

Scenes of 32 pixels a side (by default): a noisy, shaded "ground" (raw label 1) with four blobs, one in
each quarter, discs or boxes of random size and position. Three blobs share one colour and the fourth
has another; the three are "common" (2), the fourth is "odd" (3). Colours are drawn afresh per scene, so
neither colour nor shape tells the classes apart: a pixel's label depends on the colours of blobs in
other quarters, beyond what a few local layers see, which is what FEC's clustering token mixers relate
(``tests/test_learning.py`` measures FEC against FEC with them switched off). A one-pixel band around
every blob is unlabelled (raw 0, ignored), as ADE20K's object boundaries often are. The same arguments
always give the same files.

    python -m seg_plugin.toy_data --out data/toy_ade20k          # 480 training, 32 validation images
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from fec_backbone.training import ensure_generated

__all__ = ["TOY_CLASSES", "generate"]

TOY_CLASSES = ("ground", "common", "odd")


def _hsv(hue: float, sat: float, val: float) -> np.ndarray:
    """RGB (0-255, float32) of a hue in degrees and a saturation and value in [0, 1]."""
    h = (hue % 360.0) / 60.0
    c = val * sat
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return 255 * (np.asarray(rgb, np.float32) + (val - c))


def _scene(rng: np.random.Generator, min_size: int, max_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """One square scene: ``[S, S, 3]`` uint8 image and ``[S, S]`` raw labels (0 ignored, 1 ground, 2 common, 3 odd)."""
    size = int(rng.integers(min_size, max_size + 1))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    labels = np.ones((size, size), np.uint8)
    image = rng.uniform(70, 150) + rng.uniform(-15, 15, 3) + (yy / size)[..., None] * rng.uniform(-25, 25, 3)
    common = rng.uniform(0, 360)
    odd_hue = common + rng.uniform(90, 270)  # at least 90 degrees of hue from the common colour
    odd_cell = int(rng.integers(4))
    half = size / 2
    for cell in range(4):
        radius = rng.uniform(0.26, 0.34) * half
        lo = radius + 1.5
        cx = (cell % 2) * half + rng.uniform(lo, half - lo)
        cy = (cell // 2) * half + rng.uniform(lo, half - lo)
        if rng.random() < 0.5:
            dist = np.hypot(yy - cy, xx - cx) / radius
        else:
            dist = np.maximum(np.abs(yy - cy), np.abs(xx - cx)) / (0.85 * radius)
        inside, band = dist <= 1.0, (dist > 1.0) & (dist <= 1.0 + 1.0 / radius)
        hue = odd_hue if cell == odd_cell else common
        colour = _hsv(hue + rng.uniform(-6, 6), rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.0))
        image = np.where(inside[..., None], colour, image)
        labels[inside] = 3 if cell == odd_cell else 2
        labels[band] = 0
    image = image + rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8), labels


def generate(
    out: str | Path,
    train: int = 480,
    val: int = 32,
    seed: int = 0,
    min_size: int = 32,
    max_size: int = 32,
) -> Path:
    """Write the dataset under ``out``; returns ``out``. The shared generated-data policy
    (:func:`fec_backbone.training.ensure_generated`): kept when generated with the same arguments,
    regenerated when generated here with others, an error for a non-empty folder not generated here.
    Files are written to a temporary sibling folder that replaces ``out`` at the end."""
    out = Path(out)
    spec = dict(generator="seg_toy_ade20k", train=train, val=val, seed=seed, min_size=min_size, max_size=max_size,
                classes=list(TOY_CLASSES))

    def write(folder: Path) -> None:
        for split_id, (split, count) in enumerate((("training", train), ("validation", val))):
            (folder / "images" / split).mkdir(parents=True)
            (folder / "annotations" / split).mkdir(parents=True)
            for i in range(count):
                image, labels = _scene(np.random.default_rng([seed, split_id, i]), min_size, max_size)
                name = f"toy_{split}_{i:05d}"
                Image.fromarray(image).save(folder / "images" / split / f"{name}.jpg", quality=95)
                Image.fromarray(labels, mode="L").save(folder / "annotations" / split / f"{name}.png")
        (folder / "class_names.txt").write_text("\n".join(TOY_CLASSES) + "\n")

    ensure_generated(out, spec, write)
    return out


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seg_plugin.toy_data",
        description="Write a small generated segmentation dataset in the ADEChallengeData2016 layout "
                    "(images/{training,validation}/*.jpg, annotations/{training,validation}/*.png, class_names.txt): "
                    "32 px scenes with four blobs, three of one colour and one of another; classes ground, common, "
                    "odd (raw labels 1-3, 0 ignored). The odd blob is told only by comparing colours across the "
                    "image. The same arguments always give the same files; a folder generated with other "
                    "arguments is regenerated, any other non-empty folder is refused.",
        epilog="Train on it: python -m seg_plugin.train_ade20k --config configs/segmentation/toy_linknet_fec_s.yaml "
               "--data-root DATASET --out-dir RUN")
    parser.add_argument("--out", required=True, help="dataset folder to create, e.g. data/toy_ade20k")
    parser.add_argument("--train", type=int, default=480, help="training images (default: %(default)s)")
    parser.add_argument("--val", type=int, default=32, help="validation images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the scenes (default: %(default)s)")
    args = parser.parse_args(argv)
    root = generate(args.out, args.train, args.val, args.seed)
    print(f"toy ADE20K-layout dataset: {root} ({args.train} training, {args.val} validation images, "
          f"{len(TOY_CLASSES)} classes: {', '.join(TOY_CLASSES)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
