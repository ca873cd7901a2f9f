"""Detectron2 demo: Mask R-CNN FEC-S learns the generated shapes data on a CPU in a few minutes.

    python -m d2_plugin.demo [--config-file configs/detectron2/toy_mask_rcnn_fec_s.yaml] [KEY VALUE ...]

Generates the data (deterministically, once), evaluates the untrained model with COCOEvaluator, trains
with ``train_net.py``'s Trainer (checkpoints in ``OUTPUT_DIR``), evaluates again and prints box and mask
AP before and after and the time per iteration. Exits with status 1 if AP did not go up.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Dict, Optional, Sequence

import detectron2
from fec_backbone.model_zoo import get_config_file
from d2_plugin.trainer import Trainer, register_datasets, setup

from detectron2.engine import default_argument_parser

__all__ = ["main"]

DEFAULT_CONFIG = get_config_file("detectron2/toy_mask_rcnn_fec_s.yaml")


def _ap(results: Dict, task: str) -> float:
    return float(results.get(task, {}).get("AP", float("nan")))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = default_argument_parser()
    parser.set_defaults(config_file=DEFAULT_CONFIG)
    args = parser.parse_args(argv)
    cfg = setup(args)
    register_datasets(cfg)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    print("\n==> evaluating the untrained model", flush=True)
    before = Trainer.test(cfg, trainer.model)
    print(f"\n==> training {cfg.SOLVER.MAX_ITER} iterations (batch {cfg.SOLVER.IMS_PER_BATCH}), "
          f"checkpoints in {cfg.OUTPUT_DIR}", flush=True)
    start = time.perf_counter()
    after = trainer.train()
    wall = time.perf_counter() - start
    if not after:
        after = Trainer.test(cfg, trainer.model)
    step_time = trainer.storage.history("time").global_avg()
    rows = [(task, _ap(before, task), _ap(after, task)) for task in ("bbox", "segm")]
    print(f"\nFEC Mask R-CNN ({cfg.MODEL.FEC.NAME}) on {cfg.DATASETS.TEST[0]}, Detectron2 {detectron2.__version__}")
    print(f"{'':10}{'untrained':>12}{f'after {cfg.SOLVER.MAX_ITER} it':>16}")
    for task, b, a in rows:
        print(f"{'box AP' if task == 'bbox' else 'mask AP':10}{b:12.2f}{a:16.2f}")
    print(f"time per iteration: {step_time:.3f} s (batch {cfg.SOLVER.IMS_PER_BATCH}, {cfg.MODEL.DEVICE}); "
          f"training and final evaluation took {wall:.0f} s")
    learned = all(a > b for _, b, a in rows)
    print("learning: " + ("yes, AP went up" if learned else "NO, AP did not go up"), flush=True)
    return 0 if learned else 1


if __name__ == "__main__":
    sys.exit(main())
