"""The fused Triton clustering kernels equal the plain path: values, indices and every gradient.

Without a GPU the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by conftest.py
before anything imports triton); on a GPU machine the same tests run the compiled kernels on CUDA.
"""
from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("FEC_REQUIRE_TRITON") != "1":
    pytest.importorskip("triton", reason="triton not installed (it ships with torch's CUDA wheels)")

from fec_backbone import cluster_kernels, cluster_ops  # noqa: E402
from helpers import assert_backend_matches_torch, rel_err  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (groups, points, feature channels, value channels, centres): tiles that do not divide N, the model's
# block shapes (24 channels, 16/49/100 centres), and more centres than a block keeps in registers.
SHAPES = [(3, 140, 8, 12, 4), (2, 300, 24, 24, 49), (2, 50, 5, 7, 100), (4, 196, 24, 24, 16), (2, 150, 8, 6, 300)]
# Pools: a centre per 2x2 pixels, so many centre tiles (the stage-2 pool of FEC-S on a 40x40 map).
POOL_SHAPES = SHAPES[:3] + [(2, 1600, 32, 64, 400)]


def _inputs(shape, dtype, seed=0):
    g, n, c, d, m = shape
    gen = torch.Generator().manual_seed(seed)

    def leaf(*size):
        return torch.randn(*size, generator=gen, dtype=dtype).to(DEVICE).requires_grad_()

    alpha = torch.tensor([1.7], dtype=dtype, device=DEVICE, requires_grad=True)
    beta = torch.tensor([-0.3], dtype=dtype, device=DEVICE, requires_grad=True)
    return leaf(g, n, c), leaf(g, m, c), leaf(g, n, d), leaf(g, m, d), alpha, beta


def test_shapes_cover_fused_and_tiled_block_paths():
    paths = {cluster_kernels._fits_registers(m, c, d) for _, _, c, d, m in SHAPES}
    assert paths == {True, False}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_mix_equals_plain_path(shape, dtype, tol):
    inputs = _inputs(shape, dtype)
    plain, plain_index = cluster_ops.cluster_mix(*inputs, backend="torch")
    fused, fused_index = cluster_ops.cluster_mix(*inputs, backend="triton")
    assert fused.shape == plain.shape and fused.dtype == dtype
    assert torch.equal(fused_index, plain_index)
    assert rel_err(fused, plain) < tol
    upstream = torch.randn_like(plain)
    for mine, theirs in zip(torch.autograd.grad(fused, inputs, upstream), torch.autograd.grad(plain, inputs, upstream)):
        assert mine.shape == theirs.shape
        assert rel_err(mine, theirs) < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_pool_equals_plain_path(shape, dtype, tol):
    points, centers, values, center_values, _, _ = _inputs(shape, dtype, seed=1)
    plain, plain_index = cluster_ops.cluster_pool(points, centers, values, center_values, backend="torch")
    fused, fused_index = cluster_ops.cluster_pool(points, centers, values, center_values, backend="triton")
    assert torch.equal(fused_index, plain_index)
    assert rel_err(fused, plain) < tol
    upstream = torch.randn_like(plain)
    mine = torch.autograd.grad(fused, (values, center_values), upstream)
    theirs = torch.autograd.grad(plain, (values, center_values), upstream)
    for a, b in zip(mine, theirs):
        assert rel_err(a, b) < tol


@pytest.mark.parametrize("centres", [16, 300])
def test_ties_go_to_the_first_centre_as_in_torch(centres):
    """Duplicated centres tie exactly; torch's max/argmax pick the first, across centre tiles too."""
    points, centers, values, center_values, alpha, beta = (t.detach() for t in _inputs((2, 90, 8, 8, centres), torch.float32))
    centers[:, centres - 1] = centers[:, 1]
    centers[:, centres // 2] = centers[:, 1]
    for mine, theirs in (
        (cluster_ops.cluster_mix(points, centers, values, center_values, alpha, beta, backend="triton"),
         cluster_ops.cluster_mix(points, centers, values, center_values, alpha, beta, backend="torch")),
        (cluster_ops.cluster_pool(points, centers, values, center_values, backend="triton"),
         cluster_ops.cluster_pool(points, centers, values, center_values, backend="torch")),
    ):
        assert (theirs[1] == 1).any()
        assert torch.equal(mine[1], theirs[1])


def test_fused_mix_on_bf16_storage_computes_in_float32():
    """bf16 inputs (as under autocast) are read and accumulated in float32: the result is the float32
    plain path on the same values, rounded once to bf16."""
    inputs = [t.detach().to(torch.bfloat16) for t in _inputs(SHAPES[3], torch.float32, seed=2)]
    fused, fused_index = cluster_ops.cluster_mix(*inputs, backend="triton")
    plain, plain_index = cluster_ops.cluster_mix(*[t.float() for t in inputs], backend="torch")
    assert fused.dtype == torch.bfloat16
    assert torch.equal(fused_index, plain_index)
    assert rel_err(fused.float(), plain) < 1e-2


def test_model_with_fused_kernels_equals_plain_model():
    """Float64, so that the kernels' own summation order (which on a GPU differs from torch's by about
    2e-5 of the logits in float32 over the whole model) cannot hide a semantic difference."""
    assert_backend_matches_torch("triton", DEVICE)


def test_fused_ops_compile_fullgraph():
    """The kernels are custom ops with fake implementations: dynamo captures them without a break and
    AOTAutograd traces their backward; inductor calls them as they are."""
    inputs = _inputs(SHAPES[0], torch.float32, seed=3)

    def step(*args):
        out, index = cluster_ops.cluster_mix(*args, backend="triton")
        pooled, _ = cluster_ops.cluster_pool(*args[:4], backend="triton")
        return out.square().sum() + pooled.sum() + index.sum()

    eager = torch.autograd.grad(step(*inputs), inputs)
    for backend in ("aot_eager", "inductor"):
        torch._dynamo.reset()
        compiled = torch.compile(step, fullgraph=True, backend=backend)
        for mine, theirs in zip(torch.autograd.grad(compiled(*inputs), inputs), eager):
            assert rel_err(mine, theirs) < 1e-5, backend


@pytest.mark.skipif(DEVICE.type == "cuda", reason="CPU tensors only reach the kernels without a GPU")
def test_cpu_tensors_without_interpreter_get_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    inputs = _inputs(SHAPES[0], torch.float32)
    with pytest.raises(RuntimeError, match="runs on CUDA tensors.*'torch' backend"):
        cluster_kernels.cluster_mix(*inputs)
    with pytest.raises(RuntimeError, match="needs the triton package and a CUDA GPU"):
        cluster_ops.set_backend("triton")
