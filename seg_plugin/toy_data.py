"""A small generated dataset in the ADEChallengeData2016 layout, with a task a model learns in minutes.

Scenes of 64 to 112 pixels a side: a textured "ground" (raw label 1) with discs (2), boxes (3) and
striped patches (4), each class with its own colour family under random jitter and noise. A one-pixel
band around every object is unlabelled (raw 0, ignored), as ADE20K's object boundaries often are.
The same arguments always give the same files.

    python -m seg_plugin.toy_data --out data/toy_ade20k          # 48 training, 16 validation images
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from PIL import Image

__all__ = ["TOY_CLASSES", "generate"]

TOY_CLASSES = ("ground", "disc", "box", "stripes")
_PALETTE = {1: (150, 120, 80), 2: (210, 50, 50), 3: (50, 180, 70), 4: (60, 80, 210)}
_MARKER = "toy_dataset.json"


def _scene(rng: np.random.Generator, min_size: int, max_size: int) -> Tuple[np.ndarray, np.ndarray]:
    h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    labels = np.ones((h, w), np.uint8)
    base = np.asarray(_PALETTE[1], np.float32) + rng.uniform(-20, 20, 3)
    image = base + (yy / h)[..., None] * rng.uniform(-30, 30, 3)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(2, 5))
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        size = rng.uniform(0.12, 0.3) * min(h, w)
        if kind == 2:
            dist = np.hypot(yy - cy, xx - cx) / size
        else:
            dist = np.maximum(np.abs(yy - cy), np.abs(xx - cx) * rng.uniform(0.6, 1.4)) / size
        inside, band = dist <= 1.0, (dist > 1.0) & (dist <= 1.0 + 1.5 / size)
        colour = np.asarray(_PALETTE[kind], np.float32) + rng.uniform(-25, 25, 3)
        fill = np.broadcast_to(colour, (h, w, 3)).copy()
        if kind == 4:
            period = rng.uniform(4, 8)
            stripes = (np.sin((yy + xx) * np.pi / period) > 0)[..., None]
            fill = np.where(stripes, fill, fill * 0.45 + 120)
        image = np.where(inside[..., None], fill, image)
        labels[inside] = kind
        labels[band] = 0
    image = image + rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8), labels


def generate(
    out: str | Path,
    train: int = 48,
    val: int = 16,
    seed: int = 0,
    min_size: int = 64,
    max_size: int = 112,
) -> Path:
    """Write the dataset under ``out`` (kept if already generated with the same arguments); returns ``out``.

    Files are written to a temporary sibling folder and moved into place at the end, so an
    interrupted run leaves no half dataset behind.
    """
    out = Path(out)
    spec = dict(train=train, val=val, seed=seed, min_size=min_size, max_size=max_size, classes=list(TOY_CLASSES))
    marker = out / _MARKER
    if marker.is_file():
        if json.loads(marker.read_text()) == spec:
            return out
        raise FileExistsError(
            f"{out} holds a toy dataset generated with other settings ({marker}); remove it or use another --out"
        )
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a generated toy dataset; choose another --out")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for split_id, (split, count) in enumerate((("training", train), ("validation", val))):
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            rng = np.random.default_rng([seed, split_id, i])
            image, labels = _scene(rng, min_size, max_size)
            name = f"toy_{split}_{i:05d}"
            Image.fromarray(image).save(tmp / "images" / split / f"{name}.jpg", quality=95)
            Image.fromarray(labels, mode="L").save(tmp / "annotations" / split / f"{name}.png")
    (tmp / "class_names.txt").write_text("\n".join(TOY_CLASSES) + "\n")
    (tmp / _MARKER).write_text(json.dumps(spec, indent=2) + "\n")
    if out.exists():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seg_plugin.toy_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="dataset root to create")
    parser.add_argument("--train", type=int, default=48, help="training images")
    parser.add_argument("--val", type=int, default=16, help="validation images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = generate(args.out, args.train, args.val, args.seed)
    print(f"toy ADE20K-layout dataset: {root} ({args.train} training, {args.val} validation images, "
          f"{len(TOY_CLASSES)} classes: {', '.join(TOY_CLASSES)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
