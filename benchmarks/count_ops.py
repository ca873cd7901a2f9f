"""Kernels per training step (forward + backward) of FEC-S: ours (eager, and compiled by ``torch.compile``),
the reference formulation and, given a saved copy, the official code. At batch 2 on a GPU the host's time
to issue kernels bounds a detection step (``benchmarks/results/h200-2026-11-28``), so this count is the
part of that step's time a CPU machine can measure.

Eager rows count the aten ops that launch kernels, with the formulations a CUDA step at this batch takes
(:func:`cuda_formulations`: the var_mean norm and the bin-matrix region centres), after one warm-up step,
gradients set to None. Compiled rows (``+compile``) count the calls in the code Inductor generates for the
forward and the backward graph: its own fused kernels plus the extern calls it keeps (matrix products,
convolutions, the clustering custom ops); on the CPU these are C++ kernels, on CUDA Triton kernels, so a
compiled row is a count for the device it ran on.

    python benchmarks/count_ops.py                                   # detection, 800x1344, batch 2
    python benchmarks/count_ops.py --official PATH --size 256 448    # adds the official row
    python benchmarks/count_ops.py --size 256 448 --compiled         # adds ours+compile, ours+matmul+compile
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
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


#: Calls in Inductor's generated ``call`` functions that launch work: its kernels (C++ on the CPU, Triton on
#: CUDA) and the externs it keeps (matrix products, convolutions, fallback aten ops, custom ops).
COMPILED_CALL = re.compile(r"^\s+(?:buf\w*\s*=\s*)?(?:(?:cpp_fused|triton)_\w+(?:\.run)?\(|extern_kernels\.\w+\(|"
                           r"torch\.ops\.\w+\.\w+\.\w+\(|aten\.\w+\.\w+\()", re.M)


def count_compiled_kernels(kind: str, preset: str, batch: int, size: List[int]) -> int:
    """Kernel and extern calls of the generated code of one compiled forward+backward of ``kind``."""
    from torch._inductor.utils import run_and_get_code

    backend = kind.split("+")[1] if kind.count("+") > 1 else "torch"
    model = bench_gpu._model(kind, preset)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(batch, 3, *size).contiguous(memory_format=torch.channels_last)
    previous = cluster_ops.get_backend()
    cluster_ops.set_backend(backend)
    try:
        _, codes = run_and_get_code(lambda: compiled(x).float().mean().backward())
    finally:
        cluster_ops.set_backend(previous)
    return sum(len(COMPILED_CALL.findall(code[code.index("def call("):])) for code in codes if "def call(" in code)


def main(argv: Optional[List[str]] = None) -> List[tuple]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="detection", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1344))
    parser.add_argument("--official", metavar="PATH", help="a saved official models/fec.py: adds the 'official' row")
    parser.add_argument("--compiled", action="store_true", help="add the torch.compile rows (minutes on a CPU)")
    args = parser.parse_args(argv)
    kinds = (["official"] if args.official else []) + ["reference", "ours", "ours+matmul"]
    kinds += ["ours+compile", "ours+matmul+compile"] if args.compiled else []
    if args.official:
        bench_gpu.load_official(args.official)
    print(f"kernels per forward+backward, FEC-S {args.preset} preset, {args.size[0]}x{args.size[1]}, batch "
          f"{args.batch} (the ops of a CUDA step at this batch, counted on the CPU)")
    count = {False: count_kernels, True: count_compiled_kernels}
    rows = [(kind, count[kind.endswith("+compile")](kind, args.preset, args.batch, list(args.size))) for kind in kinds]
    base = rows[0][1]
    for kind, n in rows:
        print(f"  {kind:<20}{n:>7,}  {n / base:.2f}x {rows[0][0]}")
    return rows


if __name__ == "__main__":
    main()
