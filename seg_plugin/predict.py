"""Segment images with a trained model: per image a colour overlay (ADE20K's palette, a legend of the classes
present) and the label map, both at the image's own size.

Inputs: files, folders (their images, not recursive) or glob patterns; any size (the network's input is
padded to its stride inside and cropped back). Models: a trainer checkpoint (``last.ckpt`` or its run
folder), a saved smp model folder or an official mmseg ADE20K checkpoint. The image is resized as the
model was evaluated (the run's evaluation scale; ADE20K's short side 512 otherwise; ``--scale`` to change
it). Grayscale, palette and RGBA images are converted to RGB (said in the output). Writes
``<name>_overlay.png`` and ``<name>_labels.png`` (uint8 train ids: class ``i`` is ADE20K's raw label ``i + 1``)
into ``--out-dir``.

    python -m seg_plugin.predict photos/ --checkpoint output/toy/model --out-dir output/predictions
    python -m seg_plugin.predict "photos/*.jpg" --checkpoint fpn_fec_small_ade20k.pth --out-dir out --mode slide
"""
from __future__ import annotations

import argparse
import glob
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from fec_backbone import CheckpointError

from .ade20k_meta import class_colours
from .inference import MODES, LoadedModel, load_model, predict_scores

__all__ = ["IMAGE_SUFFIXES", "InputError", "Written", "collect_inputs", "draw_overlay", "predict_files", "read_rgb",
           "main"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class InputError(ValueError):
    """An input path, folder or image that cannot be segmented; the message says what to do."""


def collect_inputs(inputs: Sequence[str]) -> List[Path]:
    """Image paths from files, folders (their files with an image suffix) and glob patterns, in order."""
    found: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise InputError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}); give a folder of "
                                 "images, image files or a glob pattern such as 'photos/*.jpg'")
            found += images
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            if not matches:
                raise InputError(f"the pattern {item!r} matches no files")
            found += matches
        else:
            raise InputError(f"{item} does not exist (give image files, folders or glob patterns)")
    return found


def read_rgb(path: Path) -> Tuple[np.ndarray, Optional[str]]:
    """``[H, W, 3]`` uint8 RGB pixels of an image file, and a note when it was converted to RGB."""
    try:
        with Image.open(path) as img:
            img.load()
            mode, bands = img.mode, len(img.getbands())
            rgb = img.convert("RGB") if mode != "RGB" else img.copy()
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{path} is not a readable image ({err}); give JPEG, PNG or other image files") from None
    note = None
    if mode != "RGB":
        what = {1: "1 channel (grayscale)", 2: "2 channels (grayscale + alpha)", 4: "4 channels (alpha dropped)"}
        note = f"converted from mode {mode}, {what.get(bands, f'{bands} channels')}, to RGB"
    return np.asarray(rgb), note


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def draw_overlay(image: np.ndarray, labels: np.ndarray, names: Sequence[str], colours: np.ndarray,
                 alpha: float = 0.5) -> Image.Image:
    """The image blended with its label colours and a legend in the top-left corner: a swatch, the name and
    the pixel share of each class present, most frequent first (as many rows as fit, then "+k more")."""
    blend = (image.astype(np.float32) * (1 - alpha) + colours[labels].astype(np.float32) * alpha).round()
    overlay = Image.fromarray(blend.astype(np.uint8))
    counts = np.bincount(labels.ravel(), minlength=len(names))
    present = [int(k) for k in np.argsort(-counts, kind="stable") if counts[k]]
    height, width = labels.shape
    row = max(10, min(18, height // 12))
    font = _font(row - 4)
    draw = ImageDraw.Draw(overlay, "RGBA")
    fits = max(1, (height - 4) // row)
    shown = present if len(present) <= fits else present[:fits - 1]
    lines = [f"{names[k]} {100 * counts[k] / labels.size:.0f}%" for k in shown]
    if len(shown) < len(present):
        lines.append(f"+{len(present) - len(shown)} more")
    text_w = max(draw.textlength(line, font=font) for line in lines)
    box_w = min(width, int(row + 6 + text_w + 4))
    draw.rectangle([0, 0, box_w, 4 + row * len(lines)], fill=(0, 0, 0, 160))
    for i, line in enumerate(lines):
        top = 2 + i * row
        if i < len(shown):
            draw.rectangle([3, top + 1, 3 + row - 4, top + row - 3], fill=tuple(int(c) for c in colours[shown[i]]))
        draw.text((row + 4, top), line, fill=(255, 255, 255, 255), font=font)
    return overlay


@dataclass
class Written:
    """The files written for one input image and the classes found in it, most frequent first."""

    source: Path
    overlay: Path
    labels: Path
    classes: List[str]


def predict_files(loaded: LoadedModel, paths: Sequence[Path], out_dir: Path, mode: str = "whole",
                  scale: Optional[Tuple[int, int]] = None, **options) -> List[Written]:
    """Segment ``paths`` into ``out_dir`` (see the module's description); prints one line per image."""
    out_dir.mkdir(parents=True, exist_ok=True)
    colours = class_colours(loaded.num_classes)
    written, used = [], set()
    for path in paths:
        image, note = read_rgb(path)
        labels = predict_scores(loaded, image, mode, scale=scale, **options).argmax(0).numpy().astype(np.uint8)
        stem, k = path.stem, 1
        while stem in used:
            stem, k = f"{path.stem}_{k}", k + 1
        used.add(stem)
        overlay_path, labels_path = out_dir / f"{stem}_overlay.png", out_dir / f"{stem}_labels.png"
        draw_overlay(image, labels, loaded.class_names, colours).save(overlay_path)
        Image.fromarray(labels, mode="L").save(labels_path)
        counts = np.bincount(labels.ravel(), minlength=loaded.num_classes)
        present = [loaded.class_names[c] for c in np.argsort(-counts, kind="stable") if counts[c]]
        written.append(Written(path, overlay_path, labels_path, present))
        print(f"{path} ({image.shape[1]}x{image.shape[0]}{'; ' + note if note else ''}) -> {overlay_path.name}, "
              f"{labels_path.name}: {', '.join(present[:6])}{' ...' if len(present) > 6 else ''}", flush=True)
    return written


def _scale(text: str) -> Tuple[int, int]:
    values = [int(v) for v in text.replace("x", ",").split(",")]
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give LONG,SHORT, e.g. 2048,512")
    return values[0], values[1]


def main(argv: Optional[List[str]] = None) -> int:
    description, _, epilog = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(prog="python -m seg_plugin.predict", description=" ".join(description.split()),
                                     epilog=epilog.rpartition("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--checkpoint", required=True,
                        help="last.ckpt (or its run folder), a saved smp model folder, or an official mmseg ADE20K file")
    parser.add_argument("--out-dir", required=True, help="folder for <name>_overlay.png and <name>_labels.png")
    parser.add_argument("--mode", choices=MODES, default="whole", help="inference mode (default: %(default)s)")
    parser.add_argument("--scale", type=_scale, help="resize to LONG,SHORT before inference (default: the model's "
                                                     "evaluation scale)")
    args = parser.parse_args(argv)
    try:
        paths = collect_inputs(args.inputs)
        loaded = load_model(args.checkpoint)
        print(f"{loaded.kind} {loaded.source}: {loaded.num_classes} classes ({', '.join(loaded.class_names[:5])}"
              f"{' ...' if loaded.num_classes > 5 else ''}); {len(paths)} image(s) -> {args.out_dir}", flush=True)
        predict_files(loaded, paths, Path(args.out_dir), args.mode, args.scale)
    except (InputError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
