"""ADE20K semantic segmentation with an smp model and an FEC encoder: the FEC paper's recipe, on Lightning.

Semantic FPN (``smp.FPN``) with FEC, AdamW (lr 1e-4, weight decay 1e-4), poly schedule (power 0.9),
80k iterations at batch 16, 512x512 crops after random rescaling (0.5-2.0) and flipping, single-scale
evaluation at short side 512; mIoU, per-class IoU and pixel accuracy from torchmetrics. Any smp
architecture by ``--arch``. Settings are a yacs ``CfgNode`` (as in Detectron2): config files may name a
``_BASE_`` file, and unknown keys are errors.

    python -m seg_plugin.train_ade20k --config configs/segmentation/fpn_fec_s_ade20k_80k.yaml \\
        --data-root data/ADEChallengeData2016 --out-dir output/fpn_fec_s_ade20k
    torchrun --nproc_per_node 4 -m seg_plugin.train_ade20k --config ... --amp      # DDP (batch is global)
    python -m seg_plugin.train_ade20k ... --resume                                    # continue a run

Outputs in ``--out-dir``: ``last.ckpt`` (Lightning's checkpoint, written atomically every
``checkpoint_interval`` iterations, at the end, and on SIGINT/SIGTERM), ``metrics.csv`` (Lightning's
CSV log: loss, learning rate, mIoU, aAcc, per-class IoU), ``tensorboard/``, ``config.yaml`` and the final
model in smp's format (``model/``, load with ``smp.from_pretrained``). A resumed run continues exactly as
the uninterrupted run would have.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import inspect
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import lightning as L
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import yaml
from fvcore.common.config import CfgNode
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

import segmentation_models_pytorch as smp

from fec_backbone.checkpoint import CheckpointError
from fec_backbone.training import (
    ResumableSampler,
    ResumeConfigError,
    atomic_save,
    capture_rng_state,
    check_resume_config,
    load_training_checkpoint,
    restore_rng_state,
)

from .data import IGNORE_INDEX, ADE20KDataset, ADE20KEvalDataset, AugmentConfig, SegDataError, class_names
from .hub import WeightsNotInstalledError
from .registry import register_encoder, register_encoders

__all__ = ["ConfigError", "Interrupted", "SegmentationModule", "build_model", "get_cfg", "load_config", "train", "main"]

CHECKPOINT = "last.ckpt"
#: Settings a resumed run may change (they do not change the training trajectory); fnmatch patterns.
RUN_ONLY = ("data.root", "data.workers", "train.*_interval", "train.eval_at_start", "train.tensorboard",
            "train.progress", "train.cpu_threads")

# The reference recipe (FEC's ``fpn_fec_*_ade20k_80k`` mmseg configs); config files override it.
_C = CfgNode()
_C.model = CfgNode()
_C.model.arch = "fpn"
_C.model.encoder = "fec_s"
_C.model.encoder_weights = "imagenet"
_C.model.encoder_depth = None
_C.model.encoder_params = CfgNode(new_allowed=True)  # FEC encoder settings (preset, drop_path_rate, ...)
_C.model.arch_kwargs = CfgNode(new_allowed=True)  # keyword arguments of the smp architecture
_C.data = CfgNode()
_C.data.root = "data/ADEChallengeData2016"
_C.data.train_split = "training"
_C.data.val_split = "validation"
_C.data.num_classes = 150
_C.data.scale = [2048, 512]
_C.data.ratio_range = [0.5, 2.0]
_C.data.crop_size = 512
_C.data.cat_max_ratio = 0.75
_C.data.flip_prob = 0.5
_C.data.photometric = True
_C.data.mean = [123.675, 116.28, 103.53]
_C.data.std = [58.395, 57.12, 57.375]
_C.data.eval_scale = [2048, 512]
_C.data.size_divisor = 32
_C.data.workers = 4
_C.optim = CfgNode()
_C.optim.lr = 1.0e-4
_C.optim.weight_decay = 1.0e-4
_C.optim.betas = [0.9, 0.999]
_C.optim.poly_power = 0.9
_C.train = CfgNode()
_C.train.iterations = 80000
_C.train.batch_size = 16
_C.train.grad_accum = 1
_C.train.amp = False
_C.train.seed = 0
_C.train.deterministic = False
_C.train.eval_interval = 8000
_C.train.eval_at_start = False
_C.train.checkpoint_interval = 8000
_C.train.log_interval = 50
_C.train.tensorboard = True
_C.train.progress = True
_C.train.device = "auto"
_C.train.cpu_threads = None


class ConfigError(ValueError):
    """An invalid configuration or command line; the message says which setting and why."""


class Interrupted(RuntimeError):
    """Training stopped by a signal after writing a checkpoint; ``--resume`` continues it."""


def get_cfg() -> CfgNode:
    """A copy of the reference recipe's settings."""
    return _C.clone()


