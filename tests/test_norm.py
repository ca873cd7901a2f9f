"""The channels-last single-group norm equals nn.GroupNorm(1, C): values and gradients, both formulations."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fec_backbone.norm import CUDA_LAYER_NORM_MIN_BATCH, FORMULATIONS, TokenGroupNorm1, choose_formulation, group_norm1_nhwc
from helpers import rel_err

# [B, H, W, C]: batch 1, 2 and many; odd sizes; the model's smallest map and widths.
SHAPES = [(1, 7, 5, 3), (2, 9, 13, 32), (11, 4, 6, 5), (3, 1, 1, 7)]
# float32 noise of both formulations against nn.GroupNorm, values and gradients, is at most 3e-6 (measured
# on these shapes and [2, 56, 56, 32]); float64 agrees to 1e-14.
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _pair(c, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ref = nn.GroupNorm(1, c, dtype=dtype)
    ours = TokenGroupNorm1(c, dtype=dtype)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(c, generator=gen, dtype=dtype))
        ref.bias.copy_(torch.randn(c, generator=gen, dtype=dtype))
    ours.load_state_dict(ref.state_dict())  # same keys as nn.GroupNorm
    return ref, ours


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_equals_group_norm_values_and_gradients(shape, dtype, formulation):
    b, h, w, c = shape
    ref, ours = _pair(c, dtype)
    ours.formulation = formulation
    gen = torch.Generator().manual_seed(1)
    x = (3.0 + 2.0 * torch.randn(shape, generator=gen, dtype=dtype)).requires_grad_()  # mean far from 0
    expected = ref(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    got = ours(x)
    assert got.shape == shape and got.dtype == dtype
    assert rel_err(got, expected) < TOL[dtype]
    upstream = torch.randn(shape, generator=gen, dtype=dtype)
    ref_grads = torch.autograd.grad(expected, (x, ref.weight, ref.bias), upstream)
    our_grads = torch.autograd.grad(got, (x, ours.weight, ours.bias), upstream)
    for name, mine, theirs in zip(("input", "weight", "bias"), our_grads, ref_grads):
        assert rel_err(mine, theirs) < TOL[dtype], name


def test_bf16_under_autocast_normalises_in_float32():
    """Under autocast the var_mean formulation normalises a bf16 map in float32 (as CUDA autocast runs
    layer_norm and group_norm; the layer_norm formulation follows autocast's per-device policy)."""
    ref, ours = _pair(24, torch.float32)
    x = torch.randn(2, 6, 10, 24).to(torch.bfloat16)
    expected = ref(x.float().permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = group_norm1_nhwc(x, ours.weight, ours.bias, ours.eps, "var_mean")
    assert got.dtype == torch.float32
    assert rel_err(got, expected) < 1e-5


def test_var_mean_backward_is_written_out_and_low_precision_gradients_hold():
    """Training uses the written-out backward of the var_mean formulation (21 kernels per forward and
    backward instead of autograd's 33); with a bf16 map and float32 affine (autocast) its gradients
    come back in each input's dtype, within bf16 rounding of float32 GroupNorm's."""
    from helpers import aten_op_counts, kernel_count

    ref, ours = _pair(24, torch.float32)
    x = torch.randn(2, 6, 10, 24)
    upstream = torch.randn(2, 6, 10, 24)
    low = x.bfloat16().requires_grad_()
    counts = aten_op_counts(lambda: group_norm1_nhwc(low, ours.weight, ours.bias, formulation="var_mean").backward(upstream))
    assert kernel_count(counts) <= 21 + 2, counts  # 2 casts
    xr = x.bfloat16().float().requires_grad_()
    expected = torch.autograd.grad(ref(xr.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), (xr, ref.weight, ref.bias), upstream)
    assert low.grad.dtype == torch.bfloat16 and ours.weight.grad.dtype == ours.bias.grad.dtype == torch.float32
    for mine, theirs in zip((low.grad, ours.weight.grad, ours.bias.grad), expected):
        assert rel_err(mine.float(), theirs) < 2e-2


def test_bf16_storage_keeps_layer_norm_dtype():
    x = torch.randn(2, 5, 6, 8).to(torch.bfloat16)
    w, b = torch.randn(8, dtype=torch.bfloat16), torch.randn(8, dtype=torch.bfloat16)
    ln = group_norm1_nhwc(x, w, b, formulation="layer_norm")
    vm = group_norm1_nhwc(x, w, b, formulation="var_mean")
    assert ln.dtype == vm.dtype == torch.bfloat16
    assert rel_err(vm.float(), ln.float()) < 2e-2


def test_rule_follows_the_measurements():
    """CPU keeps layer_norm; CUDA uses var_mean for small batches (layer_norm's one block per sample
    leaves the GPU idle: 4.95 vs 0.56 ms on an H200 at batch 2) and layer_norm from the measured
    crossover; compiled CUDA graphs use var_mean."""
    assert choose_formulation("cpu", 1) == choose_formulation("cpu", 512) == "layer_norm"
    assert choose_formulation("cuda", 2) == "var_mean"
    assert choose_formulation("cuda", CUDA_LAYER_NORM_MIN_BATCH - 1) == "var_mean"
    assert choose_formulation("cuda", CUDA_LAYER_NORM_MIN_BATCH) == choose_formulation("cuda", 128) == "layer_norm"
    assert choose_formulation("cuda", 128, compiling=True) == "var_mean"
    assert choose_formulation("cpu", 2, compiling=True) == "layer_norm"


def test_bad_input_is_rejected_with_advice():
    norm = TokenGroupNorm1(8)
    with pytest.raises(ValueError, match=r"channels-last map \[B, H, W, C\] with C=8.*permute"):
        norm(torch.randn(2, 8, 5, 5))
    norm.formulation = "welford"
    with pytest.raises(ValueError, match="unknown norm formulation 'welford'"):
        norm(torch.randn(2, 5, 5, 8))


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_both_formulations_compile_fullgraph_and_export_to_onnx(formulation, tmp_path):
    """Both formulations compile without graph breaks (values and gradients as eager) and export to
    ONNX with a dynamic batch (checked with onnxruntime where installed)."""
    ref, ours = _pair(6, torch.float32)
    ours.formulation = formulation
    x = torch.randn(3, 5, 4, 6, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True)
    eager = ours(x)
    got = compiled(x)
    assert rel_err(got, eager) < 1e-5
    upstream = torch.randn_like(eager)
    for mine, theirs in zip(torch.autograd.grad(got, (x, ours.weight), upstream),
                            torch.autograd.grad(eager, (x, ours.weight), upstream)):
        assert rel_err(mine, theirs) < 1e-5
    ort = pytest.importorskip("onnxruntime")
    path = str(tmp_path / "norm.onnx")
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(ours, (x.detach(),), path, dynamo=True, input_names=["x"], dynamic_shapes=({0: batch},))
    other = torch.randn(5, 5, 4, 6)
    (onnx_out,) = ort.InferenceSession(path).run(None, {"x": other.numpy()})
    assert rel_err(torch.from_numpy(onnx_out), ours(other).detach()) < 1e-5
