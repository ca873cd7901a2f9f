"""The channels-last layers whose formulation depends on the device, forward + backward, at the
detection (batch 2) and classification (batch 128) shapes of FEC's first stage, on any device:

* the single-group norm (:mod:`fec_backbone.norm`; the figures behind ``choose_formulation``);
* the region centres, ``F.adaptive_avg_pool2d`` vs the bin-matrix products of
  :func:`fec_backbone.layout.adaptive_mean_nhwc` (the figures behind ``centres_by_products``).

    python benchmarks/bench_layers.py                     # CUDA if present, else CPU
    python benchmarks/bench_layers.py --device cpu --scale 0.5 --iters 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fec_backbone.layout import adaptive_mean_nhwc, to_nchw, to_nhwc  # noqa: E402
from fec_backbone.norm import FORMULATIONS, choose_formulation, group_norm1_nhwc  # noqa: E402

SHAPES = ((2, 200, 336, 32), (128, 56, 56, 32))
#: Stage-1 mixer maps (f and v of 4 heads of 24 channels) and their centre grids: detection (2x2 folds
#: of 7x7 centres) and classification (4x4 centres).
CENTRE_CASES = (((2, 200, 336, 192), (14, 14)), ((128, 56, 56, 192), (4, 4)))


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
    for (b, h, w, c), grid in CENTRE_CASES:
        shape = (b, max(1, int(h * args.scale)), max(1, int(w * args.scale)), c)
        for dtype in dtypes:
            x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
            grad = torch.randn(b, *grid, c, device=device, dtype=dtype)
            row = []
            pool = lambda: to_nhwc(F.adaptive_avg_pool2d(to_nchw(x), grid))  # noqa: E731
            for name, fn in (("adaptive pool", pool), ("products", lambda: adaptive_mean_nhwc(x, grid))):
                def step() -> None:
                    fn().backward(grad)

                row.append(f"{name} {_time(step, device, args.iters) * 1e3:.3f} ms")
            print(f"centres {list(shape)} -> {grid} {str(dtype).replace('torch.', '')} on {device.type}: {' | '.join(row)}")


if __name__ == "__main__":
    main()
