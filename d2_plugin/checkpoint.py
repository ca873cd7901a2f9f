"""``MODEL.WEIGHTS`` for FEC detectors: :class:`FECCheckpointer`, Detectron2's ``DetectionCheckpointer``
that also recognises FEC ImageNet checkpoints and the official mmdet 2.x FEC detector checkpoints.

Detectron2 itself recognises a few foreign formats in ``DetectionCheckpointer._load_file`` (Detectron2
and Caffe2 ``.pkl`` files, pycls ``.pyth`` files). :class:`FECCheckpointer` adds two, functions
``(checkpoint, model, path) -> MappedWeights | None`` in :data:`WEIGHT_FORMATS`, tried in order:

* :func:`fec_imagenet_weights`, the FEC ImageNet checkpoint: any shape :func:`fec_backbone.read_fec_weights`
  takes (the official key layout ``patch_embed.*`` / ``network.<i>.*`` / ``norm.*`` / ``head.*`` or ours,
  a plain state dict or a training file, ``.pth`` or ``.safetensors``). Its tensors are fitted strictly
  to the FEC inside the model (:func:`fec_backbone.fit_state_dict`: every backbone tensor required, the
  classifier and final norm dropped, another variant an error naming it); output norms, when the file
  has them (a dense-prediction backbone), go to the backbone's output norms. The rest of the model (FPN,
  heads) starts fresh, and the logged summary says so.
* :func:`mmdet_rcnn_weights`, an official mmdet 2.x checkpoint (``{"meta": {...}, "state_dict":
  {backbone.*, neck.*, rpn_head.*, roi_head.*}, "optimizer": ...}``, as mmcv's ``save_checkpoint``
  writes it) of an FEC Mask R-CNN or Faster R-CNN: every tensor goes to Detectron2's
  ``GeneralizedRCNN`` (:data:`MMDET_RCNN_RULES`), and every model tensor must be filled. A file holding
  the backbone alone also loads, into any FEC model; a whole file into a model whose backbone has no
  FPN (``build_fec_backbone``) gives its backbone alone and says which parts of the file it did not use.

Everything else (our own Detectron2 checkpoints such as ``model_final.pth``, ``--resume``) takes
Detectron2's ordinary path.

What the mmdet mapping relies on, checked against mmdet 2.24 and Detectron2 main (02b5c4e) and tested
in ``tests/test_d2_official.py``:

* FPN: mmdet's lateral / output conv ``i`` is the backbone level ``i`` (``start_level=0``) = Detectron2's
  ``fpn_lateral{2+i}`` / ``fpn_output{2+i}`` (named by log2 of the stride); top-down nearest upsampling
  and sum in both (mmdet to the lower level's size, Detectron2 by 2: the same on maps padded to 32); P6 is
  ``max_pool2d(P5, 1, stride=2)`` in both (mmdet ``add_extra_convs=False``, Detectron2 ``LastLevelMaxPool``).
* RPN: anchors of sizes 32..512 (mmdet ``scales=[8]`` x strides 4..64) and ratios 0.5, 1, 2 (h/w), centred
  on ``(x * stride, y * stride)`` (mmdet ``center_offset=0``, Detectron2 ``OFFSET 0.0``), ordered location
  by location (row-major), the three ratios within a location in the same order in both; the head's
  ``3 * 4`` delta channels are ``anchor * 4 + (dx, dy, dw, dh)`` in both; deltas with means 0 and stds 1
  (Detectron2 ``RPN.BBOX_REG_WEIGHTS (1, 1, 1, 1)``); one sigmoid logit per anchor in both.
* Box head: ``fc_cls`` has ``num_classes + 1`` outputs with the background last in both (mmdet 2.x and
  Detectron2 ``FastRCNNOutputLayers``); ``fc_reg`` is class-specific, 4 per class in class order, with
  stds 0.1, 0.1, 0.2, 0.2 = Detectron2's ``ROI_BOX_HEAD.BBOX_REG_WEIGHTS (10, 10, 5, 5)``; the RoI feature
  is flattened channel-major (``[C, 7, 7]``) in both.
* RoI pooling: mmcv ``RoIAlign(output_size, sampling_ratio=0)`` is aligned by default = Detectron2
  ``ROIAlignV2``; mmdet's level ``floor(log2(sqrt(area) / 56 + 1e-6))`` is Detectron2's
  ``floor(4 + log2(sqrt(area) / 224 + 1e-8)) - 2`` (both on ``(x2 - x1) * (y2 - y1)``, no +1).
* Mask head: 4 x (3x3 conv + ReLU), 2x2 stride-2 deconv + ReLU, 1x1 class-specific logits in both.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling.backbone.fpn import FPN

import fec_backbone
from fec_backbone import CheckpointError
from fec_backbone.checkpoint import LoadResult, detect_variant, extract_fec_weights, find_fec_prefixes, read_checkpoint

from .backbone import STAGE_NAMES, FECBackbone

__all__ = [
    "FECCheckpointer",
    "MMDET_RCNN_RULES",
    "MappedWeights",
    "WEIGHT_FORMATS",
    "fec_imagenet_weights",
    "find_fec_body",
    "mmdet_rcnn_weights",
]

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
    """What of ``model`` the loaded backbone weights do not cover, in words ("FPN, output norms and heads
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


def _output_norm_targets(
    weights: Mapping[str, torch.Tensor], model: nn.Module, body_name: str, body: fec_backbone.FEC, path: str
) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], List[str]]:
    """Split ``weights`` (FEC layout) into the body's own tensors and its output norms ``out_norms.<i>.*``
    (the official ``norm0/2/4/6``). When the body has no output norms of its own, the Detectron2 backbone
    around it (:class:`FECBackbone`) holds them, one per returned map: ``<owner>.out_norms.res<2+i>.*``.
    Returns ``(body weights, norms by model key, norms of maps the backbone does not return)``; a norm
    for a returned map without one (``FECBackbone(norm_outputs=False)``) raises :class:`CheckpointError`."""
    if body.out_norms is not None:
        return dict(weights), {}, []
    owner_name = body_name.rpartition(".")[0]
    owner = model.get_submodule(owner_name) if owner_name else None
    expected = model.state_dict()
    rest: Dict[str, torch.Tensor] = {}
    norms: Dict[str, torch.Tensor] = {}
    unused: List[str] = []
    for key, value in weights.items():
        m = re.match(r"out_norms\.(\d+)\.(.+)$", key)
        if not m or not isinstance(owner, FECBackbone) or int(m.group(1)) >= len(STAGE_NAMES):
            rest[key] = value
            continue
        stage = STAGE_NAMES[int(m.group(1))]
        target = f"{owner_name}.out_norms.{stage}.{m.group(2)}"
        if target in expected:
            norms[target] = value
        elif stage not in owner.output_shape():  # not returned (RetinaNet's res2: the official FORK_LAST3)
            unused.append(key)
        else:
            raise CheckpointError(f"{path!r} has an output norm for {stage} ({key}), but the model's backbone "
                                  f"returns {stage} without one")
    return rest, norms, unused


