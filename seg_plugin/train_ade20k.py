"""ADE20K semantic segmentation with an smp model and an FEC encoder: the FEC paper's training recipe, on Lightning.

The official recipe (FEC's ``fpn_fec_*_ade20k_80k`` mmseg 0.24 configs): the Semantic FPN
(:class:`seg_plugin.SemanticFPN`, ``model.arch semanticfpn``; any smp architecture can replace it), AdamW
(lr 1e-4, weight decay 1e-4), poly schedule (power 0.9), 80k iterations at batch 16, 512x512 crops after
random rescaling (0.5-2.0), flipping and photometric distortion, mmseg's cross-entropy (summed over the
labelled pixels, divided by all pixels: ``loss.avg_non_ignore false``), SyncBatchNorm under DDP
(``train.sync_batchnorm``), single-scale evaluation at short side 512; mIoU, per-class IoU and pixel
accuracy from torchmetrics; the model summary at the start gives the decoder's parameter count
(4,161,174 for FEC-S, as the official model's). ``docs/segmentation.md`` compares every setting with the
official configs. Settings are a yacs ``CfgNode`` (as in Detectron2): files may name a ``_BASE_`` file,
unknown keys are errors, and ``KEY VALUE`` pairs after the options override any setting (``model.arch
fpn`` trains smp's FPN instead: architecture arguments are kept per architecture,
``model.arch_kwargs.<arch>``, so switching the architecture leaves the other one's behind).

    python -m seg_plugin.train_ade20k --config configs/segmentation/fpn_fec_s_ade20k_80k.yaml \\
        --data-root data/ADEChallengeData2016 --out-dir output/fpn_fec_s_ade20k
    torchrun --nproc_per_node 4 -m seg_plugin.train_ade20k --config ... train.amp true   # DDP, global batch
    python -m seg_plugin.train_ade20k ... --resume                                         # continue a run

Outputs in ``--out-dir``: ``last.ckpt`` (Lightning's, written atomically, every ``checkpoint_interval``
iterations, at the end, and on SIGINT/SIGTERM), ``metrics.csv`` (Lightning's CSV log: loss, learning rate,
mIoU, aAcc, per-class IoU), ``tensorboard/``, ``config.yaml`` and the final model in smp's format
(``model/``, load with ``smp.from_pretrained``; its ``class_names.txt`` and the checkpoint's
``class_names`` record the dataset's class names). A resumed run continues exactly as the uninterrupted run.
"""
from __future__ import annotations

import argparse
import csv
import inspect
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

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
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, Subset

import segmentation_models_pytorch as smp

from fec_backbone import cluster_ops
from fec_backbone.checkpoint import CheckpointError, read_checkpoint, read_fec_weights
from fec_backbone.model_zoo import resolve_config
from fec_backbone.training import (ResumableSampler, ResumeConfigError, atomic_save, capture_rng_state,
                                   check_resume_config, restore_rng_state)

from .data import IGNORE_INDEX, ADE20KDataset, AugmentConfig, SegDataError, class_names
from .encoder import encoder_params
from .pretrained import (ENCODER_VARIANTS, WeightsNotInstalledError, encoder_base, load_encoder_weights,
                         load_imagenet_weights)
from .sync_batchnorm import convert_sync_batchnorm, revert_sync_batchnorm, sync_batchnorm_layers

__all__ = ["ConfigError", "Interrupted", "ModelPlan", "SegmentationModule", "build_model", "get_cfg", "load_config",
           "model_plan", "model_summary", "segmentation_loss", "train", "main"]

CHECKPOINT = "last.ckpt"
#: The class names of a run, one a line, written beside the saved model (``model/class_names.txt``).
CLASS_NAMES = "class_names.txt"
#: Settings a resumed run may change (they do not change the training trajectory); fnmatch patterns.
RUN_ONLY = ("data.root", "data.workers", "train.*_interval", "train.eval_at_start", "train.tensorboard",
            "train.progress", "train.cpu_threads", "train.compile", "train.compile_mode", "train.cluster_backend")

