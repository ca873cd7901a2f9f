"""A small generated ImageFolder dataset whose task needs grouping across the image, for demos and CI.

Every image shows the same four shapes (``circle``, ``square``, ``triangle``, ``cross``), one in each
quarter of the image in random order, on a noisy, shaded background. Three of them share one colour and
the fourth has another; the class is the kind of that odd-coloured shape. Colours are drawn afresh per
image from one palette for every class, so neither a colour nor a shape tells the classes apart: a
network has to find which shape's colour no other shape shares, relating pixels far apart (what FEC's
clustering token mixers do; ``tests/test_learning.py`` measures FEC against FEC with them switched off).
Position, size, rotation, colours and noise vary per image. Output is byte-identical for the same
arguments: every image is drawn from its own seeded generator.

    python -m classification.toy_data data/toy            # train/ (120 per class), val/ (40 per class)
    python -m classification.toy_data data/toy --scene data/toy_scene.png   # and a 224 px multi-shape image
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from fec_backbone.training import ensure_generated

__all__ = ["CLASSES", "make_toy_imagefolder", "draw_toy_image", "draw_toy_scene"]

CLASSES = ("top_left", "top_right", "bottom_left", "bottom_right")
#: shapes drawn; all four of an image have the same kind
SHAPES = ("circle", "square", "triangle", "cross")


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple:
    h = (h % 360.0) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    m = v - c
    return tuple(int(round(255 * (u + m))) for u in (r, g, b))


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> List[tuple]:
    def rotated(points: Sequence[tuple]) -> List[tuple]:
        ca, sa = math.cos(angle), math.sin(angle)
        return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]

    if kind == "square":
        s = r * 0.85
        return rotated([(-s, -s), (s, -s), (s, s), (-s, s)])
    if kind == "triangle":
        return rotated([(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])
    if kind == "cross":
        a, b = r, r * 0.33
        return rotated([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a),
                        (-b, b), (-a, b), (-a, -b), (-b, -b)])
    raise ValueError(f"no polygon for {kind!r}")


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    hue = rng.uniform(0, 360)
    top = np.array(_hsv_to_rgb(hue, rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.6)), dtype=np.float32)
    bottom = np.array(_hsv_to_rgb(hue + rng.uniform(-40, 40), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.6)),
                      dtype=np.float32)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    pixels = top * (1 - ramp) + bottom * ramp + rng.normal(0.0, 12.0, (size, size, 3)).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _random_colour(rng: np.random.Generator) -> tuple:
    """A saturated colour with a uniformly random hue: (hue in degrees, saturation, value)."""
    return rng.uniform(0, 360), rng.uniform(0.65, 1.0), rng.uniform(0.75, 1.0)


def _other_colour(rng: np.random.Generator, colour: tuple) -> tuple:
    """A colour whose hue is at least 90 degrees from ``colour``'s, so that it is clearly another one."""
    return colour[0] + rng.uniform(90, 270), rng.uniform(0.65, 1.0), rng.uniform(0.75, 1.0)


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, rng: np.random.Generator, cx: float, cy: float, r: float,
                colour: tuple) -> None:
    """Draw ``kind`` with ``colour`` (hue, saturation, value), jittered slightly (+-6 degrees of hue)."""
    hue, sat, val = colour
    rgb = _hsv_to_rgb(hue + rng.uniform(-6, 6), float(np.clip(sat + rng.uniform(-0.05, 0.05), 0, 1)),
                      float(np.clip(val + rng.uniform(-0.05, 0.05), 0, 1)))
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
    else:
        draw.polygon(_shape_polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=rgb)


def draw_toy_image(kind: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """One RGB image of class ``kind`` (one of :data:`CLASSES`) drawn with ``rng``: a shape in each
    quarter of the image, the one in quarter ``kind`` in one colour and the other three in another."""
    if kind not in CLASSES:
        raise ValueError(f"unknown toy class {kind!r}; choose one of {CLASSES}")
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    common = _random_colour(rng)
    odd = _other_colour(rng, common)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    half = size / 2
    margin = 0.06 * size  # the validation centre crop keeps every shape whole
    for cell, name in enumerate(CLASSES):
        r = rng.uniform(0.26, 0.34) * half
        lo = r + margin / 2
        cx = (cell % 2) * half + rng.uniform(lo, half - lo)
        cy = (cell // 2) * half + rng.uniform(lo, half - lo)
        _draw_shape(draw, shape, rng, cx, cy, r, odd if name == kind else common)
    return image


def draw_toy_scene(seed: int = 0, size: int = 224, kinds: Sequence[str] = ("circle", "square", "cross")) -> Image.Image:
    """A larger image with one shape of each of ``kinds`` in separate cells, for visualisations."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    cells = rng.permutation(4)[: len(kinds)]
    half = size / 2
    for kind, cell in zip(kinds, cells):
        r = rng.uniform(0.26, 0.34) * half
        cx = (cell % 2) * half + rng.uniform(r, half - r)
        cy = (cell // 2) * half + rng.uniform(r, half - r)
        _draw_shape(draw, kind, rng, cx, cy, r, _random_colour(rng))
    return image


def _image_seed(seed: int, split: str, label: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, 0 if split == "train" else 1, label, index])


def make_toy_imagefolder(
    root: str,
    train_per_class: int = 120,
    val_per_class: int = 40,
    size: int = 32,
    seed: int = 0,
    classes: Sequence[str] = CLASSES,
    verbose: bool = True,
) -> Dict[str, int]:
    """Write ``root/{train,val}/<class>/<class>_<i>.png`` and return the image count per split.

    The shared generated-data policy (:func:`fec_backbone.training.ensure_generated`): a dataset made with
    the same arguments is kept as is, one made here with other arguments is regenerated, and a non-empty
    folder that was not made here raises :class:`~fec_backbone.training.GeneratedDataError`.
    """
    settings = dict(generator="classification_toy", version=2, train_per_class=train_per_class,
                    val_per_class=val_per_class, size=size, seed=seed, classes=list(classes))
    counts = {"train": train_per_class * len(classes), "val": val_per_class * len(classes)}

    def write(folder) -> None:
        for split, per_class in (("train", train_per_class), ("val", val_per_class)):
            for label, kind in enumerate(classes):
                target = os.path.join(folder, split, kind)
                os.makedirs(target)
                for i in range(per_class):
                    rng = np.random.default_rng(_image_seed(seed, split, label, i))
                    draw_toy_image(kind, rng, size).save(os.path.join(target, f"{kind}_{i:04d}.png"), optimize=False)

    wrote = ensure_generated(root, settings, write)
    if verbose:
        print(f"wrote toy dataset to {root}: " if wrote else f"toy dataset already present in {root}: ",
              end="")
        print(f"{counts['train']} train and {counts['val']} val images, {len(classes)} classes "
              f"({', '.join(classes)}), {size}x{size} px")
    return counts


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="output folder: new, empty, or a toy dataset made with the same settings")
    parser.add_argument("--train-per-class", type=int, default=120)
    parser.add_argument("--val-per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scene", default="", metavar="PNG",
                        help="also write a 224 px image with several shapes (for fec visualize) to this file")
    args = parser.parse_args(argv)
    make_toy_imagefolder(args.root, args.train_per_class, args.val_per_class, args.size, args.seed)
    if args.scene:
        draw_toy_scene(args.seed).save(args.scene)
        print(f"wrote {args.scene}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
