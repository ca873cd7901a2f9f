"""A small generated ImageFolder dataset whose task needs grouping across the image, for demos and CI.

Every image is an odd-one-out scene of :mod:`fec_backbone.toy_scenes`: four shapes of one kind, one in each
quarter, three in one colour and the fourth in another; the class is the quarter of the odd-coloured shape
(``top_left`` .. ``bottom_right``). Colours are drawn afresh per image from one palette for every class, so
neither a colour nor a shape tells the classes apart: a network has to relate pixels far apart (what
FEC's clustering token mixers do; ``tests/test_learning.py`` measures FEC against FEC with them switched
off). Output is byte-identical for the same arguments: every image is drawn from its own seeded generator.

    python -m classification.toy_data data/toy            # train/ (120 per class), val/ (40 per class)
    python -m classification.toy_data data/toy --scene data/toy_scene.png   # and a 224 px multi-shape image
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from fec_backbone.toy_scenes import odd_one_out, shapes_scene
from fec_backbone.training import ensure_generated

__all__ = ["CLASSES", "make_toy_imagefolder", "draw_toy_image", "draw_toy_scene"]

#: The classes: the quarter that holds the odd-coloured shape (the scene's ``odd``, row by row).
CLASSES = ("top_left", "top_right", "bottom_left", "bottom_right")


def draw_toy_image(kind: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """One RGB image of class ``kind`` (one of :data:`CLASSES`) drawn with ``rng``."""
    if kind not in CLASSES:
        raise ValueError(f"unknown toy class {kind!r}; choose one of {CLASSES}")
    # the validation centre crop (0.9) keeps every shape whole
    return Image.fromarray(odd_one_out(rng, size, odd=CLASSES.index(kind)).image)


def draw_toy_scene(seed: int = 0, size: int = 224, kinds: Sequence[str] = ("circle", "square", "cross")) -> Image.Image:
    """A larger image with one shape of each of ``kinds`` apart from each other, for visualisations."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    return Image.fromarray(shapes_scene(rng, size, size, kinds=kinds, each_kind_once=True).image)


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