# The reference recipe (FEC's ``fpn_fec_*_ade20k_80k`` mmseg configs); config files override it.
_C = CfgNode({
    "model": {"arch": "semanticfpn", "encoder": "fec_s", "encoder_weights": "imagenet", "encoder_depth": None,
              "encoder_params": {}, "arch_kwargs": {}},
    "data": {"root": "data/ADEChallengeData2016", "train_split": "training", "val_split": "validation",
             "num_classes": 150, "workers": 4,  # and the augmentation's settings, from AugmentConfig:
             **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(AugmentConfig()).items()}},
    "loss": {"avg_non_ignore": False},  # mmseg 0.24 CrossEntropyLoss: the mean over all pixels, ignored ones too
    "optim": {"lr": 1.0e-4, "weight_decay": 1.0e-4, "betas": [0.9, 0.999], "poly_power": 0.9},
    "train": {"iterations": 80000, "batch_size": 16, "grad_accum": 1, "amp": False, "sync_batchnorm": True,
              "seed": 0, "deterministic": False,
              "eval_interval": 8000, "eval_at_start": False, "checkpoint_interval": 8000, "log_interval": 50,
              "tensorboard": True, "progress": True, "device": "auto", "cpu_threads": None,
              # speed, not what is learned: torch.compile of the training step, FEC's clustering backend
              "compile": "", "compile_mode": "", "cluster_backend": "auto"},
})
#: What the trainer did before a setting existed, for checkpoints written then (resuming compares settings):
#: the loss was divided by the labelled pixels, BatchNorm was not synchronised.
LEGACY_DEFAULTS = {"loss": {"avg_non_ignore": True}, "train": {"sync_batchnorm": False}}
_C.model.encoder_params.set_new_allowed(True)  # FEC encoder settings (preset, drop_path_rate, ...)
_C.model.arch_kwargs.set_new_allowed(True)  # smp architecture arguments, plain or under an architecture's name


class ConfigError(ValueError):
    """An invalid configuration or command line; the message says which setting and why."""


class Interrupted(RuntimeError):
    """Training stopped by a signal after writing a checkpoint; ``--resume`` continues it."""


def get_cfg() -> CfgNode:
    """A copy of the reference recipe's settings."""
    return _C.clone()


def load_config(path: Optional[str | os.PathLike] = None, overrides: Optional[Mapping[str, Any]] = None) -> CfgNode:
    """The recipe updated by a yaml file (``_BASE_`` inheritance) and then by ``{"section.key": value}``
    overrides; unknown settings and wrong types raise :class:`ConfigError`."""
    cfg, source = get_cfg(), str(path)
    try:
        if path is not None:
            try:
                path = resolve_config(str(path))  # configs/... names work outside a checkout too
            except FileNotFoundError as err:
                raise ConfigError(str(err)) from None
            cfg.merge_from_file(path)
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


def _arch_arguments(arch: str) -> List[str]:
    """The keyword arguments ``model.arch_kwargs`` may give smp's ``arch`` class (the trainer sets the rest)."""
    fixed = {"self", "kwargs", "encoder_name", "encoder_weights", "encoder_depth", "in_channels", "classes"}
    return sorted(set(inspect.signature(smp.MODEL_ARCHITECTURES_MAPPING[arch].__init__).parameters) - fixed)


