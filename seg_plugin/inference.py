"""Trained segmentation models for inference: loading and mmseg 0.24's three test modes.

:func:`load_model` takes a trainer checkpoint (``last.ckpt`` of :mod:`seg_plugin.train_ade20k`, or its run
folder), a saved smp model folder (``save_pretrained``) or an official mmseg ADE20K checkpoint
(:mod:`seg_plugin.official`) and returns the model with what inference needs: class names, the
normalisation and evaluation scale. :func:`predict_scores` runs one image in a mode:

* ``whole``: the official protocol (and the trainer's evaluation): ``AlignResize`` to the evaluation
  scale, one forward pass, logits resized bilinearly to the original size.
* ``slide``: the same resize, then ``crop`` x ``crop`` windows every ``stride`` pixels (the last ones
  flush with the border), each window's logits added into place and divided by the number of windows
  covering each pixel (mmseg's ``slide_inference``).
* ``aug``: mmseg's ``aug_test``: the image at each of ``ratios`` times the evaluation scale (and flipped
  with ``flip``), each pass's logits resized to the original size, softmaxed and flipped back, the
  probabilities averaged.

Inputs of any size work in every mode: the network's input is padded (0, the mean after
normalisation) to a multiple of the size divisor and its logits cropped back (:func:`forward_padded`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from fvcore.common.config import CfgNode

import segmentation_models_pytorch as smp

from fec_backbone import CheckpointError
from fec_backbone.checkpoint import read_checkpoint

from .ade20k_meta import fallback_names
from .data import AugmentConfig, class_names, eval_image
from .official import is_official_semantic_fpn, load_official_semantic_fpn
from .train_ade20k import CHECKPOINT, CLASS_NAMES, _augment, build_model, get_cfg, upgrade_state_dict

__all__ = ["MODES", "MSFLIP_RATIOS", "LoadedModel", "aug_inference", "describe", "forward_padded", "load_model",
           "predict_scores", "slide_inference", "whole_inference"]

MODES = ("whole", "slide", "aug")
#: mmseg's multi-scale test ratios (``MultiScaleFlipAug`` of the ADE20K configs' ``--aug-test``).
MSFLIP_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass
class LoadedModel:
    """A model ready for inference (eval mode) and what it was trained with."""

    model: nn.Module
    kind: str  # "trainer checkpoint", "saved model" or "official mmseg checkpoint"
    source: str
    num_classes: int
    class_names: List[str]
    augment: AugmentConfig  # normalisation, evaluation scale and size divisor
    data_root: Optional[str] = None  # the run's dataset folder, when known
    run_dir: Optional[Path] = None  # where results go by default


def _cfg_from(saved: Mapping[str, Any], where: str) -> CfgNode:
    cfg = get_cfg()
    try:
        cfg.merge_from_other_cfg(CfgNode(_dicts(saved)))
    except (KeyError, ValueError, AssertionError) as err:
        raise CheckpointError(f"{where}: its settings do not fit this trainer's: {err}") from None
    cfg.model.encoder_weights = "none"  # the weights come from the file
    return cfg


def _dicts(obj: Any) -> Any:
    return {k: _dicts(v) for k, v in obj.items()} if isinstance(obj, Mapping) else obj


def _names(recorded: Optional[Sequence[str]], num_classes: int, data_root: Optional[str]) -> List[str]:
    """Recorded names, else the dataset folder's (``class_names`` of :mod:`seg_plugin.data`), else
    ADE20K's for 150 classes, else ``class k``."""
    if recorded and len(recorded) == num_classes:
        return [str(n).strip() for n in recorded]
    if data_root and Path(data_root).is_dir():
        found = class_names(data_root, num_classes)
        if found[0] != "class_0":
            return found
    return fallback_names(num_classes)


def _what_it_is(obj: Mapping[str, Any]) -> str:
    """A description of a checkpoint that is none of ours, for the error message."""
    if "arch" in obj and ("args" in obj or "epoch" in obj):
        return (f"a classification checkpoint (timm's CheckpointSaver, arch {obj['arch']!r}); evaluate it with "
                "python -m classification.validate")
    if isinstance(obj.get("model"), Mapping) and ("iteration" in obj or "trainer" in obj):
        return "a Detectron2 checkpoint; evaluate it with d2_plugin/train_net.py --eval-only"
    if "config" in obj and "state_dict" in obj:
        return "a checkpoint whose settings are not a segmentation trainer's"
    return f"a file with top-level keys {sorted(map(str, obj))[:8]}"


