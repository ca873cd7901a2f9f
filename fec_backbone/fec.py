"""FEC: Feature Extraction with Clustering (Chen et al., CVPR 2024), as a timm model.

The image, with two normalised coordinate channels appended, is embedded by a stride-4 convolution,
then passes four stages. Each stage (but the first) starts with a clustering-based pooling that halves
the resolution, followed by clustering blocks: per head, centres are proposed by adaptive average
pooling, every pixel joins its most similar centre (cosine similarity under a learnable sigmoid),
clusters average their members with their centre, and each pixel receives its cluster's value scaled by
its similarity. GroupNorm with one group normalises throughout.

Semantics follow the official ``models/fec.py`` (guikunchen/FEC); official ImageNet checkpoints load
through :func:`checkpoint_filter_fn`. The clustering itself lives in :mod:`fec_backbone.cluster_ops`,
the channels-last fold regions and centre pooling in :mod:`fec_backbone.layout`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (DropPath, Mlp, calculate_drop_path_rates, get_device_dtype, register_notrace_function,
                         trunc_normal_)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from .checkpoint import CheckpointError, fit_state_dict, read_fec_weights
from .cluster_ops import cluster_mix, cluster_pool
from .layout import (IntOrPair, block_centres, linear_nhwc, merge_regions, pair, pool_centres, split_regions, to_nchw,
                     to_nhwc)
from .norm import TokenGroupNorm1  # single-group norm of the channels-last maps
from .variants import PRESETS, VARIANTS

__all__ = [
    "FEC", "PRESETS", "VARIANTS", "check_input", "checkpoint_filter_fn", "count_parameters", "to_nchw", "to_nhwc"
]

#: Called by a clustering layer with (layer, centre index per point [G, N], per-region map size (h, w)).
Recorder = Callable[[nn.Module, torch.Tensor, Tuple[int, int]], None]


@register_notrace_function
def check_input(x: torch.Tensor, in_chans: int, divisor: int) -> None:
    """Reject inputs FEC cannot process, saying what is wrong and what to do."""
    if x.ndim != 4:
        raise ValueError(f"FEC expects a 4-D [B, C, H, W] image batch, got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"FEC was built for {in_chans} input channels but the image has {x.shape[1]}; "
            f"create the model with in_chans={x.shape[1]} or convert the image"
        )
    h, w = x.shape[-2:]
    if h % divisor or w % divisor:
        raise ValueError(
            f"FEC needs image height and width divisible by {divisor}, got {h}x{w}; "
            f"resize or pad the image (e.g. to {-(-h // divisor) * divisor}x{-(-w // divisor) * divisor})"
        )


def coordinate_ramp(length: int, size: int, device: torch.device) -> torch.Tensor:
    """``[length]`` float32 coordinates ``i / (size - 1) - 0.5``, the same bits on every device.

    They equal the official code's, which divides in float32 on the CPU (correctly rounded). On CUDA,
    PyTorch divides a tensor by a Python number as a multiplication by its float32 reciprocal, one
    rounding more, which moved some coordinates by one float32 ulp and a float64 model's output by
    ~1e-8. The quotient is therefore formed in float64 and rounded once to float32: for sizes below
    2**24 that rounding gives the correctly rounded float32 quotient on any device."""
    return (torch.arange(length, device=device, dtype=torch.float64) / (size - 1.0)).float() - 0.5


class Stem(nn.Module):
    """Append normalised row/column coordinates (in [-0.5, 0.5]) and embed with a stride-4 conv.

    ``[B, in_chans, H, W]`` -> ``[B, dim, H/4, W/4]``.
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int = 4, device=None, dtype=None):
        super().__init__()
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans + 2, dim, kernel_size=patch_size, stride=patch_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """``size``: the ``(H, W)`` of the real image when ``x`` is that image padded at the bottom and
        right; its pixels then get the coordinates they have unpadded (padding continues the ramps past
        0.5). Default: ``x``'s own size."""
        b, _, hp, wp = x.shape
        h, w = (hp, wp) if size is None else size
        rows, cols = coordinate_ramp(hp, h, x.device), coordinate_ramp(wp, w, x.device)
        coords = torch.stack(
            (rows.view(hp, 1).expand(hp, wp), cols.view(1, wp).expand(hp, wp)), dim=0
        ).to(x.dtype)
        x = torch.cat((x, coords.unsqueeze(0).expand(b, 2, hp, wp)), dim=1)
        return self.proj(x)


