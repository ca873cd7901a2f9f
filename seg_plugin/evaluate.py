"""Evaluate a segmentation model on an ADE20K-layout validation split: mIoU, aAcc, mAcc and per-class IoU,
computed as mmseg 0.24 does (intersections and unions summed over the whole split, label 255 ignored,
classes absent from labels and predictions left out of the means).

The model is a trainer checkpoint (``last.ckpt`` or its run folder), a saved smp model folder or an official
mmseg ADE20K checkpoint (:func:`seg_plugin.inference.load_model`); images are read as the trainer reads them
(:func:`seg_plugin.data.read_pair`, raw label 0 ignored). Modes: ``whole`` (the official protocol),
``slide`` and ``aug`` (multi-scale and flip), see :mod:`seg_plugin.inference`. Under ``torchrun`` each
process takes every world-size-th image (no padding: each image is counted once) and the sums are added
across processes. Results are printed and written as JSON (``--out``, default ``eval_<split>_<mode>.json``
in the run folder).

    python -m seg_plugin.evaluate --checkpoint output/toy/last.ckpt
    python -m seg_plugin.evaluate --checkpoint output/toy/model --mode slide --crop 16 --stride 8
    python -m seg_plugin.evaluate --checkpoint fpn_fec_small_ade20k.pth --data-root data/ADEChallengeData2016 --mode aug
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from fec_backbone import CheckpointError

from .data import IGNORE_INDEX, SegDataError, read_pair, scan_split
from .inference import MODES, MSFLIP_RATIOS, LoadedModel, describe, load_model, predict_scores

__all__ = ["area_sums", "evaluate", "format_table", "shard", "summarize", "main"]


def shard(count: int, rank: int, world: int) -> List[int]:
    """The indices of ``count`` items that process ``rank`` of ``world`` takes: every world-size-th one,
    without padding, so that the ranks together take each item exactly once."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    return list(range(rank, count, world))


