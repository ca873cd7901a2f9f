"""The clustering step of FEC, written as argmax + scatter-add + gather.

Every point is assigned to exactly one centre (its most similar one), so

* aggregation is a scatter-add of the point values into their centre, ``O(N*D)``;
* dispatch is a gather of each point's centre value scaled by its similarity, ``O(N*D)``.

The reference formulation instead multiplies a ``[G, M, N, D]`` tensor by a one-hot mask, which costs
``M`` times the memory and arithmetic. Both give the same numbers; ``tests/reference_fec.py`` holds the
reference formulation as the oracle.

All tensors are token-major (``[G, N, C]``, channels last), the layout of the model's blocks, so the
projections around the step are plain matrix products with no transpose copies.

Backends: ``"torch"`` (native ``scatter_add_``, always available), ``"matmul"`` (always available: the
scatter-add and gathers as batched matrix products with the one-hot assignment ``[G, N, M]`` where the
centres are few, :data:`MATMUL_MAX_CENTRES`; no atomic adds, float32 accumulation in low precision) and
``"triton"`` (the whole step as fused Triton kernels, :mod:`fec_backbone.cluster_kernels`; CUDA, or Triton's
interpreter); each is the best somewhere (``benchmarks/results/README.md``). Choose one with
:func:`set_backend` or the ``FEC_CLUSTER_BACKEND`` environment variable. The default, ``"auto"``,
resolves per call from the tensors' device (:func:`resolve_backend`): ``"torch"`` on the CPU (the
fastest there, ``benchmarks/bench_cpu.py``) and :data:`CUDA_DEFAULT_BACKEND` on CUDA.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch.autograd.function import once_differentiable

from .tracing import records_autograd

__all__ = [
    "cosine_similarity",
    "nearest_centre",
    "chosen_similarity",
    "aggregate",
    "dispatch",
    "one_hot_assignment",
    "cluster_mix",
    "cluster_pool",
    "available_backends",
    "get_backend",
    "set_backend",
    "resolve_backend",
    "BACKENDS",
    "CUDA_DEFAULT_BACKEND",
    "MATMUL_MAX_CENTRES",
]

#: The clustering backends (see the module docstring); ``"auto"`` chooses one per device.
BACKENDS = ("torch", "matmul", "triton")

#: The backend ``"auto"`` uses for CUDA tensors: the fastest eager backend measured on a GPU
#: (``benchmarks/results/README.md``). For compiled inference ``"matmul"`` measured faster: choose it there.
CUDA_DEFAULT_BACKEND = "torch"
#: Most centres per group for which the ``"matmul"`` backend forms the one-hot assignment ``[G, N, M]``
#: (up to 128/24 times the size of the values): every block's mixer. Clustering pools, a centre per
#: 2x2 pixels, keep the scatter-add, where few points share a centre.
MATMUL_MAX_CENTRES = 128


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or interpreting()


def available_backends() -> Tuple[str, ...]:
    """The clustering backends that work in this environment."""
    usable = {"torch": True, "matmul": True, "triton": _triton_available()}
    return tuple(b for b in BACKENDS if usable[b])


def _checked(name: str) -> str:
    if name == "auto":
        return name
    if name not in BACKENDS:
        raise ValueError(f"unknown clustering backend {name!r}; choose 'auto' or one of {BACKENDS}")
    if name == "triton" and not _triton_available():
        raise RuntimeError(
            "clustering backend 'triton' needs the triton package and a CUDA GPU (or TRITON_INTERPRET=1 "
            "to run its kernels in Triton's CPU interpreter); use the always-available 'torch' backend"
        )
    return name


_backend = _checked(os.environ.get("FEC_CLUSTER_BACKEND", "auto"))
#: Backends implemented in another module, which registers its ``(cluster_mix, cluster_pool)`` here when
#: imported (:func:`register_kernels`): ``"triton"`` by :mod:`fec_backbone.cluster_kernels`.
_KERNELS: Dict[str, Tuple[Callable[..., Tuple[torch.Tensor, torch.Tensor]], ...]] = {}


def register_kernels(name: str, mix: Callable[..., Tuple[torch.Tensor, torch.Tensor]],
                     pool: Callable[..., Tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Make backend ``name`` (one of the known backends) run ``mix`` and ``pool``, which take the arguments
    of :func:`cluster_mix` and :func:`cluster_pool` but ``backend``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown clustering backend {name!r}; choose one of {BACKENDS}")
    _KERNELS[name] = (mix, pool)


def get_backend() -> str:
    """The backend the clustering ops use when none is passed (``"auto"`` unless set)."""
    return _backend


def set_backend(name: str) -> None:
    """Select the default clustering backend: ``"auto"``, ``"torch"``, ``"matmul"``, ``"torch_scatter"`` or
    ``"triton"``."""
    global _backend
    _backend = _checked(name)


def resolve_backend(backend: Optional[str], device: torch.device) -> str:
    """The backend a call uses: ``backend`` (or the default) with ``"auto"`` resolved for ``device``."""
    backend = backend or _backend
    if backend == "auto":
        return CUDA_DEFAULT_BACKEND if device.type == "cuda" else "torch"
    if backend == "triton" and backend not in _KERNELS:
        raise RuntimeError("the triton clustering backend's kernels did not load (importing "
                           "fec_backbone.cluster_kernels failed); use the 'torch' backend")
    return backend


#: ``F.normalize``'s default: rows shorter than this are divided by it instead of by their length.
NORMALIZE_EPS = 1e-12


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``F.normalize(x, dim=-1)``: ``[..., C]`` rows divided by ``max(length, 1e-12)``. Recorded for eager
    autograd, it runs a written-out backward with fewer kernels than autograd's (two per clustering layer;
    at a small batch on a GPU the host issuing kernels bounds the step)."""
    if records_autograd(x):
        return _UnitRows.apply(x)
    return F.normalize(x, dim=-1, eps=NORMALIZE_EPS)