def load_config(path: Optional[str | os.PathLike] = None, overrides: Optional[Mapping[str, Any]] = None) -> CfgNode:
    """The recipe updated by a yaml file (with ``_BASE_`` inheritance) and then by ``{"section.key": value}``
    overrides (values as Python objects or yaml text); unknown settings raise :class:`ConfigError`."""
    cfg = get_cfg()
    source = "command line"
    try:
        if path is not None:
            source = str(path)
            if not Path(path).is_file():
                raise ConfigError(f"config file not found: {path}")
            cfg.merge_from_file(str(path))
        source = "command line"
        cfg.merge_from_list([item for pair in (overrides or {}).items() for item in pair])
    except (KeyError, ValueError, AssertionError, yaml.YAMLError) as err:
        if isinstance(err, ConfigError):
            raise
        message = str(err.args[0]) if err.args else str(err)
        if "Non-existent" in message:  # yacs: a key the recipe does not have
            message = f"unknown setting {message.rpartition(': ')[2]!r} (the settings: seg_plugin.train_ade20k.get_cfg())"
        raise ConfigError(f"{source}: {message}") from None
    _validate(cfg)
    cfg.freeze()
    return cfg


def _validate(cfg: CfgNode) -> None:
    arch = cfg.model.arch.lower()
    if arch not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ConfigError(
            f"model.arch {arch!r} is not an smp architecture; choose one of {sorted(smp.MODEL_ARCHITECTURES_MAPPING)}"
        )
    model_cls = smp.MODEL_ARCHITECTURES_MAPPING[arch]
    fixed = {"self", "kwargs", "encoder_name", "encoder_weights", "encoder_depth", "in_channels", "classes"}
    accepted = set(inspect.signature(model_cls.__init__).parameters) - fixed
    unknown = sorted(set(cfg.model.arch_kwargs) - accepted)
    if unknown:
        raise ConfigError(
            f"model.arch_kwargs {unknown} are not arguments of smp.{model_cls.__name__} (accepted: {sorted(accepted)})"
        )
    for key in ("iterations", "batch_size", "grad_accum", "eval_interval", "checkpoint_interval", "log_interval"):
        if not isinstance(cfg.train[key], int) or cfg.train[key] < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {cfg.train[key]!r}")
    if not isinstance(cfg.data.num_classes, int) or not 1 <= cfg.data.num_classes < IGNORE_INDEX:
        raise ConfigError(
            f"data.num_classes must be an integer in [1, {IGNORE_INDEX - 1}], got {cfg.data.num_classes!r}"
        )
    if cfg.data.crop_size % cfg.data.size_divisor:
        raise ConfigError(
            f"data.crop_size {cfg.data.crop_size} must be divisible by data.size_divisor {cfg.data.size_divisor}"
        )
    if cfg.train.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device must be 'auto', 'cuda' or 'cpu', got {cfg.train.device!r}")


