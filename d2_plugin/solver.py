"""AdamW for FEC detectors, as the reference trains them, without weight decay on normalisation
parameters, the clustering similarity scale/shift (``sim_alpha``/``sim_beta``) and the layer scales."""
from __future__ import annotations

from typing import Any, Dict, List, Set

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

import fec_backbone

__all__ = ["build_fec_optimizer", "fec_optimizer_params", "no_decay_names"]


def no_decay_names(model: torch.nn.Module) -> Set[str]:
    """Parameter names (last component) that FEC modules inside ``model`` exempt from weight decay."""
    return {
        name.rsplit(".", 1)[-1]
        for module in model.modules()
        if isinstance(module, fec_backbone.FEC)
        for name in module.no_weight_decay()
    }


def fec_optimizer_params(cfg: CfgNode, model: torch.nn.Module) -> List[Dict[str, Any]]:
    """Parameter groups: ``SOLVER.WEIGHT_DECAY`` everywhere but on norms (``SOLVER.WEIGHT_DECAY_NORM``,
    0 in our configs) and on FEC's alpha/beta and layer scales (always 0)."""
    return get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        overrides={name: {"weight_decay": 0.0} for name in sorted(no_decay_names(model))},
    )


def build_fec_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over :func:`fec_optimizer_params`, with Detectron2's optional gradient clipping
    (``SOLVER.CLIP_GRADIENTS``)."""
    return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
        fec_optimizer_params(cfg, model),
        lr=cfg.SOLVER.BASE_LR,
        betas=(0.9, 0.999),
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
