"""Detectron2 demo: Mask R-CNN FEC-S learns the generated shapes data on a CPU in a few minutes.

    python -m d2_plugin.demo [--out-dir output/d2_demo] [--config-file FILE] [KEY VALUE ...]

Generates the toy data the config names (deterministically, once) under ``OUT_DIR/datasets``, evaluates
the untrained model with COCOEvaluator (the control), trains with :class:`d2_plugin.trainer.Trainer`
(checkpoints, metrics and evaluation results in ``OUT_DIR``), evaluates again and prints box and mask AP
before and after and the time per iteration. Exits with status 1 if AP did not go up.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, Optional, Sequence

import detectron2

from d2_plugin.toy_data import prepare_toy_datasets
from d2_plugin.trainer import Trainer, setup
from fec_backbone.model_zoo import get_config_file

__all__ = ["main"]

DEFAULT_CONFIG = get_config_file("detectron2/toy_mask_rcnn_fec_s.yaml")
DEFAULT_OUT_DIR = os.path.join("output", "d2_demo")


def _ap(results: Dict, task: str) -> float:
    return float(results.get(task, {}).get("AP", float("nan")))


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m d2_plugin.demo",
        description=(
            "Train Mask R-CNN with an FEC-S backbone from scratch on generated COCO-format shapes data (3 classes, "
            "odd image sizes) on the CPU, about 5 to 10 minutes. The data is generated once under OUT_DIR/datasets; "
            "the untrained model is evaluated first (COCOEvaluator, box and mask AP) as the control, then the model "
            "is trained and evaluated again, and the AP before and after is printed. Exits with status 0 when box "
            "and mask AP both went up, 1 otherwise."
        ),
        epilog=(
            "Examples: python -m d2_plugin.demo --out-dir /tmp/d2demo; "
            "python -m d2_plugin.demo SOLVER.MAX_ITER 300 (a shorter run). "
            "Options after the flags are Detectron2 KEY VALUE config overrides, as for train_net.py."
        ),
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE",
                        help="Detectron2 config (default: the packaged detectron2/toy_mask_rcnn_fec_s.yaml)")
    parser.add_argument("--out-dir", default=DEFAULT_OUT_DIR, metavar="OUT_DIR",
                        help=f"where the generated data (OUT_DIR/datasets) and the run's OUTPUT_DIR (checkpoints, "
                             f"metrics, evaluation results) go (default: {DEFAULT_OUT_DIR})")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. SOLVER.MAX_ITER 300 MODEL.DEVICE cuda")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    args.opts = ["OUTPUT_DIR", args.out_dir, *args.opts]  # an OUTPUT_DIR among the overrides wins
    cfg = setup(args)
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    prepare_toy_datasets(names, root=os.path.join(args.out_dir, "datasets"))  # the toy names now read there
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    print("\n==> evaluating the untrained model (the control)", flush=True)
    before = Trainer.test(cfg, trainer.model)
    print(f"\n==> training {cfg.SOLVER.MAX_ITER} iterations (batch {cfg.SOLVER.IMS_PER_BATCH}), "
          f"checkpoints in {cfg.OUTPUT_DIR}", flush=True)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    # DefaultTrainer's EvalHook evaluated after the last iteration (TEST.EVAL_PERIOD 0: only then)
    after = getattr(trainer, "_last_eval_results", None) or Trainer.test(cfg, trainer.model)
    step_time = trainer.storage.history("time").global_avg()
    rows = [(task, _ap(before, task), _ap(after, task)) for task in ("bbox", "segm")]
    print(f"\nFEC Mask R-CNN ({cfg.MODEL.FEC.NAME}) on {cfg.DATASETS.TEST[0]}, Detectron2 {detectron2.__version__}")
    print(f"{'':10}{'untrained':>12}{f'after {cfg.SOLVER.MAX_ITER} it':>16}")
    for task, b, a in rows:
        print(f"{'box AP' if task == 'bbox' else 'mask AP':10}{b:12.2f}{a:16.2f}")
    print(f"time per iteration: {step_time:.3f} s (batch {cfg.SOLVER.IMS_PER_BATCH}, {cfg.MODEL.DEVICE}); "
          f"training and final evaluation took {wall:.0f} s; outputs in {cfg.OUTPUT_DIR}")
    learned = all(a > b for _, b, a in rows)
    print("learning: " + ("yes, box and mask AP went up" if learned else "NO, AP did not go up"), flush=True)
    return 0 if learned else 1


if __name__ == "__main__":
    sys.exit(main())