def _trainer_checkpoint(obj: Mapping[str, Any], path: Path) -> LoadedModel:
    cfg = _cfg_from(obj["config"], str(path))
    model = build_model(cfg)
    expected = {f"model.{k}": v for k, v in model.state_dict().items()}
    state = upgrade_state_dict(dict(obj["state_dict"]), expected)
    state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit the model its settings describe: {err}") from None
    classes = cfg.data.num_classes
    return LoadedModel(model.eval(), "trainer checkpoint", str(path), classes,
                       _names(obj.get("class_names"), classes, cfg.data.root), _augment(cfg), cfg.data.root,
                       path.parent)


def _saved_model(folder: Path) -> LoadedModel:
    try:
        model = smp.from_pretrained(str(folder))
    except Exception as err:  # smp/huggingface raise many kinds for a folder that is not a model
        raise CheckpointError(f"{folder} is not a saved smp model (smp.from_pretrained failed: {err})") from err
    classes = int(model.config["classes"]) if hasattr(model, "config") else int(model.segmentation_head[0].out_channels)
    run_config = folder.parent / "config.yaml"  # the trainer's run folder holds the data settings
    augment, data_root, run_dir = AugmentConfig(), None, folder
    if run_config.is_file():
        run_dir = folder.parent
        cfg = get_cfg()
        cfg.merge_from_file(str(run_config))
        augment, data_root = _augment(cfg), cfg.data.root
    names_file = folder / CLASS_NAMES
    recorded = names_file.read_text(encoding="utf-8").splitlines() if names_file.is_file() else None
    return LoadedModel(model.eval(), "saved model", str(folder), classes, _names(recorded, classes, data_root),
                       augment, data_root, run_dir)


def load_model(path: str | os.PathLike) -> LoadedModel:
    """A trainer checkpoint, a run folder (its ``last.ckpt``), a saved smp model folder or an official mmseg
    ADE20K checkpoint, as a :class:`LoadedModel` on the CPU. Raises :class:`~fec_backbone.CheckpointError`
    saying what the file is when it is none of these."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return _saved_model(path)
        if (path / CHECKPOINT).is_file():
            path = path / CHECKPOINT
        else:
            raise CheckpointError(f"{path} is a folder with neither a saved smp model (config.json) nor a trainer "
                                  f"checkpoint ({CHECKPOINT})")
    obj = read_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint")
    config = obj.get("config")
    if isinstance(config, Mapping) and {"model", "data"} <= set(config) and "state_dict" in obj:
        return _trainer_checkpoint(obj, path)
    if is_official_semantic_fpn(obj):
        model, summary = load_official_semantic_fpn(path)
        return LoadedModel(model, "official mmseg checkpoint", str(path), summary.classes,
                           _names(summary.class_names, summary.classes, None), AugmentConfig(), None, path.parent)
    raise CheckpointError(f"{path} is not a segmentation model: it is {_what_it_is(obj)}. Expected a "
                          f"seg_plugin.train_ade20k checkpoint ({CHECKPOINT}), a saved smp model folder or an "
                          "official mmseg FEC Semantic FPN ADE20K checkpoint")


def forward_padded(model: nn.Module, image: torch.Tensor, divisor: int = 32) -> torch.Tensor:
    """Logits ``[B, C, H, W]`` of ``image [B, 3, H, W]`` of any size: padded right and bottom with 0 to
    multiples of ``divisor``, the logits cropped back to ``H x W``."""
    height, width = image.shape[-2:]
    padded = F.pad(image, (0, (-width) % divisor, 0, (-height) % divisor))
    return model(padded)[..., :height, :width]


def whole_inference(model: nn.Module, image: torch.Tensor, size: Tuple[int, int], divisor: int = 32) -> torch.Tensor:
    """Logits ``[B, C, *size]``: one pass over ``image [B, 3, h, w]``, resized bilinearly to ``size``."""
    logits = forward_padded(model, image, divisor).float()
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _starts(length: int, crop: int, stride: int) -> List[int]:
    """Window starts along one side, as mmseg: ``ceil((length - crop) / stride) + 1`` windows, the last one
    moved back to end at the border (all start at 0 when the crop covers the side)."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride + crop, length) - crop, 0) for i in range(count)})


