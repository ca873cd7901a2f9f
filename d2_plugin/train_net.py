#!/usr/bin/env python
"""Train and evaluate FEC detectors with Detectron2 (the standard ``tools/train_net.py`` flow).

    python d2_plugin/train_net.py --config-file configs/detectron2/mask_rcnn_fec_s_fpn_1x_coco.yaml \
        --num-gpus 8 MODEL.FEC.WEIGHTS /path/to/fec_small.pth
    python d2_plugin/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python d2_plugin/train_net.py --config-file ... --resume      # continue from OUTPUT_DIR/last_checkpoint

Datasets named ``fec_toy_*`` / ``fec_toy_mini_*`` (the generated shapes data, see
``d2_plugin/toy_data.py``) are generated under ``$DETECTRON2_DATASETS`` if needed and registered;
every COCO-format dataset in the config is checked before training starts.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: import the package, not the files next to this one
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

import d2_plugin  # noqa: E402
from d2_plugin.data import check_datasets  # noqa: E402
from d2_plugin.engine import ResumableTrainerMixin  # noqa: E402
from d2_plugin.solver import build_fec_optimizer  # noqa: E402
from d2_plugin.toy_data import prepare_toy_datasets  # noqa: E402
from fec_backbone.model_zoo import resolve_config  # noqa: E402

import detectron2  # noqa: E402
import detectron2.utils.comm as comm  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.evaluation import COCOEvaluator, verify_results  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402


class Trainer(ResumableTrainerMixin, DefaultTrainer):
    """``DefaultTrainer`` with COCO evaluation, FEC's AdamW and an exact resume (optimizer, generator
    states and the sample-stream position are checkpointed too; see :mod:`d2_plugin.engine`)."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_fec_optimizer(cfg, model)


def register_datasets(cfg, train: bool = True) -> None:
    """Generate and register the toy data if the config uses it; check the COCO-format datasets of
    ``DATASETS.TEST`` (and ``DATASETS.TRAIN`` with ``train``)."""
    names = (list(cfg.DATASETS.TRAIN) if train else []) + list(cfg.DATASETS.TEST)
    prepare_toy_datasets(names)
    check_datasets(names)


def setup(args):
    """Config from ``--config-file`` and command-line overrides, with the ``MODEL.FEC`` options."""
    cfg = get_cfg()
    d2_plugin.add_fec_config(cfg)
    args.config_file = resolve_config(args.config_file)  # configs/... names work outside a checkout too
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="d2_plugin", abbrev_name="fec")
    return cfg


def main(args):
    cfg = setup(args)
    if comm.is_main_process():
        print(f"Detectron2 {detectron2.__version__} at {os.path.dirname(detectron2.__file__)}", flush=True)
    register_datasets(cfg, train=not args.eval_only)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
