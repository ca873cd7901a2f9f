"""The FEC detector trainer and the steps of ``train_net.py`` (``setup``, ``main``), importable.

:class:`Trainer` is Detectron2's ``DefaultTrainer`` with COCO evaluation, FEC's AdamW parameter groups
(:func:`d2_plugin.solver.build_fec_optimizer`), an exact resume (:class:`d2_plugin.engine.ResumableTrainerMixin`)
and :class:`d2_plugin.checkpoint.FECCheckpointer`, so ``MODEL.WEIGHTS`` may be an FEC ImageNet checkpoint or an
official mmdet FEC detector checkpoint.
``main(args)`` is what ``python d2_plugin/train_net.py`` runs in every process (train, ``--eval-only``,
``--resume``), as ``tools/train_net.py`` and the Detectron2 projects do.
"""
from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict

import detectron2
import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_setup, hooks
from detectron2.evaluation import COCOEvaluator, verify_results
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.utils.logger import setup_logger

from fec_backbone.model_zoo import resolve_config

from .checkpoint import FECCheckpointer
from .config import add_fec_config
from .data import build_checked_test_loader
from .engine import ResumableTrainerMixin
from .solver import build_fec_optimizer

__all__ = ["Trainer", "main", "setup"]


class Trainer(ResumableTrainerMixin, DefaultTrainer):
    """``DefaultTrainer`` with COCO evaluation, FEC's AdamW, an exact resume, :class:`FECCheckpointer`, and
    train and test loaders over dataset dicts checked once up front (:mod:`d2_plugin.data`: missing images
    and malformed annotation files stop the run before its first step, with the file named)."""

    def build_hooks(self):
        # DefaultTrainer.__init__ makes its DetectionCheckpointer right before it calls build_hooks, which
        # hands the checkpointer to PeriodicCheckpointer. Replaced here, ours serves every later use: the
        # hooks, resume_or_load (MODEL.WEIGHTS or --resume) and the checkpointables the mixin adds.
        if not isinstance(self.checkpointer, FECCheckpointer):
            self.checkpointer = FECCheckpointer(self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        return super().build_hooks()

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_fec_optimizer(cfg, model)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader over the checked dataset dicts (:func:`d2_plugin.data.load_dataset_dicts`)."""
        return build_checked_test_loader(cfg, dataset_name)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluate ``model`` wrapped in Detectron2's ``GeneralizedRCNNWithTTA`` (``TEST.AUG``: the
        ``MIN_SIZES`` resizes, and their flips with ``FLIP``) on ``DATASETS.TEST``, into
        ``OUTPUT_DIR/inference_TTA``; the results are named as :meth:`test` names them plus ``_TTA``."""
        logging.getLogger("detectron2.trainer").info("Running inference with test-time augmentation ...")
        model = GeneralizedRCNNWithTTA(cfg, model)
        evaluators = [cls.build_evaluator(cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name))
                      for name in cfg.DATASETS.TEST]
        res = cls.test(cfg, model, evaluators)
        return OrderedDict((k + "_TTA", v) for k, v in res.items())


def setup(args):
    """The config of ``--config-file`` (a path, or a packaged name such as
    ``configs/detectron2/mask_rcnn_fec_s_fpn_1x_coco.yaml``) with the ``MODEL.FEC`` options and the
    command line's ``KEY VALUE`` overrides; then Detectron2's ``default_setup``."""
    cfg = get_cfg()
    add_fec_config(cfg)
    args.config_file = resolve_config(args.config_file)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="d2_plugin", abbrev_name="fec")
    return cfg


def main(args):
    """Train (``--resume`` continues from ``OUTPUT_DIR/last_checkpoint``) or, with ``--eval-only``,
    evaluate ``MODEL.WEIGHTS`` on ``DATASETS.TEST``; with ``TEST.AUG.ENABLED`` also with test-time
    augmentation (:meth:`Trainer.test_with_TTA`), after training too."""
    cfg = setup(args)
    if comm.is_main_process():
        print(f"Detectron2 {detectron2.__version__} at {os.path.dirname(detectron2.__file__)}", flush=True)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        FECCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks([hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))])
    return trainer.train()
