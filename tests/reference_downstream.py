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


# --------------------------------------------------------------------------------------------------
# mmdet 2.24: the Mask R-CNN FPN of the official FEC detection configs (mask_rcnn_r50_fpn.py with an FEC
# backbone), restated from the official state dict alone, written apart from d2_plugin and Detectron2 and
# without mmdet (it needs mmcv-full, which does not install here). Images are padded to a multiple of 32.

def mmdet_fpn(w: Weights, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """mmdet ``FPN(in_channels, 256, num_outs=5)`` (``start_level=0``, ``add_extra_convs=False``): the four
    levels of mmseg's copy of it (:func:`mmseg_fpn_neck`: lateral 1x1, top-down nearest sums, 3x3 outputs)
    and a fifth, ``max_pool2d(kernel 1, stride 2)`` of the last output."""
    outs = mmseg_fpn_neck(w, feats)
    return outs + [F.max_pool2d(outs[-1], 1, stride=2)]


def mmdet_rpn_head(w: Weights, feats: Sequence[torch.Tensor]):
    """mmdet ``RPNHead`` on each level: 3x3 ``rpn_conv`` + ReLU, then 1x1 ``rpn_cls`` (one sigmoid logit per
    anchor) and 1x1 ``rpn_reg`` (4 deltas per anchor). Returns ``(scores per level, deltas per level)``."""
    scores, deltas = [], []
    for x in feats:
        t = F.relu(conv(w, "rpn_head.rpn_conv", x, padding=1))
        scores.append(conv(w, "rpn_head.rpn_cls", t))
        deltas.append(conv(w, "rpn_head.rpn_reg", t))
    return scores, deltas


def mmdet_anchors(sizes: Sequence[Sequence[int]], strides: Sequence[int] = (4, 8, 16, 32, 64),
                  scales: Sequence[float] = (8,), ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> List[torch.Tensor]:
    """mmdet ``AnchorGenerator(strides, ratios, scales)`` (``scale_major``, ``center_offset=0``) on maps of
    ``sizes`` ``(h, w)``: per level ``[h * w * A, 4]`` boxes x1y1x2y2, location by location (row-major),
    the ``A = len(ratios) * len(scales)`` anchors of a location together, ratio-major. A ratio is h / w."""
    out = []
    ratio = torch.tensor(ratios, dtype=torch.float64)
    scale = torch.tensor(scales, dtype=torch.float64)
    for stride, (h, w) in zip(strides, sizes):
        rh = ratio.sqrt()
        ws = (stride / rh[:, None] * scale[None, :]).reshape(-1)
        hs = (stride * rh[:, None] * scale[None, :]).reshape(-1)
        cell = torch.stack([-ws / 2, -hs / 2, ws / 2, hs / 2], dim=-1)  # centred on (0, 0)
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) * stride,
                                torch.arange(w, dtype=torch.float64) * stride, indexing="ij")
        shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4)
        out.append((shifts + cell[None]).reshape(-1, 4))
    return out


def mmdet_flatten(scores: torch.Tensor, deltas: torch.Tensor):
    """How mmdet's RPN lays one level's head outputs ``[N, A, H, W]`` / ``[N, A * 4, H, W]`` out against
    :func:`mmdet_anchors`: ``[N, H * W * A]`` and ``[N, H * W * A, 4]`` (channel ``a * 4 + k``)."""
    n = scores.shape[0]
    return scores.permute(0, 2, 3, 1).reshape(n, -1), deltas.permute(0, 2, 3, 1).reshape(n, -1, 4)


