"""The gather/scatter clustering op equals the dense reference formulation, values and gradients."""
from __future__ import annotations

import os

import pytest
import torch

from fec_backbone import cluster_ops
from helpers import VIEW_OPS, aten_op_counts, assert_backend_matches_torch, kernel_count, rel_err
from reference_fec import dense_cluster

def _backends():
    """The backends that always run here (triton's kernels are tested in test_cluster_kernels.py)."""
    return [pytest.param("torch", id="torch"), pytest.param("matmul", id="matmul")]


def _maps(dtype=torch.float32, g=6, c=8, d=12, h=14, w=10):
    x = torch.randn(g, c, h, w, dtype=dtype, requires_grad=True)
    v = torch.randn(g, d, h, w, dtype=dtype, requires_grad=True)
    alpha = torch.tensor([1.7], dtype=dtype, requires_grad=True)
    beta = torch.tensor([-0.3], dtype=dtype, requires_grad=True)
    return x, v, alpha, beta


def _tokens(maps):
    """``[G, C, h, w]`` -> ``[G, h*w, C]``."""
    return maps.flatten(2).transpose(1, 2)


def _ours_mix(x, v, alpha, beta, grid, backend):
    feats_c = _tokens(torch.nn.functional.adaptive_avg_pool2d(x, grid))
    vals_c = _tokens(torch.nn.functional.adaptive_avg_pool2d(v, grid))
    out, _ = cluster_ops.cluster_mix(_tokens(x), feats_c, _tokens(v), vals_c, alpha, beta, backend)
    return out  # [G, N, D] like the reference


def _scale_of(grad: torch.Tensor, upstream: torch.Tensor, out: torch.Tensor):
    """The scale of a gradient for :func:`rel_err`: for a scalar parameter (alpha, beta), whose gradient is a
    sum over every output element of ``upstream * out * (a factor of at most 1)``, the sum of those terms'
    magnitudes, since terms of either sign cancel into a small total; None (the gradient's own) otherwise."""
    return (upstream * out).abs().sum().item() if grad.numel() == 1 else None


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("grid", [(2, 2), (4, 3), (7, 7)])  # 4 centres <= 8 channels: the matrix path; 12, 49: chosen entries
def test_cluster_mix_matches_reference(backend, grid):
    x, v, alpha, beta = _maps()
    ref = dense_cluster(x, v, grid, alpha, beta)
    ours = _ours_mix(x, v, alpha, beta, grid, backend)
    assert ours.shape == ref.shape == (6, 140, 12)
    assert rel_err(ours, ref) < 1e-5
    upstream = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (x, v, alpha, beta), upstream)
    our_grads = torch.autograd.grad(ours, (x, v, alpha, beta), upstream)
    for mine, theirs in zip(our_grads, ref_grads):
        assert rel_err(mine, theirs, _scale_of(theirs, upstream, ref)) < 1e-5


@pytest.mark.parametrize("backend", _backends())
def test_cluster_pool_matches_reference(backend):
    x, v, _, _ = _maps(h=16, w=12)
    ref = dense_cluster(x, v, (8, 6), dispatch=False)
    grid_f = _tokens(torch.nn.functional.adaptive_avg_pool2d(x, (8, 6)))
    grid_v = _tokens(torch.nn.functional.adaptive_avg_pool2d(v, (8, 6)))
    ours = cluster_ops.cluster_pool(_tokens(x), grid_f, _tokens(v), grid_v, backend)[0]
    assert rel_err(ours, ref) < 1e-5
    upstream = torch.randn_like(ref)
    (gv_ref,) = torch.autograd.grad(ref, (v,), upstream)
    (gv,) = torch.autograd.grad(ours, (v,), upstream)
    assert rel_err(gv, gv_ref) < 1e-5


def test_aggregate_is_member_mean_with_centre():
    values = torch.tensor([[[1.0], [2.0], [3.0], [10.0]]])  # G=1, N=4, D=1
    centres = torch.tensor([[[0.0], [5.0]]])  # M=2
    index = torch.tensor([[0, 0, 0, 1]])
    out = cluster_ops.aggregate(values, centres, index)
    assert torch.allclose(out, torch.tensor([[[(1 + 2 + 3 + 0) / 4], [(10 + 5) / 2]]]))


