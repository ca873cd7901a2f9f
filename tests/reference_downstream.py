"""Oracle for the official downstream models: plain functional re-statements of what mmseg 0.24's
``FPN`` neck and ``FPNHead`` compute, read straight from a state dict in the official key layout
(``neck.*``, ``decode_head.*``), written apart from ``seg_plugin``'s modules and without mmseg (which
does not install here). Evaluation mode: BatchNorm uses its running statistics.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

Weights = Dict[str, torch.Tensor]


def conv(w: Weights, name: str, x: torch.Tensor, padding: int = 0) -> torch.Tensor:
    return F.conv2d(x, w[f"{name}.weight"], w.get(f"{name}.bias"), padding=padding)


def mmseg_fpn_neck(w: Weights, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """mmseg ``FPN(in_channels, 256, num_outs=4)``: lateral 1x1, top-down nearest-upsampled sums, 3x3 outputs."""
    laterals = [conv(w, f"neck.lateral_convs.{i}.conv", f) for i, f in enumerate(feats)]
    for i in range(len(laterals) - 1, 0, -1):
        laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
    return [conv(w, f"neck.fpn_convs.{i}.conv", lateral, padding=1) for i, lateral in enumerate(laterals)]


def mmseg_fpn_head(w: Weights, feats: Sequence[torch.Tensor], strides: Sequence[int] = (4, 8, 16, 32)) -> torch.Tensor:
    """mmseg ``FPNHead(channels=128)``: per level conv-BN-ReLU blocks with x2 bilinear upsampling (all but the
    finest level), summed, then ``conv_seg`` (dropout is the identity in evaluation)."""
    total = None
    for i, (x, stride) in enumerate(zip(feats, strides)):
        blocks = max(1, int(math.log2(stride) - math.log2(strides[0])))
        index = 0
        for _ in range(blocks):
            name = f"decode_head.scale_heads.{i}.{index}"
            x = F.conv2d(x, w[f"{name}.conv.weight"], None, padding=1)
            x = F.batch_norm(x, w[f"{name}.bn.running_mean"], w[f"{name}.bn.running_var"], w[f"{name}.bn.weight"],
                             w[f"{name}.bn.bias"], training=False, eps=1e-5)
            x = F.relu(x)
            index += 1
            if stride != strides[0]:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
                index += 1  # the Upsample module takes a place in the Sequential
        total = x if total is None else total + F.interpolate(x, size=total.shape[2:], mode="bilinear",
                                                               align_corners=False)
    return conv(w, "decode_head.conv_seg", total)


def mmseg_semantic_fpn(w: Weights, backbone_outputs: Sequence[torch.Tensor], size) -> torch.Tensor:
    """The whole ``EncoderDecoder`` after the backbone: neck, head, and the logits resized to the image size."""
    logits = mmseg_fpn_head(w, mmseg_fpn_neck(w, backbone_outputs))
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def official_semantic_fpn_state_dict(embed_dims: Sequence[int], classes: int = 150, seed: int = 0) -> Weights:
    """Neck and head tensors in the official layout and shapes (mmseg 0.24 ``FPN`` + ``FPNHead`` of the FEC
    configs: 256 / 128 channels), filled with seeded random values (BN statistics included)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.05):
        return scale * torch.randn(*shape, generator=g)

    w: Weights = {}
    for i, c in enumerate(embed_dims):
        w[f"neck.lateral_convs.{i}.conv.weight"], w[f"neck.lateral_convs.{i}.conv.bias"] = rand(256, c, 1, 1), rand(256)
        w[f"neck.fpn_convs.{i}.conv.weight"], w[f"neck.fpn_convs.{i}.conv.bias"] = rand(256, 256, 3, 3), rand(256)
    for i, stride in enumerate((4, 8, 16, 32)):
        blocks = max(1, int(math.log2(stride) - 2))
        for k in range(blocks):
            name = f"decode_head.scale_heads.{i}.{2 * k if stride != 4 else k}"
            w[f"{name}.conv.weight"] = rand(128, 256 if k == 0 else 128, 3, 3)
            w[f"{name}.bn.weight"], w[f"{name}.bn.bias"] = 1 + rand(128), rand(128)
            w[f"{name}.bn.running_mean"], w[f"{name}.bn.running_var"] = rand(128), 1 + rand(128).abs()
            w[f"{name}.bn.num_batches_tracked"] = torch.tensor(80000)
    w["decode_head.conv_seg.weight"], w["decode_head.conv_seg.bias"] = rand(classes, 128, 1, 1), rand(classes)
    return w
