"""The FEC architectures (FEC-S/B/L), the clustering layouts per task, and recognising a variant from its
weights alone (no model is built)."""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

__all__ = ["PRESETS", "VARIANTS", "detect_variant"]

#: Constructor arguments of :class:`fec_backbone.FEC` for each registered variant.
VARIANTS: Dict[str, Dict[str, Any]] = {
    "fec_small": dict(layers=(3, 4, 5, 2), embed_dims=(32, 64, 196, 320), heads=(4, 4, 8, 8), head_dim=24),
    "fec_base": dict(layers=(2, 2, 6, 2), embed_dims=(64, 128, 320, 512), heads=(4, 4, 8, 8), head_dim=32),
    "fec_large": dict(layers=(4, 4, 12, 4), embed_dims=(64, 128, 320, 512), heads=(6, 6, 12, 12), head_dim=32),
}

#: Per-stage clustering layouts the official code uses for each task. ``proposals`` is the number of
#: centres per side, ``folds`` the number of regions per side that cluster independently.
PRESETS: Dict[str, Dict[str, Tuple[int, ...]]] = {
    "classification": dict(proposals=(4, 4, 2, 2), folds=(1, 1, 1, 1)),  # ImageNet, 224 px
    "segmentation": dict(proposals=(10, 10, 5, 5), folds=(1, 1, 1, 1)),  # ADE20K, 512 px
    "detection": dict(proposals=(7, 7, 7, 7), folds=(2, 2, 1, 1)),  # COCO, 1333x800
}


def _structure(state_dict: Mapping[str, torch.Tensor]) -> Optional[Tuple[List[int], List[int], List[int]]]:
    """Blocks, channels and clustering width (heads x head_dim) per stage of an FEC state dict (our key
    layout), or None when it holds no whole stage."""
    blocks: Dict[int, set] = {}
    for key in state_dict:
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        return None
    try:
        dims = [state_dict[f"stages.{i}.blocks.0.norm1.weight"].shape[0] for i in range(len(blocks))]
        widths = [state_dict[f"stages.{i}.blocks.0.token_mixer.f.weight"].shape[0] for i in range(len(blocks))]
    except KeyError:
        return None
    return [len(blocks[i]) for i in range(len(blocks))], dims, widths


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The variant (``fec_small``/``fec_base``/``fec_large``) whose depths, channels and clustering widths
    the four stages of ``state_dict`` (our key layout) have, or None (also for a model pruned of stages).
    The final norm, output norms and classifier do not matter."""
    found = _structure(state_dict)
    if found is None:
        return None
    depths, dims, widths = found
    for name, args in VARIANTS.items():
        if (list(args["layers"]) == depths and list(args["embed_dims"]) == dims
                and [h * args["head_dim"] for h in args["heads"]] == widths):
            return name
    return None
