"""``MODEL.WEIGHTS`` for FEC detectors: :class:`FECCheckpointer`, Detectron2's ``DetectionCheckpointer``
that also recognises FEC ImageNet checkpoints.

Detectron2 itself recognises a few foreign formats in ``DetectionCheckpointer._load_file`` (Detectron2
and Caffe2 ``.pkl`` files, pycls ``.pyth`` files). :class:`FECCheckpointer` adds the FEC ImageNet
checkpoint, any shape :func:`fec_backbone.read_fec_weights` takes: the official key layout
(``patch_embed.*``, ``network.<i>.*``, ``norm.*``, ``head.*``) or ours (``stem.*``, ``stages.*``), a plain
state dict or a training file (``state_dict`` / ``state_dict_ema`` / ``model``; the EMA weights when
present, as timm loads them), ``.pth`` or ``.safetensors``. Its tensors are fitted strictly to the FEC
inside the model (:func:`fec_backbone.fit_state_dict`: every backbone tensor required, the classifier
and final norm dropped, another variant an error naming it) and renamed to the model's keys
(``backbone.bottom_up.body.*`` for the FPN builders, ``backbone.body.*`` for ``build_fec_backbone``);
Detectron2 then loads them and reports the rest of the model (FPN, heads, output norms) as not found
in the checkpoint: they start fresh. Everything else (our own Detectron2 checkpoints such as
``model_final.pth``, ``--resume``) takes Detectron2's ordinary path.

Recognised formats are functions ``(checkpoint, model, path) -> MappedWeights | None`` in
:data:`WEIGHT_FORMATS`, tried in order; a new one (e.g. official mmdet Mask R-CNN files, ``meta`` +
``state_dict`` with ``backbone.* / neck.* / rpn_head.* / roi_head.*``) is one more function there.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer

import fec_backbone
from fec_backbone import CheckpointError
from fec_backbone.checkpoint import extract_fec_weights, read_checkpoint

__all__ = ["FECCheckpointer", "MappedWeights", "WEIGHT_FORMATS", "fec_imagenet_weights", "find_fec_body"]

logger = logging.getLogger(__name__)

# Buffers that Detectron2 fills from the config whatever the checkpoint holds.
_CONFIG_BUFFERS = ("pixel_mean", "pixel_std")


@dataclass
class MappedWeights:
    """A foreign checkpoint in the model's own key layout: ``model`` (tensors by model key), who made
    it (``author``, Detectron2's ``__author__``) and one line saying what was loaded where (``summary``)."""

    model: Dict[str, torch.Tensor]
    author: str
    summary: str


WeightFormat = Callable[[Mapping[str, Any], nn.Module, str], Optional[MappedWeights]]


def find_fec_body(model: nn.Module) -> Optional[Tuple[str, fec_backbone.FEC]]:
    """``(prefix, module)`` of the one :class:`fec_backbone.FEC` inside ``model`` (``prefix`` like
    ``backbone.bottom_up.body``), None when there is none; several raise ``ValueError``."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, fec_backbone.FEC)]
    if len(found) > 1:
        raise ValueError(f"the model holds several FEC backbones ({', '.join(n for n, _ in found)}); "
                         "FEC ImageNet weights would be ambiguous")
    return found[0] if found else None


def _fresh_parts(model: nn.Module, loaded: Mapping[str, torch.Tensor], body: str) -> str:
    """What of ``model`` the ImageNet weights do not cover, in words ("FPN, output norms and heads
    (proposal_generator, roi_heads)")."""
    owner = body.rpartition(".")[0]  # the Detectron2 backbone module around the FEC (FECBackbone)
    rest = [k for k in model.state_dict() if k not in loaded and k not in _CONFIG_BUFFERS]
    parts: List[str] = []
    if owner and any(k.startswith(owner + ".") for k in rest):
        extra = sorted({k[len(owner) + 1:].split(".", 1)[0] for k in rest if k.startswith(owner + ".")})
        parts.append("output norms" if extra == ["out_norms"] else f"{owner}.{{{', '.join(extra)}}}")
    outer = owner.rpartition(".")[0]  # e.g. "backbone" around "backbone.bottom_up": the FPN
    if outer and any(k.startswith(outer + ".") and not k.startswith(owner + ".") for k in rest):
        wrapper = model.get_submodule(outer)
        parts.insert(0, type(wrapper).__name__)
    heads = sorted({k.split(".", 1)[0] for k in rest if not k.startswith((outer or owner) + ".")})
    if heads:
        parts.append(f"heads ({', '.join(heads)})")
    if not parts:
        return "nothing else in the model"
    return (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + " start fresh"


def fec_imagenet_weights(checkpoint: Mapping[str, Any], model: nn.Module, path: str) -> Optional[MappedWeights]:
    """An FEC ImageNet checkpoint (one FEC at the top level of its weights, official or our key layout)
    mapped onto the FEC backbone of ``model``; None for anything else. Raises
    :class:`~fec_backbone.CheckpointError` naming the file when it does not fit the backbone (another
    variant, missing or mis-shaped tensors) or the model has no FEC backbone."""
    try:
        weights, prefix, _ = extract_fec_weights(checkpoint)
    except CheckpointError:
        return None  # no FEC in it, or several: not an ImageNet checkpoint
    if prefix != "":
        return None  # an FEC inside a larger model (our Detectron2 checkpoints): Detectron2's own path
    located = find_fec_body(model)
    if located is None:
        raise CheckpointError(f"{path!r} is an FEC ImageNet checkpoint, but the model has no FEC backbone "
                              "(MODEL.BACKBONE.NAME is not one of the build_*fec* builders)")
    body_name, body = located
    try:
        state = fec_backbone.fit_state_dict(weights, body)
    except CheckpointError as err:
        raise CheckpointError(f"{path!r}: {err}") from err
    mapped = {f"{body_name}.{k}": v for k, v in state.items()}
    source = next((k for k in ("state_dict_ema", "model_ema", "state_dict", "model")
                   if isinstance(checkpoint.get(k), Mapping)), None)
    part = checkpoint[source] if source else checkpoint
    layout = "official" if any(str(k).startswith(("patch_embed.", "network.")) for k in part) else "our"
    what = f"{repr(source) if source else 'a plain state dict'}, {layout} key layout"
    summary = (f"FEC ImageNet weights from {path} ({what}): {len(mapped)} backbone tensors loaded into {body_name}; "
               f"{_fresh_parts(model, mapped, body_name)}")
    return MappedWeights(mapped, f"FEC ImageNet checkpoint {path}", summary)


#: Foreign checkpoint formats :class:`FECCheckpointer` recognises, tried in order.
WEIGHT_FORMATS: List[WeightFormat] = [fec_imagenet_weights]


class FECCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that also loads FEC ImageNet checkpoints (see the module docstring).

    Files are read safely (``weights_only``, plus ``argparse.Namespace``, which the official
    ``train.py`` stores as ``args``; ``.safetensors`` too) with :func:`fec_backbone.checkpoint.read_checkpoint`.
    Detectron2 and Caffe2 ``.pkl`` and pycls ``.pyth`` files keep Detectron2's handling.
    """

    formats: List[WeightFormat] = WEIGHT_FORMATS

    def _torch_load(self, f: str) -> Dict[str, Any]:
        checkpoint = read_checkpoint(f)
        for recognise in self.formats:
            mapped = recognise(checkpoint, self.model, f)
            if mapped is not None:
                self.logger.info(mapped.summary)
                return {"model": mapped.model, "__author__": mapped.author, "matching_heuristics": False}
        return checkpoint