def test_dispatch_gathers_and_scales():
    clusters = torch.tensor([[[1.0, 3.0], [2.0, 4.0]]])  # G=1, M=2, D=2
    sim = torch.tensor([[0.5, 1.0, 0.25]])
    index = torch.tensor([[1, 0, 1]])
    out = cluster_ops.dispatch(clusters, sim, index)
    assert torch.equal(out, torch.tensor([[[1.0, 2.0], [1.0, 3.0], [0.5, 1.0]]]))


def test_assignment_is_the_argmax_and_its_similarity_the_max():
    x, v, alpha, beta = _maps()
    points, centers = _tokens(x), _tokens(x)[:, :5]
    sim = torch.sigmoid(beta + alpha * cluster_ops.cosine_similarity(centers, points))
    index = cluster_ops.nearest_centre(centers, points, alpha, beta)
    assert index.shape == (6, 140) and index.min() >= 0 and index.max() < 5
    assert torch.equal(index, sim.argmax(dim=1))
    units = (torch.nn.functional.normalize(t, dim=-1) for t in (points, centers))
    best = cluster_ops.chosen_similarity(*units, index, alpha, beta)
    assert rel_err(best, sim.max(dim=1).values) < 1e-6
    upstream = torch.randn_like(best)
    for mine, theirs in zip(torch.autograd.grad(best, (x, alpha, beta), upstream),
                            torch.autograd.grad(sim.max(dim=1).values, (x, alpha, beta), upstream)):
        assert rel_err(mine, theirs, _scale_of(theirs, upstream, best)) < 1e-5


#: Environment variables that make a missing optional backend a failure (set in CI, which installs them).
REQUIRED = {"triton": os.environ.get("FEC_REQUIRE_TRITON") == "1"}
UNAVAILABLE = {"triton": (RuntimeError, "needs the triton package")}


def _mix_and_pool(backend):
    """Outputs and gradients of a block's mix (fused-size and many-centre) and a pool, float64."""
    torch.manual_seed(0)
    x, v, alpha, beta = _maps(dtype=torch.float64, g=2, h=8, w=6)
    mixed = [_ours_mix(x, v, alpha, beta, grid, backend) for grid in ((2, 2), (4, 3))]
    grid_f, grid_v = (_tokens(torch.nn.functional.adaptive_avg_pool2d(t, (4, 3))) for t in (x, v))
    pooled = cluster_ops.cluster_pool(_tokens(x), grid_f, _tokens(v), grid_v, backend)[0]
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in (*mixed, pooled))
    return [*mixed, pooled, *torch.autograd.grad(loss, (x, v, alpha, beta))]


def test_backends_agree_and_selection():
    """Every available backend gives the torch backend's outputs and gradients; a missing one gives a
    clear error, and fails the test where CI requires it (FEC_REQUIRE_TRITON); unknown names (torch_scatter,
    which was best nowhere and is gone) are refused."""
    expected = _mix_and_pool("torch")
    available = cluster_ops.available_backends()
    compared = []
    with pytest.raises(ValueError, match="unknown clustering backend 'torch_scatter'"):
        cluster_ops.set_backend("torch_scatter")
    for backend in ("matmul", "triton"):
        if backend not in available:
            assert not REQUIRED[backend], f"{backend} is required here but not available"
            error, message = UNAVAILABLE[backend]
            with pytest.raises(error, match=message):
                cluster_ops.set_backend(backend)
            continue
        for name, mine, theirs in zip(("mix 4", "mix 12", "pool", "d x", "d v", "d alpha", "d beta"),
                                      _mix_and_pool(backend), expected):
            assert mine.shape == theirs.shape and rel_err(mine, theirs) < 1e-12, (backend, name)
        previous = cluster_ops.get_backend()
        try:
            cluster_ops.set_backend(backend)
            assert cluster_ops.get_backend() == backend
            assert rel_err(_mix_and_pool(None)[0], expected[0]) < 1e-12
        finally:
            cluster_ops.set_backend(previous)
        compared.append(backend)
    assert set(compared) == set(available) - {"torch"}