def _split_arch_kwargs(arch_kwargs: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``model.arch_kwargs`` as (plain arguments, ``{architecture: its arguments}``): a key naming an smp
    architecture holds the arguments for that architecture only."""
    kwargs = _plain(arch_kwargs)
    keyed = {k.lower(): v for k, v in kwargs.items() if k.lower() in smp.MODEL_ARCHITECTURES_MAPPING}
    return {k: v for k, v in kwargs.items() if k.lower() not in keyed}, keyed


def _arch_kwargs(cfg: CfgNode) -> Dict[str, Any]:
    """The keyword arguments of ``cfg.model.arch``'s smp class: ``model.arch_kwargs``' plain keys and those
    under the architecture's name (``model.arch_kwargs.fpn.decoder_dropout``), which win; arguments kept
    under another architecture's name are not used, so ``model.arch upernet`` switches without them (as
    Detectron2's ``MODEL.META_ARCHITECTURE`` leaves the other heads' settings unread)."""
    plain, keyed = _split_arch_kwargs(cfg.model.arch_kwargs)
    return {**plain, **keyed.get(cfg.model.arch.lower(), {})}


def _validate(cfg: CfgNode) -> None:
    if cfg.model.arch.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ConfigError(f"model.arch {cfg.model.arch!r} is not an smp architecture; choose one of "
                          f"{sorted(smp.MODEL_ARCHITECTURES_MAPPING)}")
    arch = cfg.model.arch.lower()
    plain, keyed = _split_arch_kwargs(cfg.model.arch_kwargs)
    unknown = sorted(set(plain) - set(_arch_arguments(arch)))
    if unknown:
        raise ConfigError(
            f"model.arch_kwargs {unknown} are not arguments of smp.{smp.MODEL_ARCHITECTURES_MAPPING[arch].__name__} "
            f"(accepted: {_arch_arguments(arch)}); arguments for one architecture go under its name, "
            f"e.g. model.arch_kwargs.fpn.{unknown[0]}, and are used only when model.arch is that one")
    for name, kwargs in keyed.items():
        cls = smp.MODEL_ARCHITECTURES_MAPPING[name].__name__
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"model.arch_kwargs.{name} must hold smp.{cls}'s arguments as a mapping, got {kwargs!r}")
        unknown = sorted(set(kwargs) - set(_arch_arguments(name)))
        if unknown:
            raise ConfigError(f"model.arch_kwargs.{name} {unknown} are not arguments of smp.{cls} "
                              f"(accepted: {_arch_arguments(name)})")
    encoder, params = cfg.model.encoder, _plain(cfg.model.encoder_params)
    if encoder in ENCODER_VARIANTS and params:
        try:
            encoder_params(encoder, **params)
        except ValueError as err:
            raise ConfigError(f"model.encoder_params: {err}") from None
        if "feature_norms" in params:
            raise ConfigError(f"model.encoder_params: {encoder} always has its output norms (feature_norms); "
                              "for an FEC without them use model.encoder tu-" + ENCODER_VARIANTS[encoder])
    if encoder_base(encoder) is not None and (encoder.startswith("tu-") or params) and cfg.data.size_divisor % 32:
        raise ConfigError(f"data.size_divisor {cfg.data.size_divisor}: smp's timm route to FEC "
                          f"({'tu-' + ENCODER_VARIANTS[encoder_base(encoder)]}) takes sides divisible by 32 only; "
                          "use a multiple of 32")
    for key in ("iterations", "batch_size", "grad_accum", "eval_interval", "checkpoint_interval", "log_interval"):
        if not isinstance(cfg.train[key], int) or cfg.train[key] < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {cfg.train[key]!r}")
    if not isinstance(cfg.data.num_classes, int) or not 1 <= cfg.data.num_classes < IGNORE_INDEX:
        raise ConfigError(f"data.num_classes must be an integer in [1, {IGNORE_INDEX - 1}], got {cfg.data.num_classes!r}")
    if cfg.data.crop_size % cfg.data.size_divisor:
        raise ConfigError(f"data.crop_size {cfg.data.crop_size} must be divisible by data.size_divisor "
                          f"{cfg.data.size_divisor}")
    if cfg.train.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device must be 'auto', 'cuda' or 'cpu', got {cfg.train.device!r}")


def _plain(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """A CfgNode as nested dicts (checkpoints hold it and load with ``weights_only=True``)."""
    return {k: _plain(v) if isinstance(v, Mapping) else v for k, v in cfg.items()}


def _augment(cfg: CfgNode) -> AugmentConfig:
    return AugmentConfig(**{f.name: tuple(cfg.data[f.name]) if isinstance(cfg.data[f.name], list) else cfg.data[f.name]
                            for f in fields(AugmentConfig)})


@dataclass
class ModelPlan:
    """How :func:`build_model` builds ``cfg.model``: ``smp.create_model(**create)``, then (``weights``) the FEC
    encoder's ImageNet weights loaded into it: ``"installed"`` (the snapshot of ``python -m seg_plugin.weights
    install``) or a checkpoint file; ``notes`` say in the run's log what was decided and why."""

    create: Dict[str, Any]
    weights: Optional[str] = None
    notes: List[str] = field(default_factory=list)


def _encoder_weights(value: Any) -> Any:
    return None if isinstance(value, str) and value.lower() in ("none", "null", "") else value


