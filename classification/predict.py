"""Top-k predictions of an FEC classifier for image files, as timm's ``inference.py``.

    python -m classification.predict photo.jpg --checkpoint output/toy/model_best.pth.tar
    python -m classification.predict photos/ --model fec_small --checkpoint fec_small.pth.tar --results-dir out
    python -m classification.predict "photos/*.png" --results-format json      # random weights: a smoke run

``IMAGES`` are files, folders (their images, not recursive) or glob patterns. The checkpoint is one of ours
(``classification.train`` or timm's ``train.py``: model, classes and data config taken from it) or an
official FEC ImageNet checkpoint (EMA weights first, ``--no-use-ema`` for the plain ones); without one the
model has random weights. Images of any size and mode are converted to RGB (1- and 4-channel images are
logged) and preprocessed as the model's ``pretrained_cfg`` says (timm's ``resolve_data_config``: resize to
size / crop_pct, centre crop, bicubic) or as the checkpoint's training recorded. Class names: ImageNet's
(timm's ``ImageNetInfo``) for 1000 classes, those our trainer recorded, ``--class-map``, else indices.
Writes ``<results-dir>/<results-file>.csv`` (and/or ``.json``): ``filename``, then ``index_<j>``,
``label_<j>``, ``prob_<j>`` for rank ``j`` (0: most probable).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
from PIL import Image
from timm.data import ImageNetInfo, create_transform, infer_imagenet_subset, resolve_data_config
from timm.data.readers.img_extensions import get_img_extensions
from timm.utils.misc import natural_key

import fec_backbone  # noqa: F401  (registers the FEC models with timm)
from classification.data import DatasetError, ImageReadError, read_class_map
from fec_backbone.checkpoint import CheckpointError, detect_variant, extract_fec_weights, read_checkpoint

_logger = logging.getLogger("predict")

#: What a checkpoint holding an FEC without classifier most likely is, by the first part of its key prefix.
_OTHER_TASKS = {"backbone": "a Detectron2 or mmdet/mmseg model",
                "model": "a segmentation trainer's Lightning checkpoint", "encoder": "an smp segmentation model"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or glob patterns")
    p.add_argument("--model", default=None, help="timm model name (None: the checkpoint's, else fec_small)")
    p.add_argument("--checkpoint", default="", metavar="PATH",
                   help="our training checkpoint or an official FEC one ('': random weights)")
    p.add_argument("--use-ema", action=argparse.BooleanOptionalAction, default=True,
                   help="use a training checkpoint's EMA weights when it has them")
    p.add_argument("--class-map", default="", metavar="FILE", help="class names in index order (timm class-map file)")
    p.add_argument("--img-size", type=int, default=None, help="input side, divisible by 32 (None: the model's)")
    p.add_argument("--crop-pct", type=float, default=None)
    p.add_argument("--interpolation", default="")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("-b", "--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="cuda or cpu (None: cuda if available)")
    p.add_argument("--results-dir", default=".", metavar="DIR")
    p.add_argument("--results-file", default="topk", help="file name without extension")
    p.add_argument("--results-format", nargs="+", default=["csv"], choices=["csv", "json"])
    return p


def find_images(patterns: Sequence[str]) -> List[str]:
    """The image files named by files, folders (images directly inside, natural order) and glob patterns.

    Raises :class:`DatasetError` for a missing path, a folder or pattern without images, or a named file
    that is not an image."""
    extensions = get_img_extensions(as_set=True)
    found: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            files = sorted((os.path.join(pattern, f) for f in os.listdir(pattern)), key=natural_key)
            files = [f for f in files if os.path.isfile(f) and os.path.splitext(f)[1].lower() in extensions]
            if not files:
                raise DatasetError(f"folder {pattern!r} holds no images (extensions {', '.join(sorted(extensions))})")
        elif os.path.isfile(pattern):
            files = [pattern]
        else:
            files = sorted((f for f in glob.glob(pattern) if os.path.isfile(f)
                            and os.path.splitext(f)[1].lower() in extensions), key=natural_key)
            if not files:
                what = "no such file or folder" if not glob.has_magic(pattern) else "the pattern matches no images"
                raise DatasetError(f"{pattern!r}: {what}")
        found += files
    return found


def read_rgb(path: str) -> Image.Image:
    """An image file as an RGB image; other modes (grey, grey + alpha, RGBA, palette, CMYK) are converted and logged."""
    try:
        with Image.open(path) as img:
            img.load()
            bands = len(img.getbands())
            if img.mode != "RGB":
                _logger.info(f"{path}: {bands}-channel image (mode {img.mode}) converted to RGB")
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageReadError(f"cannot read image {path!r}: not an image file, or a damaged one "
                             f"({type(err).__name__}: {err})") from None


def load_classifier(
    checkpoint: str, model_name: Optional[str], use_ema: bool
) -> Tuple[nn.Module, Dict[str, Any]]:
    """The classifier of ``checkpoint`` (random ``model_name``/fec_small weights without one) and what the
    checkpoint records (``class_names``, ``data_config``; empty for other files).

    Raises :class:`CheckpointError` for a file that holds no FEC, an FEC without classifier (a detection or
    segmentation checkpoint), or an FEC of another variant than ``model_name``."""
    if not checkpoint:
        return timm.create_model(model_name or "fec_small"), {}
    ckpt = read_checkpoint(checkpoint)
    state, prefix, _ = extract_fec_weights(ckpt, use_ema=use_ema)
    head = state.get("head.weight")
    if head is None:
        kind = _OTHER_TASKS.get(prefix.split(".", 1)[0], "a backbone without classifier") if prefix else (
            "a backbone without classifier")
        raise CheckpointError(
            f"{checkpoint!r} is not a classification checkpoint: its FEC (under the key prefix {prefix or '(none)'!r}) "
            f"has no classifier (head.weight); it looks like {kind}. Use fec visualize for its clusters, or its own "
            "task's tools")
    recorded = ckpt.get("arch") if ckpt.get("arch") in fec_backbone.VARIANTS else None  # official files say "fec"
    found = recorded or detect_variant(state)
    if model_name and found not in (None, model_name):
        raise CheckpointError(f"{checkpoint!r} is a checkpoint of {found!r}, not of --model {model_name!r}")
    model_name = model_name or found
    if model_name is None:
        raise CheckpointError(f"{checkpoint!r} does not record its model and it is no FEC-S/B/L; pass --model")
    model = timm.create_model(model_name, num_classes=head.shape[0])
    fec_backbone.load_fec_weights(model, state)
    return model, {k: ckpt[k] for k in ("class_names", "data_config") if ckpt.get(k)}


def class_labels(model: nn.Module, recorded: Optional[Sequence[str]], class_map: str = "") -> List[str]:
    """Names of the model's classes: ``class_map``'s, then the checkpoint's, then ImageNet's for a
    1000-class model, else the indices."""
    n = model.num_classes
    names = read_class_map(class_map) if class_map else list(recorded or [])
    if names:
        if len(names) != n:
            raise DatasetError(f"{len(names)} class names for a classifier of {n} classes")
        return names
    subset = infer_imagenet_subset(model) if n == 1000 else None
    if subset:
        info = ImageNetInfo(subset)
        return [info.index_to_description(i) for i in range(n)]
    return [str(i) for i in range(n)]


@torch.inference_mode()
def predict(model: nn.Module, files: Sequence[str], transform, topk: int, batch_size: int,
            device: torch.device) -> List[Tuple[List[int], List[float]]]:
    """Top-``topk`` class indices and softmax probabilities of each file."""
    out = []
    for start in range(0, len(files), batch_size):
        batch = torch.stack([transform(read_rgb(f)) for f in files[start:start + batch_size]]).to(device)
        probs, indices = model(batch).float().softmax(-1).topk(min(topk, model.num_classes), dim=-1)
        out += [(i.tolist(), p.tolist()) for i, p in zip(indices.cpu(), probs.cpu())]
    return out


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Predict, print and write the results; returns one dict per image (``filename``, ``index``, ``label``,
    ``prob``: lists by rank)."""
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    files = find_images(args.images)
    model, recorded = load_classifier(args.checkpoint, args.model, args.use_ema)
    model.eval().to(device)
    if not args.checkpoint:
        _logger.info(f"no --checkpoint: {model.pretrained_cfg['architecture']} with random weights, the classes "
                     "are meaningless")
    labels = class_labels(model, recorded.get("class_names"), args.class_map)
    overrides = dict(img_size=args.img_size, crop_pct=args.crop_pct, interpolation=args.interpolation or None)
    data_config = resolve_data_config({**recorded.get("data_config", {}),
                                       **{k: v for k, v in overrides.items() if v is not None}}, model=model)
    if args.img_size is not None:
        data_config["input_size"] = (3, args.img_size, args.img_size)
    side = data_config["input_size"][-2:]
    if side[0] % model.reduction or side[1] % model.reduction:
        raise DatasetError(f"--img-size must be divisible by {model.reduction} for FEC, got {side[0]}x{side[1]}")
    transform = create_transform(**{k: data_config[k] for k in ("input_size", "interpolation", "mean", "std",
                                                                "crop_pct", "crop_mode") if k in data_config})
    _logger.info(f"{len(files)} image(s); data config {data_config}")
    results = []
    for path, (indices, probs) in zip(files, predict(model, files, transform, args.topk, args.batch_size, device)):
        results.append(dict(filename=path, index=indices, label=[labels[i] for i in indices], prob=probs))
        print(path)
        for rank, (i, p) in enumerate(zip(indices, probs), start=1):
            print(f"  {rank}. {p:.4f}  {i:4d}  {labels[i]}")
    os.makedirs(args.results_dir, exist_ok=True)
    for fmt in args.results_format:
        path = os.path.join(args.results_dir, f"{args.results_file}.{fmt}")
        with open(path, "w", encoding="utf-8", newline="") as f:
            if fmt == "json":
                json.dump(results, f, indent=1)
            else:
                k = len(results[0]["index"])
                writer = csv.writer(f)
                writer.writerow(["filename"] + [f"{c}_{j}" for c in ("index", "label", "prob") for j in range(k)])
                for r in results:
                    writer.writerow([r["filename"], *r["index"], *r["label"], *(f"{p:.6f}" for p in r["prob"])])
        _logger.info(f"wrote {path}")
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except (CheckpointError, DatasetError, ImageReadError) as err:
        raise SystemExit(f"error: {err}")
