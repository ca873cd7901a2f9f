"""Fused Triton kernels for the clustering step, with autograd (the ``"triton"`` backend of
:mod:`fec_backbone.cluster_ops`).

The ``[G, M, N]`` similarity matrix, the one-hot mask and the normalised features never reach memory.

Clustering blocks with few centres (``M * max(C, D)`` up to 4096 after padding to powers of two, e.g.
100 centres of 24 channels): one program owns one group ``g`` (a head of a region),
streams its ``N`` points in tiles and keeps the ``M`` centres and cluster sums in registers:

* ``_assign_kernel``: cosine similarity to the centres, sigmoid, argmax, and the cluster sums and
  member counts -> centre index and chosen cosine per point ``[G, N]``, clusters ``[G, M, D]``,
  counts ``[G, M]``.
* ``_gather_kernel``: ``out[g, n] = scale[g, n] * table[g, index[g, n]]``; the dispatch of the forward
  pass (scale = the sigmoid similarity) and the value gradient of the backward pass (scale = 1).
* ``_mix_backward_kernel``: gradients of points, centres, alpha and beta and of the clusters.

Clustering pools (a centre per 2x2 pixels: hundreds to thousands of centres) and blocks with more
centres: ``_argmax_kernel`` tiles points and centres and keeps a running best per point, so only the
index ``[G, N]`` is written; aggregation and dispatch are the plain scatter/gather ops, and for blocks
the chosen similarity is recomputed per point (``O(N*C)``), which gives the same gradients.

Arithmetic runs in float32 (float64 for float64 inputs), whatever the storage dtype. Every program
writes only its own group, so results are deterministic. The ops are ``torch.library`` custom ops, so
``torch.compile(fullgraph=True)`` keeps them whole. Without a GPU they run under Triton's interpreter
(``TRITON_INTERPRET=1`` in the environment before triton is first imported, which importing timm
does); the tests check them that way against the plain path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl

from . import cluster_ops
from .cluster_ops import aggregate, chosen_similarity, dispatch, interpreting

__all__ = ["cluster_mix", "cluster_pool", "KernelConfig", "mix_configs", "pool_configs"]

_EPS = 1e-12  # F.normalize's clamp on the norm


@triton.jit
def _unit_rows(x, eps):
    """Rows of ``x`` scaled to unit L2 norm (norm clamped at ``eps``), and the clamped norms."""
    norm = tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), eps)
    return x / norm[:, None], norm


@triton.jit
def _tile(g, rows, n_rows, cols, n_cols):
    """Offsets and mask of a ``rows x cols`` tile of group ``g`` in a contiguous ``[G, n_rows, n_cols]``
    tensor."""
    offs = g * n_rows * n_cols + rows[:, None] * n_cols + cols[None, :]
    return offs, (rows[:, None] < n_rows) & (cols[None, :] < n_cols)


@triton.jit
def _row_norms(ptr, g, rows, n_rows, C, eps, BR: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr):
    """L2 norms (clamped at ``eps``) of ``BR`` rows of a contiguous ``[G, n_rows, C]`` tensor, read
    ``BK`` channels at a time."""
    squares = tl.zeros((BR,), dtype=ACC)
    for k in range(0, C, BK):
        offs, mask = _tile(g, rows, n_rows, k + tl.arange(0, BK), C)
        x = tl.load(ptr + offs, mask=mask, other=0.0).to(ACC)
        squares += tl.sum(x * x, axis=1)
    return tl.maximum(tl.sqrt(squares), eps)


@triton.jit
def _argmax_kernel(
    points_ptr, centers_ptr, alpha_ptr, beta_ptr, index_ptr,
    N, M, C, eps,
    SIGMOID: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr,
):
    g = tl.program_id(0).to(tl.int64)
    rows_n = tl.program_id(1) * BN + tl.arange(0, BN)
    pts_norm = _row_norms(points_ptr, g, rows_n, N, C, eps, BN, BK, ACC)
    if SIGMOID:
        alpha = tl.load(alpha_ptr).to(ACC)
        beta = tl.load(beta_ptr).to(ACC)
    best = tl.full((BN,), float("-inf"), dtype=ACC)
    best_idx = tl.zeros((BN,), dtype=tl.int32)
    for start in range(0, M, BM):
        rows_m = start + tl.arange(0, BM)
        ctr_norm = _row_norms(centers_ptr, g, rows_m, M, C, eps, BM, BK, ACC)
        score = tl.zeros((BN, BM), dtype=ACC)
        for k in range(0, C, BK):  # channels in chunks: the tiles stay BN x BK and BM x BK for any C
            cols = k + tl.arange(0, BK)
            nk_offs, nk_mask = _tile(g, rows_n, N, cols, C)
            mk_offs, mk_mask = _tile(g, rows_m, M, cols, C)
            pts = tl.load(points_ptr + nk_offs, mask=nk_mask, other=0.0).to(ACC) / pts_norm[:, None]
            ctrs = tl.load(centers_ptr + mk_offs, mask=mk_mask, other=0.0).to(ACC) / ctr_norm[:, None]
            score += tl.dot(pts, tl.trans(ctrs), input_precision="ieee", out_dtype=ACC)
        if SIGMOID:
            score = tl.sigmoid(beta + alpha * score)
        score = tl.where(rows_m[None, :] < M, score, float("-inf"))
        tile_best = tl.max(score, axis=1)
        tile_idx = tl.argmax(score, axis=1) + start
        better = tile_best > best  # strict: on a tie the earlier centre stays, as torch's max/argmax
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, tile_idx, best_idx)
    tl.store(index_ptr + g * N + rows_n, best_idx.to(tl.int64), mask=rows_n < N)


@triton.jit
def _assign_kernel(
    points_ptr, centers_ptr, values_ptr, center_values_ptr, alpha_ptr, beta_ptr,
    index_ptr, cos_ptr, clusters_ptr, counts_ptr,
    N, M, C, D, eps,
    BN: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr, ACC: tl.constexpr,
):
    g = tl.program_id(0).to(tl.int64)
    rows_m = tl.arange(0, BM)
    cols_c = tl.arange(0, BC)
    cols_d = tl.arange(0, BD)
    valid_m = rows_m < M
    mc_offs, mc_mask = _tile(g, rows_m, M, cols_c, C)
    unit_centers, _center_norm = _unit_rows(tl.load(centers_ptr + mc_offs, mask=mc_mask, other=0.0).to(ACC), eps)
    alpha = tl.load(alpha_ptr).to(ACC)
    beta = tl.load(beta_ptr).to(ACC)
    sums = tl.zeros((BM, BD), dtype=ACC)
    counts = tl.zeros((BM,), dtype=ACC)
    for start in range(0, N, BN):
        rows_n = start + tl.arange(0, BN)
        valid_n = rows_n < N
        nc_offs, nc_mask = _tile(g, rows_n, N, cols_c, C)
        unit_pts, _pts_norm = _unit_rows(tl.load(points_ptr + nc_offs, mask=nc_mask, other=0.0).to(ACC), eps)
        cos = tl.dot(unit_pts, tl.trans(unit_centers), input_precision="ieee", out_dtype=ACC)  # [BN, BM]
        score = tl.where(valid_m[None, :], tl.sigmoid(beta + alpha * cos), float("-inf"))
        idx = tl.argmax(score, axis=1)
        chosen = rows_m[None, :] == idx[:, None]
        best_cos = tl.sum(tl.where(chosen, cos, 0.0), axis=1)
        tl.store(index_ptr + g * N + rows_n, idx.to(tl.int64), mask=valid_n)
        tl.store(cos_ptr + g * N + rows_n, best_cos, mask=valid_n)
        onehot = (chosen & valid_n[:, None]).to(ACC)
        nd_offs, nd_mask = _tile(g, rows_n, N, cols_d, D)
        vals = tl.load(values_ptr + nd_offs, mask=nd_mask, other=0.0).to(ACC)
        sums += tl.dot(tl.trans(onehot), vals, input_precision="ieee", out_dtype=ACC)
        counts += tl.sum(onehot, axis=0)
    md_offs, md_mask = _tile(g, rows_m, M, cols_d, D)
    own = tl.load(center_values_ptr + md_offs, mask=md_mask, other=0.0).to(ACC)
    tl.store(clusters_ptr + md_offs, (sums + own) / (counts[:, None] + 1.0), mask=md_mask)
    tl.store(counts_ptr + g * M + rows_m, counts, mask=valid_m)


@triton.jit
def _gather_kernel(
    table_ptr, index_ptr, cos_ptr, alpha_ptr, beta_ptr, out_ptr,
    N, M, D,
    SCALE: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, ACC: tl.constexpr,
):
    g = tl.program_id(0).to(tl.int64)
    rows_n = tl.program_id(1) * BN + tl.arange(0, BN)
    cols_d = tl.arange(0, BD)
    valid_n = rows_n < N
    nd_offs, nd_mask = _tile(g, rows_n, N, cols_d, D)
    idx = tl.load(index_ptr + g * N + rows_n, mask=valid_n, other=0)
    picked = tl.load(table_ptr + g * M * D + idx[:, None] * D + cols_d[None, :], mask=nd_mask, other=0.0).to(ACC)
    if SCALE:
        alpha = tl.load(alpha_ptr).to(ACC)
        beta = tl.load(beta_ptr).to(ACC)
        cos = tl.load(cos_ptr + g * N + rows_n, mask=valid_n, other=0.0).to(ACC)
        picked = picked * tl.sigmoid(beta + alpha * cos)[:, None]
    tl.store(out_ptr + nd_offs, picked, mask=nd_mask)


@triton.jit
def _mix_backward_kernel(
    grad_ptr, points_ptr, centers_ptr, clusters_ptr, index_ptr, cos_ptr, counts_ptr, alpha_ptr, beta_ptr,
    grad_points_ptr, grad_centers_ptr, grad_clusters_ptr, grad_ab_ptr,
    N, M, C, D, eps,
    BN: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr, ACC: tl.constexpr,
):
    g = tl.program_id(0).to(tl.int64)
    rows_m = tl.arange(0, BM)
    cols_c = tl.arange(0, BC)
    cols_d = tl.arange(0, BD)
    valid_m = rows_m < M
    mc_offs, mc_mask = _tile(g, rows_m, M, cols_c, C)
    centers = tl.load(centers_ptr + mc_offs, mask=mc_mask, other=0.0).to(ACC)
    unit_centers, center_norm = _unit_rows(centers, eps)
    alpha = tl.load(alpha_ptr).to(ACC)
    beta = tl.load(beta_ptr).to(ACC)
    grad_clusters = tl.zeros((BM, BD), dtype=ACC)
    grad_unit_centers = tl.zeros((BM, BC), dtype=ACC)
    grad_cos_times_cos = tl.zeros((BM,), dtype=ACC)
    grad_alpha = tl.zeros((BN,), dtype=ACC)
    grad_beta = tl.zeros((BN,), dtype=ACC)
    for start in range(0, N, BN):
        rows_n = start + tl.arange(0, BN)
        valid_n = rows_n < N
        nd_offs, nd_mask = _tile(g, rows_n, N, cols_d, D)
        nc_offs, nc_mask = _tile(g, rows_n, N, cols_c, C)
        idx = tl.load(index_ptr + g * N + rows_n, mask=valid_n, other=0)
        cos = tl.load(cos_ptr + g * N + rows_n, mask=valid_n, other=0.0).to(ACC)
        sim = tl.sigmoid(beta + alpha * cos)
        onehot = ((rows_m[None, :] == idx[:, None]) & valid_n[:, None]).to(ACC)
        grad = tl.load(grad_ptr + nd_offs, mask=nd_mask, other=0.0).to(ACC)
        cluster = tl.load(clusters_ptr + g * M * D + idx[:, None] * D + cols_d[None, :], mask=nd_mask, other=0.0)
        grad_clusters += tl.dot(tl.trans(onehot), grad * sim[:, None], input_precision="ieee", out_dtype=ACC)
        grad_logit = tl.where(valid_n, tl.sum(grad * cluster, axis=1) * sim * (1.0 - sim), 0.0)
        grad_alpha += grad_logit * cos
        grad_beta += grad_logit
        grad_cos = grad_logit * alpha
        pts = tl.load(points_ptr + nc_offs, mask=nc_mask, other=0.0).to(ACC)
        unit_pts, pts_norm = _unit_rows(pts, eps)
        own_center = tl.dot(onehot, unit_centers, input_precision="ieee", out_dtype=ACC)
        grad_pts = grad_cos[:, None] * (own_center - cos[:, None] * unit_pts) / pts_norm[:, None]
        tl.store(grad_points_ptr + nc_offs, grad_pts, mask=nc_mask)
        grad_unit_centers += tl.dot(tl.trans(onehot), grad_cos[:, None] * unit_pts, input_precision="ieee", out_dtype=ACC)
        grad_cos_times_cos += tl.sum(onehot * (grad_cos * cos)[:, None], axis=0)
    grad_centers = (grad_unit_centers - grad_cos_times_cos[:, None] * unit_centers) / center_norm[:, None]
    tl.store(grad_centers_ptr + mc_offs, grad_centers, mask=mc_mask)
    counts = tl.load(counts_ptr + g * M + rows_m, mask=valid_m, other=0.0)
    md_offs, md_mask = _tile(g, rows_m, M, cols_d, D)
    tl.store(grad_clusters_ptr + md_offs, grad_clusters / (counts[:, None] + 1.0), mask=md_mask)
    tl.store(grad_ab_ptr + g * 2, tl.sum(grad_alpha, axis=0))
    tl.store(grad_ab_ptr + g * 2 + 1, tl.sum(grad_beta, axis=0))


def _block(n: int) -> int:
    """A power-of-two tile side of at least 16 (``tl.dot``'s minimum) that covers ``n``."""
    return max(16, triton.next_power_of_2(n))


def _acc(dtype: torch.dtype) -> Tuple[torch.dtype, "tl.dtype"]:
    """The accumulation dtype for a storage dtype, for torch and for Triton."""
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _check_device(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.device.type != "cuda" and not interpreting():
            raise RuntimeError(
                f"the 'triton' clustering backend runs on CUDA tensors, got a {t.device.type} tensor; "
                "use the 'torch' backend here (fec_backbone.cluster_ops.set_backend('torch')), or start Python "
                "with TRITON_INTERPRET=1 in the environment to run the kernels in Triton's (slow) interpreter"
            )


@dataclass(frozen=True)
class KernelConfig:
    """Everything Triton compiles one launch of a kernel for: its compile-time constants, the dtype of
    every pointer argument, and the launch options. The launch code builds its launches from these (via
    :func:`mix_configs` and :func:`pool_configs`), and ``tests/test_triton_compile.py`` compiles the
    same configurations for real GPU targets."""

    kernel: Any
    constexprs: Tuple[Tuple[str, Any], ...]
    pointers: Tuple[Tuple[str, torch.dtype], ...]
    num_warps: int = 4
    num_stages: int = 2

    def launch(self, grid: Tuple[int, ...], *args: Any) -> None:
        self.kernel[grid](*args, **dict(self.constexprs), num_warps=self.num_warps, num_stages=self.num_stages)


#: Channels per chunk in ``_argmax_kernel``: its dot tiles are ``BN x BK`` and ``BM x BK`` whatever C.
ARGMAX_CHUNK = 64
#: Points and centres per tile in ``_argmax_kernel`` and points per tile in ``_gather_kernel``.
ARGMAX_ROWS = 64
GATHER_ROWS = 64


def _tile_rows(m: int, c: int, d: int) -> int:
    """Points per tile of the fused kernels: keep the ``[BN, BM]``, ``[BN, BC]`` and ``[BN, BD]`` tiles
    at about 4k elements."""
    return max(16, min(128, 4096 // max(_block(m), _block(c), _block(d))))


def _pointers(kernel: Any, dtypes: Dict[str, torch.dtype]) -> Tuple[Tuple[str, torch.dtype], ...]:
    names = [a for a in kernel.arg_names if a.endswith("_ptr")]
    assert set(dtypes) == set(names), (kernel.__name__, sorted(set(dtypes) ^ set(names)))
    return tuple((a, dtypes[a]) for a in names)


def assign_config(m: int, c: int, d: int, dtype: torch.dtype) -> KernelConfig:
    """``_assign_kernel`` for ``m`` centres, ``c`` feature and ``d`` value channels stored as ``dtype``."""
    acc_torch, acc_tl = _acc(dtype)
    ptrs = dict.fromkeys(("points_ptr", "centers_ptr", "values_ptr", "center_values_ptr"), dtype)
    ptrs.update(dict.fromkeys(("alpha_ptr", "beta_ptr", "cos_ptr", "clusters_ptr", "counts_ptr"), acc_torch))
    ptrs["index_ptr"] = torch.int64
    consts = (("BN", _tile_rows(m, c, d)), ("BM", _block(m)), ("BC", _block(c)), ("BD", _block(d)), ("ACC", acc_tl))
    return KernelConfig(_assign_kernel, consts, _pointers(_assign_kernel, ptrs))


def gather_config(d: int, table_dtype: torch.dtype, out_dtype: torch.dtype, scaled: bool) -> KernelConfig:
    """``_gather_kernel`` reading a ``table_dtype`` table of ``d`` channels into ``out_dtype``."""
    acc_torch, acc_tl = _acc(table_dtype)
    ptrs = dict(table_ptr=table_dtype, index_ptr=torch.int64, cos_ptr=acc_torch if scaled else torch.int64,
                alpha_ptr=acc_torch, beta_ptr=acc_torch, out_ptr=out_dtype)
    consts = (("SCALE", scaled), ("BN", GATHER_ROWS), ("BD", _block(d)), ("ACC", acc_tl))
    return KernelConfig(_gather_kernel, consts, _pointers(_gather_kernel, ptrs))


def mix_backward_config(m: int, c: int, d: int, dtype: torch.dtype) -> KernelConfig:
    """``_mix_backward_kernel`` for the shapes and storage dtype of :func:`assign_config`."""
    acc_torch, acc_tl = _acc(dtype)
    ptrs = dict.fromkeys(("grad_ptr", "points_ptr", "centers_ptr", "grad_points_ptr", "grad_centers_ptr"), dtype)
    ptrs.update(dict.fromkeys(("clusters_ptr", "cos_ptr", "counts_ptr", "alpha_ptr", "beta_ptr",
                               "grad_clusters_ptr", "grad_ab_ptr"), acc_torch))
    ptrs["index_ptr"] = torch.int64
    consts = (("BN", _tile_rows(m, c, d)), ("BM", _block(m)), ("BC", _block(c)), ("BD", _block(d)), ("ACC", acc_tl))
    return KernelConfig(_mix_backward_kernel, consts, _pointers(_mix_backward_kernel, ptrs))


def argmax_config(c: int, dtype: torch.dtype, sigmoid: bool) -> KernelConfig:
    """``_argmax_kernel`` for ``c`` channels stored as ``dtype`` (any number of centres)."""
    acc_torch, acc_tl = _acc(dtype)
    ptrs = dict(points_ptr=dtype, centers_ptr=dtype, alpha_ptr=acc_torch, beta_ptr=acc_torch, index_ptr=torch.int64)
    consts = (("SIGMOID", sigmoid), ("BN", ARGMAX_ROWS), ("BM", ARGMAX_ROWS),
              ("BK", min(ARGMAX_CHUNK, _block(c))), ("ACC", acc_tl))
    return KernelConfig(_argmax_kernel, consts, _pointers(_argmax_kernel, ptrs))


def mix_configs(m: int, c: int, d: int, dtype: torch.dtype) -> List[KernelConfig]:
    """The kernels a clustering block's forward and backward launch (:func:`cluster_mix`)."""
    if not _fits_registers(m, c, d):
        return [argmax_config(c, dtype, sigmoid=True)]
    acc = _acc(dtype)[0]
    return [assign_config(m, c, d, dtype), gather_config(d, acc, dtype, scaled=True),
            mix_backward_config(m, c, d, dtype), gather_config(d, acc, dtype, scaled=False)]


def pool_configs(c: int, dtype: torch.dtype) -> List[KernelConfig]:
    """The kernels a clustering pool launches (:func:`cluster_pool`)."""
    return [argmax_config(c, dtype, sigmoid=False)]


def _assign(points, centers, values, center_values, alpha, beta):
    g, n, c = points.shape
    m, d = centers.shape[1], values.shape[-1]
    acc = _acc(points.dtype)[0]
    index = torch.empty(g, n, dtype=torch.int64, device=points.device)
    cos = torch.empty(g, n, dtype=acc, device=points.device)
    clusters = torch.empty(g, m, d, dtype=acc, device=points.device)
    counts = torch.empty(g, m, dtype=acc, device=points.device)
    if g:
        assign_config(m, c, d, points.dtype).launch(
            (g,), points, centers, values, center_values, alpha.to(acc), beta.to(acc), index, cos, clusters, counts,
            n, m, c, d, _EPS,
        )
    return index, cos, clusters, counts


def _gather(table, index, cos: Optional[torch.Tensor], alpha, beta, dtype: torch.dtype) -> torch.Tensor:
    g, m, d = table.shape
    n = index.shape[1]
    out = torch.empty(g, n, d, dtype=dtype, device=table.device)
    if g and n:
        gather_config(d, table.dtype, dtype, scaled=cos is not None).launch(
            (g, triton.cdiv(n, GATHER_ROWS)),
            table, index, cos if cos is not None else index, alpha.to(table.dtype), beta.to(table.dtype), out, n, m, d,
        )
    return out


def _contiguous(*tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    return tuple(t.contiguous() for t in tensors)


@torch.library.custom_op("fec::triton_cluster_mix", mutates_args=())
def _mix_op(
    points: torch.Tensor, centers: torch.Tensor, values: torch.Tensor, center_values: torch.Tensor,
    alpha: torch.Tensor, beta: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (out ``[G, N, D]``, index ``[G, N]``, chosen cosine ``[G, N]``, clusters ``[G, M, D]``,
    counts ``[G, M]``); the last three are kept for the backward pass."""
    _check_device(points, centers, values, center_values, alpha, beta)
    points, centers, values, center_values, alpha, beta = _contiguous(
        points, centers, values, center_values, alpha, beta
    )
    index, cos, clusters, counts = _assign(points, centers, values, center_values, alpha, beta)
    return _gather(clusters, index, cos, alpha, beta, values.dtype), index, cos, clusters, counts


@_mix_op.register_fake
def _(points, centers, values, center_values, alpha, beta):
    g, n, _ = points.shape
    m, d = centers.shape[1], values.shape[-1]
    acc = _acc(points.dtype)[0]
    return (
        values.new_empty(g, n, d),
        points.new_empty(g, n, dtype=torch.int64),
        points.new_empty(g, n, dtype=acc),
        points.new_empty(g, m, d, dtype=acc),
        points.new_empty(g, m, dtype=acc),
    )


@torch.library.custom_op("fec::triton_cluster_mix_backward", mutates_args=())
def _mix_backward_op(
    grad: torch.Tensor, points: torch.Tensor, centers: torch.Tensor, clusters: torch.Tensor,
    index: torch.Tensor, cos: torch.Tensor, counts: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> gradients of (points, centers, values, center_values, alpha, beta)."""
    grad, points, centers, alpha, beta = _contiguous(grad, points, centers, alpha, beta)
    g, n, c = points.shape
    m, d = clusters.shape[1:]
    grad_points = torch.empty_like(points)
    grad_centers = torch.empty_like(centers)
    grad_clusters = torch.empty_like(clusters)
    grad_ab = torch.zeros(g, 2, dtype=clusters.dtype, device=points.device)
    if g:
        acc = clusters.dtype
        mix_backward_config(m, c, d, points.dtype).launch(
            (g,), grad, points, centers, clusters, index, cos, counts, alpha.to(acc), beta.to(acc),
            grad_points, grad_centers, grad_clusters, grad_ab,
            n, m, c, d, _EPS,
        )
    grad_values = _gather(grad_clusters, index, None, alpha, beta, grad.dtype)
    grad_alpha, grad_beta = (grad_ab[:, i].sum().reshape(alpha.shape).to(alpha.dtype) for i in (0, 1))
    return grad_points, grad_centers, grad_values, grad_clusters.to(grad.dtype), grad_alpha, grad_beta


@_mix_backward_op.register_fake
def _(grad, points, centers, clusters, index, cos, counts, alpha, beta):
    return (
        torch.empty_like(points),
        torch.empty_like(centers),
        torch.empty_like(grad),
        grad.new_empty(clusters.shape),
        torch.empty_like(alpha),
        torch.empty_like(beta),
    )


def _mix_setup(ctx, inputs, output) -> None:
    points, centers, _, center_values, alpha, beta = inputs
    _, index, cos, clusters, counts = output
    ctx.save_for_backward(points, centers, clusters, index, cos, counts, alpha, beta)
    ctx.center_values_dtype = center_values.dtype


def _mix_backward(ctx, grad_out, *_unused):
    grads = _mix_backward_op(grad_out, *ctx.saved_tensors)
    return grads[:3] + (grads[3].to(ctx.center_values_dtype),) + grads[4:]


_mix_op.register_autograd(_mix_backward, setup_context=_mix_setup)


@torch.library.custom_op("fec::triton_nearest_centre", mutates_args=())
def _nearest_op(points: torch.Tensor, centers: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    """Index ``[G, N]`` of each point's most similar centre: argmax over ``M`` of the cosine
    similarity (``sigmoid`` False) or of ``sigmoid(beta + alpha * cosine)`` (True)."""
    _check_device(points, centers, alpha, beta)
    points, centers, alpha, beta = _contiguous(points, centers, alpha, beta)
    g, n, c = points.shape
    m = centers.shape[1]
    index = torch.empty(g, n, dtype=torch.int64, device=points.device)
    if g and n:
        acc = _acc(points.dtype)[0]
        argmax_config(c, points.dtype, sigmoid).launch(
            (g, triton.cdiv(n, ARGMAX_ROWS)), points, centers, alpha.to(acc), beta.to(acc), index, n, m, c, _EPS,
        )
    return index


@_nearest_op.register_fake
def _(points, centers, alpha, beta, sigmoid):
    return points.new_empty(points.shape[:2], dtype=torch.int64)


#: The largest padded ``centres x channels`` tile a clustering block keeps in registers (the fused
#: path); larger blocks go through ``_argmax_kernel`` and the plain aggregation.
MAX_FUSED_TILE = 4096


def _fits_registers(m: int, c: int, d: int) -> bool:
    return _block(m) * max(_block(c), _block(d)) <= MAX_FUSED_TILE


def _float64_on_gpu(t: torch.Tensor) -> bool:
    """float64 runs the plain path on a GPU: the kernels are compiled and checked for float32, bfloat16
    and float16 storage (``tests/test_triton_compile.py``); the interpreter still runs them in float64."""
    return t.dtype == torch.float64 and not interpreting()


def cluster_mix(points, centers, values, center_values, alpha, beta) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fused :func:`fec_backbone.cluster_ops.cluster_mix`: same arguments and results."""
    if _float64_on_gpu(points):
        return cluster_ops.cluster_mix(points, centers, values, center_values, alpha, beta, backend="torch")
    if _fits_registers(centers.shape[1], points.shape[-1], values.shape[-1]):
        out, index, *_ = _mix_op(points, centers, values, center_values, alpha, beta)
        return out, index
    detached = (t.detach() for t in (points, centers, alpha, beta))
    index = _nearest_op(*detached, sigmoid=True)
    units = (torch.nn.functional.normalize(t, dim=-1) for t in (points, centers))
    sim = chosen_similarity(*units, index, alpha, beta)
    return dispatch(aggregate(values, center_values, index), sim, index), index


def cluster_pool(points, centers, values, center_values) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fused :func:`fec_backbone.cluster_ops.cluster_pool`: same arguments and results."""
    if _float64_on_gpu(points):
        return cluster_ops.cluster_pool(points, centers, values, center_values, backend="torch")
    scalar = points.new_zeros(1)
    index = _nearest_op(points.detach(), centers.detach(), scalar, scalar, sigmoid=False)
    return aggregate(values, center_values, index), index


cluster_ops.register_kernels("triton", cluster_mix, cluster_pool)
