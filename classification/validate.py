"""Top-1/top-5 accuracy of an FEC checkpoint on an ImageFolder split.

    python -m classification.validate /data/imagenet --model fec_small --checkpoint fec_small.pth
    python -m classification.validate data/toy --checkpoint output/toy/model_best.pth.tar [--no-use-ema]

The checkpoint is one of ours (from ``classification.train``: its model, classes and data config are
taken from it) or an official FEC checkpoint (a ``CheckpointSaver`` training file, a plain state dict or
``.safetensors``; 1000 ImageNet classes, the model's pretrained-cfg transforms: resize to size/0.875,
centre crop, bicubic, as the official validate.py evaluated). EMA weights are evaluated when the file has them (``--no-use-ema``: the plain ones). The class folders of the
split are numbered in sorted order unless the checkpoint records its classes or ``--class-map`` gives them.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any, Dict, List, Optional

import timm
import torch
from timm.data import create_transform, resolve_data_config
from torch.utils.data import DataLoader

import fec_backbone  # noqa: F401  (registers the FEC models with timm)
from classification.data import DatasetError, ImageReadError, build_dataset, read_class_map
from classification.engine import amp_autocast, evaluate
from fec_backbone.checkpoint import CheckpointError, detect_variant, read_checkpoint, read_fec_weights

_logger = logging.getLogger("validate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data_dir", metavar="DIR", help="dataset root holding the split folder")
    p.add_argument("--split", default="val")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="our training checkpoint or an official one")
    p.add_argument("--model", default=None, help="timm model name (None: the one recorded in our checkpoint)")
    p.add_argument("--use-ema", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate a training checkpoint's EMA weights when it has them (--no-use-ema: the plain ones)")
    p.add_argument("--class-map", default="", metavar="FILE", help="class names in index order (timm class-map file)")
    p.add_argument("--img-size", type=int, default=None, help="input side (None: the checkpoint's, else 224)")
    p.add_argument("--crop-pct", type=float, default=None)
    p.add_argument("--interpolation", default="")
    p.add_argument("-b", "--batch-size", type=int, default=64)
    p.add_argument("-j", "--workers", type=int, default=4)
    p.add_argument("--amp", action="store_true", help="automatic mixed precision")
    p.add_argument("--amp-dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--device", default=None, help="cuda or cpu (None: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (None: torch's default)")
    p.add_argument("--log-interval", type=int, default=50)
    p.add_argument("--results-file", default="", metavar="FILE", help="also write the results as JSON")
    return p


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Evaluate; returns ``top1``, ``top5``, ``loss``, ``count``, ``img_per_sec`` and the settings used."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpt = read_checkpoint(args.checkpoint)
    state = read_fec_weights(ckpt, use_ema=args.use_ema)
    ema = args.use_ema and any(isinstance(ckpt.get(k), dict) for k in ("state_dict_ema", "model_ema"))
    recorded = ckpt.get("arch") if ckpt.get("arch") in fec_backbone.VARIANTS else None  # official files say "fec"
    model_name = args.model or recorded or detect_variant(state)
    if model_name is None:
        raise SystemExit(f"error: {args.checkpoint!r} does not record its model; pass --model (fec_small, ...)")
    if args.model and recorded not in (None, args.model):
        raise CheckpointError(f"{args.checkpoint!r} is a checkpoint of {recorded!r}, not of --model {args.model!r}")
    head = state.get("head.weight")
    if head is None:
        raise CheckpointError(f"{args.checkpoint!r} has no classifier (head.weight); it cannot be validated")
    num_classes = head.shape[0]
    model = timm.create_model(model_name, num_classes=num_classes)
    fec_backbone.load_fec_weights(model, state)
    model.to(device)

    class_names = read_class_map(args.class_map) if args.class_map else ckpt.get("class_names")
    dataset = build_dataset(args.data_dir, args.split, class_names)
    if len(dataset.class_names) != num_classes:
        raise DatasetError(
            f"{os.path.join(args.data_dir, args.split)!r} has {len(dataset.class_names)} class folders but the "
            f"checkpoint's classifier has {num_classes} outputs; pass --class-map with the model's classes in order"
        )
    recorded = ckpt.get("data_config") or {}
    overrides = dict(img_size=args.img_size, crop_pct=args.crop_pct, interpolation=args.interpolation or None)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    data_config = resolve_data_config({**recorded, **overrides}, model=model)
    if args.img_size is not None:
        data_config["input_size"] = (3, args.img_size, args.img_size)
    dataset.transform = create_transform(
        data_config["input_size"], interpolation=data_config["interpolation"], mean=data_config["mean"],
        std=data_config["std"], crop_pct=data_config["crop_pct"], crop_mode=data_config.get("crop_mode"))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        pin_memory=device.type == "cuda")
    _logger.info(f"validating {model_name} ({'EMA ' if ema else ''}weights of {args.checkpoint}) on "
                 f"{len(dataset)} images of {os.path.join(args.data_dir, args.split)}; data config {data_config}")
    metrics = evaluate(model, loader, device=device, autocast=amp_autocast(device, args.amp, args.amp_dtype),
                       log=_logger.info, log_interval=args.log_interval)
    _logger.info(f"top-1 {metrics['top1']:.3f}%  top-5 {metrics['top5']:.3f}%  loss {metrics['loss']:.4f}  "
                 f"({metrics['count']} images, {metrics['img_per_sec']:.1f} img/s)")
    result = dict(metrics, model=model_name, checkpoint=args.checkpoint, use_ema=ema,
                  data_config={k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()})
    if args.results_file:
        with open(args.results_file, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except (CheckpointError, DatasetError, ImageReadError) as err:
        raise SystemExit(f"error: {err}")