def _plain(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """A CfgNode as nested dicts (checkpoints hold it and load with ``weights_only=True``)."""
    return {k: _plain(v) if isinstance(v, Mapping) else v for k, v in cfg.items()}


def _augment(cfg: CfgNode) -> AugmentConfig:
    d = cfg.data
    return AugmentConfig(scale=tuple(d.scale), ratio_range=tuple(d.ratio_range), crop_size=d.crop_size,
                         cat_max_ratio=d.cat_max_ratio, flip_prob=d.flip_prob, photometric=d.photometric,
                         mean=tuple(d.mean), std=tuple(d.std), eval_scale=tuple(d.eval_scale),
                         size_divisor=d.size_divisor)


def build_model(cfg: CfgNode) -> nn.Module:
    """The smp model of ``cfg.model``: registry encoders (``fec_s``...) get ``encoder_params`` through a
    registry entry of their own, ``tu-`` encoders as model keyword arguments (smp passes them to timm)."""
    m = cfg.model
    register_encoders()
    encoder, params, weights = m.encoder, _plain(m.encoder_params), m.encoder_weights
    if isinstance(weights, str) and weights.lower() in ("none", "null", ""):
        weights = None
    kwargs: Dict[str, Any] = _plain(m.arch_kwargs)
    if encoder.startswith("tu-"):
        kwargs.update(params)
        weights = True if weights else None
    elif params:
        digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
        encoder = register_encoder(f"{encoder}_{digest}", encoder, **params)
    if m.encoder_depth is not None:
        kwargs["encoder_depth"] = m.encoder_depth
    return smp.create_model(m.arch, encoder_name=encoder, encoder_weights=weights, in_channels=3,
                            classes=cfg.data.num_classes, **kwargs)


def _unused_parameters(model: nn.Module, crop: int, device: torch.device) -> List[str]:
    """Parameters that receive no gradient in this architecture (e.g. encoder levels a decoder skips)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.train()
        model(torch.zeros(2, 3, crop, crop, device=device)).float().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    return unused


class SegmentationModule(L.LightningModule):
    """The smp model with the recipe's loss, optimizer, schedule and torchmetrics evaluation.

    Training batches are ``(images [B, 3, crop, crop], labels [B, crop, crop])``; evaluation batches one
    image at the evaluation scale with its labels at the original size (logits are resized to them).
    Checkpoints also hold the settings and every rank's random state, restored when training starts.
    """

    def __init__(self, cfg: CfgNode, names: List[str]):
        super().__init__()
        from torchmetrics import MetricCollection, SumMetric
        from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassJaccardIndex

        self.cfg, self.names = cfg, names
        self.model = build_model(cfg)
        common = dict(num_classes=cfg.data.num_classes, ignore_index=IGNORE_INDEX, validate_args=False)
        self.metrics = MetricCollection({
            "mIoU": MulticlassJaccardIndex(average="macro", **common),
            "IoU": MulticlassJaccardIndex(average="none", **common),
            "aAcc": MulticlassAccuracy(average="micro", **common),
            "confmat": MulticlassConfusionMatrix(**common),
        })
        self.images = SumMetric()
        self.evaluations: List[Dict[str, Any]] = []
        self._rng: Optional[Dict[str, Any]] = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self.model(images)
        valid = (labels != IGNORE_INDEX).sum().clamp_min(1)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum") / valid
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at iteration {self.global_step + 1}")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        image, labels = batch
        logits = F.interpolate(self.model(image).float(), size=labels.shape[-2:], mode="bilinear",
                               align_corners=False)
        self.metrics.update(logits.argmax(1), labels)
        self.images.update(image.shape[0])

    def on_validation_epoch_end(self) -> None:
        """mIoU over the classes present in labels or predictions (as mmseg), aAcc, per-class IoU (NaN for
        classes absent from both); torchmetrics sums the states of all ranks."""
        result = self.metrics.compute()
        confmat = result["confmat"]
        present = (confmat.sum(0) + confmat.sum(1)) > 0
        iou = torch.where(present, result["IoU"], torch.full_like(result["IoU"], float("nan")))
        evaluation = {"iteration": self.global_step, "mIoU": float(result["mIoU"]), "aAcc": float(result["aAcc"]),
                      "IoU": iou.cpu().tolist(), "images": int(self.images.compute())}
        self.evaluations.append(evaluation)
        self.metrics.reset()
        self.images.reset()
        self.log_dict({"val/mIoU": evaluation["mIoU"], "val/aAcc": evaluation["aAcc"],
                       **{f"val/IoU/{i}:{name}": v for i, (name, v) in enumerate(zip(self.names, evaluation["IoU"]))}},
                      rank_zero_only=True)
        self.print(f"[iter {self.global_step}] mIoU {100 * evaluation['mIoU']:.2f}  aAcc {100 * evaluation['aAcc']:.2f}"
                   f"  ({evaluation['images']} images)")

    def configure_optimizers(self) -> Dict[str, Any]:
        o = self.cfg.optim
        optimizer = torch.optim.AdamW(self.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, self.cfg.train.iterations, o.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        states = [capture_rng_state()]
        if dist.is_available() and dist.is_initialized():
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, capture_rng_state())
        checkpoint.update(config=_plain(self.cfg), rng=states)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        states = checkpoint["rng"]
        if len(states) == self.trainer.world_size:
            self._rng = states[self.trainer.global_rank]
        else:
            self.print(f"resuming with {self.trainer.world_size} processes instead of {len(states)}: data order "
                       "and random state differ from an uninterrupted run", file=sys.stderr)

    def on_train_start(self) -> None:
        """Each rank's own random stream (dropout, drop path): the checkpoint's when resuming, else seeded by
        rank (Lightning seeds every rank alike when it sets up DDP)."""
        if self._rng is not None:
            restore_rng_state(self._rng)
            self._rng = None
        else:
            L.seed_everything(self.cfg.train.seed + 1 + self.global_rank, verbose=False)


class _AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer with the shared atomic saver (flushed to disk, then renamed)."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        atomic_save(checkpoint, path)


class _StopOnSignal(Callback):
    """SIGINT/SIGTERM: finish the optimizer step, write ``last.ckpt`` (all ranks agree on the step), then
    raise :class:`Interrupted` before the next batch, once Lightning has logged the step. Lightning's own
    SIGTERM stop can fall inside a gradient accumulation and is decided per rank."""

    def __init__(self, path: Path, on_iteration: Optional[Callable[[int], None]] = None):
        self.path, self.on_iteration = path, on_iteration
        self.signal: Optional[int] = None
        self.saved: Optional[int] = None
        self._previous: Dict[int, Any] = {}
        self._step = 0

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step = trainer.global_step
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.saved is not None:
            raise Interrupted(f"interrupted at iteration {self.saved}; checkpoint written to {self.path}; "
                              "continue with --resume")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self._step:  # inside a gradient accumulation
            return
        self._step = trainer.global_step
        if self.on_iteration is not None:
            self.on_iteration(self._step)
        stop = torch.tensor([0 if self.signal is None else 1], device=pl_module.device)
        if trainer.world_size > 1:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if stop.item() and self._step < trainer.max_steps:
            trainer.save_checkpoint(self.path)
            self.saved = self._step

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _csv_rows_before(path: Path, step: int) -> List[Dict[str, str]]:
    """The rows of a CSV log written before iteration ``step`` (a resumed run rewrites the rest)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) < step]  # Lightning's step: iteration - 1