def slide_inference(model: nn.Module, image: torch.Tensor, size: Tuple[int, int], crop: Tuple[int, int] = (512, 512),
                    stride: Tuple[int, int] = (341, 341), divisor: int = 32) -> torch.Tensor:
    """Logits ``[B, C, *size]`` from ``crop`` (h, w) windows of ``image [B, 3, h, w]`` every ``stride`` pixels:
    each window's logits are added into place, the sum divided by the count of windows over each pixel,
    then resized bilinearly to ``size``."""
    height, width = image.shape[-2:]
    total: Optional[torch.Tensor] = None
    count = image.new_zeros(1, 1, height, width)
    for top in _starts(height, crop[0], stride[0]):
        for left in _starts(width, crop[1], stride[1]):
            window = image[..., top:top + crop[0], left:left + crop[1]]
            logits = forward_padded(model, window, divisor).float()
            if total is None:
                total = image.new_zeros(image.shape[0], logits.shape[1], height, width, dtype=torch.float32)
            total[..., top:top + window.shape[-2], left:left + window.shape[-1]] += logits
            count[..., top:top + window.shape[-2], left:left + window.shape[-1]] += 1
    return F.interpolate(total / count, size=size, mode="bilinear", align_corners=False)


def aug_inference(model: nn.Module, image: np.ndarray, augment: AugmentConfig,
                  ratios: Sequence[float] = MSFLIP_RATIOS, flip: bool = True) -> torch.Tensor:
    """Class probabilities ``[1, C, H, W]`` of an RGB uint8 image ``[H, W, 3]``, mmseg 0.24's ``aug_test``: for
    each ratio the image resized as the evaluation does to ``(int(long * ratio), int(short * ratio))``, each
    pass (and its horizontally flipped twin with ``flip``) resized to ``H x W``, softmaxed, flipped back,
    and the probabilities averaged."""
    size = image.shape[:2]
    long, short = augment.eval_scale
    total, passes = None, 0
    for ratio in ratios:
        x = eval_image(image, augment, (int(long * ratio), int(short * ratio)))[None]
        for flipped in ((False, True) if flip else (False,)):
            inp = x.flip(-1) if flipped else x
            probs = whole_inference(model, inp, size, augment.size_divisor).softmax(1)
            probs = probs.flip(-1) if flipped else probs
            total = probs if total is None else total + probs
            passes += 1
    return total / passes


def predict_scores(loaded: LoadedModel, image: np.ndarray, mode: str = "whole", crop: Tuple[int, int] = (512, 512),
                   stride: Tuple[int, int] = (341, 341), ratios: Sequence[float] = MSFLIP_RATIOS, flip: bool = True,
                   scale: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Scores ``[C, H, W]`` (logits, or probabilities in ``aug`` mode) of an RGB uint8 image ``[H, W, 3]`` at its
    own size; their argmax is the prediction. ``scale`` replaces the evaluation scale (long, short)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    augment = loaded.augment if scale is None else replace(loaded.augment, eval_scale=tuple(scale))
    size = image.shape[:2]
    with torch.inference_mode():
        if mode == "aug":
            return aug_inference(loaded.model, image, augment, ratios, flip)[0]
        x = eval_image(image, augment)[None]
        if mode == "slide":
            return slide_inference(loaded.model, x, size, crop, stride, augment.size_divisor)[0]
        return whole_inference(loaded.model, x, size, augment.size_divisor)[0]


def describe(loaded: LoadedModel) -> Dict[str, Any]:
    """What was loaded, for logs and result files."""
    return {"kind": loaded.kind, "source": loaded.source, "classes": loaded.num_classes,
            "eval_scale": list(loaded.augment.eval_scale), "size_divisor": loaded.augment.size_divisor}
