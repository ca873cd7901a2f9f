"""AdamW for FEC detectors, as the official recipe trains them.

The official mmdet recipe (guikunchen/FEC ``detection/configs/_base_/schedules/schedule_1x.py``) is
``optimizer = dict(type='AdamW', lr=0.0002, weight_decay=0.0001)`` with no ``paramwise_cfg``: mmcv's default
optimizer constructor then puts the weight decay on *every* parameter, norms, biases, FEC's clustering
similarity scale/shift (``sim_alpha``/``sim_beta``) and layer scales included. Here that is
``SOLVER.WEIGHT_DECAY`` with ``SOLVER.WEIGHT_DECAY_NORM`` set to the same value (our configs do; Detectron2's
default is 0) and ``SOLVER.WEIGHT_DECAY_BIAS`` None (follows ``WEIGHT_DECAY``).

Not the official recipe, available as an option: ``SOLVER.WEIGHT_DECAY_FEC_SCALARS`` (added by
:func:`d2_plugin.add_fec_config`; None, the default, follows ``WEIGHT_DECAY``) gives FEC's alpha/beta and layer
scales their own decay; 0.0 together with ``SOLVER.WEIGHT_DECAY_NORM 0.0`` exempts them and the norms, as
timm-style ImageNet training does (:meth:`fec_backbone.FEC.no_weight_decay`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Set

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

import fec_backbone

__all__ = ["build_fec_optimizer", "fec_optimizer_params", "fec_scalar_names", "no_decay_names"]


def fec_scalar_names(model: torch.nn.Module) -> Set[str]:
    """Parameter names (last component) of FEC's clustering alpha/beta and layer scales inside ``model``
    (what :meth:`fec_backbone.FEC.no_weight_decay` lists)."""
    return {
        name.rsplit(".", 1)[-1]
        for module in model.modules()
        if isinstance(module, fec_backbone.FEC)
        for name in module.no_weight_decay()
    }


#: The former name of :func:`fec_scalar_names` (these parameters are decayed by default now, as in the official recipe).
no_decay_names = fec_scalar_names


def fec_optimizer_params(cfg: CfgNode, model: torch.nn.Module) -> List[Dict[str, Any]]:
    """Parameter groups: ``SOLVER.WEIGHT_DECAY`` on every parameter (the official recipe), except norms
    with ``SOLVER.WEIGHT_DECAY_NORM``, biases with ``SOLVER.WEIGHT_DECAY_BIAS`` (None: ``WEIGHT_DECAY``) and
    FEC's alpha/beta and layer scales with ``SOLVER.WEIGHT_DECAY_FEC_SCALARS`` when it is set."""
    scalars = cfg.SOLVER.get("WEIGHT_DECAY_FEC_SCALARS", None)
    overrides = {} if scalars is None else {name: {"weight_decay": float(scalars)} for name in fec_scalar_names(model)}
    return get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        overrides=dict(sorted(overrides.items())),
    )


def build_fec_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW (betas 0.9, 0.999, eps 1e-8: torch's and mmcv's defaults) over :func:`fec_optimizer_params`,
    with Detectron2's optional gradient clipping (``SOLVER.CLIP_GRADIENTS``; the official recipe has none)."""
    return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
        fec_optimizer_params(cfg, model),
        lr=cfg.SOLVER.BASE_LR,
        betas=(0.9, 0.999),
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
