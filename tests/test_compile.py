"""torch.compile captures FEC as one graph (fullgraph=True), in training and inference, same results."""
from __future__ import annotations

import timm
import torch

import fec_backbone  # noqa: F401  (registers the FEC models with timm)


def _pair():
    model = timm.create_model("fec_small", num_classes=10, preset="detection")
    return model, torch.randn(2, 3, 64, 64)


def test_fullgraph_training_step_equals_eager():
    """aot_eager runs dynamo's capture and AOTAutograd's joint graph: a graph break or an untraceable
    backward fails here; kernels are left to eager so the test stays quick."""
    model, x = _pair()
    model(x).sum().backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(x).sum().backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, eager[n], atol=1e-5), n


def test_fullgraph_inference_with_inductor_equals_eager():
    model, x = _pair()
    model.eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)
