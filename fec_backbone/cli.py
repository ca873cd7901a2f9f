"""The ``fec`` command: utilities around the FEC backbone.

    fec flops [--models fec_small fec_base] [--size 224]
    fec visualize IMAGE [--model fec_small] [--checkpoint PATH|MODEL_DIR] [--clusters K] --out OUT.png
    fec export --model fec_small [--checkpoint PATH] [--features-only] [--size 224] --out fec_small.onnx
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .checkpoint import CheckpointError
from .export import export_onnx
from .fec import PRESETS, VARIANTS
from .flops import flops_table
from .visualize import visualize_image

MODELS = list(VARIANTS)


def _flops(args: argparse.Namespace) -> int:
    print(f"Parameters and fvcore FLOPs at {args.size}x{args.size} px (official: 5,727,528/1.366G, "
          "15,086,848/3.350G, 29,720,344/6.509G)")
    print(flops_table(args.models, args.size))
    return 0


def _visualize(args: argparse.Namespace) -> int:
    try:
        maps = visualize_image(args.image, args.out, args.model, args.checkpoint, args.clusters, args.size,
                               args.preset, args.prefix, args.head, args.use_ema)
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(", ".join(f"{k}: {v}" for k, v in maps.info.items()))
    for k, regions in enumerate(maps.regions[1:], start=1):
        print(f"stage {k}: {len(regions.unique())} pooling regions")
    for name, stage, ids in maps.blocks:
        print(f"stage {stage} last block ({name}, head {maps.head}): {len(ids.unique())} clusters")
    print(f"k-means of the final centres: {maps.num_groups} groups")
    print(f"wrote {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        result = export_onnx(args.out, args.model, args.checkpoint, args.features_only, args.size,
                             preset=args.preset, num_classes=args.num_classes)
    except (CheckpointError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {result['path']} ({result['outputs']} output(s)); onnxruntime vs PyTorch: "
          f"max abs difference {result['max_abs_diff']:.2e}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("flops", help="print parameters and fvcore FLOPs per model")
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--size", type=int, default=224, help="square input size in pixels")
    p.set_defaults(func=_flops)
    p = sub.add_parser("visualize", help="draw the cluster assignments of one image as a PNG")
    p.add_argument("image", help="image file")
    p.add_argument("--model", default=None, choices=MODELS,
                   help="variant (default: the checkpoint's, recognised from its tensors; else fec_small)")
    p.add_argument("--checkpoint", default=None,
                   help="an official FEC checkpoint, or one of ours: classification, Detectron2 model_final.pth, the "
                        "segmentation trainer's last.ckpt or its saved smp model/ folder (default: random weights)")
    p.add_argument("--clusters", type=int, default=3, help="k-means groups of the final centres (K)")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--size", type=int, default=224, help="the image is resized to SIZE x SIZE (divisible by 32)")
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="clustering layout (default: the one the checkpoint records, else detection for "
                        "Detectron2 weights, segmentation for smp, else classification)")
    p.add_argument("--prefix", default=None, help="key prefix of the FEC weights when a checkpoint holds several")
    p.add_argument("--head", type=int, default=0, help="head whose block clusters are drawn")
    p.add_argument("--use-ema", action=argparse.BooleanOptionalAction, default=True,
                   help="take a training checkpoint's EMA weights when it has them (--no-use-ema: the plain ones)")
    p.set_defaults(func=_visualize)
    p = sub.add_parser("export", help="export a classifier or features_only backbone to ONNX, checked with onnxruntime")
    p.add_argument("--model", default="fec_small", choices=MODELS)
    p.add_argument("--checkpoint", default=None, help="an official FEC checkpoint or one of ours (default: random)")
    p.add_argument("--features-only", action="store_true", help="export the 4 stage maps instead of logits")
    p.add_argument("--size", type=int, default=224, help="square input size (divisible by 32); batch stays dynamic")
    p.add_argument("--preset", default="classification", choices=list(PRESETS))
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the checkpoint's)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.set_defaults(func=_export)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