class _UnitRows(torch.autograd.Function):
    """``y = x / max(|x|, eps)``; ``dx = (dy - y * <dy, y>) / max(|x|, eps)``, the projection term only
    where ``|x| >= eps`` (below, the divisor is the constant ``eps``), as autograd derives it for ``F.normalize``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        length = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        divisor = length.clamp_min(NORMALIZE_EPS)
        unit = x / divisor
        ctx.save_for_backward(unit, divisor, length >= NORMALIZE_EPS)
        ctx.x_dtype = x.dtype
        return unit

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        unit, divisor, long_enough = ctx.saved_tensors
        along = (grad * unit).sum(-1, keepdim=True).mul_(long_enough)
        return torch.addcmul(grad, unit, along, value=-1.0).div_(divisor).to(ctx.x_dtype)


def cosine_similarity(centers: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every centre with every point.

    centers: ``[G, M, C]``, points: ``[G, N, C]`` -> ``[G, M, N]``.
    """
    return torch.bmm(unit_rows(centers), unit_rows(points).transpose(1, 2))


def _points_per_slice(centres: int) -> int:
    """Points per slice in :func:`nearest_centre`: at least 1024, and few enough that a group's slice of
    the similarity matrix holds about 4M entries."""
    return max(1024, (1 << 22) // max(centres, 1))


def _sliced_best_index(
    units: torch.Tensor, points: torch.Tensor, alpha: Optional[torch.Tensor], beta: Optional[torch.Tensor]
) -> torch.Tensor:
    """Argmax over centres, a slice of points at a time, of unit-vector similarities (detached)."""
    step = _points_per_slice(units.shape[1])
    picks = []
    for i in range(0, points.shape[1], step):
        sim = torch.bmm(units, points[:, i : i + step].transpose(1, 2))
        if alpha is not None and beta is not None:
            sim = torch.sigmoid(beta.detach() + alpha.detach() * sim)
        picks.append(sim.argmax(dim=1))
    return torch.cat(picks, dim=1)


@torch.library.custom_op("fec::best_index", mutates_args=())
def _best_index_op(units: torch.Tensor, points: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                   sigmoid: bool) -> torch.Tensor:
    """:func:`_sliced_best_index` as one opaque op for ``torch.compile``: the number of slices follows the
    point count, so traced through, every new map size would be a new graph (a guard on the loop length)."""
    return _sliced_best_index(units, points, alpha if sigmoid else None, beta if sigmoid else None)


@_best_index_op.register_fake
def _(units, points, alpha, beta, sigmoid):
    return points.new_empty(points.shape[:2], dtype=torch.int64)


def _best_index(
    units: torch.Tensor, points: torch.Tensor, alpha: Optional[torch.Tensor], beta: Optional[torch.Tensor]
) -> torch.Tensor:
    """Index ``[G, N]`` of each point's most similar unit centre (:func:`_sliced_best_index`; one op when
    compiled)."""
    if torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export():
        sigmoid = alpha is not None and beta is not None
        scalar = units.new_zeros(1)
        return _best_index_op(units.detach(), points.detach(), alpha.detach() if sigmoid else scalar,
                              beta.detach() if sigmoid else scalar, sigmoid)
    return _sliced_best_index(units, points, alpha, beta)


def nearest_centre(
    centers: torch.Tensor,
    points: torch.Tensor,
    alpha: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Index of each point's most similar centre (the first on ties), without autograd.

    centers: ``[G, M, C]``, points: ``[G, N, C]`` -> ``[G, N]`` (int64). The similarity is the cosine,
    or ``sigmoid(beta + alpha * cosine)`` when ``alpha`` and ``beta`` are given. The ``[G, M, N]``
    matrix is formed a slice of points at a time and never kept: a clustering pool has a centre per
    2x2 pixels, so at detection resolution the whole matrix would take gigabytes. The slicing depends on
    ``M`` and ``N`` only, never on the batch, so exports and compiled graphs keep a dynamic batch.
    """
    return _best_index(F.normalize(centers.detach(), dim=-1), F.normalize(points.detach(), dim=-1), alpha, beta)


def chosen_similarity(
    unit_points: torch.Tensor, unit_centers: torch.Tensor, index: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """``sigmoid(beta + alpha * cosine)`` of each point with its chosen centre, with autograd.

    unit_points ``[G, N, C]`` and unit_centers ``[G, M, C]`` (L2-normalised rows), index ``[G, N]``
    -> ``[G, N]``. This is the maximum of the full similarity matrix, and its gradients are the
    maximum's (they reach only the chosen entries), at ``O(N*C)`` memory instead of the ``O(M*N)`` the
    matrix would keep for backward.
    """
    own = unit_centers.gather(1, index.unsqueeze(-1).expand(*index.shape, unit_centers.shape[-1]))
    return torch.sigmoid(beta + alpha * (unit_points * own).sum(-1))


def _cluster_sums(values: torch.Tensor, index: torch.Tensor, centres: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-centre sums of the member values ``[G, M, D]`` and member counts ``[G, M, 1]``, accumulated in
    float32 at least: on CUDA the scatter-add is one atomic add per member, each rounded to the
    accumulator's dtype, so a bfloat16 count stops at 256 and a bfloat16 sum of hundreds of members
    drifts by whole units (a detection region has about 343 members per centre)."""
    g, n, d = values.shape
    dtype = torch.promote_types(values.dtype, torch.float32)
    counts = torch.zeros(g, centres, 1, dtype=dtype, device=values.device)
    counts = counts.scatter_add(1, index.unsqueeze(-1), torch.ones(g, n, 1, dtype=dtype, device=values.device))
    expanded, values = index.unsqueeze(-1).expand(g, n, d), values.to(dtype)
    return values.new_zeros(g, centres, d).scatter_add(1, expanded, values), counts


@torch.library.custom_op("fec::cluster_sums", mutates_args=())
def _cluster_sums_op(values: torch.Tensor, index: torch.Tensor, centres: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`_cluster_sums` as one opaque op for ``torch.compile``: Inductor calls the eager scatter
    kernel instead of lowering the scatter-add into its own kernel, a fused kernel of atomic adds into the
    few centres, which serialise (on a GPU that lowering made the compiled model slower than eager;
    ``benchmarks/results/README.md``)."""
    return _cluster_sums(values, index, centres)


@_cluster_sums_op.register_fake
def _(values, index, centres):
    g, _, d = values.shape
    dtype = torch.promote_types(values.dtype, torch.float32)
    return values.new_empty(g, centres, d, dtype=dtype), values.new_empty(g, centres, 1, dtype=dtype)


def _cluster_sums_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[1])
    ctx.values_dtype = inputs[0].dtype


def _cluster_sums_backward(ctx, grad_sums, grad_counts):
    (index,) = ctx.saved_tensors
    grad_values = grad_sums.gather(1, index.unsqueeze(-1).expand(*index.shape, grad_sums.shape[-1]))
    return grad_values.to(ctx.values_dtype), None, None


_cluster_sums_op.register_autograd(_cluster_sums_backward, setup_context=_cluster_sums_setup)


def one_hot_assignment(index: torch.Tensor, centres: int, dtype: torch.dtype) -> torch.Tensor:
    """The assignment as a one-hot matrix: index ``[G, N]`` -> ``[G, N, M]`` of 0 and 1 in ``dtype``."""
    return (index.unsqueeze(-1) == torch.arange(centres, device=index.device)).to(dtype)


def _mean_with_centre(sums: torch.Tensor, counts: torch.Tensor, center_values: torch.Tensor, dtype: torch.dtype):
    return ((sums + center_values) / (counts + 1.0)).to(dtype)


def aggregate(
    values: torch.Tensor,
    center_values: torch.Tensor,
    index: torch.Tensor,
    assignment: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Mean of each cluster's members together with its centre value.

    values: ``[G, N, D]``, center_values: ``[G, M, D]``, index: ``[G, N]`` (int64) -> ``[G, M, D]``:
    ``(sum of member values + centre value) / (members + 1)``, in the dtype of ``values``. With
    ``assignment`` (:func:`one_hot_assignment`) the sums are one matrix product. Otherwise they are a
    scatter-add; under ``torch.compile`` one opaque op (:func:`_cluster_sums_op`), while eager calls and
    ONNX export use the scatter ops directly.
    """
    m = center_values.shape[1]
    if assignment is not None:
        sums = torch.bmm(assignment.transpose(1, 2), values)
        return _mean_with_centre(sums, assignment.sum(1, dtype=torch.float32).unsqueeze(-1), center_values, values.dtype)
    if torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export():
        sums, counts = _cluster_sums_op(values, index, m)
    else:
        sums, counts = _cluster_sums(values, index, m)
    return _mean_with_centre(sums, counts, center_values, values.dtype)


def _uses_matmul(backend: str, centres: int) -> bool:
    return backend == "matmul" and centres <= MATMUL_MAX_CENTRES


def dispatch(clusters: torch.Tensor, sim: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Send each cluster's value back to its members, scaled by their similarity.

    clusters: ``[G, M, D]``, sim: ``[G, N]``, index: ``[G, N]`` -> ``[G, N, D]``.
    """
    g, _, d = clusters.shape
    picked = clusters.gather(1, index.unsqueeze(-1).expand(g, index.shape[-1], d))
    return picked * sim.unsqueeze(-1)


@register_notrace_function  # data-dependent (argmax, scatter, gather): FX graphs keep it as one call
def cluster_mix(
    points: torch.Tensor,
    centers: torch.Tensor,
    values: torch.Tensor,
    center_values: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The token mixer of a clustering block.

    points ``[G, N, C]``, centers ``[G, M, C]``, values ``[G, N, D]``, center_values ``[G, M, D]``,
    alpha and beta scalars (``[1]``) -> (mixed values ``[G, N, D]``, centre index per point ``[G, N]``).
    """
    backend = resolve_backend(backend, points.device)
    if backend in _KERNELS:
        return _KERNELS[backend][0](points, centers, values, center_values, alpha, beta)
    if _uses_matmul(backend, centers.shape[1]):
        # Gathers and the scatter-add as products with the one-hot assignment: no atomic adds.
        unit_points, unit_centers = unit_rows(points), unit_rows(centers)
        index = _best_index(unit_centers.detach(), unit_points.detach(), alpha, beta)
        assignment = one_hot_assignment(index, centers.shape[1], values.dtype)
        own = torch.bmm(assignment, unit_centers.to(values.dtype))
        best = torch.sigmoid(beta + alpha * (unit_points * own).sum(-1))
        clusters = aggregate(values, center_values, index, assignment=assignment)
        return torch.bmm(assignment, clusters) * best.unsqueeze(-1), index
    if centers.shape[1] > points.shape[-1]:
        # More centres than channels: the [G, M, N] similarity would outweigh the [G, N, C] features,
        # so autograd keeps only the chosen entries (faster and leaner from about M > C on the CPU).
        unit_points, unit_centers = unit_rows(points), unit_rows(centers)
        index = _best_index(unit_centers.detach(), unit_points.detach(), alpha, beta)
        best = chosen_similarity(unit_points, unit_centers, index, alpha, beta)
    else:
        best, index = torch.sigmoid(beta + alpha * cosine_similarity(centers, points)).max(dim=1)
    return dispatch(aggregate(values, center_values, index), best, index), index


@register_notrace_function
def cluster_pool(
    points: torch.Tensor,
    centers: torch.Tensor,
    values: torch.Tensor,
    center_values: torch.Tensor,
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Clustering-based pooling: points vote into centres by plain cosine similarity.

    points ``[G, N, C]``, centers ``[G, M, C]``, values ``[G, N, D]``, center_values ``[G, M, D]``
    -> (pooled values ``[G, M, D]``, centre index per point ``[G, N]``). Only the assignment (an
    argmax) depends on ``points`` and ``centers``, so no gradient reaches them.
    """
    backend = resolve_backend(backend, points.device)
    if backend in _KERNELS:
        return _KERNELS[backend][1](points, centers, values, center_values)
    index = nearest_centre(centers, points)
    assignment = one_hot_assignment(index, centers.shape[1], values.dtype) if _uses_matmul(backend, centers.shape[1]) else None
    return aggregate(values, center_values, index, assignment), index
