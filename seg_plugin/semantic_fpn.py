"""Semantic FPN (Kirillov et al., *Panoptic Feature Pyramid Networks*, 2019) as the FEC paper trains it on
ADE20K: mmseg 0.24's ``FPN`` neck and ``FPNHead`` decode head, as an smp model for any smp encoder.

* Neck: per level (strides 4, 8, 16, 32) a 1x1 lateral conv to 256 channels, a top-down path (each level
  plus its coarser neighbour upsampled by nearest interpolation to its size), then a 3x3 output conv per
  level; convs with bias, no norm, no activation; Xavier-uniform weights, zero bias.
* Head: per level 1, 1, 2, 3 blocks of 3x3 conv (no bias) + BatchNorm + ReLU at 128 channels, each block of
  the coarser levels followed by a bilinear x2 upsampling (``align_corners=False``); the levels summed at
  stride 4 (each resized bilinearly to the finest level's size first); ``Dropout2d(0.1)``; a 1x1
  classifier. Convs Kaiming-normal (fan out, ReLU), norms 1 / 0, the classifier normal(0, 0.01).
* The logits are resized bilinearly (``align_corners=False``) to the input size.

Module names follow the official ones (``lateral_convs``, ``fpn_convs``, ``scale_heads.<i>.<j>.conv/bn``,
``conv_seg``), so an official checkpoint maps key by key (:mod:`seg_plugin.official`). Under DDP the
BatchNorms become SyncBatchNorm, as the official ``SyncBN`` (the trainer converts them).
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn
import torch.nn.functional as F
from segmentation_models_pytorch.base import ClassificationHead, SegmentationModel
from segmentation_models_pytorch.base.hub_mixin import supports_config_loading
from segmentation_models_pytorch.base.modules import Activation
from segmentation_models_pytorch.encoders import get_encoder

__all__ = ["SemanticFPN", "SemanticFPNDecoder", "register_architecture"]

#: Feature strides the neck and head take, finest first.
STRIDES = (4, 8, 16, 32)


class ConvBNReLU(nn.Sequential):
    """3x3 conv without bias, BatchNorm, ReLU (mmcv's ``ConvModule`` with a norm): keys ``conv.*``, ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)


class SemanticFPNDecoder(nn.Module):
    """Neck and head body: encoder maps at strides 4-32 ``[B, C_i, H/s_i, W/s_i]`` -> ``[B, 128, H/4, W/4]``."""

    def __init__(self, in_channels: Sequence[int], pyramid_channels: int = 256, segmentation_channels: int = 128):
        super().__init__()
        if len(in_channels) != len(STRIDES):
            raise ValueError(f"Semantic FPN takes {len(STRIDES)} encoder levels (strides {STRIDES}), got {list(in_channels)}")
        self.lateral_convs = nn.ModuleList([nn.Conv2d(c, pyramid_channels, 1) for c in in_channels])
        self.fpn_convs = nn.ModuleList([nn.Conv2d(pyramid_channels, pyramid_channels, 3, padding=1) for _ in in_channels])
        self.scale_heads = nn.ModuleList()
        for stride in STRIDES:
            blocks: List[nn.Module] = []
            for k in range(max(1, int(math.log2(stride) - math.log2(STRIDES[0])))):
                blocks.append(ConvBNReLU(pyramid_channels if k == 0 else segmentation_channels, segmentation_channels))
                if stride != STRIDES[0]:
                    blocks.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*blocks))
        self.out_channels = segmentation_channels
        self._initialize()

    def _initialize(self) -> None:
        for conv in [*self.lateral_convs, *self.fpn_convs]:
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        for m in self.scale_heads.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        pyramid = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals)]
        out = self.scale_heads[0](pyramid[0])
        for head, level in zip(self.scale_heads[1:], pyramid[1:]):
            out = out + F.interpolate(head(level), size=out.shape[-2:], mode="bilinear", align_corners=False)
        return out


class SemanticFPNHead(nn.Sequential):
    """``Dropout2d`` and the 1x1 classifier (``conv_seg``): ``[B, 128, h, w]`` -> ``[B, classes, h, w]``."""

    def __init__(self, in_channels: int, classes: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(in_channels, classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)


class SemanticFPN(SegmentationModel):
    """Semantic FPN on an smp encoder, with smp's model interface (``smp.from_pretrained`` reloads it).

    Args:
        encoder_name: an smp encoder (``fec_s``, ``resnet50``, ``tu-...``); its stride 4-32 maps are used.
        encoder_depth: 5 (the four levels the neck takes need the encoder's whole depth).
        encoder_weights: as for any smp model (``"imagenet"``, None; True/None for ``tu-`` encoders).
        decoder_pyramid_channels, decoder_segmentation_channels, decoder_dropout: the neck's and head's
            widths and the dropout before the classifier (official: 256, 128, 0.1).
        in_channels, classes, activation, aux_params: as in smp's models.
        kwargs: further encoder settings; smp passes them to ``tu-`` encoders only.

    ``forward``: ``[B, in_channels, H, W]`` -> ``[B, classes, H, W]`` (any H, W the encoder takes).
    """

    requires_divisible_input_shape = False  # every level is resized to the size of the next, as in mmseg

    @supports_config_loading
    def __init__(
        self,
        encoder_name: str = "resnet50",
        encoder_depth: int = 5,
        encoder_weights: Optional[str] = "imagenet",
        decoder_pyramid_channels: int = 256,
        decoder_segmentation_channels: int = 128,
        decoder_dropout: float = 0.1,
        in_channels: int = 3,
        classes: int = 1,
        activation: Optional[str] = None,
        aux_params: Optional[dict] = None,
        **kwargs: Any,
    ):
        super().__init__()
        if encoder_depth != 5:
            raise ValueError(f"Semantic FPN takes the encoder's maps at strides 4 to 32: encoder_depth must be 5, "
                             f"got {encoder_depth}")
        self.encoder = get_encoder(encoder_name, in_channels=in_channels, depth=5, weights=encoder_weights, **kwargs)
        levels = list(self.encoder.out_channels[-len(STRIDES):])
        self.decoder = SemanticFPNDecoder(levels, decoder_pyramid_channels, decoder_segmentation_channels)
        self.segmentation_head = SemanticFPNHead(self.decoder.out_channels, classes, decoder_dropout)
        self.activation = Activation(activation)
        self.classification_head = (ClassificationHead(in_channels=self.encoder.out_channels[-1], **aux_params)
                                    if aux_params is not None else None)
        self.name = f"semanticfpn-{encoder_name}"

    def forward(self, x: torch.Tensor):
        features = self.encoder(x)
        logits = self.segmentation_head(self.decoder(features[-len(STRIDES):]))
        masks = self.activation(F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False))
        if self.classification_head is not None:
            return masks, self.classification_head(features[-1])
        return masks


def register_architecture() -> None:
    """Make :class:`SemanticFPN` an smp architecture: ``smp.SemanticFPN`` (which ``smp.from_pretrained`` looks up
    by a saved model's class name) and ``smp.create_model("semanticfpn", ...)`` (idempotent)."""
    smp.SemanticFPN = SemanticFPN
    smp.MODEL_ARCHITECTURES_MAPPING[SemanticFPN.__name__.lower()] = SemanticFPN