def _check_shapes(mapped: Mapping[str, torch.Tensor], model: nn.Module, path: str) -> None:
    expected = model.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
             for k, v in mapped.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise CheckpointError(f"{path!r}: tensors of another shape than the model's: {_show(wrong)}")


def _show(items: Sequence[str], limit: int = 8) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _fit_backbone(
    weights: Mapping[str, torch.Tensor], model: nn.Module, path: str, what: str
) -> Tuple[str, Dict[str, torch.Tensor], Dict[str, torch.Tensor], List[str], LoadResult]:
    """FEC weights (our layout) onto the FEC of ``model``: ``(body name, body tensors by model key,
    output norms by model key, output norms of unreturned maps, fit result)``; raises
    :class:`CheckpointError` naming the file when they do not fit."""
    located = find_fec_body(model)
    if located is None:
        raise CheckpointError(f"{path!r} is {what}, but the model has no FEC backbone "
                              "(MODEL.BACKBONE.NAME is not one of the build_*fec* builders)")
    body_name, body = located
    rest, norms, unused = _output_norm_targets(weights, model, body_name, body, path)
    result = LoadResult()
    try:
        state = fec_backbone.fit_state_dict(rest, body, result=result)
    except CheckpointError as err:
        raise CheckpointError(f"{path!r}: {err}") from err
    mapped = {f"{body_name}.{k}": v for k, v in state.items()}
    _check_shapes(norms, model, path)
    return body_name, mapped, norms, unused, result


