"""Core demo: FEC-S as a timm model, its size, and one forward/backward on a generated image.

    python -m fec_backbone.demo
"""
from __future__ import annotations

import time

import timm
import torch

from . import cluster_ops
from .fec import count_parameters
from .flops import flops_table


def main() -> None:
    print(flops_table(["fec_small", "fec_base", "fec_large"]))
    torch.manual_seed(0)
    for preset, size in (("classification", (224, 224)), ("detection", (800, 1344))):
        model = timm.create_model("fec_small", preset=preset, num_classes=10)
        x = torch.rand(1, 3, *size)
        start = time.perf_counter()
        logits = model(x)
        logits.sum().backward()
        grads = sum(p.grad is not None for p in model.parameters())
        print(
            f"fec_small [{preset}] {size[0]}x{size[1]}: logits {tuple(logits.shape)}, "
            f"{grads}/{len(list(model.parameters()))} parameters got gradients, "
            f"forward+backward {time.perf_counter() - start:.2f}s "
            f"(clustering backend: {cluster_ops.get_backend()}, params {count_parameters(model):,})"
        )


if __name__ == "__main__":
    main()
