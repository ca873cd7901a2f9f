"""Channels-last layouts of FEC's maps: fold regions and the centres proposed in them.

A block's maps are ``[B, H, W, C]``. Clustering runs per head and per fold region (a region clusters
independently of the others), so the maps are split into groups ``[G, h, w, C]`` (:func:`split_regions`)
and merged back (:func:`merge_regions`); each group's centres are the adaptive average pool of its map
on a ``proposals`` grid (:func:`block_centres`).
"""
from __future__ import annotations

import functools
from typing import Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

from .norm import CUDA_LAYER_NORM_MIN_BATCH

__all__ = [
    "IntOrPair", "adaptive_mean_nhwc", "block_centres", "centres_by_products", "linear_nhwc", "merge_regions", "pair",
    "pool_centres", "region_centres", "split_regions", "to_nchw", "to_nhwc",
]

IntOrPair = Union[int, Tuple[int, int]]


def pair(v: IntOrPair) -> Tuple[int, int]:
    """``(rows, cols)`` as ints. Not timm's ``to_2tuple``: that keeps a list (as yacs configs give) a
    list, and the layouts are compared and hashed as tuples."""
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, W, C]`` -> ``[B, C, H, W]`` view (channels_last memory, no copy)."""
    return x.permute(0, 3, 1, 2)


def to_nhwc(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> contiguous ``[B, H, W, C]`` (free for channels_last memory)."""
    return x.permute(0, 2, 3, 1).contiguous()


