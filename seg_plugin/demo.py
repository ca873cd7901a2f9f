"""Segmentation demo: one forward pass of every smp architecture with the FEC encoder, then the toy recipe
(Linknet + FEC-S, configs/segmentation/toy_linknet_fec_s.yaml) trained on generated toy data on the CPU.

It prints the mIoU of the untrained model (the control) and of the trained one, and exits with status 1
when an architecture failed or the training did not learn (trained mIoU less than 30 points above the
untrained model's), else 0. About a minute on a CPU.

    python -m seg_plugin.demo --out-dir output/seg_demo
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import torch

import segmentation_models_pytorch as smp

from fec_backbone.model_zoo import get_config_file

from .toy_data import generate
from .train_ade20k import load_config, train

CONFIG = get_config_file("segmentation/toy_linknet_fec_s.yaml")
#: Learned: the trained model's mIoU at least this much above the untrained model's (600 iterations reach
#: about +0.90; with FEC's clustering token mixers switched off, tests/test_learning.py's control, about +0.63).
MIN_GAIN = 0.30


def architectures() -> List[Tuple[str, str, str]]:
    """(architecture, encoder, result) for one forward pass of each smp architecture (64 px; PAN 128 px)."""
    rows = []
    for arch, cls in smp.MODEL_ARCHITECTURES_MAPPING.items():
        size = 128 if arch == "pan" else 64  # PAN's pyramid attention pools the stride-16 map 3 more times
        x = torch.rand(2, 3, size, size)
        encoder = "tu-fec_small" if arch == "dpt" else "fec_s"
        kwargs = {"decoder_readout": "ignore"} if arch == "dpt" else {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = cls(encoder_name=encoder, encoder_weights=None, classes=3, **kwargs).eval()
                with torch.inference_mode():
                    out = model(x)
            stride = getattr(model.encoder, "output_stride", 32)
            rows.append((cls.__name__, encoder, f"ok, output {tuple(out.shape)}, encoder output stride {stride}"))
        except Exception as err:  # reported, not hidden: the table shows what fails and why
            rows.append((cls.__name__, encoder, f"FAILED: {type(err).__name__}: {err}"))
    return rows


def main(argv: Optional[list] = None) -> int:
    description, _, epilog = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(prog="python -m seg_plugin.demo", description=description,
                                     epilog=epilog.partition("\n\n")[0])
    parser.add_argument("--out-dir", help="run folder: checkpoint, logs, saved model (default: a new temporary folder)")
    parser.add_argument("--data-root", default="data/toy_ade20k",
                        help="toy dataset folder, generated there if absent (default: %(default)s)")
    parser.add_argument("--iterations", type=int, help="training iterations (default: the toy config's 600)")
    args = parser.parse_args(argv)

    print("==> smp architectures with the FEC encoder (fec_s; DPT takes only tu- encoders: tu-fec_small)")
    rows = architectures()
    for arch, encoder, result in rows:
        print(f"  {arch:<14} {encoder:<13} {result}")

    root = generate(args.data_root)
    out = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="fec_seg_demo_"))
    overrides = {"data.root": str(root), "train.progress": sys.stderr.isatty()}
    if args.iterations:
        overrides["train.iterations"] = args.iterations
    cfg = load_config(CONFIG, overrides)
    print(f"\n==> smp.{cfg.model.arch} + FEC-S (encoder_depth {cfg.model.encoder_depth}) on the toy ADE20K-layout "
          f"data ({root}), {cfg.train.iterations} iterations of batch {cfg.train.batch_size} at {cfg.data.crop_size} px "
          f"on CPU -> {out}")
    start = time.perf_counter()
    result = train(cfg, out)
    before, after = result["initial"], result["final"]
    print(f"\nmIoU untrained {100 * before['mIoU']:.2f} -> trained {100 * after['mIoU']:.2f} "
          f"(pixel accuracy {100 * before['aAcc']:.2f} -> {100 * after['aAcc']:.2f}), "
          f"{result['sec_per_iter']:.3f} s/iteration, {time.perf_counter() - start:.0f} s in all")
    names = (root / "class_names.txt").read_text().split()
    print("per-class IoU: " + ", ".join(f"{n} {100 * v:.1f}" for n, v in zip(names, after["IoU"])))
    print(f"logs: {out / 'metrics.csv'}, checkpoint {out / 'last.ckpt'}; model: smp.from_pretrained('{out / 'model'}')")
    failed = [r for r in rows if r[2].startswith("FAILED")]
    learned = after["mIoU"] >= before["mIoU"] + MIN_GAIN
    print(f"learned: {'yes' if learned else 'NO'} (trained mIoU {100 * (after['mIoU'] - before['mIoU']):+.2f} points "
          f"against the untrained model; needed +{100 * MIN_GAIN:.0f})"
          + (f"; {len(failed)} architecture(s) FAILED" if failed else ""))
    return 1 if failed or not learned else 0


if __name__ == "__main__":
    sys.exit(main())