def test_auto_backend_resolves_per_device():
    assert cluster_ops.resolve_backend("auto", torch.device("cpu")) == "torch"
    assert cluster_ops.resolve_backend("auto", torch.device("cuda")) == cluster_ops.CUDA_DEFAULT_BACKEND
    assert cluster_ops.resolve_backend("matmul", torch.device("cuda")) == "matmul"
    previous = cluster_ops.get_backend()
    try:
        cluster_ops.set_backend("auto")
        assert cluster_ops.resolve_backend(None, torch.device("cpu")) == "torch"
    finally:
        cluster_ops.set_backend(previous)


def test_compiled_aggregation_calls_the_scatter_op_instead_of_a_fused_atomic_kernel():
    """Inductor lowers a scatter-add into its own kernel of atomic adds, which serialise on few centres
    (18.3 ms per call vs eager's 0.21 ms on an H200); the sums are an opaque op it calls instead."""
    from torch._inductor.utils import run_and_get_code

    values, center_values = torch.randn(4, 196, 24, requires_grad=True), torch.randn(4, 16, 24)
    index = torch.randint(0, 16, (4, 196))
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: cluster_ops.aggregate(*a), fullgraph=True)
    with torch.no_grad():
        out, codes = run_and_get_code(compiled, values, center_values, index)
    code = "\n".join(codes)
    assert "torch.ops.fec.cluster_sums" in code
    kernels = [line for line in code.splitlines() if "def " in line or "async_compile" in line]
    assert not [k for k in kernels if "scatter" in k], kernels
    assert rel_err(out, cluster_ops.aggregate(values, center_values, index)) < 1e-6
    torch._dynamo.reset()
    aot = torch.compile(lambda *a: cluster_ops.aggregate(*a), fullgraph=True, backend="aot_eager")
    upstream = torch.randn(4, 16, 24)
    (mine,) = torch.autograd.grad(aot(values, center_values, index), values, upstream)
    (theirs,) = torch.autograd.grad(cluster_ops.aggregate(values, center_values, index), values, upstream)
    assert rel_err(mine, theirs) < 1e-6


def test_unknown_backend_rejected():
    with pytest.raises(ValueError, match="unknown clustering backend"):
        cluster_ops.set_backend("cuda_magic")


def test_nearest_centre_in_slices_equals_the_whole_matrix():
    """Detection-size pools form the similarity a slice of points at a time: same indices as argmax
    over the whole matrix (float64, so no near-tie can flip), slices that do not divide N included."""
    m = 2100  # -> 1997 points per slice
    points = torch.randn(2, 5000, 24, dtype=torch.float64)
    centers = torch.randn(2, m, 24, dtype=torch.float64)
    assert cluster_ops._points_per_slice(m) < points.shape[1]
    whole = cluster_ops.cosine_similarity(centers, points).argmax(dim=1)
    assert torch.equal(cluster_ops.nearest_centre(centers, points), whole)


@pytest.mark.parametrize("size,proposals,folds", [((14, 10), (4, 4), (1, 1)), ((50, 84), (7, 7), (2, 2)),
                                                  ((26, 21), (5, 3), (2, 3)), ((8, 8), (2, 2), (1, 1))])
def test_region_centres_from_the_whole_map_equal_per_region_pooling(size, proposals, folds):
    """One adaptive pool over the whole map with grid (fh*ph, fw*pw) equals pooling each split region
    with (ph, pw), bins that do not divide the region included (50/2=25 rows into 7 bins)."""
    from fec_backbone.layout import pool_centres, region_centres, split_regions

    heads, c = 3, 5
    fv = torch.randn(2, *size, 2 * heads * c, dtype=torch.float64)
    split = split_regions(fv.view(2, *size, 2, heads, c), folds)
    _, g, rh, rw, _ = split.shape
    expected = pool_centres(split.view(2 * g, rh, rw, c), proposals).view(2, g, -1, c)
    got = region_centres(fv, heads, proposals, folds)
    assert got.shape == expected.shape == (2, 2 * heads * folds[0] * folds[1], proposals[0] * proposals[1], c)
    assert rel_err(got, expected) < 1e-14


