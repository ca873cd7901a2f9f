"""Exact resume for Detectron2 trainers: :class:`ResumableTrainerMixin`.

A resumed run continues exactly as the interrupted one would have if the checkpoint holds, beyond what
``DefaultTrainer`` saves itself (the model, the iteration, the scheduler in its ``LRScheduler`` hook, and
under ``_trainer`` the optimizer and, with AMP, the grad scaler):

* the random generators (Python, NumPy, torch CPU and CUDA, captured by the shared
  :func:`fec_backbone.training.capture_rng_state`) and the training sampler's seed (:class:`TrainingRNG`),
  restored after resuming;
* the position in the training sample stream: the loader restarts ``start_iter`` batches in
  (:func:`d2_plugin.data.build_resumable_train_loader`).

Evaluations during training leave the generators untouched (:func:`preserve_rng`).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, Iterator, Optional

from detectron2.utils import comm

import yaml

from fec_backbone.training import capture_rng_state, check_resume_config, restore_rng_state

from .data import build_resumable_train_loader

logger = logging.getLogger(__name__)

__all__ = ["ConfigRecord", "ResumableTrainerMixin", "TrainingRNG", "preserve_rng", "sampler_seed"]


def sampler_seed(cfg) -> int:
    """The training sampler's seed: ``cfg.SEED`` when set, else one random seed shared by all ranks."""
    return int(cfg.SEED) if cfg.SEED >= 0 else int(comm.shared_random_seed())


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Run a block (e.g. an evaluation during training) without changing any generator's state."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


class TrainingRNG:
    """Checkpointable generator states of this rank plus the training sampler's seed.

    ``state_dict`` captures the current states. ``load_state_dict`` only stores them: call
    :meth:`restore` once everything that draws random numbers while resuming (building the new loader)
    is done. All values are tensors or plain Python, so checkpoints load with ``weights_only=True``.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._pending: Optional[Dict[str, Any]] = None

    def state_dict(self) -> Dict[str, Any]:
        return {"sampler_seed": self.seed, "rank": comm.get_rank(), **capture_rng_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.seed = int(state["sampler_seed"])
        self._pending = state if state.get("rank", 0) == comm.get_rank() else None

    def restore(self) -> bool:
        """Apply the states loaded from a checkpoint; False if there were none for this rank."""
        if self._pending is None:
            return False
        restore_rng_state(self._pending)
        self._pending = None
        return True


class ConfigRecord:
    """The run's config inside its checkpoints, checked on resume with the resume policy shared by the three
    pipelines (:func:`fec_backbone.training.check_resume_config`): only :data:`RUN_ONLY` settings may
    change, any other change raises :class:`~fec_backbone.training.ResumeConfigError` naming the keys."""

    #: settings that do not change the training trajectory
    RUN_ONLY = ("OUTPUT_DIR", "DATALOADER.NUM_WORKERS", "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD", "VIS_PERIOD",
                "DATASETS.TEST", "MODEL.FEC.CLUSTER_BACKEND", "MODEL.FEC.COMPILE_MODE", "MODEL.FEC.COMPILE_BACKEND")

    def __init__(self, cfg):
        self.config = yaml.safe_load(cfg.dump())

    def state_dict(self) -> Dict[str, Any]:
        return {"config": self.config}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for change in check_resume_config(state["config"], self.config, self.RUN_ONLY):
            logger.info("resumed run: run-only setting changed, %s", change)


class ResumableTrainerMixin:
    """Mix into a ``DefaultTrainer`` subclass (``class Trainer(ResumableTrainerMixin, DefaultTrainer)``)
    for an exact resume; see the module docstring. A subclass that builds its own training loader
    should accept and honour ``start_iter`` and ``seed`` in :meth:`build_train_loader`."""

    def __init__(self, cfg):
        super().__init__(cfg)
        seed = getattr(self._trainer.data_loader, "fec_sampler_seed", None)
        self.rng = TrainingRNG(sampler_seed(cfg) if seed is None else seed)
        self.checkpointer.add_checkpointable("rng", self.rng)
        self.checkpointer.add_checkpointable("config", ConfigRecord(cfg))

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0, seed: Optional[int] = None):
        """The config's training loader over its checked dataset dicts (:mod:`d2_plugin.data`),
        ``start_iter`` batches into its sample stream."""
        seed = sampler_seed(cfg) if seed is None else seed
        loader = build_resumable_train_loader(cfg, seed=seed, start_iter=start_iter)
        loader.fec_sampler_seed = seed
        return loader

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        with preserve_rng():  # evaluating mid-training must not change the training's random stream
            return super().test(cfg, model, evaluators)

    def resume_or_load(self, resume: bool = True) -> None:
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:  # the next step draws from a loader started where the checkpoint stopped
            self._trainer.reset_data_loader(lambda: self.build_train_loader(self.cfg, self.start_iter, self.rng.seed))
        self.rng.restore()