def model_plan(cfg: CfgNode) -> ModelPlan:
    """What :func:`build_model` does with ``cfg.model``.

    * ``fec_s``/``fec_b``/``fec_l`` with ``encoder_params`` become smp's timm route to the same network,
      ``tu-fec_small`` (...) with ``feature_norms=True, preset="segmentation", num_classes=0`` and the params as
      model keyword arguments (the same modules and, seed for seed, the same initial weights): smp records
      those in the saved model's ``config.json``, so ``smp.from_pretrained`` rebuilds the same model in any
      process after ``import seg_plugin``. (smp gives a registry encoder only its
      registry entry's params, and the registry lives in the process: settings put there are not saved.)
      Without ``encoder_params`` the registry encoder is used as it is (it also takes any input size).
    * FEC encoders (either route) are built with ``encoder_weights=None`` and ``"imagenet"`` weights are then
      loaded from the installed snapshot (or from ``encoder_params.pretrained_cfg_overlay.file`` when given, timm's
      way), so the saved config does not ask for weights that a machine loading the model may not have.
    * other ``tu-`` encoders get ``encoder_params`` as model keyword arguments, registry encoders none.
    """
    m = cfg.model
    encoder, params, weights = m.encoder, _plain(m.encoder_params), _encoder_weights(m.encoder_weights)
    create: Dict[str, Any] = {"arch": m.arch, "in_channels": 3, "classes": cfg.data.num_classes, **_arch_kwargs(cfg)}
    if m.encoder_depth is not None:
        create["encoder_depth"] = m.encoder_depth
    notes: List[str] = []
    base = encoder_base(encoder)
    if encoder in ENCODER_VARIANTS and params:
        universal = f"tu-{ENCODER_VARIANTS[encoder]}"
        # num_classes=0: timm builds no classifier, so the initial weights are the registry encoder's, draw for draw
        settings = {"feature_norms": True, "preset": "segmentation", "num_classes": 0, **params}
        notes.append(f"model.encoder {encoder} with model.encoder_params {params}: built as smp's {universal} with "
                     f"{', '.join(f'{k}={v!r}' for k, v in settings.items())}: the same network as {encoder} with "
                     "these settings (same initial weights), which smp records in the saved model's config.json")
        encoder, params = universal, settings
    plan = ModelPlan(create, notes=notes)
    if encoder.startswith("tu-"):
        create.update(params)
    if base is not None and weights:
        overlay = dict(create.get("pretrained_cfg_overlay") or {})
        if encoder.startswith("tu-") and overlay.get("file"):
            plan.weights = str(overlay.pop("file"))
            if overlay:
                create["pretrained_cfg_overlay"] = overlay
            else:
                create.pop("pretrained_cfg_overlay")
        else:
            plan.weights = "installed"
        source = "the installed snapshot" if plan.weights == "installed" else plan.weights
        notes.append(f"{encoder} ImageNet weights from {source}, loaded after building with encoder_weights=None "
                     "(the saved model reloads without them)")
        weights = None
    elif encoder.startswith("tu-"):
        weights = True if weights else None
    create.update(encoder_name=encoder, encoder_weights=weights)
    return plan


def build_model(cfg: CfgNode) -> nn.Module:
    """The smp model of ``cfg.model`` (see :func:`model_plan`). Writes nothing into smp's encoder registry."""
    plan = model_plan(cfg)
    create = dict(plan.create)
    model = smp.create_model(create.pop("arch"), **create)
    if plan.weights == "installed":
        load_imagenet_weights(model.encoder, create["encoder_name"])
    elif plan.weights is not None:
        load_encoder_weights(model.encoder, read_fec_weights(plan.weights))
    return model