def fec_imagenet_weights(checkpoint: Mapping[str, Any], model: nn.Module, path: str) -> Optional[MappedWeights]:
    """An FEC ImageNet checkpoint (one FEC at the top level of its weights, official or our key layout)
    mapped onto the FEC backbone of ``model``; None for anything else. Output norms in the file (an FEC
    dense-prediction backbone saved on its own) go to the backbone's output norms. Raises
    :class:`~fec_backbone.CheckpointError` naming the file when it does not fit the backbone (another
    variant, missing or mis-shaped tensors) or the model has no FEC backbone."""
    try:
        weights, prefix, _ = extract_fec_weights(checkpoint)
    except CheckpointError:
        return None  # no FEC in it, or several: not an ImageNet checkpoint
    if prefix != "":
        return None  # an FEC inside a larger model (ours, or an mmdet file): another format's, or Detectron2's
    body_name, mapped, norms, _, _ = _fit_backbone(weights, model, path, "an FEC ImageNet checkpoint")
    source = next((k for k in ("state_dict_ema", "model_ema", "state_dict", "model")
                   if isinstance(checkpoint.get(k), Mapping)), None)
    part = checkpoint[source] if source else checkpoint
    layout = "official" if any(str(k).startswith(("patch_embed.", "network.")) for k in part) else "our"
    what = f"{repr(source) if source else 'a plain state dict'}, {layout} key layout"
    loaded_norms = f" and {len(norms)} output norm tensors into {body_name.rpartition('.')[0]}" if norms else ""
    summary = (f"FEC ImageNet weights from {path} ({what}): {len(mapped)} backbone tensors loaded into {body_name}"
               f"{loaded_norms}; {_fresh_parts(model, {**mapped, **norms}, body_name)}")
    return MappedWeights({**mapped, **norms}, f"FEC ImageNet checkpoint {path}", summary)


# ----------------------------------------------------------------------------------------------------
# Official mmdet 2.x FEC detectors (guikunchen/FEC detection/: Mask R-CNN, FPN, 1x)

#: ``(part, mmdet key pattern, Detectron2 key template)``: where each tensor of an mmdet two-stage FPN
#: detector goes in Detectron2's ``GeneralizedRCNN`` (the backbone is mapped by
#: :func:`fec_backbone.read_fec_weights`). ``{i+1}`` / ``{i+2}`` are the pattern's index plus 1 / 2,
#: ``{p}`` its parameter name. mmdet's ``ConvModule`` keeps its conv under ``.conv``.
MMDET_RCNN_RULES: Tuple[Tuple[str, str, str], ...] = (
    ("FPN", r"neck\.lateral_convs\.(?P<i>\d+)\.conv\.(?P<p>weight|bias)", "fpn_lateral{i+2}.{p}"),
    ("FPN", r"neck\.fpn_convs\.(?P<i>\d+)\.conv\.(?P<p>weight|bias)", "fpn_output{i+2}.{p}"),
    ("RPN head", r"rpn_head\.rpn_conv\.(?P<p>weight|bias)", "proposal_generator.rpn_head.conv.{p}"),
    ("RPN head", r"rpn_head\.rpn_cls\.(?P<p>weight|bias)", "proposal_generator.rpn_head.objectness_logits.{p}"),
    ("RPN head", r"rpn_head\.rpn_reg\.(?P<p>weight|bias)", "proposal_generator.rpn_head.anchor_deltas.{p}"),
    ("box head", r"roi_head\.bbox_head\.shared_fcs\.(?P<i>\d+)\.(?P<p>weight|bias)", "roi_heads.box_head.fc{i+1}.{p}"),
    ("box head", r"roi_head\.bbox_head\.fc_cls\.(?P<p>weight|bias)", "roi_heads.box_predictor.cls_score.{p}"),
    ("box head", r"roi_head\.bbox_head\.fc_reg\.(?P<p>weight|bias)", "roi_heads.box_predictor.bbox_pred.{p}"),
    ("mask head", r"roi_head\.mask_head\.convs\.(?P<i>\d+)\.conv\.(?P<p>weight|bias)",
     "roi_heads.mask_head.mask_fcn{i+1}.{p}"),
    ("mask head", r"roi_head\.mask_head\.upsample\.(?P<p>weight|bias)", "roi_heads.mask_head.deconv.{p}"),
    ("mask head", r"roi_head\.mask_head\.conv_logits\.(?P<p>weight|bias)", "roi_heads.mask_head.predictor.{p}"),
)