def area_sums(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[3, num_classes]`` int64 pixel counts of one image: intersection (predicted and labelled as the
    class), predicted, labelled, over the pixels whose label is not ``IGNORE_INDEX`` (mmseg's
    ``intersect_and_union``; union = predicted + labelled - intersection)."""
    keep = labels != IGNORE_INDEX
    pred, labels = pred[keep].long(), labels[keep].long()
    hit = pred[pred == labels]
    return torch.stack([torch.bincount(t, minlength=num_classes)[:num_classes] for t in (hit, pred, labels)])


def summarize(sums: torch.Tensor, names: Sequence[str]) -> Dict[str, Any]:
    """mIoU, aAcc, mAcc and per-class IoU / Acc from summed :func:`area_sums` (NaN for a class absent from
    both labels and predictions (IoU) or from the labels (Acc); the means leave NaN out)."""
    inter, pred, label = sums.double()
    union = pred + label - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.nan)
    acc = torch.where(label > 0, inter / label.clamp_min(1), torch.nan)
    return {"mIoU": float(iou.nanmean()), "aAcc": float(inter.sum() / label.sum().clamp_min(1)),
            "mAcc": float(acc.nanmean()),
            "classes": [{"name": n, "IoU": float(i), "Acc": float(a), "pixels": int(p)}
                        for n, i, a, p in zip(names, iou, acc, label)]}


def _pct(value: float) -> str:
    return "   nan" if math.isnan(value) else f"{100 * value:6.2f}"


def format_table(result: Dict[str, Any]) -> List[str]:
    """The per-class table and the summary line, as printed."""
    width = max(12, *(len(c["name"]) for c in result["classes"]))
    lines = [f"{'class':<{width}}    IoU    Acc", "-" * (width + 14)]
    lines += [f"{c['name']:<{width}} {_pct(c['IoU'])} {_pct(c['Acc'])}" for c in result["classes"]]
    lines.append(f"mIoU {_pct(result['mIoU']).strip()}  aAcc {_pct(result['aAcc']).strip()}  "
                 f"mAcc {_pct(result['mAcc']).strip()}  ({result['images']} images, mode {result['mode']})")
    return lines


def evaluate(loaded: LoadedModel, data_root: str | os.PathLike, split: str = "validation", mode: str = "whole",
             rank: int = 0, world: int = 1, log_every: int = 0, **options: Any) -> Dict[str, Any]:
    """Evaluate ``loaded`` on ``split`` of ``data_root`` in ``mode`` (options: ``crop``, ``stride``,
    ``ratios``, ``flip``, ``scale`` of :func:`~seg_plugin.inference.predict_scores`). With ``world > 1`` this
    process takes its :func:`shard` and the sums are all-reduced (the process group must be set up).
    Prints progress to stderr every ``log_every`` images (0: every tenth of the split)."""
    pairs = scan_split(data_root, split)
    mine = shard(len(pairs), rank, world)
    sums = torch.zeros(3, loaded.num_classes, dtype=torch.int64)
    log_every = log_every or max(1, len(mine) // 10)
    start = time.perf_counter()
    for done, index in enumerate(mine, 1):
        image, labels = read_pair(*pairs[index], loaded.num_classes)
        scores = predict_scores(loaded, image, mode, **options)
        sums += area_sums(scores.argmax(0), torch.from_numpy(labels.astype(np.int64)), loaded.num_classes)
        if rank == 0 and (done % log_every == 0 or done == len(mine)):
            elapsed = time.perf_counter() - start
            print(f"[{done}/{len(mine)}] images{f' (rank 0 of {world})' if world > 1 else ''}, "
                  f"{elapsed / done:.3f} s/image, {elapsed:.0f} s", file=sys.stderr, flush=True)
    images = torch.tensor([len(mine)])
    if world > 1:
        dist.all_reduce(sums)
        dist.all_reduce(images)
    result = summarize(sums, loaded.class_names)
    result.update(images=int(images), mode=mode, split=split, data_root=str(data_root), model=describe(loaded),
                  options={k: list(v) if isinstance(v, tuple) else v for k, v in options.items()})
    return result


def _no_nan(obj: Any) -> Any:
    """``obj`` with NaN as None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_nan(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def _pair(text: str) -> tuple:
    values = [int(v) for v in text.lower().replace("x", ",").split(",")]
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one positive size or H,W")
    return tuple(values)


def _ratios(text: str) -> tuple:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give ratios separated by commas, e.g. 0.5,1.0,1.5") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: ratios must be positive")
    return values


def build_parser() -> argparse.ArgumentParser:
    description, _, epilog = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(prog="python -m seg_plugin.evaluate", description=" ".join(description.split()),
                                     epilog=epilog.rpartition("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="last.ckpt (or its run folder), a saved smp model folder, or an official mmseg ADE20K file")
    parser.add_argument("--data-root", help="ADE20K-layout folder (default: the run's data.root)")
    parser.add_argument("--split", default="validation", help="split folder name (default: %(default)s)")
    parser.add_argument("--mode", choices=MODES, default="whole", help="inference mode (default: %(default)s)")
    parser.add_argument("--crop", type=_pair, default=(512, 512), help="slide: window size, N or H,W (default: 512)")
    parser.add_argument("--stride", type=_pair, default=(341, 341), help="slide: window step, N or H,W (default: 341)")
    parser.add_argument("--ratios", type=_ratios, default=MSFLIP_RATIOS,
                        help="aug: scale ratios (default: mmseg's 0.5,0.75,1.0,1.25,1.5,1.75)")
    parser.add_argument("--no-flip", action="store_true", help="aug: without the flipped passes")
    parser.add_argument("--out", help="result JSON (default: eval_<split>_<mode>.json in the run folder)")
    parser.add_argument("--log-every", type=int, default=0, help="progress every N images (default: a tenth)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    try:
        loaded = load_model(args.checkpoint)
        root = args.data_root or loaded.data_root
        if root is None:
            raise SegDataError(f"{args.checkpoint} does not record its dataset folder: give --data-root")
        options: Dict[str, Any] = {}
        if args.mode == "slide":
            options.update(crop=args.crop, stride=args.stride)
        elif args.mode == "aug":
            options.update(ratios=args.ratios, flip=not args.no_flip)
        if rank == 0:
            print(f"{loaded.kind} {loaded.source}: {loaded.num_classes} classes, evaluation scale "
                  f"{tuple(loaded.augment.eval_scale)}; {args.split} split of {root}, mode {args.mode} "
                  f"{options or ''}", flush=True)
        result = evaluate(loaded, root, args.split, args.mode, rank, world, args.log_every, **options)
    except (CheckpointError, SegDataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print("\n".join(format_table(result)))
        out = Path(args.out) if args.out else (loaded.run_dir or Path(".")) / f"eval_{args.split}_{args.mode}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_no_nan(result), indent=2) + "\n", encoding="utf-8")
        print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
