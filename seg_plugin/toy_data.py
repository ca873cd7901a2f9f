"""A small generated dataset in the ADEChallengeData2016 layout whose labels need grouping across the image.

The scenes are the core's odd-one-out scenes (:func:`fec_backbone.toy_scenes.odd_one_out`, shared with the
classification toy data), 32 pixels a side by default: a noisy, shaded "ground" (raw label 1) with four
shapes, one in each quarter, each a disc or a turned box of random size and position (``same_kind=False``).
Three shapes share one colour and the fourth has another; the three are "common" (2), the fourth is "odd"
(3). Colours are drawn afresh per scene, so neither colour nor shape tells the classes apart: a pixel's
label depends on the colours of shapes in other quarters, beyond what a few local layers see, which is what
FEC's clustering token mixers relate (``tests/test_learning.py`` measures FEC against FEC with them
switched off). The one-pixel outline of every shape is unlabelled (raw 0, ignored), as ADE20K's object
boundaries often are. This module only writes the scenes in the ADE20K layout; the same arguments always
give the same files.

    python -m seg_plugin.toy_data --out data/toy_ade20k          # 480 training, 32 validation images
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from fec_backbone.toy_scenes import ODD_ONE_OUT_LABELS, odd_one_out
from fec_backbone.training import ensure_generated

__all__ = ["KINDS", "TOY_CLASSES", "generate"]

#: Class names of the raw labels 1, 2, 3 (the core's odd-one-out pixel labels).
TOY_CLASSES = tuple(ODD_ONE_OUT_LABELS)
#: Shape kinds, each shape's own: discs and boxes (turned), so neither kind nor colour tells the classes apart.
KINDS = ("circle", "square")
#: Version of the scenes; in the manifest, so folders of an earlier generator are regenerated.
GENERATOR_VERSION = 2


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
    spec = dict(generator="seg_toy_ade20k", version=GENERATOR_VERSION, scenes="fec_backbone.toy_scenes.odd_one_out",
                kinds=list(KINDS), train=train, val=val, seed=seed, min_size=min_size, max_size=max_size,
                classes=list(TOY_CLASSES))

    def write(folder: Path) -> None:
        for split_id, (split, count) in enumerate((("training", train), ("validation", val))):
            (folder / "images" / split).mkdir(parents=True)
            (folder / "annotations" / split).mkdir(parents=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_id, i])
                scene = odd_one_out(rng, int(rng.integers(min_size, max_size + 1)), kinds=KINDS, same_kind=False)
                image, labels = scene.image, scene.labels
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
                    "32 px scenes of the core's odd-one-out generator with four shapes (discs or turned boxes), "
                    "three of one colour and one of another; classes ground, common, odd (raw labels 1-3, 0 "
                    "ignored). The odd shape is told only by comparing colours across the image. The same "
                    "arguments always give the same files; a folder generated with other "
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