def mmdet_delta2bbox(rois: torch.Tensor, deltas: torch.Tensor, stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                     wh_ratio_clip: float = 16 / 1000) -> torch.Tensor:
    """mmdet 2.x ``DeltaXYWHBBoxCoder.decode`` (means 0, no border clip): boxes ``rois`` ``[N, 4]`` moved by
    ``deltas`` ``[N, 4 * k]`` (``k`` boxes each, as ``fc_reg``'s class-specific output), ``(dx, dy, dw, dh)``
    scaled by ``stds``, ``dw``/``dh`` clamped to ``|log(wh_ratio_clip)|`` both ways. Returns ``[N, 4 * k]``."""
    n = rois.shape[0]
    d = deltas.reshape(n, -1, 4) * torch.tensor(stds, dtype=deltas.dtype)
    limit = abs(math.log(wh_ratio_clip))
    dx, dy = d[..., 0], d[..., 1]
    dw, dh = d[..., 2].clamp(-limit, limit), d[..., 3].clamp(-limit, limit)
    pw, ph = (rois[:, 2] - rois[:, 0])[:, None], (rois[:, 3] - rois[:, 1])[:, None]
    px, py = ((rois[:, 0] + rois[:, 2]) / 2)[:, None], ((rois[:, 1] + rois[:, 3]) / 2)[:, None]
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx, gy = px + pw * dx, py + ph * dy
    return torch.stack([gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2], dim=-1).reshape(n, -1)


def mmdet_roi_levels(rois: torch.Tensor, num_levels: int = 4, finest_scale: int = 56) -> torch.Tensor:
    """mmdet ``SingleRoIExtractor.map_roi_levels``: ``floor(log2(sqrt(area) / 56 + 1e-6))`` clamped to the
    levels, on RoIs ``[K, 5]`` (image index, x1, y1, x2, y2; area without +1)."""
    scale = ((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])).sqrt()
    return torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(0, num_levels - 1).long()


def mmdet_roi_extract(feats: Sequence[torch.Tensor], rois: torch.Tensor, output_size: int,
                      strides: Sequence[int] = (4, 8, 16, 32)) -> torch.Tensor:
    """mmdet ``SingleRoIExtractor`` with ``RoIAlign(output_size, sampling_ratio=0)`` (mmcv's default
    ``aligned=True``; torchvision's ``roi_align(aligned=True)`` stands in for mmcv's op) on levels
    :func:`mmdet_roi_levels`."""
    from torchvision.ops import roi_align

    levels = mmdet_roi_levels(rois, len(feats))
    out = feats[0].new_zeros(rois.shape[0], feats[0].shape[1], output_size, output_size)
    for i, (x, stride) in enumerate(zip(feats, strides)):
        pick = levels == i
        if pick.any():
            out[pick] = roi_align(x, rois[pick], output_size, spatial_scale=1.0 / stride, sampling_ratio=0,
                                  aligned=True)
    return out


def mmdet_shared2fc_bbox_head(w: Weights, roi_feats: torch.Tensor):
    """mmdet ``Shared2FCBBoxHead``: flatten ``[K, 256, 7, 7]``, two fc + ReLU, then ``fc_cls``
    (``num_classes + 1`` scores, background last) and ``fc_reg`` (``4 * num_classes`` deltas, class-specific)."""
    x = roi_feats.flatten(1)
    for i in range(2):
        name = f"roi_head.bbox_head.shared_fcs.{i}"
        x = F.relu(F.linear(x, w[f"{name}.weight"], w[f"{name}.bias"]))
    cls = F.linear(x, w["roi_head.bbox_head.fc_cls.weight"], w["roi_head.bbox_head.fc_cls.bias"])
    return cls, F.linear(x, w["roi_head.bbox_head.fc_reg.weight"], w["roi_head.bbox_head.fc_reg.bias"])


def mmdet_fcn_mask_head(w: Weights, roi_feats: torch.Tensor, num_convs: int = 4) -> torch.Tensor:
    """mmdet ``FCNMaskHead``: ``num_convs`` x (3x3 conv + ReLU), 2x2 stride-2 deconv (``upsample``) + ReLU,
    1x1 ``conv_logits`` (one mask per class): ``[K, 256, 14, 14]`` -> ``[K, num_classes, 28, 28]``."""
    x = roi_feats
    for i in range(num_convs):
        x = F.relu(conv(w, f"roi_head.mask_head.convs.{i}.conv", x, padding=1))
    x = F.relu(F.conv_transpose2d(x, w["roi_head.mask_head.upsample.weight"], w["roi_head.mask_head.upsample.bias"],
                                  stride=2))
    return conv(w, "roi_head.mask_head.conv_logits", x)


