"""FEC as a Detectron2 backbone: ``res2`` .. ``res5`` from :class:`fec_backbone.FEC`, plus FPN variants.

The backbone wraps the timm model of :mod:`fec_backbone` (``self.body``) and adds one GroupNorm (one
group) per returned stage map, as the reference detection model does (``norm0/2/4/6`` of the official
``fork_feat`` FEC). Registered builders:

* ``build_fec_backbone``: the four stage maps (``MODEL.FEC.OUT_FEATURES``).
* ``build_fec_fpn_backbone``: FPN with ``LastLevelMaxPool`` (P2-P6), for Mask / Faster R-CNN.
* ``build_retinanet_fec_fpn_backbone``: FPN over ``res3``-``res5`` with P6/P7 from ``res5``, for
  RetinaNet; ``res2`` gets no output norm (the reference's Identity for the unused level).
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Dict, List, Optional, Sequence, Union

import timm
import torch
import torch.nn as nn
from timm.layers import GroupNorm1
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7

import fec_backbone
from fec_backbone import cluster_ops
from fec_backbone.fec import ClusterMixer, ClusterPool

from .config import WEIGHTS_REMOVED

__all__ = [
    "FECBackbone",
    "build_fec_backbone",
    "build_fec_fpn_backbone",
    "build_retinanet_fec_fpn_backbone",
]

logger = logging.getLogger(__name__)

STAGE_NAMES = ("res2", "res3", "res4", "res5")
#: Graphs (padded sizes x train/eval) a compiled backbone may hold before Dynamo falls back to eager:
#: COCO's shortest edge 800 and longest 1333 padded to 128 give 5 sizes per side, 25 shapes, twice.
MAX_COMPILED_SIZES = 64


class FECBackbone(Backbone):
    """Stage maps of an FEC model for Detectron2.

    Args:
        name: timm model name (``fec_small``, ``fec_base``, ``fec_large``).
        out_features: stage maps to return, among ``res2`` .. ``res5``.
        preset: clustering layout by task, a name in :data:`fec_backbone.PRESETS` (``detection``: the
            reference detection models' proposals and folds per stage).
        proposals, folds: per-stage overrides of the preset's proposals / folds; ``None`` keeps them.
        drop_path_rate: stochastic depth of the deepest block.
        freeze_at: 0 nothing, 1 the stem, ``k`` >= 2 the stem and stages ``res2`` .. ``res<k>``.
        in_chans: image channels.
        norm_outputs: put a GroupNorm on each returned map (the reference detection models do).
        grad_checkpointing: recompute the stages in the backward pass to save memory.
    """

    def __init__(
        self,
        name: str = "fec_small",
        out_features: Sequence[str] = STAGE_NAMES,
        preset: str = "detection",
        proposals: Optional[Sequence[int]] = None,
        folds: Optional[Sequence[int]] = None,
        drop_path_rate: float = 0.0,
        freeze_at: int = 0,
        in_chans: int = 3,
        norm_outputs: bool = True,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        out_features = list(out_features)
        unknown = [f for f in out_features if f not in STAGE_NAMES]
        if not out_features or unknown or len(set(out_features)) != len(out_features):
            raise ValueError(
                f"FEC out_features must be distinct names among {list(STAGE_NAMES)}, got {out_features}"
            )
        if not 0 <= freeze_at <= len(STAGE_NAMES) + 1:
            raise ValueError(f"FEC freeze_at must be in 0..{len(STAGE_NAMES) + 1}, got {freeze_at}")
        if name not in fec_backbone.VARIANTS:
            raise ValueError(f"unknown FEC model {name!r}; choose one of {sorted(fec_backbone.VARIANTS)}")
        self.body: fec_backbone.FEC = timm.create_model(
            name,
            num_classes=0,
            in_chans=in_chans,
            preset=preset,
            proposals=None if proposals is None else tuple(proposals),
            folds=None if folds is None else tuple(folds),
            drop_path_rate=drop_path_rate,
        )
        self.body.set_grad_checkpointing(grad_checkpointing)
        # Each fold must divide its stage's map (stride 4 * 2**i): the input pads to a multiple of all of them.
        self._size_divisibility = math.lcm(self.body.reduction, *(
            4 * 2**i * f for i, stage in enumerate(self.body.stages)
            for m in stage.modules() if isinstance(m, (ClusterMixer, ClusterPool)) for f in m.folds
        ))
        self._out_features = sorted(out_features, key=STAGE_NAMES.index)
        self._indices = [STAGE_NAMES.index(f) for f in self._out_features]
        self.body.prune_intermediate_layers(self._indices, prune_norm=True, prune_head=True)
        info = self.body.feature_info
        self._out_feature_channels = {f: info[i]["num_chs"] for f, i in zip(self._out_features, self._indices)}
        self._out_feature_strides = {f: info[i]["reduction"] for f, i in zip(self._out_features, self._indices)}
        self.out_norms = nn.ModuleDict(
            {f: GroupNorm1(c) if norm_outputs else nn.Identity() for f, c in self._out_feature_channels.items()}
        )
        self.freeze_at = freeze_at
        self._frozen: List[nn.Module] = []
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> "FECBackbone":
        """Freeze the stem (``freeze_at >= 1``) and the first ``freeze_at - 1`` stages: their parameters
        get no gradient and they stay in eval mode (no drop path) while the rest trains."""
        self._frozen = ([self.body.stem] if freeze_at >= 1 else []) + list(self.body.stages[: max(freeze_at - 1, 0)])
        for module in self._frozen:
            for p in module.parameters():
                p.requires_grad_(False)
            module.eval()
        return self

    def train(self, mode: bool = True) -> "FECBackbone":
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def compile_static(self, size_divisibility: int = 128, mode: Optional[str] = None,
                       backend: Union[str, Callable] = "inductor") -> "FECBackbone":
        """Compile the backbone in place (``nn.Module.compile``: state-dict keys unchanged) with static shapes,
        and make Detectron2 pad each batch to a multiple of ``size_divisibility`` (a multiple of the
        backbone's own), so that the compiled backbone meets a few padded sizes, one graph each, instead of
        a new size for nearly every batch. Why static buckets and not dynamic shapes:
        ``docs/implementation.md``. Dynamo's recompile limit is raised to :data:`MAX_COMPILED_SIZES` so that
        every bucket stays compiled."""
        if size_divisibility % self._size_divisibility:
            raise ValueError(f"MODEL.FEC.COMPILE_SIZE_DIVISIBILITY {size_divisibility} must be a multiple of the "
                             f"backbone's size divisibility {self._size_divisibility}")
        self._size_divisibility = size_divisibility
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, MAX_COMPILED_SIZES)
        self.compile(dynamic=False, mode=mode, backend=backend)
        return self

    @property
    def size_divisibility(self) -> int:
        """32, or more if a stage's folds need it (each fold must divide its stage's map), or the compiled
        backbone's bucket size (:meth:`compile_static`)."""
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        """What Detectron2 pads each batch to (``ImageList.from_tensors``): :attr:`size_divisibility`."""
        return {"size_divisibility": self.size_divisibility}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``[B, C, H, W]`` (H and W divisible by 32) -> ``{name: [B, C_i, H/s_i, W/s_i]}``."""
        maps = self.body.forward_intermediates(x, indices=self._indices, intermediates_only=True, stop_early=True)
        return {f: self.out_norms[f](m) for f, m in zip(self._out_features, maps)}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            f: ShapeSpec(channels=self._out_feature_channels[f], stride=self._out_feature_strides[f])
            for f in self._out_features
        }


def _fec_from_cfg(cfg: CfgNode, input_shape: ShapeSpec) -> FECBackbone:
    c = cfg.MODEL.FEC
    if "WEIGHTS" in c:  # set in Python: merging it from a file or the command line already fails
        raise ValueError(WEIGHTS_REMOVED)
    cluster_ops.set_backend(c.CLUSTER_BACKEND)
    backbone = FECBackbone(
        name=c.NAME,
        out_features=c.OUT_FEATURES,
        preset=c.PRESET,
        proposals=list(c.PROPOSALS) or None,  # empty: the preset's
        folds=list(c.FOLDS) or None,
        drop_path_rate=c.DROP_PATH_RATE,
        freeze_at=c.FREEZE_AT,
        in_chans=input_shape.channels,
        grad_checkpointing=c.GRAD_CHECKPOINT,
    )
    if c.COMPILE:
        backbone.compile_static(c.COMPILE_SIZE_DIVISIBILITY, c.COMPILE_MODE or None, c.COMPILE_BACKEND)
    return backbone


def _check_fpn_inputs(cfg: CfgNode, bottom_up: FECBackbone) -> List[str]:
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    missing = [f for f in in_features if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES {in_features} asks for {missing}, which the FEC backbone does not return "
            f"(MODEL.FEC.OUT_FEATURES = {list(cfg.MODEL.FEC.OUT_FEATURES)})"
        )
    return in_features


def _fpn(cfg: CfgNode, bottom_up: FECBackbone, in_features: List[str], top_block: nn.Module) -> FPN:
    fpn = FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
    fpn._size_divisibility = max(fpn.size_divisibility, bottom_up.size_divisibility)
    return fpn


@BACKBONE_REGISTRY.register()
def build_fec_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FECBackbone:
    """FEC stage maps ``MODEL.FEC.OUT_FEATURES``, each GroupNorm-normalised."""
    return _fec_from_cfg(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_fec_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """FEC + FPN with a max-pooled P6 (``MODEL.FPN.IN_FEATURES``, usually ``res2`` .. ``res5``)."""
    bottom_up = _fec_from_cfg(cfg, input_shape)
    return _fpn(cfg, bottom_up, _check_fpn_inputs(cfg, bottom_up), LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_retinanet_fec_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """FEC + FPN with P6/P7 computed from ``res5`` (RetinaNet; set ``MODEL.FEC.OUT_FEATURES`` and
    ``MODEL.FPN.IN_FEATURES`` to ``res3`` .. ``res5``, so the unused ``res2`` map gets no norm)."""
    bottom_up = _fec_from_cfg(cfg, input_shape)
    in_features = _check_fpn_inputs(cfg, bottom_up)
    if "res5" not in bottom_up.output_shape():
        raise ValueError("the RetinaNet FEC backbone computes P6/P7 from res5: add res5 to MODEL.FEC.OUT_FEATURES")
    in_channels_p6p7 = bottom_up.output_shape()["res5"].channels
    return _fpn(cfg, bottom_up, in_features, LastLevelP6P7(in_channels_p6p7, cfg.MODEL.FPN.OUT_CHANNELS))
