"""The Triton clustering kernels compile for real GPUs (sm_90 and sm_80) within their shared memory.

Triton's CPU interpreter runs neither the compiler's type checks nor its resource limits, so this
test compiles, on the CPU, every kernel launch that FEC-S/B/L make in the classification, segmentation
and detection presets (float32, bfloat16 and float16 storage) with ``triton.compile`` for
``GPUTarget("cuda", 90, 32)`` and ``GPUTarget("cuda", 80, 32)`` (Triton ships its own ptxas). The
launches come from :func:`fec_backbone.cluster_kernels.mix_configs` / ``pool_configs``, the functions
the launch code itself uses, so constants, pointer dtypes, ``num_warps`` and ``num_stages`` are exactly
what a GPU run compiles. Compiling needs triton without its interpreter, so it runs in a subprocess
(``python tests/test_triton_compile.py OUT.json``), in up to 4 processes, with Triton's cache in the
temporary folder (:data:`CACHE_DIR`).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import pytest

if os.environ.get("FEC_REQUIRE_TRITON") != "1":
    pytest.importorskip("triton", reason="triton not installed (it ships with torch's CUDA wheels)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Shared memory per block (bytes) an sm_90 (H100/H200) and an sm_80 (A100) kernel may use.
SHARED_LIMITS = {90: 232_448, 80: 166_912}
STORAGE = ("float32", "bfloat16", "float16")
#: Triton's compile cache for this test, in the temporary folder: compiling all configurations takes
#: minutes on 2 CPU cores, a rerun with unchanged kernels seconds (Triton's cache key covers the kernel
#: source, constants, options, target and Triton version, so a changed kernel is compiled again).
CACHE_DIR = os.environ.get("FEC_TRITON_COMPILE_CACHE") or os.path.join(
    tempfile.gettempdir(), f"fec-triton-compile-cache-{os.getuid() if hasattr(os, 'getuid') else 0}"
)
_TL_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64", "int64": "i64"}


def launch_configs() -> Dict[str, object]:
    """Distinct kernel configurations of FEC-S/B/L in every preset and storage dtype, keyed by a
    readable description (what uses it first)."""
    import torch

    from fec_backbone import PRESETS, cluster_kernels
    from fec_backbone import VARIANTS

    configs: Dict[str, object] = {}
    for model, args in VARIANTS.items():
        head_dims = args["head_dim"] if isinstance(args["head_dim"], (tuple, list)) else [args["head_dim"]] * 4
        for preset, layout in PRESETS.items():
            for dtype_name in STORAGE:
                dtype = getattr(torch, dtype_name)
                uses: List[Tuple[str, object]] = []
                for i, (p, c) in enumerate(zip(layout["proposals"], head_dims)):
                    ph, pw = (p, p) if isinstance(p, int) else p
                    uses += [(f"block stage {i}", cfg) for cfg in cluster_kernels.mix_configs(ph * pw, c, c, dtype)]
                for i, c in enumerate(args["embed_dims"][1:], start=1):
                    uses += [(f"pool stage {i}", cfg) for cfg in cluster_kernels.pool_configs(c, dtype)]
                for where, cfg in uses:
                    configs.setdefault(repr(cfg), (f"{model} {preset} {dtype_name} {where}", cfg))
    return {f"{desc}: {cfg.kernel.__name__} {dict(cfg.constexprs)}": cfg for desc, cfg in configs.values()}


def _signature(cfg) -> Dict[str, str]:
    consts = dict(cfg.constexprs)
    ptrs = {name: "*" + _TL_NAMES[str(dtype).replace("torch.", "")] for name, dtype in cfg.pointers}
    return {
        a: "constexpr" if a in consts else ptrs.get(a, "fp32" if a == "eps" else "i32") for a in cfg.kernel.arg_names
    }


def _compile_one(item: Tuple[str, int]) -> Dict[str, object]:
    """Compile one configuration for one target: its shared memory, or the compile error."""
    import triton
    from triton.backends.compiler import GPUTarget

    name, arch = item
    cfg = launch_configs()[name]
    start = time.perf_counter()
    record: Dict[str, object] = dict(config=name, arch=arch)
    try:
        src = triton.compiler.ASTSource(fn=cfg.kernel, signature=_signature(cfg), constexprs=dict(cfg.constexprs))
        compiled = triton.compile(
            src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        )
        record.update(shared=compiled.metadata.shared, num_warps=compiled.metadata.num_warps)
    except Exception as exc:  # a compile error is the finding: report it, go on with the rest
        record["error"] = f"{type(exc).__name__}: {str(exc)[-600:]}"
    record["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(record), flush=True)
    return record


def compile_all(out_path: str) -> None:
    """Compile every configuration for every target (in parallel processes); write one record each."""
    items = [(name, arch) for name in launch_configs() for arch in SHARED_LIMITS]
    with multiprocessing.get_context("spawn").Pool(max(1, min(4, os.cpu_count() or 1))) as pool:
        records = pool.map(_compile_one, items, chunksize=1)
    with open(out_path, "w") as f:
        json.dump(records, f)


def test_every_kernel_launch_compiles_for_sm90_and_sm80_within_shared_memory(tmp_path):
    out = tmp_path / "compiled.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=CACHE_DIR, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = json.loads(out.read_text())
    kernels = {r["config"].split(": ")[1].split(" ")[0] for r in records}
    assert kernels == {"_assign_kernel", "_gather_kernel", "_mix_backward_kernel", "_argmax_kernel"}
    failures = [r for r in records if "error" in r or r["shared"] > SHARED_LIMITS[r["arch"]]]
    assert not failures, "\n".join(
        f"sm_{r['arch']} {r['config']}: " + (r.get("error") or f"shared memory {r['shared']} > {SHARED_LIMITS[r['arch']]}")
        for r in failures
    )


if __name__ == "__main__":
    compile_all(sys.argv[1])
