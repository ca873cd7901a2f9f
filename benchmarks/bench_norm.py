"""Single-group norm on channels-last maps: the two formulations of :mod:`fec_backbone.norm`, forward +
backward, at the detection (batch 2) and classification (batch 128) shapes of FEC's first stage, on
any device. It prints the figures behind :func:`fec_backbone.norm.choose_formulation`.

    python benchmarks/bench_norm.py                     # CUDA if present, else CPU
    python benchmarks/bench_norm.py --device cpu --scale 0.5 --iters 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fec_backbone.norm import FORMULATIONS, choose_formulation, group_norm1_nhwc  # noqa: E402

SHAPES = ((2, 200, 336, 32), (128, 56, 56, 32))


def _time(step, device: torch.device, iters: int) -> float:
    step()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", type=float, default=1.0, help="scale H and W (smaller maps on a CPU)")
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtypes = (torch.float32, torch.bfloat16) if device.type == "cuda" else (torch.float32,)
    for b, h, w, c in SHAPES:
        shape = (b, max(1, int(h * args.scale)), max(1, int(w * args.scale)), c)
        for dtype in dtypes:
            x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
            weight = torch.randn(c, device=device, requires_grad=True)
            bias = torch.randn(c, device=device, requires_grad=True)
            grad = torch.randn(shape, device=device, dtype=dtype)
            row = []
            for formulation in FORMULATIONS:
                def step() -> None:
                    group_norm1_nhwc(x, weight, bias, formulation=formulation).backward(grad)

                row.append(f"{formulation} {_time(step, device, args.iters) * 1e3:.3f} ms")
            chosen = choose_formulation(device.type, shape[0])
            print(f"{list(shape)} {str(dtype).replace('torch.', '')} on {device.type}: {' | '.join(row)} | rule: {chosen}")


if __name__ == "__main__":
    main()