@pytest.mark.parametrize("size,grid", [((200, 336), (14, 14)), ((13, 11), (7, 5)), ((5, 3), (7, 7))])
def test_adaptive_mean_nhwc_is_adaptive_avg_pool(size, grid):
    """The bin-matrix products equal ``F.adaptive_avg_pool2d``, overlapping bins and a grid finer than
    the map included, gradients too (float64); bfloat16 within its own rounding; and autograd keeps
    no copy of the input (the fused map it reads would otherwise outlive the block's forward)."""
    from fec_backbone.layout import adaptive_mean_nhwc

    x = torch.randn(2, *size, 6, dtype=torch.float64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ours = adaptive_mean_nhwc(x, grid)
    size = x.untyped_storage().nbytes()
    assert not [t.shape for t in saved if t.untyped_storage().nbytes() >= size]  # bin matrices only
    ref = torch.nn.functional.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), grid).permute(0, 2, 3, 1)
    assert ours.shape == ref.shape and rel_err(ours, ref) < 1e-14
    upstream = torch.randn_like(ref)
    (mine,), (theirs,) = (torch.autograd.grad(t, x, upstream) for t in (ours, ref))
    assert rel_err(mine, theirs) < 1e-14
    low = adaptive_mean_nhwc(x.detach().bfloat16(), grid)
    assert low.dtype == torch.bfloat16 and rel_err(low.double(), ref) < 2e-2


def test_unit_rows_is_f_normalize_with_fewer_kernels():
    """unit_rows gives F.normalize's rows bit for bit and its gradients (rows of zeros and rows shorter
    than eps included, where only the divisor's constant remains), in 9 kernels per forward+backward."""
    x = torch.randn(3, 50, 7, dtype=torch.float64)
    x[0, :4] = 0.0
    x[1, :4] *= 1e-14
    x.requires_grad_()
    upstream = torch.randn_like(x)
    mine, theirs = cluster_ops.unit_rows(x), torch.nn.functional.normalize(x, dim=-1)
    assert torch.equal(mine, theirs)
    (g_mine,), (g_theirs,) = (torch.autograd.grad(t, x, upstream) for t in (mine, theirs))
    assert rel_err(g_mine, g_theirs) < 1e-14
    counts = aten_op_counts(lambda: cluster_ops.unit_rows(x).backward(upstream))
    assert kernel_count(counts) <= 9, counts
    with torch.no_grad():
        assert torch.equal(cluster_ops.unit_rows(x), theirs)


def test_bin_matrices_are_built_once_and_serve_training_after_inference():
    """The bin matrices are cached per shape (a second call runs only the products and the division),
    and a first call under inference mode leaves matrices that a training step can save for backward."""
    from fec_backbone.layout import adaptive_mean_nhwc

    x = torch.randn(2, 23, 37, 4, dtype=torch.float64)
    with torch.inference_mode():
        first = adaptive_mean_nhwc(x, (5, 6))
    counts = aten_op_counts(lambda: adaptive_mean_nhwc(x, (5, 6)))
    assert {op: n for op, n in counts.items() if op not in VIEW_OPS} == {"bmm": 2, "div": 1}, counts
    y = x.clone().requires_grad_()
    out = adaptive_mean_nhwc(y, (5, 6))
    out.sum().backward()
    assert torch.equal(out.detach(), first) and y.grad is not None


@pytest.mark.parametrize("products", [False, True])
def test_block_keeps_no_copy_of_the_fused_map(products, monkeypatch):
    """Whichever way a block pools its centres, the fused f/v map ``[B, H, W, 2*heads*C]`` is freed once
    the forward has split it (autograd keeps the split copy): at 224 px, batch 32, keeping both cost
    300 MiB on the CPU."""
    import gc
    import weakref

    from fec_backbone import fec, layout

    fused = []

    def spy(x, folds):
        fused.append(weakref.ref(x._base if x._base is not None else x))
        return split_regions(x, folds)

    split_regions = fec.split_regions
    monkeypatch.setattr(fec, "split_regions", spy)
    monkeypatch.setattr(layout, "centres_by_products", lambda fv: products)
    mixer = fec.ClusterMixer(dim=16, heads=2, head_dim=8, proposals=2, folds=1).double()
    out = mixer(torch.randn(2, 8, 8, 16, dtype=torch.float64, requires_grad=True))
    gc.collect()
    assert out.grad_fn is not None and len(fused) == 1 and fused[0]() is None


