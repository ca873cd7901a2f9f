"""Official FEC ADE20K checkpoints (mmseg 0.24 ``EncoderDecoder`` files of the Semantic FPN configs) as the
:class:`~seg_plugin.semantic_fpn.SemanticFPN` smp model, every tensor mapped and none left at its initial
value.

An official file holds ``meta`` (mmseg's version, config text, class names) and ``state_dict`` with
``backbone.*`` (the dense-prediction FEC: ``patch_embed``, ``network.<i>``, output norms ``norm0/2/4/6``),
``neck.lateral_convs.<i>.conv.*`` / ``neck.fpn_convs.<i>.conv.*`` and ``decode_head.scale_heads.<i>.<j>.{conv,bn}.*``
/ ``decode_head.conv_seg.*``. Module names of :class:`SemanticFPN` follow the official ones, so the mapping
is a prefix change per part.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple

import torch

from fec_backbone import CheckpointError, detect_variant
from fec_backbone.checkpoint import extract_fec_weights, read_checkpoint

from .pretrained import ENCODER_VARIANTS
from .semantic_fpn import SemanticFPN

__all__ = ["ConversionSummary", "is_official_semantic_fpn", "load_official_semantic_fpn", "map_official_semantic_fpn"]

#: Official key pattern -> :class:`SemanticFPN` key, for the neck (mmcv ``ConvModule``s without a norm: their
#: ``conv`` is our plain conv) and the head.
PARTS: Tuple[Tuple[str, str], ...] = (
    (r"neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)", r"decoder.\1.\2.\3"),
    (r"decode_head\.scale_heads\.(.+)", r"decoder.scale_heads.\1"),
    (r"decode_head\.conv_seg\.(weight|bias)", r"segmentation_head.conv_seg.\1"),
)


@dataclass
class ConversionSummary:
    """Tensors mapped per part of the official model, and what the file is."""

    variant: str
    classes: int
    mapped: Dict[str, int] = field(default_factory=dict)
    class_names: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = ", ".join(f"{part} {n}" for part, n in self.mapped.items())
        return f"official Semantic FPN {self.variant}, {self.classes} classes: tensors mapped: {parts}"


def _tensors(obj: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    state = obj.get("state_dict", obj)
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()
            if isinstance(v, torch.Tensor)}


def is_official_semantic_fpn(obj: Mapping[str, Any]) -> bool:
    """Whether a loaded checkpoint is an mmseg Semantic FPN with an FEC backbone."""
    keys = _tensors(obj)
    return any(k.startswith("backbone.patch_embed.") for k in keys) and any(k.startswith("decode_head.") for k in keys)


def map_official_semantic_fpn(obj: Mapping[str, Any], where: str = "") -> Tuple[Dict[str, torch.Tensor], ConversionSummary]:
    """The :class:`SemanticFPN` state dict of an official checkpoint (loaded), and what was mapped.

    Raises :class:`~fec_backbone.CheckpointError` for a file that is no FEC Semantic FPN (naming what it
    holds), keys that map nowhere, or a backbone that is no FEC variant."""
    where = f"{where}: " if where else ""
    tensors = _tensors(obj)
    if not is_official_semantic_fpn(obj):
        heads = sorted({k.split(".", 1)[0] for k in tensors})
        raise CheckpointError(f"{where}not an official FEC Semantic FPN checkpoint (an mmseg file with backbone.patch_embed.* "
                              f"and decode_head.* keys); its top-level modules are {heads}")
    backbone, _, ignored = extract_fec_weights(tensors, prefix="backbone.")
    if ignored:
        raise CheckpointError(f"{where}backbone keys that are no FEC layer: {ignored[:8]}")
    variant = detect_variant(backbone)
    if variant is None:
        raise CheckpointError(f"{where}the backbone is none of the FEC variants ({', '.join(ENCODER_VARIANTS.values())})")
    mapped = {f"encoder.{k}": v for k, v in backbone.items()}
    summary = ConversionSummary(variant=variant, classes=0, mapped={"backbone": len(backbone)})
    unmapped = []
    for key, value in tensors.items():
        if key.startswith("backbone."):
            continue
        target = next((re.sub(f"^{pattern}$", into, key) for pattern, into in PARTS if re.fullmatch(pattern, key)), None)
        if target is None:
            unmapped.append(key)
            continue
        mapped[target] = value
        part = key.split(".", 1)[0]
        summary.mapped[part] = summary.mapped.get(part, 0) + 1
    if unmapped:
        raise CheckpointError(f"{where}{len(unmapped)} tensors map to no part of the Semantic FPN model, e.g. "
                              f"{unmapped[:5]} (an auxiliary head or another decode head is not supported)")
    summary.classes = int(mapped["segmentation_head.conv_seg.weight"].shape[0])
    summary.class_names = list((obj.get("meta") or {}).get("CLASSES") or [])
    return mapped, summary


def load_official_semantic_fpn(path: str | os.PathLike) -> Tuple[SemanticFPN, ConversionSummary]:
    """An official ADE20K checkpoint file as a :class:`SemanticFPN` (eval mode), loaded strictly: every model
    tensor comes from the file and every file tensor goes into the model."""
    where = repr(os.fspath(path))
    mapped, summary = map_official_semantic_fpn(read_checkpoint(path), where)
    encoder = {variant: name for name, variant in ENCODER_VARIANTS.items()}[summary.variant]
    model = SemanticFPN(encoder_name=encoder, encoder_weights=None, classes=summary.classes)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(mapped)), sorted(set(mapped) - set(expected))
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}" for k, v in mapped.items()
              if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{where} does not fill the {summary.variant} Semantic FPN: missing {missing[:8]}; "
                              f"not in the model {unexpected[:8]}; mis-shaped {shapes[:5]}")
    model.load_state_dict(mapped, strict=True)
    return model.eval(), summary
