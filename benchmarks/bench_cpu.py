"""CPU benchmark: FEC's gather/scatter clustering against the reference formulation, same inputs.

Measures, each case in a fresh process (so peak memory is that case's own):
  * the clustering op alone (forward + backward) at the shapes of stage 1;
  * the whole model, forward + backward, at 224 px (batch 32, classification preset) and at
    detection resolution (800x1344, batch 1, detection preset);
  * the CPU clustering backends (torch, matmul) on the op (the fused ``triton`` backend is for GPUs:
    ``bench_gpu.py``);
  * with ``--compiled``, the detection step of our model eager against ``torch.compile`` (static shape,
    as ``MODEL.FEC.COMPILE`` builds it), with the one-off compile time.

    python benchmarks/bench_cpu.py            # everything (a few minutes on 2 cores)
    python benchmarks/bench_cpu.py --quick    # smaller shapes, a smoke run
    python benchmarks/bench_cpu.py --compiled --skip-detection   # adds the compiled row (minutes to compile)
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _op_case(impl: str, shape: Tuple[int, int, int, int, int], repeats: int, backend: str) -> Dict[str, float]:
    import torch
    import torch.nn.functional as F

    from fec_backbone import cluster_ops
    from reference_fec import dense_cluster

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    g, c, h, w, m = shape
    layout = (g, c, h, w) if impl == "reference" else (g, h, w, c)  # ours runs on channels-last maps
    x = torch.randn(*layout, requires_grad=True)
    v = torch.randn(*layout, requires_grad=True)
    alpha = torch.ones(1, requires_grad=True)
    beta = torch.zeros(1, requires_grad=True)

    def centres(maps: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(maps.permute(0, 3, 1, 2), (m, m)).flatten(2).transpose(1, 2)

    def step() -> None:
        if impl == "reference":
            out = dense_cluster(x, v, (m, m), alpha, beta)
        else:
            out, _ = cluster_ops.cluster_mix(
                x.view(g, h * w, c), centres(x), v.view(g, h * w, c), centres(v), alpha, beta, backend
            )
        out.sum().backward()

    base = _rss_mib()
    seconds = _time(step, repeats)
    return {"seconds": seconds, "peak_mib": _rss_mib() - base}


def _model_case(impl: str, name: str, preset: str, batch: int, size: Tuple[int, int], repeats: int) -> Dict[str, float]:
    import torch

    from helpers import oracle_pair

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    ref, ours = oracle_pair(name, preset)
    model = ref if impl == "reference" else ours
    del ref, ours
    x = torch.randn(batch, 3, *size)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    base = _rss_mib()
    seconds = _time(step, repeats)
    return {"seconds": seconds, "peak_mib": _rss_mib() - base}


def _compiled_case(mode: str, preset: str, batch: int, size: Tuple[int, int], repeats: int) -> Dict[str, float]:
    """Our FEC-S forward+backward, eager or compiled (``mode``), and the first step's seconds."""
    import timm
    import torch

    import fec_backbone  # noqa: F401  (registers the models)

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.manual_seed(0)
    model = timm.create_model("fec_small", preset=preset, features_only=True)
    run = torch.compile(model, fullgraph=True, dynamic=False) if mode == "compiled" else model
    x = torch.randn(batch, 3, *size)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        sum(f.float().mean() for f in run(x)).backward()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    base = _rss_mib()
    seconds = _time(step, repeats)
    return {"seconds": seconds, "first_s": first, "peak_mib": _rss_mib() - base}


def _run(fn: Callable, *args) -> Dict[str, float]:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, one repeat")
    parser.add_argument("--skip-detection", action="store_true", help="skip the 800x1344 model case")
    parser.add_argument("--compiled", action="store_true", help="add the eager-vs-compiled detection step")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else 3
    from fec_backbone import cluster_ops

    backends = tuple(b for b in cluster_ops.available_backends() if b != "triton")
    print(f"threads={os.environ.get('BENCH_THREADS', '2')}, CPU clustering backends: {', '.join(backends)}")
    rows = []

    # Stage-1 clustering of FEC-S at 224 px, batch 32: 4 heads -> G=128 maps of 24 x 56 x 56, 4x4 centres.
    op_shape = (16, 24, 56, 56, 4) if args.quick else (128, 24, 56, 56, 4)
    ref = _run(_op_case, "reference", op_shape, repeats, "torch")
    for backend in backends:
        ours = _run(_op_case, "ours", op_shape, repeats, backend)
        rows.append((f"cluster op fwd+bwd {op_shape[:4]}, M=16 [{backend}]", ref, ours))
    # Detection layout: stage 1 at 800x1344 with 2x2 folds -> G=16 maps of 24 x 100 x 168, 7x7 centres.
    det_shape = (4, 24, 50, 84, 7) if args.quick else (16, 24, 100, 168, 7)
    ref = _run(_op_case, "reference", det_shape, repeats, "torch")
    ours = _run(_op_case, "ours", det_shape, repeats, "torch")
    rows.append((f"cluster op fwd+bwd {det_shape[:4]}, M=49", ref, ours))

    batch, size = (4, (224, 224)) if args.quick else (32, (224, 224))
    ref = _run(_model_case, "reference", "fec_small", "classification", batch, size, repeats)
    ours = _run(_model_case, "ours", "fec_small", "classification", batch, size, repeats)
    rows.append((f"FEC-S fwd+bwd {size[0]}px batch {batch}", ref, ours))
    if not args.skip_detection:
        det = (416, 672) if args.quick else (800, 1344)
        ref = _run(_model_case, "reference", "fec_small", "detection", 1, det, 1)
        ours = _run(_model_case, "ours", "fec_small", "detection", 1, det, 1)
        rows.append((f"FEC-S fwd+bwd {det[0]}x{det[1]} batch 1, detection preset", ref, ours))

    print(f"\n{'case':<58}{'reference s':>12}{'ours s':>9}{'speed-up':>10}{'ref MiB':>9}{'ours MiB':>9}{'mem ratio':>10}")
    for label, r, o in rows:
        print(
            f"{label:<58}{r['seconds']:>12.3f}{o['seconds']:>9.3f}{r['seconds'] / o['seconds']:>9.2f}x"
            f"{r['peak_mib']:>9.0f}{o['peak_mib']:>9.0f}{r['peak_mib'] / max(o['peak_mib'], 1):>9.2f}x"
        )
    if args.compiled:
        det = (416, 672) if args.quick else (800, 1344)
        eager = _run(_compiled_case, "eager", "detection", 1, det, repeats)
        compiled = _run(_compiled_case, "compiled", "detection", 1, det, repeats)
        print(f"\n{'case':<58}{'eager s':>9}{'compiled s':>12}{'speed-up':>10}{'compile s':>11}{'mem ratio':>10}")
        print(
            f"{f'FEC-S detection backbone fwd+bwd {det[0]}x{det[1]} batch 1':<58}{eager['seconds']:>9.3f}"
            f"{compiled['seconds']:>12.3f}{eager['seconds'] / compiled['seconds']:>9.2f}x"
            f"{compiled['first_s'] - compiled['seconds']:>11.0f}"
            f"{eager['peak_mib'] / max(compiled['peak_mib'], 1):>9.2f}x"
        )


if __name__ == "__main__":
    main()
