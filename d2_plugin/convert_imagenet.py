#!/usr/bin/env python
"""Convert an FEC ImageNet checkpoint into a Detectron2 weights file for ``MODEL.WEIGHTS``.

    python -m d2_plugin.convert_imagenet fec_small.pth fec_small_d2.pth [--model fec_small]

The input is an official FEC checkpoint (keys ``patch_embed.*``, ``network.<i>.*``; a training file with
EMA weights gives the EMA ones) or one of ours. Its tensors are mapped and checked against the FEC model
(:func:`fec_backbone.fit_state_dict`), the classifier and final norm are dropped, and every key is prefixed with
the backbone's place in a Detectron2 model: ``backbone.bottom_up.body.`` for the FPN builders (default),
``backbone.body.`` for ``build_fec_backbone`` (``--prefix``). Loading the result with ``MODEL.WEIGHTS``
leaves no backbone key missing; the FPN, heads and the per-level output norms start fresh, as in the
reference. The same without a converted file: ``MODEL.FEC.WEIGHTS fec_small.pth``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, Optional, Sequence

import timm
import torch

import fec_backbone
from fec_backbone import CheckpointError

__all__ = ["FPN_PREFIX", "PLAIN_PREFIX", "convert"]

FPN_PREFIX = "backbone.bottom_up.body."
PLAIN_PREFIX = "backbone.body."


def convert(src: str, model_name: str = "fec_small", prefix: str = FPN_PREFIX) -> Dict[str, object]:
    """The Detectron2 checkpoint dict (``{"model": ..., "__author__": ...}``) for an FEC ImageNet file."""
    model = timm.create_model(model_name, num_classes=0)
    model.prune_intermediate_layers(len(model.stages), prune_norm=True)  # a Detectron2 backbone has no final norm
    state = fec_backbone.fit_state_dict(fec_backbone.read_fec_weights(src), model)
    tensors = {prefix + k: v.contiguous() for k, v in state.items()}
    return {"model": tensors, "__author__": f"fec_backbone.convert_imagenet from {os.path.basename(src)} ({model_name})",
            "matching_heuristics": False}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("src", help="FEC ImageNet checkpoint (.pth/.safetensors)")
    ap.add_argument("dst", help="output .pth for MODEL.WEIGHTS")
    ap.add_argument("--model", default="fec_small", choices=sorted(fec_backbone.VARIANTS))
    ap.add_argument("--prefix", default=FPN_PREFIX, help=f"key prefix (default {FPN_PREFIX}; {PLAIN_PREFIX} without FPN)")
    args = ap.parse_args(argv)
    try:
        data = convert(args.src, args.model, args.prefix)
    except CheckpointError as e:
        print(f"error: {e}" if args.src in str(e) else f"error: {args.src}: {e}", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    torch.save(data, args.dst)
    print(f"wrote {args.dst}: {len(data['model'])} backbone tensors under {args.prefix!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