class ClusterMixer(nn.Module):
    """Token mixer of a block: multi-head clustering of the pixels of a map. ``[B, H, W, C]`` in and out.

    ``f`` (similarity features) and ``v`` (values) run as one matrix product; heads and fold regions
    are split in one copy; centres come from :func:`block_centres`; the clustering itself is
    :func:`~fec_backbone.cluster_ops.cluster_mix`.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        proposals: IntOrPair = 2,
        folds: IntOrPair = 1,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.heads = heads
        self.head_dim = head_dim
        self.proposals = pair(proposals)
        self.folds = pair(folds)
        self.f = nn.Conv2d(dim, heads * head_dim, kernel_size=1, **dd)
        self.v = nn.Conv2d(dim, heads * head_dim, kernel_size=1, **dd)
        self.proj = nn.Conv2d(heads * head_dim, dim, kernel_size=1, **dd)
        self.sim_alpha = nn.Parameter(torch.ones(1, **dd))
        self.sim_beta = nn.Parameter(torch.zeros(1, **dd))
        self.recorder: Optional[Recorder] = None  # set by fec_backbone.interpret.record_clusters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        weight = torch.cat((self.f.weight, self.v.weight)).flatten(1)
        fv = F.linear(x, weight, torch.cat((self.f.bias, self.v.bias)))
        split = split_regions(fv.view(b, h, w, 2, self.heads, self.head_dim), self.folds)
        centres = block_centres(fv, split, self.heads, self.proposals, self.folds)
        _, g, rh, rw, c = split.shape
        (f, v), (f_centres, v_centres) = split.view(2, g, rh * rw, c).unbind(), centres.unbind()  # one stack backward
        out, index = cluster_mix(f, f_centres, v, v_centres, self.sim_alpha, self.sim_beta)
        if self.recorder is not None:
            self.recorder(self, index, (rh, rw))
        return linear_nhwc(merge_regions(out.view(g, rh, rw, c), b, self.folds), self.proj)


class ClusterBlock(nn.Module):
    """Pre-norm residual block on ``[B, H, W, C]``: clustering token mixer, then MLP, each with layer
    scale and drop path."""

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        mlp_ratio: float = 4.0,
        proposals: IntOrPair = 2,
        folds: IntOrPair = 1,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-5,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = TokenGroupNorm1(dim, **dd)
        self.token_mixer = ClusterMixer(dim, heads, head_dim, proposals, folds, **dd)
        self.norm2 = TokenGroupNorm1(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop, **dd)  # timm's: fc1, GELU, fc2 on [..., C]
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale_init_value, **dd))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale_init_value, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1 * self.token_mixer(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2 * self.mlp(self.norm2(x)))


class FrozenConv1x1(nn.Module):
    """A 1x1 convolution whose weight and bias are buffers (state-dict keys ``weight``/``bias``).

    Used for ``ClusterPool.conv_f``: its output only feeds an argmax, so it can never receive a
    gradient (see :class:`ClusterPool`).
    """

    def __init__(self, in_chans: int, out_chans: int, device=None, dtype=None):
        super().__init__()
        init = nn.Conv2d(in_chans, out_chans, kernel_size=1, device=device, dtype=dtype)  # PyTorch's default init
        self.register_buffer("weight", init.weight.detach().clone())
        self.register_buffer("bias", init.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, O, H, W]``."""
        return F.conv2d(x, self.weight, self.bias)