#: What each mapped part needs in the Detectron2 config to hold the official tensors.
_PART_SETTINGS = {
    "FPN": "MODEL.FPN: IN_FEATURES res2..res5, OUT_CHANNELS 256, NORM ''",
    "RPN head": "MODEL.RPN.CONV_DIMS [-1] (one 3x3 conv), MODEL.ANCHOR_GENERATOR: 3 anchors per location",
    "box head": "MODEL.ROI_BOX_HEAD: FastRCNNConvFCHead, NUM_CONV 0, NUM_FC 2, FC_DIM 1024, "
                "CLS_AGNOSTIC_BBOX_REG False",
    "mask head": "MODEL.ROI_MASK_HEAD: MaskRCNNConvUpsampleHead, NUM_CONV 4, CONV_DIM 256, CLS_AGNOSTIC_MASK False",
}
_PART_PREFIXES = {  # the FPN's keys are <fpn>.fpn_*, see _model_part
    "RPN head": ("proposal_generator.",),
    "box head": ("roi_heads.box_head.", "roi_heads.box_predictor."),
    "mask head": ("roi_heads.mask_head.",),
}
#: Top-level parts of an mmdet two-stage detector.
_RCNN_PARTS = ("backbone", "neck", "rpn_head", "roi_head")
_VARIANT_CONFIGS = {"fec_small": "s", "fec_base": "b", "fec_large": "l"}


def _rcnn_target(key: str, fpn: str) -> Optional[Tuple[str, str]]:
    """``(part, Detectron2 key)`` of an mmdet key by :data:`MMDET_RCNN_RULES`; None when no rule matches."""
    for part, pattern, template in MMDET_RCNN_RULES:
        m = re.fullmatch(pattern, key)
        if m:
            g = m.groupdict()
            target = template.format(**{"p": g["p"], "i+1": int(g.get("i") or 0) + 1, "i+2": int(g.get("i") or 0) + 2})
            return part, f"{fpn}.{target}" if part == "FPN" else target
    return None


def _children(keys: Sequence[str]) -> List[str]:
    """Names of the modules directly holding ``keys`` (relative), ModuleLists counted: ``convs[4], upsample``."""
    seen: Dict[str, set] = {}
    for key in keys:
        head, _, rest = key.partition(".")
        index = rest.split(".", 1)[0]
        seen.setdefault(head, set()).add(index if index.isdigit() and "." in rest else None)
    return [f"{name}[{len(idx - {None})}]" if idx - {None} else name for name, idx in seen.items()]


def _describe_mm_state(state: Mapping[str, torch.Tensor]) -> str:
    """What an mmdet/mmseg state dict holds, part by part, in one line: ``backbone: FEC fec_small (278
    tensors); neck: lateral_convs[3], fpn_convs[5] (16 tensors); bbox_head: cls_convs[4], ...``."""
    parts: Dict[str, List[str]] = {}
    for key in state:
        top, _, rest = key.partition(".")
        parts.setdefault(top, []).append(rest)
    lines = []
    for top, rests in parts.items():
        if top == "backbone":
            fec = find_fec_prefixes({k: None for k in rests})
            if fec == [""]:
                variant = detect_variant(extract_fec_weights({k: state[f"backbone.{k}"] for k in rests})[0])
                what = f"FEC {variant}" if variant else "an FEC of no registered variant"
            else:
                what = "not an FEC: " + ", ".join(_children(rests)[:6])
        elif top in ("roi_head",):
            subs: Dict[str, List[str]] = {}
            for r in rests:
                sub, _, tail = r.partition(".")
                subs.setdefault(sub, []).append(tail)
            what = "; ".join(f"{sub} ({', '.join(_children(t))})" for sub, t in subs.items())
        else:
            what = ", ".join(_children(rests))
        lines.append(f"{top}: {what} ({len(rests)} tensors)")
    return "; ".join(lines)


