"""Kernels per training step (forward + backward) of FEC-S: ours, the reference formulation and, given
a saved copy, the official code. At batch 2 on a GPU the host's time to issue kernels bounds a
detection step (``benchmarks/results/h200-2026-11-28``), so this count is the part of that step's time
a CPU machine can measure.

Counted on any device with the formulations a CUDA step at this batch takes (:func:`cuda_formulations`:
the var_mean norm and the bin-matrix region centres), after one warm-up step, gradients set to None.

    python benchmarks/count_ops.py                                   # detection, 800x1344, batch 2
    python benchmarks/count_ops.py --official PATH --size 256 448    # adds the official row
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Iterator, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.dirname(os.path.abspath(__file__))]

import bench_gpu  # noqa: E402
from fec_backbone import PRESETS, cluster_ops, layout, norm  # noqa: E402
from helpers import aten_op_counts, kernel_count  # noqa: E402


@contextlib.contextmanager
def cuda_formulations(batch: int) -> Iterator[None]:
    """Make the norm and the region centres take, on any device, the formulation a CUDA batch of
    ``batch`` takes (the kernels differ by device; which ops run does not)."""
    choose, products = norm.choose_formulation, layout.centres_by_products
    norm.choose_formulation = lambda device_type, b, compiling=False: choose("cuda", b, compiling)
    layout.centres_by_products = lambda fv: fv.shape[0] < norm.CUDA_LAYER_NORM_MIN_BATCH
    try:
        yield
    finally:
        norm.choose_formulation, layout.centres_by_products = choose, products


def count_kernels(kind: str, preset: str, batch: int, size: List[int]) -> int:
    """Non-view aten ops of one forward+backward of ``kind`` (a bench_gpu row) on the CPU."""
    backend = kind.partition("+")[2] or "torch"
    model = bench_gpu._model(kind, preset)
    x = torch.randn(batch, 3, *size).contiguous(memory_format=torch.channels_last)
    previous = cluster_ops.get_backend()
    cluster_ops.set_backend(backend if kind.startswith("ours") else "torch")

    def step() -> None:
        model(x).float().mean().backward()
        model.zero_grad(set_to_none=True)

    try:
        with cuda_formulations(batch):
            step()
            counts = aten_op_counts(step)
    finally:
        cluster_ops.set_backend(previous)
    return kernel_count(counts)


def main(argv: Optional[List[str]] = None) -> List[tuple]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="detection", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1344))
    parser.add_argument("--official", metavar="PATH", help="a saved official models/fec.py: adds the 'official' row")
    args = parser.parse_args(argv)
    kinds = (["official"] if args.official else []) + ["reference", "ours", "ours+matmul"]
    if args.official:
        bench_gpu.load_official(args.official)
    print(f"kernels per forward+backward, FEC-S {args.preset} preset, {args.size[0]}x{args.size[1]}, batch "
          f"{args.batch} (the ops of a CUDA step at this batch, counted on the CPU)")
    rows = [(kind, count_kernels(kind, args.preset, args.batch, list(args.size))) for kind in kinds]
    base = rows[0][1]
    for kind, n in rows:
        print(f"  {kind:<12}{n:>7,}  {n / base:.2f}x {rows[0][0]}")
    return rows


if __name__ == "__main__":
    main()