class ClusterPool(nn.Module):
    """Clustering-based downsampling between stages: ``[B, H, W, C]`` -> ``[B, H/2, W/2, D]``.

    Centres sit on the half-resolution grid (2x2 average of a feature projection); each pixel votes
    its value into its most similar centre (plain cosine similarity), and a centre becomes the mean of
    its voters together with its own pooled value. A strided 3x3 conv is the skip path.

    Why ``conv_f`` is a buffer: the official model's ``conv_f`` is an ``nn.Conv2d`` whose output only
    reaches the argmax of the assignment, so autograd never gives it a gradient; that is why the
    official training needs DDP's ``find_unused_parameters=True``. The weights still matter (they
    decide the assignments, and official checkpoints carry them), so here they are non-trainable
    buffers under the same keys ``conv_f.weight``/``conv_f.bias``: checkpoints load unchanged, DDP
    runs without ``find_unused_parameters``, and every trainable parameter gets a gradient.
    """

    def __init__(self, in_chans: int, out_chans: int, folds: IntOrPair = 1, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.folds = pair(folds)
        self.norm2 = TokenGroupNorm1(out_chans, **dd)
        self.conv_f = FrozenConv1x1(in_chans, out_chans, **dd)
        self.conv_v = nn.Conv2d(in_chans, out_chans, kernel_size=1, **dd)
        self.conv_skip = nn.Conv2d(in_chans, out_chans, kernel_size=3, stride=2, padding=1, **dd)
        self.rate = 2  # centres lie on a grid `rate` times coarser than the input
        self.dilated = False
        self.recorder: Optional[Recorder] = None  # set by fec_backbone.interpret.record_clusters

    def dilate(self, rate: int) -> None:
        """Keep the input resolution (for output stride 8/16 in dense prediction): centres are proposed
        on a grid ``rate`` (2 or 4) times coarser, exactly the centres the pool would use without
        dilation, pixels vote and clusters average as before, and then every pixel receives the value of
        the centre it voted for instead of the map shrinking to the grid. The skip conv runs with stride
        1 and dilation ``rate // 2``, as dilated ResNets treat their first strided conv. Weights and
        state-dict keys are unchanged."""
        if rate not in (2, 4):
            raise ValueError(f"a clustering pool can be dilated by 2 or 4, got {rate}")
        gap = rate // 2
        self.conv_skip.stride, self.conv_skip.dilation, self.conv_skip.padding = (1, 1), (gap, gap), (gap, gap)
        self.rate, self.dilated = rate, True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        skip = to_nhwc(self.conv_skip(to_nchw(x)))
        both = torch.stack((linear_nhwc(x.detach(), self.conv_f), linear_nhwc(x, self.conv_v)), dim=3)
        both = split_regions(both.unsqueeze(4), self.folds)  # [2, B*regions, h, w, D]
        _, g, h, w, d = both.shape
        grid = (h // self.rate, w // self.rate)
        centres = pool_centres(both.view(2 * g, h, w, d), grid).view(2, g, -1, d)
        (f, v), (f_centres, v_centres) = both.view(2, g, h * w, d).unbind(), centres.unbind()
        out, index = cluster_pool(f, f_centres, v, v_centres)
        if self.recorder is not None:
            self.recorder(self, index, (h, w))
        if self.dilated:
            out, grid = out.gather(1, index.unsqueeze(-1).expand(g, h * w, d)), (h, w)
        return skip + self.norm2(merge_regions(out.view(g, grid[0], grid[1], d), b, self.folds))


class FecStage(nn.Module):
    """Optional clustering pool followed by clustering blocks: ``[B, C, H, W]`` -> ``[B, D, H', W']``.

    The layers run on channels-last maps ``[B, H, W, C]``; the stage returns them as NCHW views (no copy,
    and the next stage's conversion back is free), so that what a stage returns, the feature map that
    ``feature_info`` names (``stages.<i>``, e.g. for FX feature extraction), is NCHW.
    """

    def __init__(self, downsample: Optional[nn.Module], blocks: Sequence[nn.Module]):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(to_nhwc(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return to_nchw(checkpoint_seq(self.blocks, x))
        return to_nchw(self.blocks(x))


def _per_stage(value: Union[IntOrPair, Sequence[IntOrPair]], n: int, name: str) -> List[IntOrPair]:
    if isinstance(value, int):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"`{name}` needs one entry per stage ({n}), got {value}")
    return value


class FEC(nn.Module):
    """The FEC backbone and classifier.

    Args:
        layers: blocks per stage.
        embed_dims: channels per stage.
        mlp_ratios: MLP expansion per stage.
        heads, head_dim: clustering heads per stage and their width.
        proposals: centres per side per stage (int or (rows, cols)); see :data:`PRESETS`.
        folds: clustering regions per side per stage (int or (rows, cols)); a feature map that a fold
            does not divide raises ``ValueError``.
        preset: name in :data:`PRESETS`, sets ``proposals`` and ``folds`` unless given explicitly.
        in_chans: image channels (the stem sees ``in_chans + 2`` with the coordinates).
        num_classes: classifier outputs; 0 for no classifier.
        global_pool: ``'avg'`` or ``''`` (no pooling in :meth:`forward_head`).
        output_stride: 32, or 8/16 for dense prediction (:meth:`set_output_stride`).
        feature_norms: a GroupNorm (one group) on every stage map :meth:`forward_intermediates` returns
            (``out_norms``), as the official dense-prediction backbone (``fork_feat``, its ``norm0/2/4/6``).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 5, 2),
        embed_dims: Sequence[int] = (32, 64, 196, 320),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        heads: Sequence[int] = (4, 4, 8, 8),
        head_dim: Union[int, Sequence[int]] = 24,
        proposals: Optional[Sequence[IntOrPair]] = None,
        folds: Optional[Sequence[IntOrPair]] = None,
        preset: str = "classification",
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 1e-5,
        output_stride: int = 32,
        feature_norms: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        n = len(layers)
        proposals = _per_stage(PRESETS[preset]["proposals"] if proposals is None else proposals, n, "proposals")
        folds = _per_stage(PRESETS[preset]["folds"] if folds is None else folds, n, "folds")
        head_dims = _per_stage(head_dim, n, "head_dim")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.in_chans = in_chans
        self.embed_dims = list(embed_dims)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.reduction = 4 * 2 ** (n - 1)

        self.stem = Stem(in_chans, embed_dims[0], **dd)
        drop_path_rates = calculate_drop_path_rates(drop_path_rate, list(layers), stagewise=True)
        stages = []
        self.feature_info = []
        for i in range(n):
            downsample = ClusterPool(embed_dims[i - 1], embed_dims[i], folds[i], **dd) if i > 0 else None
            blocks = [
                ClusterBlock(
                    embed_dims[i],
                    heads[i],
                    head_dims[i],
                    mlp_ratio=mlp_ratios[i],
                    proposals=proposals[i],
                    folds=folds[i],
                    drop=proj_drop_rate,
                    drop_path=drop_path_rates[i][j],
                    layer_scale_init_value=layer_scale_init_value,
                    **dd,
                )
                for j in range(layers[i])
            ]
            stages.append(FecStage(downsample, blocks))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.out_norms = nn.ModuleList([TokenGroupNorm1(d, **dd) for d in embed_dims]) if feature_norms else None
        self.norm = TokenGroupNorm1(self.num_features, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        self.set_output_stride(output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        """Dilate for dense prediction (timm's ``output_stride``): the stages whose stride would exceed
        ``output_stride`` (8 or 16) stay at it, their clustering pools dilated
        (:meth:`ClusterPool.dilate`: same centres, weights and state-dict keys); ``feature_info``
        reductions follow. Inputs still need sides divisible by the undilated stride (32)."""
        strides = [4 * 2**i for i in range(len(self.feature_info))]
        current = self.feature_info[-1]["reduction"]
        if current != strides[-1]:
            raise ValueError(f"FEC is already dilated to output stride {current}")
        allowed = [s for s in strides[1:-1] if strides[-1] // s <= 4] + strides[-1:]  # a pool dilates by 2 or 4
        if output_stride not in allowed:
            raise ValueError(
                f"FEC supports output_stride {allowed} (the smaller ones dilate the clustering pools of the "
                f"deeper stages), got {output_stride}"
            )
        for i, stage in enumerate(self.stages):
            if strides[i] > output_stride:
                stage.downsample.dilate(strides[i] // output_stride)
        for info, stride in zip(self.feature_info, strides):
            info["reduction"] = min(stride, output_stride)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` calls this on every submodule first: say plainly that FEC (inside any model:
        timm, smp's ``tu-`` encoders, Detectron2) is not TorchScript code, rather than fail deep in a layer."""
        raise RuntimeError(
            f"{type(self).__name__} cannot be compiled with torch.jit.script: FEC's clustering ops are not "
            "TorchScript code. Use torch.compile or torch.export (both supported) instead"
        )

    def describe(self) -> str:
        """Short architecture summary used in error messages."""
        depths = [len(s.blocks) for s in self.stages]
        return f"depths {depths}, widths {self.embed_dims}, in_chans {self.in_chans}"

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Parameters AdamW should not decay: clustering alpha/beta and layer scales."""
        return {
            name
            for name, _ in self.named_parameters()
            if name.endswith(("sim_alpha", "sim_beta", "layer_scale_1", "layer_scale_2"))
        }

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"FEC supports global_pool 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        dd = get_device_dtype(self)
        head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head = head.train(self.training)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs ``[B, C_i, H/r_i, W/r_i]`` (channels_last views; ``r_i`` is ``feature_info``'s
        reduction: ``4 * 2**i``, at most ``output_stride``) for the stages in ``indices``.

        Each passes its output norm when the model has them (``feature_norms``); otherwise, with
        ``norm=True``, the last stage's output passes the final norm, as in ``forward_features``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"FEC returns NCHW features, output_fmt={output_fmt!r} is not supported")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        check_input(x, self.in_chans, self.reduction)
        x = self.stem(x)
        last = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(self.feature_map(i, x, norm and i == last))
        if intermediates_only:
            return intermediates
        if i == last:
            x = to_nchw(self.norm(to_nhwc(x)))
        return x, intermediates

    def feature_map(self, index: int, x: torch.Tensor, final_norm: bool = False) -> torch.Tensor:
        """Stage ``index``'s output ``x`` ``[B, C, h, w]`` as a returned feature map (NCHW): through its output
        norm when the model has them, else through the final norm with ``final_norm``, else as it is."""
        if self.out_norms is not None:
            return to_nchw(self.out_norms[index](to_nhwc(x)))
        return to_nchw(self.norm(to_nhwc(x))) if final_norm else x

    def prune_intermediate_layers(
        self,
        indices: Union[int, List[int]] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last one in ``indices`` (and the norm and head if asked)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if self.out_norms is not None:
            self.out_norms = self.out_norms[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> normalised last-stage map ``[B, C, H/s, W/s]`` (``s``: the output
        stride; a channels_last view: the stages run on channels-last maps)."""
        check_input(x, self.in_chans, self.reduction)
        return to_nchw(self.norm(to_nhwc(self.stages(self.stem(x)))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[B, C, h, w]`` -> logits ``[B, num_classes]`` (or pooled features with ``pre_logits``)."""
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def count_parameters(model: nn.Module) -> int:
    """Parameters as the official code counts them: trainable ones plus the frozen ``conv_f`` buffers."""
    frozen = sum(b.numel() for m in model.modules() if isinstance(m, FrozenConv1x1) for b in m.buffers())
    return sum(p.numel() for p in model.parameters()) + frozen


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: FEC) -> Dict[str, torch.Tensor]:
    """timm's pretrained filter: an official FEC checkpoint (or one of ours, any shape that
    :func:`~fec_backbone.checkpoint.read_fec_weights` takes) as this model's state dict.

    The classifier is kept when its size fits; a classifier of another size is dropped when timm will
    reset it (``num_classes`` differs from the pretrained config's), otherwise
    :class:`~fec_backbone.checkpoint.CheckpointError` says to pass the checkpoint's ``num_classes``.
    """
    state_dict = read_fec_weights(state_dict)
    cfg_classes = (getattr(model, "pretrained_cfg", None) or {}).get("num_classes")
    head = state_dict.get("head.weight")
    if (isinstance(model, FEC) and head is not None and model.num_classes > 0 and cfg_classes == model.num_classes
            and head.shape[0] != model.num_classes):
        raise CheckpointError(
            f"the checkpoint's classifier has {head.shape[0]} classes but the model {model.num_classes}: create the "
            f"model with num_classes={head.shape[0]}, or with pretrained_cfg_overlay=dict(..., num_classes="
            f"{head.shape[0]}) and your num_classes to start a new classifier"
        )
    return fit_state_dict(state_dict, model)


def _create_fec(variant: str, pretrained: bool = False, **kwargs: Any) -> FEC:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    if kwargs.get("features_only") and kwargs.get("feature_cls") == "fx" and kwargs.get("feature_norms"):
        raise ValueError("feature_cls='fx' takes the stage outputs (stages.<i>), which the output norms of "
                         "feature_norms=True do not reach; use the default feature_cls")
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if pretrained and overlay.get("file") and overlay.get("state_dict") is None:
        # Read the file once, through the package's safe reader (EMA weights first, any checkpoint shape);
        # timm then takes the weights through its state_dict route.
        overlay["state_dict"] = read_fec_weights(overlay.pop("file"), use_ema=overlay.pop("use_ema", True))
    if overlay:
        kwargs["pretrained_cfg_overlay"] = overlay
    return build_model_with_cfg(
        FEC,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,  # the official figures' evaluation crop (timm's default; see docs/classification.md)
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.proj",
        "classifier": "head",
        "license": "mit",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "fec_small.in1k": _cfg(),
        "fec_base.in1k": _cfg(),
        "fec_large.in1k": _cfg(),
    }
)

@register_model
def fec_small(pretrained: bool = False, **kwargs: Any) -> FEC:
    """FEC-Small: 5.7M parameters, 1.4 GFLOPs at 224 px."""
    return _create_fec("fec_small", pretrained, **dict(VARIANTS["fec_small"], **kwargs))


@register_model
def fec_base(pretrained: bool = False, **kwargs: Any) -> FEC:
    """FEC-Base: 15.1M parameters, 3.4 GFLOPs at 224 px."""
    return _create_fec("fec_base", pretrained, **dict(VARIANTS["fec_base"], **kwargs))


@register_model
def fec_large(pretrained: bool = False, **kwargs: Any) -> FEC:
    """FEC-Large: 29.7M parameters, 6.5 GFLOPs at 224 px."""
    return _create_fec("fec_large", pretrained, **dict(VARIANTS["fec_large"], **kwargs))
