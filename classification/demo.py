"""Classification demo on the generated toy data: train FEC-S, validate it, train with 2-process DDP,
and draw its cluster assignments.

    python -m classification.demo [--out-dir output/cls_demo] [--epochs N] [--threads N]

Writes ``<out-dir>/data`` (the toy ImageFolder and a multi-shape scene), ``<out-dir>/train`` (checkpoints
and summary.csv), ``<out-dir>/ddp`` and ``<out-dir>/clusters.png``, then prints the top-1 of the untrained
model (the control) and of the trained one, the images per second of training and evaluation, and the DDP
result. Exits with status 1 if training did not beat the untrained model by 10 points of top-1 or
validate.py disagrees with the training-time evaluation.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from typing import List, Optional

import timm
import torch

from classification import train, validate
from classification.toy_data import CLASSES, draw_toy_scene, make_toy_imagefolder
from fec_backbone.cli import main as fec_cli
from fec_backbone.model_zoo import get_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CONFIG = get_config_file("classification/toy.yaml")
#: Points of top-1 above the untrained model that count as learned.
LEARNED_MARGIN = 10.0


def _banner(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=os.path.join("output", "cls_demo"), help="folder for data and runs")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the toy recipe's)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for training (None: torch's default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("timm").setLevel(logging.WARNING)
    data, run, ddp = (os.path.join(args.out_dir, d) for d in ("data", "train", "ddp"))
    picture = os.path.join(args.out_dir, "clusters.png")
    if os.path.exists(os.path.join(run, "last.pth.tar")) or os.path.exists(os.path.join(ddp, "last.pth.tar")):
        print(f"replacing the earlier demo run in {args.out_dir}")  # the demo's own output, made again below
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(ddp, ignore_errors=True)
    threads = ["--threads", str(args.threads)] if args.threads else []

    _banner("toy data: 4 classes (the quarter whose shape has the odd colour out), 32x32 px")
    make_toy_imagefolder(data)
    scene = os.path.join(args.out_dir, "scene.png")
    draw_toy_scene(0).save(scene)

    _banner("the control: the untrained model on the toy validation set")
    os.makedirs(run, exist_ok=True)
    untrained = os.path.join(args.out_dir, "untrained.pth.tar")
    torch.manual_seed(0)
    fresh = timm.create_model("fec_small", num_classes=len(CLASSES))
    torch.save({"arch": "fec_small", "state_dict": fresh.state_dict(), "class_names": list(CLASSES)}, untrained)
    before = validate.main([data, "--checkpoint", untrained, "--img-size", "32", "-j", "2", *threads])

    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    length = f"{args.epochs} epochs" if args.epochs else "the recipe's epochs"
    _banner(f"training FEC-S for {length} (configs/classification/toy.yaml)")
    start = time.perf_counter()
    result = train.main(["-c", TOY_CONFIG, "--data-dir", data, *epochs, "--output", run,
                         *threads])
    train_time = time.perf_counter() - start

    _banner("validate.py on the last checkpoint")
    val = validate.main([data, "--checkpoint", os.path.join(run, "last.pth.tar"), "-j", "2", *threads])
    agree = abs(val["top1"] - result["eval"]["top1"]) < 1e-9

    _banner("DDP: 2 processes (torchrun, gloo), 1 epoch")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "classification.train",
           "-c", TOY_CONFIG, "--data-dir", data, "--epochs", "1", "--output", ddp]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, env=env, cwd=os.getcwd(), capture_output=True, text=True)
    ddp_log = proc.stdout + proc.stderr
    print("\n".join(line for line in ddp_log.splitlines() if not line.startswith(("Train:", "Test:"))))
    if proc.returncode != 0:
        raise SystemExit(f"error: the DDP run failed (exit code {proc.returncode})")
    ddp_line = next(line for line in ddp_log.splitlines() if line.startswith("epoch 0:"))

    _banner("cluster assignments of the trained model (fec visualize)")
    if fec_cli(["visualize", scene, "--model", "fec_small", "--checkpoint", os.path.join(run, "last.pth.tar"),
                "--clusters", "4", "--out", picture]) != 0:
        raise SystemExit("error: fec visualize failed")

    _banner("summary")
    learned = result["eval"]["top1"] >= before["top1"] + LEARNED_MARGIN
    print(f"top-1 on the toy validation set ({result['eval']['count']} images, 4 classes, chance 25%): untrained "
          f"{before['top1']:.2f}% -> {result['eval']['top1']:.2f}% after {result['epoch'] + 1} epochs; validate.py: "
          f"{val['top1']:.2f}% ({'agrees' if agree else 'DISAGREES'} with the training-time evaluation)")
    print(f"throughput (32 px, batch 32, this machine): training {result['train']['img_per_sec']:.1f} img/s "
          f"(last epoch), evaluation {val['img_per_sec']:.1f} img/s; whole training {train_time:.0f}s")
    print(f"DDP (2 processes, gloo, 1 epoch): {ddp_line.split(': ', 1)[1]}; "
          + ("weights identical in both processes" if "weights are identical" in ddp_log else "replica check missing"))
    print(f"picture: {picture}")
    print("learning: " + (f"yes, {LEARNED_MARGIN:.0f}+ points above the untrained model" if learned else
                          f"NO, less than {LEARNED_MARGIN:.0f} points above the untrained model"))
    return 0 if agree and learned else 1


if __name__ == "__main__":
    raise SystemExit(main())