def model_summary(model: nn.Module) -> List[str]:
    """The model summary the trainer prints: the parameters of the model and of each of its parts (an smp
    model's encoder, decoder, segmentation head, ...), then those of the decoder with its segmentation head,
    the count the official Semantic FPN's decoder is given by (4,161,174 on FEC-S with 150 classes: the
    mmseg FPN neck and FPNHead, ``conv_seg`` included)."""
    def count(module: Optional[nn.Module]) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    parts = [(name, child) for name, child in model.named_children()
             if count(child) or name in ("encoder", "decoder", "segmentation_head")]
    lines = [f"{getattr(model, 'name', type(model).__name__)} ({type(model).__name__}): {count(model):,} parameters"]
    lines += [f"  {name:<20} {type(child).__name__:<22} {count(child):>12,}" for name, child in parts]
    decoder = count(getattr(model, "decoder", None)) + count(getattr(model, "segmentation_head", None))
    lines.append(f"  decoder + segmentation_head: {decoder:,} parameters")
    return lines


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, avg_non_ignore: bool = False) -> torch.Tensor:
    """mmseg 0.24's decode-head loss: the logits ``[B, C, h, w]`` resized bilinearly (``align_corners=False``) to
    the labels' size ``[B, H, W]`` when they differ, per-pixel cross-entropy with the labels 255 ignored (a
    loss of 0), then mmseg ``CrossEntropyLoss``'s reduction: with ``avg_non_ignore=False`` (its default, the
    official configs') the mean over ALL pixels of the batch, ignored ones included, i.e. the sum over the
    labelled pixels divided by ``B * H * W``; with ``avg_non_ignore=True`` divided by the labelled pixels
    (at least 1)."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if avg_non_ignore:
        return total / (labels != IGNORE_INDEX).sum().clamp_min(1)
    return total / labels.numel()


class _SyncBatchNorm(TorchSyncBatchNorm):
    """Lightning's ``sync_batchnorm`` through :func:`seg_plugin.sync_batchnorm.convert_sync_batchnorm`: torch's
    SyncBatchNorm on CUDA, :class:`~seg_plugin.sync_batchnorm.CpuSyncBatchNorm` on CPU processes; reverted to
    the original BatchNorm classes when training ends."""

    def __init__(self, device_type: str):
        self.device_type = device_type

    def apply(self, model: nn.Module) -> nn.Module:
        return convert_sync_batchnorm(model, self.device_type)

    def revert(self, model: nn.Module) -> nn.Module:
        return revert_sync_batchnorm(model)


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
    """The smp model with the recipe's loss (:func:`segmentation_loss`), AdamW + poly schedule and torchmetrics
    evaluation. Training batches: ``(images [B, 3, crop, crop], labels [B, crop, crop])``; evaluation: one
    image at the evaluation scale with labels at the original size. Checkpoints also hold the settings and
    every rank's RNG state."""

    def __init__(self, cfg: CfgNode, names: List[str]):
        super().__init__()
        from torchmetrics import MetricCollection, SumMetric
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        self.cfg, self.names, self.model = cfg, names, build_model(cfg)
        common = dict(num_classes=cfg.data.num_classes, ignore_index=IGNORE_INDEX, validate_args=False)
        self.metrics = MetricCollection({"mIoU": MulticlassJaccardIndex(average="macro", **common),
                                         "IoU": MulticlassJaccardIndex(average="none", zero_division=float("nan"),
                                                                       **common),
                                         "aAcc": MulticlassAccuracy(average="micro", **common)})
        self.images = SumMetric()
        self.evaluations: List[Dict[str, Any]] = []
        self._rng: Optional[Dict[str, Any]] = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def train_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The model on a training batch: compiled with ``train.compile`` (a torch.compile backend, e.g.
        ``inductor``), on the fixed crop size, so one graph serves every step. Evaluation runs the eager model:
        its images keep their aspect ratios, so their sizes vary, and padding them to a few compiled sizes
        would change the official protocol's numbers. The compiled function stays out of the module tree,
        so checkpoints hold each weight once, under the model's own keys."""
        if self.cfg.train.compile and "_compiled" not in self.__dict__:
            self.__dict__["_compiled"] = torch.compile(self.model, backend=self.cfg.train.compile,
                                                       mode=self.cfg.train.compile_mode or None)
        return self.__dict__.get("_compiled", self.model)(images)

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = segmentation_loss(self.train_forward(images), labels, self.cfg.loss.avg_non_ignore)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at iteration {self.global_step + 1}")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        image, labels = batch
        logits = F.interpolate(self.model(image).float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        self.metrics.update(logits.argmax(1), labels)
        self.images.update(image.shape[0])

    def on_validation_epoch_end(self) -> None:
        """mIoU over the classes present in labels or predictions (torchmetrics' macro average, as mmseg), aAcc
        and per-class IoU (NaN for classes absent from both), summed over all ranks by torchmetrics."""
        result = self.metrics.compute()
        iou = result["IoU"].cpu().tolist()
        ev = {"iteration": self.global_step, "mIoU": float(result["mIoU"]), "aAcc": float(result["aAcc"]), "IoU": iou,
              "images": int(self.images.compute())}
        self.evaluations.append(ev)
        self.metrics.reset()
        self.images.reset()
        per_class = {f"val/IoU/{i}:{name}": v for i, (name, v) in enumerate(zip(self.names, iou))}
        self.log_dict({"val/mIoU": ev["mIoU"], "val/aAcc": ev["aAcc"], **per_class}, rank_zero_only=True)
        self.print(f"[iter {ev['iteration']}] mIoU {100 * ev['mIoU']:.2f}  aAcc {100 * ev['aAcc']:.2f}  "
                   f"({ev['images']} images)")

    def configure_optimizers(self) -> Dict[str, Any]:
        o = self.cfg.optim
        optimizer = torch.optim.AdamW(self.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, self.cfg.train.iterations, o.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        states: List[Any] = [capture_rng_state()]
        if dist.is_available() and dist.is_initialized():
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, capture_rng_state())
        checkpoint.update(config=_plain(self.cfg), rng=states, class_names=list(self.names))

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["state_dict"] = upgrade_state_dict(checkpoint["state_dict"], self.state_dict())
        if len(checkpoint["rng"]) == self.trainer.world_size:
            self._rng = checkpoint["rng"][self.trainer.global_rank]
        else:
            self.print(f"resuming with {self.trainer.world_size} processes instead of {len(checkpoint['rng'])}: data "
                       "order and random state differ from an uninterrupted run", file=sys.stderr)

    def on_train_start(self) -> None:
        """Each rank's own random stream (dropout, drop path): the checkpoint's when resuming, else seeded by
        rank (Lightning seeds all ranks alike when it sets up DDP). Every rank of a DDP run says whether its
        BatchNorms are synchronised."""
        if self.trainer.world_size > 1:
            synced = sync_batchnorm_layers(self.model)
            plain = [n for n, m in self.model.named_modules()
                     if isinstance(m, nn.modules.batchnorm._BatchNorm) and n not in synced]
            kinds = sorted({type(self.model.get_submodule(n)).__name__ for n in synced})
            print(f"[rank {self.global_rank}] BatchNorm: {len(synced)} layer(s) synchronised across "
                  f"{self.trainer.world_size} processes ({', '.join(kinds) or 'none'}), {len(plain)} not synchronised",
                  flush=True)
        if self._rng is not None:
            restore_rng_state(self._rng)
            self._rng = None
        else:
            L.seed_everything(self.cfg.train.seed + 1 + self.global_rank, verbose=False)


def upgrade_state_dict(state: Dict[str, torch.Tensor], expected: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """A checkpoint written before the trainer built ``encoder_params`` models on smp's timm route holds the
    same encoder under ``model.encoder.`` instead of ``model.encoder.model.model.`` (same modules, same order,
    so the optimizer state fits as it is): its keys are moved there; any other checkpoint is returned as is."""
    old, new = "model.encoder.", "model.encoder.model.model."
    if f"{old}stem.proj.weight" not in state or f"{new}stem.proj.weight" not in expected:
        return state
    return {new + k[len(old):] if k.startswith(old) else k: v for k, v in state.items()}


class _AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer with the shared atomic saver: written beside the target, flushed, renamed.
    (Lightning stages the file in the system temp folder and moves it: a plain copy, not atomic, when that
    folder is on another file system.)"""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        atomic_save(checkpoint, path)


class _StopOnSignal(Callback):
    """SIGINT/SIGTERM: finish the optimizer step, write ``last.ckpt`` (all ranks agree on the step), then raise
    :class:`Interrupted` before the next batch, once Lightning has logged the step. (Lightning's own SIGTERM
    stop can fall inside a gradient accumulation, is decided per rank and writes no checkpoint.)"""

    def __init__(self, path: Path):
        self.path = path
        self.signal: Optional[int] = None
        self.saved: Optional[int] = None
        self._previous: Dict[int, Any] = {}
        self._step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step = trainer.global_step
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, lambda signum, frame: setattr(self, "signal", signum))

    def on_train_batch_start(self, *args: Any) -> None:
        if self.saved is not None:
            raise Interrupted(f"interrupted at iteration {self.saved}; checkpoint written to {self.path}; "
                              "continue with --resume")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self._step:  # inside a gradient accumulation
            return
        self._step = trainer.global_step
        stop = torch.tensor([self.signal is not None], dtype=torch.int32, device=pl_module.device)
        if trainer.world_size > 1:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if stop.item() and self._step < trainer.max_steps:
            trainer.save_checkpoint(self.path)
            self.saved = self._step

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _with_legacy_defaults(saved: Mapping[str, Any]) -> Dict[str, Any]:
    """A checkpoint's settings with those it predates filled in as the trainer then behaved
    (:data:`LEGACY_DEFAULTS`), so that resuming it under today's defaults names the difference."""
    out = _plain(saved)
    for section, values in LEGACY_DEFAULTS.items():
        out[section] = {**values, **out.get(section, {})}
    return out


def _csv_rows_before(path: Path, step: int) -> List[Dict[str, str]]:
    """The rows of Lightning's CSV log written before iteration ``step`` (its ``step`` is iteration - 1)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) < step]


def train(cfg: CfgNode, out_dir: str | os.PathLike, resume: Optional[str | os.PathLike] = None,
          callbacks: Sequence[Callback] = ()) -> Dict[str, Any]:
    """Train (or continue training) ``cfg``'s model into ``out_dir``. Returns ``final`` (the last evaluation:
    ``mIoU``, ``aAcc``, per-class ``IoU``, ``images``, ``iteration``), ``initial`` (with
    ``train.eval_at_start``), ``sec_per_iter``, ``iterations`` and ``unused_parameters``; ``callbacks``
    are further Lightning callbacks."""
    threads, backend = torch.get_num_threads(), cluster_ops.get_backend()
    if cfg.train.cpu_threads is not None:
        torch.set_num_threads(cfg.train.cpu_threads)
    cluster_ops.set_backend(cfg.train.cluster_backend)
    try:
        return _train(cfg, Path(out_dir), resume, list(callbacks))
    finally:
        torch.set_num_threads(threads)
        cluster_ops.set_backend(backend)


def _train(cfg: CfgNode, out: Path, resume: Optional[str | os.PathLike], callbacks: List[Callback]) -> Dict[str, Any]:
    t, d = cfg.train, cfg.data
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's environment
    rank, local_world = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    ckpt_path, start = out / CHECKPOINT, 0
    if resume is None and ckpt_path.exists():
        raise ConfigError(f"{out} already holds a run ({ckpt_path}); continue it with --resume or choose another --out-dir")
    if t.batch_size % (world * t.grad_accum):
        raise ConfigError(f"train.batch_size {t.batch_size} is not divisible by world size x grad_accum "
                          f"({world} x {t.grad_accum})")
    batch = t.batch_size // (world * t.grad_accum)
    if resume is not None:
        saved = read_checkpoint(resume)
        if not {"config", "rng", "global_step"} <= set(saved):
            raise CheckpointError(f"{resume} is not a checkpoint of this trainer (it lacks the settings, random "
                                  "states or iteration); start a new run")
        check_resume_config(_with_legacy_defaults(saved["config"]), _plain(cfg), RUN_ONLY)
        start = int(saved["global_step"])
        del saved
    device = "cuda" if t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available")

    train_set = ADE20KDataset(d.root, d.train_split, d.num_classes, _augment(cfg), seed=t.seed, rank=rank)
    val_all = ADE20KDataset(d.root, d.val_split, d.num_classes, _augment(cfg), train=False)
    val_set = Subset(val_all, range(rank, len(val_all), world))
    L.seed_everything(t.seed, verbose=False)
    module = SegmentationModule(cfg, class_names(d.root, d.num_classes))
    # which parameters get no gradient depends on the architecture, not the size: a small CPU probe will do
    unused = _unused_parameters(module.model, min(d.crop_size, 128), torch.device("cpu"))
    sampler = ResumableSampler(len(train_set), rank, world, t.seed, start=start * batch * t.grad_accum, positions=True)
    train_loader = DataLoader(train_set, batch_size=batch, sampler=sampler, num_workers=d.workers,
                              pin_memory=device == "cuda", generator=torch.Generator().manual_seed(t.seed),
                              persistent_workers=d.workers > 0)
    val_loader = DataLoader(val_set, batch_size=1, num_workers=d.workers)

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
              f"{len(train_set)} training / {len(val_all)} validation images, batch {t.batch_size} "
              f"({world} process(es) x {t.grad_accum} accumulation x {batch}), device {device}, "
              f"iterations {start}->{t.iterations}", flush=True)
        for note in model_plan(cfg).notes:
            print(f"  {note}", flush=True)
        for line in model_summary(module.model):
            print(line, flush=True)
        sync = "SyncBatchNorm across the processes" if world > 1 and t.sync_batchnorm else "BatchNorm per process"
        print(f"  normalisation: {sync} (train.sync_batchnorm {str(t.sync_batchnorm).lower()}, {world} process(es)); "
              f"loss: cross-entropy / {'labelled' if cfg.loss.avg_non_ignore else 'all'} pixels "
              f"(loss.avg_non_ignore {str(cfg.loss.avg_non_ignore).lower()})", flush=True)
    strategy = DDPStrategy(find_unused_parameters=bool(unused)) if world > 1 else "auto"  # nccl on CUDA, else gloo
    sync_batchnorm = world > 1 and t.sync_batchnorm  # the official SyncBN; one process keeps BatchNorm
    callbacks += [_StopOnSignal(ckpt_path), LearningRateMonitor("step"),
                  ModelCheckpoint(out, every_n_train_steps=t.checkpoint_interval, save_top_k=0, save_last=True,
                                  enable_version_counter=False)]
    trainer = L.Trainer(
        accelerator=device, devices=local_world, num_nodes=world // local_world, strategy=strategy,
        precision=("16-mixed" if device == "cuda" else "bf16-mixed") if t.amp else "32-true",
        max_steps=t.iterations, max_epochs=-1, accumulate_grad_batches=t.grad_accum, num_sanity_val_steps=0,
        val_check_interval=t.eval_interval * t.grad_accum, check_val_every_n_epoch=None, use_distributed_sampler=False,
        logger=loggers, log_every_n_steps=t.log_interval, enable_model_summary=False, inference_mode=False,
        callbacks=callbacks + ([TQDMProgressBar(max(1, t.log_interval // 10))] if t.progress else []),
        enable_progress_bar=t.progress, deterministic="warn" if t.deterministic else None,
        sync_batchnorm=sync_batchnorm, default_root_dir=out,
        plugins=[_AtomicCheckpointIO()] + ([_SyncBatchNorm(device)] if sync_batchnorm else []),
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
    result["final"] = final = module.evaluations[-1]
    if trainer.global_step % t.checkpoint_interval:
        trainer.save_checkpoint(ckpt_path)
    if trainer.is_global_zero:
        module.model.save_pretrained(str(out / "model"), dataset=f"ADE20K-layout data at {d.root}",
                                     metrics={"mIoU": final["mIoU"], "aAcc": final["aAcc"]})
        (out / "model" / CLASS_NAMES).write_text("\n".join(module.names) + "\n", encoding="utf-8")
    result.update(sec_per_iter=elapsed / max(trainer.global_step - start, 1), iterations=trainer.global_step,
                  unused_parameters=unused)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seg_plugin.train_ade20k", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="yaml config (default: the reference recipe), e.g. configs/segmentation/...")
    parser.add_argument("--data-root", help="ADEChallengeData2016 folder (data.root)")
    parser.add_argument("--out-dir", required=True, help="folder for the checkpoint, logs and the final model")
    parser.add_argument("--resume", action="store_true", help=f"continue the run from <out-dir>/{CHECKPOINT}")
    parser.add_argument("--resume-from", metavar="CKPT", help="continue from this checkpoint instead")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="settings to override, e.g. train.iterations 1000 model.arch upernet train.amp true")
    args = parser.parse_args(argv)
    try:
        if len(args.opts) % 2:
            raise ConfigError(f"settings come in KEY VALUE pairs, got {args.opts}")
        overrides = {k: yaml.safe_load(v) for k, v in zip(args.opts[::2], args.opts[1::2])}
        if args.data_root:
            overrides["data.root"] = args.data_root
        cfg = load_config(args.config, overrides)
        result = train(cfg, args.out_dir, args.resume_from or (Path(args.out_dir) / CHECKPOINT if args.resume else None))
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        return 130
    except (ConfigError, SegDataError, CheckpointError, ResumeConfigError, WeightsNotInstalledError) as err:
        hint = "\n(or train without them: model.encoder_weights none)" if isinstance(err, WeightsNotInstalledError) else ""
        print(f"error: {err}{hint}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        final = result["final"]
        print(f"final mIoU {100 * final['mIoU']:.2f}, aAcc {100 * final['aAcc']:.2f}, {result['sec_per_iter']:.3f} "
              f"s/iteration; model saved to {Path(args.out_dir) / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