def _mm_state(checkpoint: Mapping[str, Any]) -> Optional[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]]:
    """``(state dict, meta)`` of an OpenMMLab checkpoint (``meta`` naming an mmdet/mmseg version, or an
    FEC in the official layout under ``backbone.``), None for anything else."""
    meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), Mapping) else {}
    inner = checkpoint.get("state_dict")
    state = inner if isinstance(inner, Mapping) else checkpoint
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    mm_meta = any(k in meta for k in ("mmdet_version", "mmseg_version"))
    if not tensors or not (mm_meta or "backbone.patch_embed.proj.weight" in tensors):
        return None
    return tensors, dict(meta)


def _kind(state: Mapping[str, torch.Tensor]) -> str:
    """What an OpenMMLab state dict is: ``Mask R-CNN``, ``Faster R-CNN``, ``RetinaNet``, ``backbone``..."""
    parts = {k.split(".", 1)[0] for k in state}
    if "rpn_head" in parts or "roi_head" in parts:
        return "Mask R-CNN" if any(k.startswith("roi_head.mask_head.") for k in state) else "Faster R-CNN"
    if "bbox_head" in parts:
        return "RetinaNet" if any(k.startswith("bbox_head.retina_cls.") for k in state) else "single-stage detector"
    if "decode_head" in parts:
        return "mmseg segmentor"
    return "backbone" if parts == {"backbone"} else "detector"


def _classes(state: Mapping[str, torch.Tensor]) -> Optional[int]:
    w = state.get("roi_head.bbox_head.fc_cls.weight")
    return None if w is None else int(w.shape[0]) - 1  # mmdet 2.x: num_classes + 1, background last


def _model_part(key: str, fpn: str) -> Optional[str]:
    """The mapped part (:data:`MMDET_RCNN_RULES`) a Detectron2 model key belongs to."""
    if fpn and key.startswith(f"{fpn}.fpn_"):
        return "FPN"
    return next((p for p, prefixes in _PART_PREFIXES.items() if key.startswith(prefixes)), None)