def _world() -> Tuple[int, int, int]:
    """(rank, world size, processes on this node) from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))


def train(
    cfg: CfgNode,
    out_dir: str | os.PathLike,
    resume: Optional[str | os.PathLike] = None,
    on_iteration: Optional[Callable[[int], None]] = None,
) -> Dict[str, Any]:
    """Train (or continue training) ``cfg``'s model into ``out_dir``. Returns ``final`` (the last
    evaluation: mIoU, aAcc, per-class IoU, images), ``initial`` (with ``train.eval_at_start``),
    ``sec_per_iter``, ``iterations`` and ``unused_parameters``; ``on_iteration(i)`` runs after iteration i."""
    threads = torch.get_num_threads()
    if cfg.train.cpu_threads is not None:
        torch.set_num_threads(cfg.train.cpu_threads)
    try:
        return _train(cfg, Path(out_dir), resume, on_iteration)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: CfgNode, out: Path, resume: Optional[str | os.PathLike],
           on_iteration: Optional[Callable[[int], None]]) -> Dict[str, Any]:
    t, d = cfg.train, cfg.data
    rank, world, local_world = _world()
    ckpt_path = out / CHECKPOINT
    if resume is None and ckpt_path.exists():
        raise ConfigError(f"{out} already holds a run ({ckpt_path}); continue it with --resume or choose another --out-dir")
    if t.batch_size % (world * t.grad_accum):
        raise ConfigError(f"train.batch_size {t.batch_size} is not divisible by world size x grad_accum "
                          f"({world} x {t.grad_accum})")
    batch = t.batch_size // (world * t.grad_accum)
    start = 0
    if resume is not None:
        saved = load_training_checkpoint(resume)
        for key in ("config", "rng", "global_step"):
            if key not in saved:
                raise CheckpointError(f"{resume} is not a checkpoint of this trainer (no {key!r}); start a new run")
        check_resume_config(saved["config"], _plain(cfg), RUN_ONLY)
        start = int(saved["global_step"])
        del saved
    device = "cuda" if t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available")

    aug = _augment(cfg)
    train_set = ADE20KDataset(d.root, d.train_split, d.num_classes, aug, seed=t.seed, rank=rank)
    val_set = ADE20KEvalDataset(d.root, d.val_split, d.num_classes, aug)
    val_set.indices = val_set.indices[rank::world]
    L.seed_everything(t.seed, verbose=False)
    module = SegmentationModule(cfg, class_names(d.root, d.num_classes))
    unused = _unused_parameters(module.model, d.crop_size, torch.device("cpu"))  # before Lightning moves it
    sampler = ResumableSampler(len(train_set), rank, world, seed=t.seed, start=start * batch * t.grad_accum,
                               positions=True)
    train_loader = DataLoader(train_set, batch_size=batch, sampler=sampler, num_workers=d.workers,
                              pin_memory=device == "cuda", generator=torch.Generator().manual_seed(t.seed),
                              persistent_workers=d.workers > 0)
    val_loader = DataLoader(val_set, batch_size=1, num_workers=d.workers,
                            generator=torch.Generator().manual_seed(t.seed))

    loggers: List[Any] = [CSVLogger(out, name="", version="", flush_logs_every_n_steps=t.log_interval)]
    if t.tensorboard:
        loggers.append(TensorBoardLogger(out, name="tensorboard", version="", default_hp_metric=False,
                                         purge_step=start if resume is not None else None))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        kept = _csv_rows_before(out / "metrics.csv", start) if resume is not None else []
        with warnings.catch_warnings():  # "previous log files will be deleted": the rows kept are written back
            warnings.filterwarnings("ignore", "Experiment logs directory")
            loggers[0].experiment.metrics[:0] = kept
        (out / "config.yaml").write_text(cfg.dump(), encoding="utf-8")
        print(f"{cfg.model.arch} + {cfg.model.encoder}: {sum(p.numel() for p in module.parameters()):,} parameters, "
              f"{len(train_set)} training / {len(val_set) * world} validation images, batch {t.batch_size} "
              f"({world} process(es) x {t.grad_accum} accumulation x {batch}), device {device}, "
              f"iterations {start}->{t.iterations}", flush=True)
    amp = ("16-mixed" if device == "cuda" else "bf16-mixed") if t.amp else "32-true"
    strategy: Any = "auto"
    if world > 1:
        strategy = DDPStrategy(find_unused_parameters=bool(unused),
                               process_group_backend="nccl" if device == "cuda" else "gloo")
    stopper = _StopOnSignal(ckpt_path, on_iteration)
    callbacks = [stopper, LearningRateMonitor("step"),
                 ModelCheckpoint(out, every_n_train_steps=t.checkpoint_interval, save_top_k=0, save_last=True,
                                 enable_version_counter=False)]
    if t.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, t.log_interval // 10)))
    trainer = L.Trainer(
        accelerator=device, devices=local_world, num_nodes=world // local_world, strategy=strategy, precision=amp,
        max_steps=t.iterations, max_epochs=-1, accumulate_grad_batches=t.grad_accum,
        val_check_interval=t.eval_interval * t.grad_accum, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        use_distributed_sampler=False, logger=loggers, log_every_n_steps=t.log_interval, callbacks=callbacks,
        enable_progress_bar=t.progress, enable_model_summary=False, inference_mode=False, deterministic="warn" if t.deterministic else None,
        plugins=[_AtomicCheckpointIO()], default_root_dir=out,
    )
    result: Dict[str, Any] = {}
    if t.eval_at_start and start == 0:
        trainer.validate(module, val_loader, verbose=False)
        result["initial"] = module.evaluations[-1]
    tick = time.perf_counter()
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume, weights_only=True)
    elapsed = time.perf_counter() - tick
    if not module.evaluations or module.evaluations[-1]["iteration"] != trainer.global_step:
        trainer.validate(module, val_loader, verbose=False)
    result["final"] = module.evaluations[-1]
    if trainer.global_step % t.checkpoint_interval:
        trainer.save_checkpoint(ckpt_path)
    if trainer.is_global_zero:
        final = result["final"]
        module.model.save_pretrained(str(out / "model"), dataset=f"ADE20K-layout data at {d.root}",
                                     metrics={"mIoU": final["mIoU"], "aAcc": final["aAcc"]})
    result.update(sec_per_iter=elapsed / max(trainer.global_step - start, 1), iterations=trainer.global_step,
                  unused_parameters=unused)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seg_plugin.train_ade20k", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="yaml config (default: the reference recipe, configs/segmentation/)")
    parser.add_argument("--data-root", help="ADEChallengeData2016 folder (data.root)")
    parser.add_argument("--out-dir", required=True, help="folder for checkpoints, logs and the final model")
    parser.add_argument("--arch", help="smp architecture, e.g. fpn, unet, deeplabv3plus, upernet (model.arch)")
    parser.add_argument("--encoder", help="encoder, e.g. fec_s, fec_b, fec_l, tu-fec_small (model.encoder)")
    parser.add_argument("--encoder-weights", help="imagenet or none (model.encoder_weights)")
    parser.add_argument("--iterations", type=int, help="train.iterations")
    parser.add_argument("--batch-size", type=int, help="global batch size (train.batch_size)")
    parser.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    parser.add_argument("--resume", nargs="?", const="auto",
                        help=f"continue from a checkpoint (default: <out-dir>/{CHECKPOINT})")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any config setting (yaml value)")
    args = parser.parse_args(argv)
    try:
        overrides: Dict[str, Any] = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: write section.key=value, e.g. train.iterations=1000")
            overrides[key.strip()] = yaml.safe_load(value)
        for key, value in (("data.root", args.data_root), ("model.arch", args.arch), ("model.encoder", args.encoder),
                           ("model.encoder_weights", args.encoder_weights), ("train.iterations", args.iterations),
                           ("train.batch_size", args.batch_size), ("train.amp", True if args.amp else None)):
            if value is not None:
                overrides[key] = value
        cfg = load_config(args.config, overrides)
        resume = Path(args.out_dir) / CHECKPOINT if args.resume == "auto" else args.resume
        result = train(cfg, args.out_dir, resume)
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        return 130
    except WeightsNotInstalledError as err:
        print(f"error: {err}\n(with this command: --encoder-weights none)", file=sys.stderr)
        return 2
    except (ConfigError, SegDataError, CheckpointError, ResumeConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    final = result["final"]
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final mIoU {100 * final['mIoU']:.2f}, aAcc {100 * final['aAcc']:.2f}, "
              f"{result['sec_per_iter']:.3f} s/iteration; model saved to {Path(args.out_dir) / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
