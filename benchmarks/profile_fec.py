"""Profile one FEC training step with torch.profiler and print where the time goes.

Prints the operators with the most self time (CUDA time on a GPU, CPU time otherwise) and the share of
the step spent in each part of the model (stem, clustering step, norms, projections, MLP), so a change
can be judged by what it removes; and the number of aten ops per forward+backward, which bounds a small-batch GPU
step through the host's time to issue them (measured on an H200 at batch 2: ``benchmarks/results``).
``--trace`` also writes a Chrome trace.

    python benchmarks/profile_fec.py                          # CPU: batch 8 at 224 px
    python benchmarks/profile_fec.py --device cuda --batch 128 --backend triton --bf16
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import timm  # noqa: E402

import fec_backbone  # noqa: E402,F401
from fec_backbone import cluster_ops  # noqa: E402
from fec_backbone.fec import ClusterMixer, ClusterPool, Stem, TokenGroupNorm1  # noqa: E402
from helpers import aten_op_counts, kernel_count  # noqa: E402
from timm.layers import Mlp  # noqa: E402

PARTS = {Stem: "stem", ClusterMixer: "cluster mixer", ClusterPool: "cluster pool", Mlp: "mlp", TokenGroupNorm1: "norm"}


def _label(model: torch.nn.Module) -> None:
    """Wrap the forward of every part in a ``record_function`` range named after its kind."""
    for module in model.modules():
        name = PARTS.get(type(module))
        if name is None:
            continue
        forward = module.forward

        def labelled(*args, _forward=forward, _name=name, **kwargs):
            with record_function(f"part: {_name}"):
                return _forward(*args, **kwargs)

        module.forward = labelled


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(224, 224))
    parser.add_argument("--preset", default="classification", choices=sorted(fec_backbone.PRESETS))
    parser.add_argument("--backend", default="torch", choices=cluster_ops.BACKENDS)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--top", type=int, default=20, help="operators to list")
    parser.add_argument("--trace", help="also write a Chrome trace to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cluster_ops.set_backend(args.backend)
    model = timm.create_model("fec_small", preset=args.preset).to(device, memory_format=torch.channels_last)
    _label(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, *args.size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), device=device)

    def forward_backward() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()

    def step() -> None:
        forward_backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"FEC-S [{args.preset}] {args.size[0]}x{args.size[1]} batch {args.batch} on {device}, "
          f"backend {args.backend}, bf16 {args.bf16}: 3 training steps")
    events = prof.key_averages()
    ops = [e for e in events if not e.key.startswith(("part: ", "ProfilerStep"))]
    print(prof.key_averages().table(sort_by=sort, row_limit=args.top))
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in ops)
    forward_attr = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    print("forward time by part (inclusive, share of the whole step's self time):")
    for e in sorted((e for e in events if e.key.startswith("part: ")), key=lambda e: -getattr(e, forward_attr)):
        print(f"  {e.key[6:]:<14}{getattr(e, forward_attr) / 1e3:>10.1f} ms  {getattr(e, forward_attr) / total:>6.1%}")
    print(f"  {'whole step':<14}{total / 1e3:>10.1f} ms")
    ops = aten_op_counts(forward_backward)
    model.zero_grad(set_to_none=True)
    kernels = kernel_count(ops)
    print(f"aten ops per forward+backward: {sum(ops.values())}, of which {kernels} are not views (on a GPU, one "
          "launch or more each: at small batches the host's time to issue them bounds the step)")
    if args.trace:
        prof.export_chrome_trace(args.trace)
        print(f"trace written to {args.trace}")


if __name__ == "__main__":
    main()