def _aten_ops(fn) -> set:
    """Names of the aten ops that ``fn`` runs, backward included."""
    return set(aten_op_counts(fn))


def test_matmul_backend_runs_no_scatter_for_few_centres_and_falls_back_for_many():
    """The "matmul" backend replaces every scatter-add (forward, and the gathers' backward) by matrix
    products while the centres are few, and keeps the scatter-add beyond MATMUL_MAX_CENTRES."""
    x, v, alpha, beta = _maps(dtype=torch.float64)
    few = _aten_ops(lambda: _ours_mix(x, v, alpha, beta, (7, 7), "matmul").sum().backward())
    assert "bmm" in few and not {op for op in few if "scatter" in op or "gather" in op}, few
    assert {op for op in _aten_ops(lambda: _ours_mix(x, v, alpha, beta, (7, 7), "torch").sum().backward())
            if "scatter" in op}
    x, v, _, _ = _maps(dtype=torch.float64, h=32, w=24)
    grid = (16, 12)  # 192 centres > MATMUL_MAX_CENTRES
    assert grid[0] * grid[1] > cluster_ops.MATMUL_MAX_CENTRES
    feats_c, vals_c = (_tokens(torch.nn.functional.adaptive_avg_pool2d(t, grid)) for t in (x, v))
    many = _aten_ops(lambda: cluster_ops.cluster_pool(_tokens(x), feats_c, _tokens(v), vals_c, "matmul")[0].sum().backward())
    assert "scatter_add" in many
    pooled = cluster_ops.cluster_pool(_tokens(x), feats_c, _tokens(v), vals_c, "matmul")[0]
    assert rel_err(pooled, dense_cluster(x, v, grid, dispatch=False)) < 1e-12


@pytest.mark.parametrize("preset", ["classification", "detection"])
def test_model_with_matmul_backend_equals_torch_backend(preset):
    assert_backend_matches_torch("matmul", torch.device("cpu"), preset)


@pytest.mark.parametrize("preset", ["classification", "detection"])
def test_model_with_the_cuda_formulations_equals_the_cpu_ones(preset, monkeypatch):
    """What a small CUDA batch runs (bin-matrix centres from the fused map, the var_mean norm), forced
    on the CPU, gives the default CPU path's logits and gradients in float64: the GPU-only code is
    checked on every CI run, and tests/test_cuda.py has only the devices left to compare."""
    import timm

    from fec_backbone import layout, norm
    from helpers import assert_same_results, model_results, randomize_scalars

    model = timm.create_model("fec_small", num_classes=10, preset=preset).double()
    randomize_scalars(model)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    expected = model_results(model, x, "torch")
    forced = {"centres": 0, "norm": 0}

    def products(fv):
        forced["centres"] += 1
        return True

    def var_mean(device_type, batch, compiling=False):
        forced["norm"] += 1
        return "var_mean"

    monkeypatch.setattr(layout, "centres_by_products", products)
    monkeypatch.setattr(norm, "choose_formulation", var_mean)
    assert_same_results(model_results(model, x, "torch"), expected)
    assert forced["centres"] == sum(len(s.blocks) for s in model.stages) and forced["norm"] > forced["centres"]


@pytest.mark.parametrize("backend", _backends())
def test_low_precision_sums_accumulate_in_float32(backend):
    """bfloat16 values are summed into float32 (on CUDA each atomic add rounds to the accumulator's
    dtype; tests/test_cuda.py checks the effect there), and the cluster means come back in bfloat16."""
    values = torch.randn(2, 500, 8).bfloat16().requires_grad_()
    index = torch.randint(0, 3, (2, 500))
    sums, counts = cluster_ops._cluster_sums(values, index, 3)
    assert sums.dtype == counts.dtype == torch.float32
    center_values = torch.randn(2, 3, 8).bfloat16()
    assignment = cluster_ops.one_hot_assignment(index, 3, values.dtype) if backend == "matmul" else None
    out = cluster_ops.aggregate(values, center_values, index, assignment)
    exact = cluster_ops.aggregate(values.double(), center_values.double(), index)
    assert out.dtype == torch.bfloat16 and rel_err(out.double(), exact) < 1e-2
    (grad,) = torch.autograd.grad(out.float().sum(), values)
    assert grad.dtype == torch.bfloat16