def linear_nhwc(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """A 1x1 convolution (weight ``[O, C, 1, 1]``) applied to a channels-last map ``[..., C]``."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


def _check_folds(h: int, w: int, folds: Tuple[int, int]) -> None:
    fh, fw = folds
    if h % fh or w % fw:
        raise ValueError(
            f"a {h}x{w} feature map cannot be split into {fh}x{fw} clustering regions: its height must "
            f"be divisible by {fh} and its width by {fw}; change the input size or the model's `folds`"
        )


@register_notrace_function
def split_regions(x: torch.Tensor, folds: Tuple[int, int]) -> torch.Tensor:
    """``[B, H, W, S, E, C]`` (S tensors of E heads) -> ``[S, B*E*fh*fw, H/fh, W/fw, C]``.

    In einops notation: ``b (fh h) (fw w) s e c -> s (b e fh fw) h w c``: a group is one head of one fold
    region of one image, ordered (batch, head, region row, region column) as the reference's rearranges;
    one copy.
    """
    b, h, w, s, e, c = x.shape
    fh, fw = folds
    _check_folds(h, w, folds)
    x = x.view(b, fh, h // fh, fw, w // fw, s, e, c).permute(5, 0, 6, 1, 3, 2, 4, 7)
    return x.reshape(s, b * e * fh * fw, h // fh, w // fw, c).contiguous()


@register_notrace_function
def merge_regions(x: torch.Tensor, batch: int, folds: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`split_regions` for one tensor: ``[B*E*fh*fw, h, w, C]`` -> ``[B, fh*h, fw*w, E*C]``.

    In einops notation: ``(b e fh fw) h w c -> b (fh h) (fw w) (e c)``.
    """
    g, h, w, c = x.shape
    fh, fw = folds
    e = g // (batch * fh * fw)
    x = x.view(batch, e, fh, fw, h, w, c).permute(0, 2, 4, 3, 5, 1, 6)
    return x.reshape(batch, fh * h, fw * w, e * c)


@register_notrace_function
def region_centres(fv: torch.Tensor, heads: int, proposals: Tuple[int, int], folds: Tuple[int, int]) -> torch.Tensor:
    """Centres of every head and fold region straight from the fused map, no split copy of the map.

    ``fv`` ``[B, H, W, 2*heads*C]`` (f and v channels) -> ``[2, B*heads*fh*fw, ph*pw, C]`` in the group
    order of :func:`split_regions`. One adaptive average pool over the whole map with grid
    ``(fh*ph, fw*pw)`` gives exactly each region's own ``(ph, pw)`` grid, because a region's bins
    ``[floor(i*h/ph), ceil((i+1)*h/ph))`` are the whole map's bins shifted by the region's offset. The
    pool is :func:`adaptive_mean_nhwc`, whose backward keeps no copy of ``fv``.
    """
    b, h, w, _ = fv.shape
    (ph, pw), (fh, fw) = proposals, folds
    _check_folds(h, w, folds)
    pooled = adaptive_mean_nhwc(fv, (fh * ph, fw * pw))  # [B, fh*ph, fw*pw, 2*E*C]
    # b (fh ph) (fw pw) (s e c) -> s (b e fh fw) (ph pw) c
    pooled = pooled.view(b, fh, ph, fw, pw, 2, heads, -1).permute(5, 0, 6, 1, 3, 2, 4, 7)
    return pooled.reshape(2, b * heads * fh * fw, ph * pw, pooled.shape[-1])


@register_notrace_function
def block_centres(
    fv: torch.Tensor, split: torch.Tensor, heads: int, proposals: Tuple[int, int], folds: Tuple[int, int]
) -> torch.Tensor:
    """A block's centres ``[2, G, ph*pw, C]`` from its fused map ``fv`` ``[B, H, W, 2*heads*C]`` by
    :func:`region_centres`, or from the split copy ``split`` ``[2, G, h, w, C]`` by adaptive average
    pooling, as :func:`centres_by_products` decides."""
    if centres_by_products(fv):
        return region_centres(fv, heads, proposals, folds)
    _, g, h, w, c = split.shape
    return pool_centres(split.view(2 * g, h, w, c), proposals).view(2, g, -1, c)


def centres_by_products(fv: torch.Tensor) -> bool:
    """Whether a block pools its centres from its fused map ``fv`` with :func:`region_centres` (bin-matrix
    products) rather than with ``F.adaptive_avg_pool2d`` over its split copy.

    Products on CUDA below the norm's batch threshold (:data:`~fec_backbone.norm.CUDA_LAYER_NORM_MIN_BATCH`),
    where the channels-last pool kernel is slow for a small grid over a large map; the pool elsewhere,
    which on the CPU is faster too and keeps fvcore's FLOP count equal to the official code's (measured:
    ``benchmarks/results/README.md``). The pool reads the split copy because its backward keeps its
    input, which the rest of the block keeps anyway; the fused map is then freed."""
    return fv.is_cuda and fv.shape[0] < CUDA_LAYER_NORM_MIN_BATCH


def _bin_members(size: int, bins: int, device: torch.device) -> torch.Tensor:
    """``[bins, size]`` 0/1 matrix: row ``i`` marks adaptive pooling's bin ``[floor(i*size/bins), ceil((i+1)*size/bins))``."""
    i, pos = torch.arange(bins, device=device).unsqueeze(1), torch.arange(size, device=device)
    return ((pos >= i * size // bins) & (pos < ((i + 1) * size + bins - 1) // bins)).float()


def _bin_matrices(size: Tuple[int, int], grid: Tuple[int, int], device: torch.device,
                  dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row and column bin matrices (``[gh, H]``, ``[gw, W]`` in ``dtype``) and the bin sizes ``[gh, gw, 1]``."""
    rows, cols = _bin_members(size[0], grid[0], device), _bin_members(size[1], grid[1], device)
    sizes = rows.sum(1).view(-1, 1, 1) * cols.sum(1).view(1, -1, 1)
    return rows.to(dtype), cols.to(dtype), sizes


@functools.lru_cache(maxsize=256)
def _cached_bin_matrices(size: Tuple[int, int], grid: Tuple[int, int], device: torch.device,
                         dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_bin_matrices`, built once per shape: building them is many small ops, which on a GPU at a
    small batch cost the host more than the two products cost the device. Built outside inference mode,
    so that a first call under ``torch.inference_mode`` does not give later training steps inference
    tensors."""
    with torch.inference_mode(False), torch.no_grad():
        return _bin_matrices(size, grid, device, dtype)


def adaptive_mean_nhwc(x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` of a channels-last map as two matrix products with 0/1 bin matrices:
    ``[B, H, W, C]`` -> ``[B, gh, gw, C]``. The sums are divided by the bin sizes afterwards, so low
    precision rounds no 1/size weight, and autograd keeps only the bin matrices, not ``x``."""
    b, h, w, c = x.shape
    build = _bin_matrices if torch.compiler.is_compiling() else _cached_bin_matrices
    rows, cols, sizes = build((h, w), tuple(grid), x.device, x.dtype)
    sums = torch.matmul(cols, x.reshape(b * h, w, c))  # [B*H, gw, C]
    sums = torch.matmul(rows, sums.reshape(b, h, grid[1] * c)).view(b, grid[0], grid[1], c)
    return (sums / sizes).to(x.dtype)


def pool_centres(maps: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Adaptive-average-pooled centres of ``[G, h, w, C]`` maps -> ``[G, gh*gw, C]``. Under ONNX export the
    pool is :func:`adaptive_mean_nhwc` (the same bins): the exporter writes ``adaptive_avg_pool2d`` as an
    ``AveragePool`` with the example input's kernel, which gives other grids at other input sizes."""
    if torch.onnx.is_in_onnx_export():
        return adaptive_mean_nhwc(maps, grid).flatten(1, 2)
    return F.adaptive_avg_pool2d(to_nchw(maps), grid).flatten(2).transpose(1, 2)