def official_mask_rcnn_state_dict(backbone: Weights, embed_dims: Sequence[int], classes: int = 80, mask: bool = True,
                                  seed: int = 0) -> Weights:
    """An mmdet 2.24 ``MaskRCNN`` state dict in the official layout and shapes (mask_rcnn_r50_fpn.py with the
    FEC neck ``in_channels``): ``backbone.*`` (the official dense-prediction FEC's keys, given), ``neck.*``,
    ``rpn_head.*``, ``roi_head.bbox_head.*`` and, with ``mask``, ``roi_head.mask_head.*`` (``mask=False``: a
    Faster R-CNN), heads for ``classes`` classes, filled with seeded random values (fan-in scaled)."""
    g = torch.Generator().manual_seed(seed)

    def layer(name, out_ch, in_ch, k=None, transposed=False):
        shape = (out_ch, in_ch) if k is None else ((in_ch, out_ch, k, k) if transposed else (out_ch, in_ch, k, k))
        fan_in = in_ch * (k or 1) ** 2
        w[f"{name}.weight"] = torch.randn(*shape, generator=g) / math.sqrt(fan_in)
        w[f"{name}.bias"] = 0.1 * torch.randn(out_ch, generator=g)

    w: Weights = {f"backbone.{k}": v for k, v in backbone.items()}
    for i, c in enumerate(embed_dims):
        layer(f"neck.lateral_convs.{i}.conv", 256, c, 1)
        layer(f"neck.fpn_convs.{i}.conv", 256, 256, 3)
    layer("rpn_head.rpn_conv", 256, 256, 3)
    layer("rpn_head.rpn_cls", 3, 256, 1)
    layer("rpn_head.rpn_reg", 12, 256, 1)
    layer("roi_head.bbox_head.shared_fcs.0", 1024, 256 * 7 * 7)
    layer("roi_head.bbox_head.shared_fcs.1", 1024, 1024)
    layer("roi_head.bbox_head.fc_cls", classes + 1, 1024)
    layer("roi_head.bbox_head.fc_reg", 4 * classes, 1024)
    if mask:
        for i in range(4):
            layer(f"roi_head.mask_head.convs.{i}.conv", 256, 256, 3)
        layer("roi_head.mask_head.upsample", 256, 256, 2, transposed=True)
        layer("roi_head.mask_head.conv_logits", classes, 256, 1)
    return w


def mmcv_checkpoint(state: Weights, classes: Sequence[str], config: str = "mask_rcnn_fec_small_fpn_1x_coco.py",
                    epoch: int = 12, iters: int = 87960) -> dict:
    """What mmcv's ``save_checkpoint`` (the official repo's copy in mmcv_custom/runner) writes after the last
    epoch: ``meta`` (the fields mmdet's train.py and runner put there), ``state_dict``, ``optimizer`` (AdamW's
    state dict; only the first parameter's moments, to keep files small) and ``amp`` (apex's loss scaler)."""
    first = next(iter(state.values()))
    meta = {
        "env_info": "sys.platform: linux\nPython: 3.7.11\nPyTorch: 1.10.0\nMMCV: 1.5.0\nMMDetection: 2.24.1",
        "config": f"_base_ = ['_base_/models/mask_rcnn_r50_fpn.py']  # {config}",
        "seed": 0, "exp_name": config, "mmdet_version": "2.24.1", "CLASSES": tuple(classes),
        "epoch": epoch, "iter": iters, "mmcv_version": "1.5.0", "time": "Mon May 16 10:00:00 2022",
        "hook_msgs": {"last_ckpt": f"work_dirs/{config[:-3]}/epoch_{epoch}.pth"},
    }
    optimizer = {
        "state": {0: {"step": torch.tensor(float(iters)), "exp_avg": torch.zeros_like(first),
                      "exp_avg_sq": torch.zeros_like(first)}},
        "param_groups": [{"lr": 2e-4 * 0.2 ** 3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-4,
                          "amsgrad": False, "initial_lr": 2e-4, "params": list(range(len(state)))}],
    }
    return {"meta": meta, "state_dict": dict(state), "optimizer": optimizer,
            "amp": {"loss_scaler0": {"loss_scale": 65536.0, "unskipped": 0}}}