def mmdet_rcnn_weights(checkpoint: Mapping[str, Any], model: nn.Module, path: str) -> Optional[MappedWeights]:
    """An official mmdet 2.x FEC Mask R-CNN / Faster R-CNN checkpoint (or an mmdet file holding the FEC
    backbone alone) in the key layout of ``model``, a Detectron2 ``GeneralizedRCNN`` over
    ``build_fec_fpn_backbone``; None when the file is no OpenMMLab checkpoint.

    Every tensor must map (:data:`MMDET_RCNN_RULES`, the backbone by :func:`fec_backbone.read_fec_weights`
    with its output norms ``norm0/2/4/6`` into the backbone's output norms) and, for a whole detector,
    every model tensor must be filled, else :class:`~fec_backbone.CheckpointError` lists what does not fit.
    Named errors: an FEC of another variant (set ``MODEL.FEC.NAME``), a Faster R-CNN file into a Mask
    R-CNN (set ``MODEL.MASK_ON False``) and back, another class count (set ``MODEL.ROI_HEADS.NUM_CLASSES``),
    a single-stage (RetinaNet), segmentation or non-FEC file (what it holds is named). Into a model whose
    backbone has no FPN (``build_fec_backbone``) the backbone alone is loaded and the summary names the
    file's parts it did not use.
    """
    found = _mm_state(checkpoint)
    if found is None:
        return None
    state, meta = found
    kind = _kind(state)
    holds = _describe_mm_state(state)
    label = {"Mask R-CNN": "an mmdet Mask R-CNN checkpoint", "Faster R-CNN": "an mmdet Faster R-CNN checkpoint",
             "backbone": "an mmdet checkpoint of the FEC backbone alone"}.get(kind, f"an OpenMMLab {kind} checkpoint")
    if find_fec_prefixes({k: None for k in state}) != ["backbone."]:
        raise CheckpointError(f"{path!r} is {label} without an FEC backbone; it holds {holds}")
    if kind in ("RetinaNet", "single-stage detector", "mmseg segmentor") or {k.split(".", 1)[0] for k in state} - set(
            _RCNN_PARTS):
        raise CheckpointError(
            f"{path!r} is {label}, which FECCheckpointer does not map: it maps mmdet Mask R-CNN and Faster "
            f"R-CNN files (backbone, neck, rpn_head, roi_head) and mmdet files of the FEC backbone alone. The "
            f"file holds {holds}")
    # the backbone, its output norms norm0/2/4/6 included
    weights, _, _ = extract_fec_weights({"state_dict": state}, prefix="backbone.")
    located = find_fec_body(model)
    if located is None:
        raise CheckpointError(f"{path!r} is {label}, but the model has no FEC backbone "
                              "(MODEL.BACKBONE.NAME is not one of the build_*fec* builders)")
    file_variant = detect_variant(weights)
    model_variant = (getattr(located[1], "pretrained_cfg", None) or {}).get("architecture")
    if file_variant and model_variant in _VARIANT_CONFIGS and file_variant != model_variant:
        raise CheckpointError(
            f"{path!r} is {label} with an {file_variant} backbone, but the model's is {model_variant}: set "
            f"MODEL.FEC.NAME {file_variant} (configs/detectron2/mask_rcnn_fec_{_VARIANT_CONFIGS[file_variant]}"
            "_fpn_1x_coco.yaml)")
    body_name, body_map, norms, unused_norms, fit = _fit_backbone(weights, model, path, label)
    owner_name = body_name.rpartition(".")[0]
    fpn_name = owner_name.rpartition(".")[0]
    has_fpn = bool(fpn_name) and isinstance(model.get_submodule(fpn_name), FPN)
    mapped: Dict[str, torch.Tensor] = {**body_map, **norms}
    counts: Dict[str, int] = {"backbone": len(body_map), "output norms": len(norms)}
    not_used: List[str] = []
    head_keys = [k for k in state if not k.startswith("backbone.")]
    if head_keys and not has_fpn:  # build_fec_backbone: no FPN for the neck, heads on other maps
        sizes = [f"{top} {sum(k.startswith(top + '.') for k in head_keys)}" for top in _RCNN_PARTS[1:]
                 if any(k.startswith(top + ".") for k in head_keys)]
        not_used.append(f"{', '.join(sizes)} (the model's backbone has no FPN: it takes the backbone alone)")
    elif head_keys:
        _check_rcnn_model(state, model, path, label, meta)
        expected = model.state_dict()
        problems: List[Tuple[Optional[str], str, str]] = []  # (part, kind of problem, text)
        for key in head_keys:
            target = _rcnn_target(key, fpn_name)
            if target is None or target[1] not in expected:
                problems.append((target and target[0], "nowhere", f"{key} -> {target[1] if target else '?'}"))
                continue
            part, name = target
            mapped[name] = state[key]
            counts[part] = counts.get(part, 0) + 1
            if tuple(state[key].shape) != tuple(expected[name].shape):
                problems.append((part, "shape", f"{key} -> {name}: file {tuple(state[key].shape)} vs model "
                                                f"{tuple(expected[name].shape)}"))
        problems += [(_model_part(k, fpn_name), "unfilled", k)
                     for k in expected if k not in mapped and k not in _CONFIG_BUFFERS]
        if problems:
            lines = [f"{path!r} is {label} that does not fit the model:"]
            for what, title in (("nowhere", "file tensors with nowhere to go"),
                                ("unfilled", "model tensors the file does not fill"), ("shape", "shape mismatches")):
                texts = [t for _, w, t in problems if w == what]
                if texts:
                    lines.append(f"  {title}: {_show(texts)}")
            involved = [_PART_SETTINGS[p] for p in _PART_SETTINGS if any(part == p for part, _, _ in problems)]
            if involved:
                lines.append("  The official model needs " + "; ".join(involved))
            lines.append(f"  The file holds {holds}")
            raise CheckpointError("\n".join(lines))
    unused = [*unused_norms, *fit.ignored]
    if unused:
        not_used.append(f"{len(unused)} backbone tensors of stages the model does not return ({_show(unused, 3)})")
    where = {"backbone": body_name, "output norms": f"{owner_name}.out_norms", "FPN": f"{fpn_name}.fpn_*",
             "RPN head": "proposal_generator.rpn_head", "box head": "roi_heads.box_head/box_predictor",
             "mask head": "roi_heads.mask_head"}
    loaded = ", ".join(f"{part} {n} -> {where[part]}" for part, n in counts.items() if n)
    about = [f"{k.split('_')[0]} {meta[k]}" for k in ("mmdet_version", "mmseg_version") if k in meta]
    about += [f"{k} {meta[k]}" for k in ("epoch", "iter") if k in meta]
    about.append(f"FEC {file_variant or model_variant}")
    if _classes(state) is not None:
        about.append(f"{_classes(state)} classes")
    what = f"mmdet {kind} checkpoint" if kind != "backbone" else "mmdet FEC backbone checkpoint"
    summary = f"{what} {path} ({', '.join(about)}): {len(mapped)} tensors loaded: {loaded}"
    if not_used:
        summary += f"; not used: {'; '.join(not_used)}"
    rest = _fresh_parts(model, mapped, body_name)
    summary += "; every model tensor filled" if rest == "nothing else in the model" else f"; {rest}"
    if isinstance(checkpoint.get("optimizer"), Mapping):
        summary += " (the file's optimizer state is not used)"
    return MappedWeights(mapped, f"mmdet checkpoint {path}", summary)


