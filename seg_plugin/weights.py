"""FEC weights for smp: install ImageNet weights (or the backbone of an official mmdet/mmseg checkpoint) for
``encoder_weights="imagenet"`` (offline, into the Hugging Face cache), or convert an official ADE20K checkpoint
into a saved smp model.

    python -m seg_plugin.weights install --checkpoint fec_small.pth            # encoder detected
    python -m seg_plugin.weights install --checkpoint fec_small.pth --encoder fec_s --cache-dir DIR
    python -m seg_plugin.weights install --checkpoint mask_rcnn_fec_small_fpn_1x_coco.pth  # an official backbone
    python -m seg_plugin.weights status
    python -m seg_plugin.weights convert-official fpn_fec_small_ade20k.pth --out DIR   # then smp.from_pretrained(DIR)

After ``install``, ``smp.Unet("fec_s")`` loads them. The functions are those of :mod:`seg_plugin.pretrained`
(re-exported here); this module is only the command line, which the package does not import (so that
``python -m seg_plugin.weights`` runs it as a fresh module).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from fec_backbone import CheckpointError

from .official import load_official_semantic_fpn
from .pretrained import *  # noqa: F401,F403  (the functions, for `from seg_plugin import weights` users)
from .pretrained import CONFIG_FILE, ENCODER_VARIANTS, install, installed_path
from .pretrained import __all__ as _pretrained_all

__all__ = [*_pretrained_all, "main"]


def main(argv: Optional[list] = None) -> int:
    description = " ".join(__doc__.split("\n\n")[0].split())  # the first paragraph, whole
    parser = argparse.ArgumentParser(prog="python -m seg_plugin.weights", description=description,
                                     epilog="Without the weights, build models with encoder_weights=None (trainer: "
                                            "model.encoder_weights none).")
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install",
                               help="convert an official FEC checkpoint for smp's encoder_weights='imagenet'")
    p_install.add_argument("--checkpoint", required=True,
                           help="official FEC ImageNet checkpoint (.pth/.pth.tar/.safetensors), or an official "
                                "mmdet/mmseg file whose backbone (output norms included) is taken")
    p_install.add_argument("--encoder", choices=sorted(ENCODER_VARIANTS), help="smp encoder name (default: detected)")
    p_status = sub.add_parser("status", help="show which FEC encoders have ImageNet weights installed")
    p_official = sub.add_parser("convert-official", help="an official mmseg Semantic FPN ADE20K checkpoint as a saved "
                                                         "smp model (smp.from_pretrained)")
    p_official.add_argument("checkpoint", help="official checkpoint (fpn_fec_small_ade20k.pth, ...)")
    p_official.add_argument("--out", required=True, help="folder for the smp model (config.json, model.safetensors)")
    for p in (p_install, p_status):
        p.add_argument("--cache-dir", help="Hugging Face hub cache (default: huggingface_hub's, HF_HUB_CACHE)")
    args = parser.parse_args(argv)
    if args.command == "status":
        for encoder, variant in ENCODER_VARIANTS.items():
            path = installed_path(encoder, args.cache_dir)
            print(f"{encoder} ({variant}): {path if path else 'not installed'}")
        return 0
    if args.command == "convert-official":
        try:
            model, summary = load_official_semantic_fpn(args.checkpoint)
        except CheckpointError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        model.save_pretrained(args.out, dataset=f"ADE20K (official checkpoint {args.checkpoint})")
        print(summary)
        print(f"saved to {args.out}: import seg_plugin; smp.from_pretrained({args.out!r})")
        return 0
    try:
        path = install(args.checkpoint, args.encoder, args.cache_dir)
    except (CheckpointError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = json.loads((path.parent / CONFIG_FILE).read_text())
    encoder = config["encoder"]
    if config.get("output_norms") == "checkpoint":
        print(f"installed {encoder} weights: the backbone of {args.checkpoint}, its output norms included: {path}")
    else:
        print(f"installed {encoder} ImageNet weights: {path}")
    print(f"smp.Unet(encoder_name={encoder!r}) now loads them (encoder_weights='imagenet'), offline too.")
    if args.cache_dir:
        print(f"(a custom cache: set HF_HUB_CACHE={args.cache_dir} for smp to look there)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
