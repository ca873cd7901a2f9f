"""Recording which points went to which cluster, in every clustering layer of a forward pass.

Works on any module that contains FEC layers: a timm FEC, or the backbone inside a Detectron2 or smp
model.

    with record_clusters(model) as records:
        model(images)
    for r in records:
        r.name, r.kind, r.assignment.shape   # block: [B, heads, H, W]; pool: [B, H, W]

Block assignments hold a cluster id per head and pixel of the block's input map (ids are unique across
fold regions: ``region * M + centre``). Pool assignments hold, for each pixel of the pool's input map,
the flat index of the output pixel (on the half-resolution map) that it was pooled into, so stages
chain: a stage-0 point ``p`` goes to ``pool1[p]`` on the stage-1 map, then to ``pool2[pool1[p]]``, ...
A dilated pool (see :meth:`ClusterPool.dilate`) keeps every pixel in place; its record (kind
``dilated_pool``) holds the cell of its centre grid each pixel voted for, and chaining skips it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, List, Tuple

import torch
import torch.nn as nn

from .fec import ClusterMixer, ClusterPool

__all__ = ["ClusterRecord", "record_clusters", "chain_to_input", "clustering_layers"]


@dataclass
class ClusterRecord:
    """The assignments of one clustering layer for one forward pass."""

    name: str
    kind: str  # "block", "pool", or "dilated_pool" (a pool that keeps the resolution, for dense prediction)
    assignment: torch.Tensor  # block: [B, heads, H, W] cluster ids; pool: [B, H, W] centre-grid indices
    num_clusters: int  # block: clusters per head over the whole map; pool: cells of the centre grid


def clustering_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """All FEC clustering layers (blocks' token mixers and pools) of ``model``, in forward order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (ClusterMixer, ClusterPool))]


def _block_map(layer: ClusterMixer, index: torch.Tensor, size: Tuple[int, int]) -> Tuple[torch.Tensor, int]:
    fh, fw = layer.folds
    h, w = size
    m = layer.proposals[0] * layer.proposals[1]
    ids = index.view(-1, fh * fw, h * w) + torch.arange(fh * fw, device=index.device).view(1, -1, 1) * m
    ids = ids.view(-1, layer.heads, fh, fw, h, w).permute(0, 1, 2, 4, 3, 5)
    return ids.reshape(-1, layer.heads, fh * h, fw * w), fh * fw * m


def _pool_map(layer: ClusterPool, index: torch.Tensor, size: Tuple[int, int]) -> Tuple[torch.Tensor, int]:
    fh, fw = layer.folds
    h, w = size
    gh, gw = h // layer.rate, w // layer.rate
    rows = torch.arange(fh, device=index.device).view(1, fh, 1, 1) * gh + (index.view(-1, fh, fw, h * w) // gw)
    cols = torch.arange(fw, device=index.device).view(1, 1, fw, 1) * gw + (index.view(-1, fh, fw, h * w) % gw)
    flat = (rows * (fw * gw) + cols).view(-1, fh, fw, h, w).permute(0, 1, 3, 2, 4)
    return flat.reshape(-1, fh * h, fw * w), fh * gh * fw * gw


@contextlib.contextmanager
def record_clusters(model: nn.Module) -> Iterator[List[ClusterRecord]]:
    """Collect a :class:`ClusterRecord` per clustering layer for every forward pass inside the block."""
    records: List[ClusterRecord] = []
    layers = clustering_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} contains no FEC clustering layers to record")
    names = {id(m): n for n, m in layers}

    def record(layer: nn.Module, index: torch.Tensor, size: Tuple[int, int]) -> None:
        index = index.detach()
        if isinstance(layer, ClusterMixer):
            assignment, count = _block_map(layer, index, size)
            records.append(ClusterRecord(names[id(layer)], "block", assignment, count))
        else:
            assignment, count = _pool_map(layer, index, size)
            kind = "dilated_pool" if layer.dilated else "pool"
            records.append(ClusterRecord(names[id(layer)], kind, assignment, count))

    for _, layer in layers:
        layer.recorder = record
    try:
        yield records
    finally:
        for _, layer in layers:
            layer.recorder = None


def chain_to_input(records: List[ClusterRecord]) -> List[torch.Tensor]:
    """For each stage, map every stage-0 point (stride-4 grid) to its point on that stage's map.

    Returns one ``[B, H0, W0]`` tensor per stage (stage 0 is the identity), built by following the
    pools' assignments, as the reference visualisation chains them.
    """
    pools = [r for r in records if r.kind == "pool"]
    blocks = [r for r in records if r.kind == "block"]
    if not blocks:
        raise ValueError("no block records: run a forward pass inside record_clusters first")
    b, _, h0, w0 = blocks[0].assignment.shape
    current = torch.arange(h0 * w0, device=blocks[0].assignment.device).view(1, h0, w0).expand(b, h0, w0)
    chains = [current]
    for pool in pools:
        current = torch.gather(pool.assignment.flatten(1), 1, current.flatten(1)).view(b, h0, w0)
        chains.append(current)
    return chains