def _check_rcnn_model(state: Mapping[str, torch.Tensor], model: nn.Module, path: str, label: str,
                      meta: Mapping[str, Any]) -> None:
    """The named mismatches of a whole R-CNN file and a model: no R-CNN, mask head, class count."""
    if not (hasattr(model, "proposal_generator") and hasattr(model, "roi_heads")):
        raise CheckpointError(
            f"{path!r} is {label}, but the model is a {type(model).__name__}, no R-CNN: mmdet R-CNN files map onto "
            "MODEL.META_ARCHITECTURE GeneralizedRCNN with build_fec_fpn_backbone "
            "(configs/detectron2/mask_rcnn_fec_s_fpn_1x_coco.yaml)")
    expected = model.state_dict()
    file_mask = any(k.startswith("roi_head.mask_head.") for k in state)
    model_mask = any(k.startswith("roi_heads.mask_head.") for k in expected)
    if model_mask and not file_mask:
        raise CheckpointError(f"{path!r} is {label}: it has no mask head (roi_head.mask_head) for the model's. "
                              "Set MODEL.MASK_ON False to build the Faster R-CNN it holds")
    if file_mask and not model_mask:
        raise CheckpointError(f"{path!r} is {label}, but the model has no mask head for its roi_head.mask_head: "
                              "set MODEL.MASK_ON True")
    classes = _classes(state)
    cls_score = expected.get("roi_heads.box_predictor.cls_score.weight")
    if classes is not None and cls_score is not None and cls_score.shape[0] - 1 != classes:
        names = meta.get("CLASSES")
        named = f" ({', '.join(map(str, names[:3]))}, ...)" if isinstance(names, (list, tuple)) and names else ""
        raise CheckpointError(
            f"{path!r} is {label} whose heads have {classes} classes{named}, the model's "
            f"{cls_score.shape[0] - 1}: set MODEL.ROI_HEADS.NUM_CLASSES {classes}")


#: Foreign checkpoint formats :class:`FECCheckpointer` recognises, tried in order.
WEIGHT_FORMATS: List[WeightFormat] = [fec_imagenet_weights, mmdet_rcnn_weights]


class FECCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that also loads FEC ImageNet checkpoints and official mmdet FEC detector
    checkpoints (see the module docstring).

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
