"""Oracle: a plain re-statement of the official FEC formulation (guikunchen/FEC ``models/fec.py``).

Same module layout and state-dict keys as the official code (``patch_embed``, ``network.<i>``,
``conv_f`` a trainable conv), the same data flow, and the dense formulation the official code uses:
a one-hot ``[B, M, N]`` mask and a ``[B, M, N, D]`` dispatch product. Written for clarity, not speed;
tests compare ``fec_backbone`` against it, the benchmark measures against it.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def split_regions(x: torch.Tensor, fh: int, fw: int) -> torch.Tensor:
    """``[B, C, fh*h, fw*w]`` -> ``[B*fh*fw, C, h, w]``, region-major."""
    b, c, hh, ww = x.shape
    x = x.view(b, c, fh, hh // fh, fw, ww // fw).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * fh * fw, c, hh // fh, ww // fw)


def merge_regions(x: torch.Tensor, fh: int, fw: int) -> torch.Tensor:
    g, c, h, w = x.shape
    x = x.view(g // (fh * fw), fh, fw, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(g // (fh * fw), c, fh * h, fw * w)


def cos_sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a ``[B, M, D]``, b ``[B, N, D]`` -> ``[B, M, N]``."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-2, -1)


def dense_cluster(
    x: torch.Tensor, value: torch.Tensor, grid: Tuple[int, int], alpha=None, beta=None, dispatch: bool = True
) -> torch.Tensor:
    """The official clustering step on maps ``x``/``value`` ``[B, C, h, w]``."""
    b, c, h, w = x.shape
    centers = F.adaptive_avg_pool2d(x, grid).reshape(b, c, -1).permute(0, 2, 1)  # [B, M, C]
    value_centers = F.adaptive_avg_pool2d(value, grid).reshape(b, value.shape[1], -1).permute(0, 2, 1)
    points = x.reshape(b, c, -1).permute(0, 2, 1)  # [B, N, C]
    sim = cos_sim(centers, points)
    if alpha is not None:
        sim = torch.sigmoid(beta + alpha * sim)
    _, idx = sim.max(dim=1, keepdim=True)
    mask = torch.zeros_like(sim).scatter_(1, idx, 1.0)  # [B, M, N] one-hot over centres
    v = value.reshape(b, value.shape[1], -1).permute(0, 2, 1)  # [B, N, D]
    out = (mask @ v + value_centers) / (mask.sum(dim=-1, keepdim=True) + 1.0)  # [B, M, D]
    if not dispatch:
        return out
    sim = sim * mask
    return (out.unsqueeze(2) * sim.unsqueeze(-1)).sum(dim=1)  # [B, N, D] via [B, M, N, D]


class RefCluster(nn.Module):
    def __init__(self, dim, heads, head_dim, proposals, folds):
        super().__init__()
        self.heads, self.proposals, self.folds = heads, proposals, folds
        self.f = nn.Conv2d(dim, heads * head_dim, 1)
        self.proj = nn.Conv2d(heads * head_dim, dim, 1)
        self.v = nn.Conv2d(dim, heads * head_dim, 1)
        self.sim_alpha = nn.Parameter(torch.ones(1))
        self.sim_beta = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, _, hh, ww = x.shape
        value, x = self.v(x), self.f(x)
        x = x.reshape(b * self.heads, -1, hh, ww)
        value = value.reshape(b * self.heads, -1, hh, ww)
        fh, fw = self.folds
        if fh > 1 and fw > 1:
            x, value = split_regions(x, fh, fw), split_regions(value, fh, fw)
        g, d, h, w = value.shape
        out = dense_cluster(x, value, self.proposals, self.sim_alpha, self.sim_beta)
        out = out.permute(0, 2, 1).reshape(g, d, h, w)
        if fh > 1 and fw > 1:
            out = merge_regions(out, fh, fw)
        return self.proj(out.reshape(b, -1, hh, ww))


class RefMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)


class RefBlock(nn.Module):
    def __init__(self, dim, heads, head_dim, mlp_ratio, proposals, folds):
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.token_mixer = RefCluster(dim, heads, head_dim, proposals, folds)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = RefMlp(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(1e-5 * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(1e-5 * torch.ones(dim))

    def forward(self, x):
        x = x + self.layer_scale_1.unsqueeze(-1).unsqueeze(-1) * self.token_mixer(self.norm1(x))
        return x + self.layer_scale_2.unsqueeze(-1).unsqueeze(-1) * self.mlp(self.norm2(x))


class RefPool(nn.Module):
    def __init__(self, cin, cout, folds):
        super().__init__()
        self.folds = folds
        self.norm2 = nn.GroupNorm(1, cout)
        self.conv_f = nn.Conv2d(cin, cout, 1)
        self.conv_v = nn.Conv2d(cin, cout, 1)
        self.conv_skip = nn.Conv2d(cin, cout, 3, stride=2, padding=1)

    def forward(self, x):
        identity, value, x = self.conv_skip(x), self.conv_v(x), self.conv_f(x)
        fh, fw = self.folds
        if fh > 1 and fw > 1:
            x, value = split_regions(x, fh, fw), split_regions(value, fh, fw)
        g, d, h, w = value.shape
        out = dense_cluster(x, value, (h // 2, w // 2), dispatch=False)
        out = out.permute(0, 2, 1).reshape(g, d, h // 2, w // 2)
        if fh > 1 and fw > 1:
            out = merge_regions(out, fh, fw)
        return identity + self.norm2(out)


class PatchEmbed(nn.Module):
    def __init__(self, cin, dim):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, 4, 4)

    def forward(self, x):
        return self.proj(x)


class RefFEC(nn.Module):
    """The official FEC classifier (``fork_feat=False``), state-dict compatible with its checkpoints; with
    ``fork_feat=True`` the official dense-prediction backbone (``fec_*_seg``/``fec_*_det``): no final norm
    and classifier, and the four stage outputs returned each through its own single-group norm
    ``norm0``/``norm2``/``norm4``/``norm6`` (named by the ``network`` index of the stage)."""

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 5, 2),
        embed_dims: Sequence[int] = (32, 64, 196, 320),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        heads: Sequence[int] = (4, 4, 8, 8),
        head_dim: int = 24,
        proposals: Sequence[int] = (4, 4, 2, 2),
        folds: Sequence[int] = (1, 1, 1, 1),
        num_classes: int = 1000,
        fork_feat: bool = False,
    ):
        super().__init__()
        self.fork_feat = fork_feat
        self.patch_embed = PatchEmbed(5, embed_dims[0])
        network: List[nn.Module] = []
        for i, n in enumerate(layers):
            network.append(nn.Sequential(*[
                RefBlock(embed_dims[i], heads[i], head_dim, mlp_ratios[i], (proposals[i],) * 2, (folds[i],) * 2)
                for _ in range(n)
            ]))
            if i < len(layers) - 1:
                network.append(RefPool(embed_dims[i], embed_dims[i + 1], (folds[i + 1],) * 2))
        self.network = nn.ModuleList(network)
        if fork_feat:
            for i, dim in enumerate(embed_dims):
                self.add_module(f"norm{2 * i}", nn.GroupNorm(1, dim))
        else:
            self.norm = nn.GroupNorm(1, embed_dims[-1])
            self.head = nn.Linear(embed_dims[-1], num_classes)

    def embed(self, x):
        b, _, h, w = x.shape
        rows = torch.arange(0, h, step=1) / (h - 1.0)
        cols = torch.arange(0, w, step=1) / (w - 1.0)
        pos = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).float().to(x.device) - 0.5
        return self.patch_embed(torch.cat([x, pos.permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1)], dim=1))

    def forward_features(self, x):
        x = self.embed(x)
        for stage in self.network:
            x = stage(x)
        return self.norm(x)

    def forward(self, x):
        if not self.fork_feat:
            return self.head(self.forward_features(x).mean([-2, -1]))
        x, outs = self.embed(x), []
        for i, stage in enumerate(self.network):
            x = stage(x)
            if i % 2 == 0:
                outs.append(getattr(self, f"norm{i}")(x))
        return outs


REF_ARGS = {
    "fec_small": dict(layers=(3, 4, 5, 2), embed_dims=(32, 64, 196, 320), heads=(4, 4, 8, 8), head_dim=24),
    "fec_base": dict(layers=(2, 2, 6, 2), embed_dims=(64, 128, 320, 512), heads=(4, 4, 8, 8), head_dim=32),
    "fec_large": dict(layers=(4, 4, 12, 4), embed_dims=(64, 128, 320, 512), heads=(6, 6, 12, 12), head_dim=32),
}


def reference_model(name: str = "fec_small", **kwargs) -> RefFEC:
    return RefFEC(**dict(REF_ARGS[name], **kwargs))
