"""On a CUDA GPU the model computes what it computes on the CPU: the GPU-only formulations (bin-matrix
centres, the var_mean norm, the one-hot products of the ``matmul`` backend) change no value, and
bfloat16 cluster means stay accurate for clusters of hundreds of points. These run on the GPU machine
(``benchmarks/device_check.sh``); without a GPU there is nothing to compare, so they are skipped."""
from __future__ import annotations

import pytest
import timm
import torch

from fec_backbone import cluster_ops
from helpers import assert_same_results, model_results, randomize_scalars, rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/device_check.sh)")


@pytest.mark.parametrize("preset", ["classification", "detection"])
@pytest.mark.parametrize("backend", ["torch", "matmul"])
def test_cuda_model_equals_cpu_model(preset, backend):
    model = timm.create_model("fec_small", num_classes=10, preset=preset).double()
    randomize_scalars(model)
    x = torch.randn(2, 3, 96, 128, dtype=torch.float64)
    expected = model_results(model, x, "torch")
    assert_same_results(model_results(model.cuda(), x.cuda(), backend), expected)


@pytest.mark.parametrize("backend", ["torch", "matmul"])
def test_bf16_cluster_means_of_large_clusters(backend):
    """A detection-resolution region of stage 1: 16,800 points into 49 centres, about 343 per centre;
    bfloat16 values, means within a few bfloat16 roundings of the float64 truth."""
    g, n, m, d = 32, 16_800, 49, 24
    values = (torch.randn(g, n, d, device="cuda") + 2.0).bfloat16()
    center_values = torch.randn(g, m, d, device="cuda").bfloat16()
    index = torch.randint(0, m, (g, n), device="cuda")
    exact = cluster_ops.aggregate(values.double(), center_values.double(), index)
    assignment = cluster_ops.one_hot_assignment(index, m, values.dtype) if backend == "matmul" else None
    ours = cluster_ops.aggregate(values, center_values, index, assignment)
    assert ours.dtype == torch.bfloat16
    assert rel_err(ours.double(), exact) < 1e-2, f"{backend}: {rel_err(ours.double(), exact):.2e}"
