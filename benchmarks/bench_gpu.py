"""GPU benchmark: FEC-S (reference formulation, ours eager and compiled, with the scatter (torch), one-hot
product (matmul) or fused Triton clustering backend) beside timm's resnet18 and poolformer_s12, in one
run, so ratios hold whatever the card.

Settings (as in the performance issue): bf16 autocast, channels_last, 224 px; a training step with
AdamW at batch 128, inference at batch 256; plus FEC-S at detection resolution (800x1344, batch 2,
detection preset): training-step time and peak memory, reference vs ours (compiled rows included), in bf16
and in float32.

    python benchmarks/bench_gpu.py                 # on the GPU machine, about 5 minutes
    python benchmarks/bench_gpu.py --smoke         # tiny sizes on any device, checks the script runs
    python benchmarks/bench_gpu.py --models ours ours+matmul   # a subset of the rows
    python benchmarks/bench_gpu.py --official PATH   # adds an "official" row: the authors' models/fec.py

``--official`` takes a saved copy of the official ``models/fec.py`` (guikunchen/FEC; never part of this
repository). It needs ``einops`` (in the ``dev`` extra) and ``torch_scatter.scatter_sum``; without
torch-scatter a small shim over ``Tensor.scatter_add`` stands in for it. Its timm registrations are not
applied, so they cannot replace this package's ``fec_small``.

Prints one table; with ``--json PATH`` also writes the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import timm  # noqa: E402

import fec_backbone  # noqa: E402,F401
from fec_backbone import cluster_ops  # noqa: E402
from reference_fec import reference_model  # noqa: E402

MODELS = ("official", "reference", "ours", "ours+compile", "ours+matmul", "ours+matmul+compile", "ours+triton",
          "ours+triton+compile", "resnet18", "poolformer_s12")
#: The default rows: each compiled row costs a compile for training and one for inference, so the
#: second compiled variant is left to ``--models`` to keep one run under 8 minutes.
DEFAULT_MODELS = tuple(m for m in MODELS if m not in ("official", "ours+matmul+compile", "ours+triton+compile"))
#: The FEC-S arguments of the official ``fec_small`` (and its detection layout from the official configs).
OFFICIAL_FEC_S = dict(layers=[3, 4, 5, 2], embed_dims=[32, 64, 196, 320], mlp_ratios=[8, 8, 4, 4],
                      downsamples=[True] * 4, down_patch_size=3, down_pad=1, heads=[4, 4, 8, 8], head_dim=[24] * 4)
_official_module = None


def _scatter_sum_shim(src: torch.Tensor, index: torch.Tensor, dim: int = -1, dim_size: int | None = None) -> torch.Tensor:
    """``torch_scatter.scatter_sum`` for an index of src's shape or a 1-D index along ``dim``."""
    dim = dim % src.dim()
    if index.dim() == 1:
        index = index.view([-1 if d == dim else 1 for d in range(src.dim())])
    index = index.expand_as(src)
    size = list(src.shape)
    size[dim] = int(index.max()) + 1 if dim_size is None else dim_size
    return src.new_zeros(size).scatter_add_(dim, index, src)


def load_official(path: str):
    """Import a saved official ``models/fec.py`` as a module, without touching timm's model registry."""
    global _official_module
    import importlib.util
    import types

    import timm.models.registry as timm_registry

    if not os.path.isfile(path):
        raise SystemExit(f"--official {path!r}: no such file; save the official models/fec.py there first")
    try:
        import einops  # noqa: F401
    except ImportError as exc:
        raise SystemExit("--official needs einops: pip install einops (it is in the 'dev' extra)") from exc
    try:
        import torch_scatter  # noqa: F401
    except (ImportError, OSError):
        sys.modules["torch_scatter"] = types.SimpleNamespace(scatter_sum=_scatter_sum_shim)
    spec = importlib.util.spec_from_file_location("official_fec", path)
    module = importlib.util.module_from_spec(spec)
    register = timm_registry.register_model
    timm_registry.register_model = lambda fn: fn  # its fec_small must not replace ours in timm
    try:
        spec.loader.exec_module(module)
    finally:
        timm_registry.register_model = register
    _official_module = module
    return module


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _measure(step: Callable[[], None], device: torch.device, warmup: int, iters: int) -> Dict[str, float]:
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / iters
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return {"seconds": seconds, "peak_mib": peak}


def _model(kind: str, preset: str = "classification") -> torch.nn.Module:
    if kind == "official":
        layout = fec_backbone.PRESETS[preset]
        proposals, folds = list(layout["proposals"]), list(layout["folds"])
        return _official_module.FEC(norm_layer=_official_module.GroupNorm, proposal_w=proposals, proposal_h=proposals,
                                    fold_w=folds, fold_h=folds, **OFFICIAL_FEC_S)
    if kind == "reference":
        layout = fec_backbone.PRESETS[preset]
        return reference_model("fec_small", proposals=layout["proposals"], folds=layout["folds"])
    if kind.startswith("ours"):
        return timm.create_model("fec_small", preset=preset)
    return timm.create_model(kind)


def _prepare(kind: str, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model = model.to(device, memory_format=torch.channels_last)
    if kind.endswith("+compile"):
        model = torch.compile(model, fullgraph=True)
    return model


def _backend(kind: str) -> str:
    """The clustering backend of a row: ``ours+matmul...`` and ``ours+triton...`` name theirs; else torch."""
    return next((b for b in ("matmul", "triton") if f"+{b}" in kind), "torch")


def train_case(
    kind: str, device: torch.device, batch: int, size: tuple, preset: str, warmup: int, iters: int, bf16: bool = True
):
    cluster_ops.set_backend(_backend(kind))
    model = _prepare(kind, _model(kind, preset), device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, *size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    result = _measure(step, device, warmup, iters)
    result["img_s"] = batch / result["seconds"]
    return result


def infer_case(kind: str, device: torch.device, batch: int, size: tuple, warmup: int, iters: int, bf16: bool = True):
    cluster_ops.set_backend(_backend(kind))
    model = _prepare(kind, _model(kind), device).eval()
    x = torch.randn(batch, 3, *size, device=device).to(memory_format=torch.channels_last)

    def step() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            model(x)

    result = _measure(step, device, warmup, iters)
    result["img_s"] = batch / result["seconds"]
    return result


def detection_kinds(models: List[str]) -> List[str]:
    """The rows of the detection table: every FEC row, compiled ones included (one static 800x1344 graph
    each, as ``MODEL.FEC.COMPILE`` builds it), compiled rows last so that a run cut short by a time limit
    has printed the eager ones."""
    fec = [k for k in models if k in ("official", "reference") or k.startswith("ours")]
    return sorted(fec, key=lambda k: k.endswith("+compile"))


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a couple of iterations")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(DEFAULT_MODELS),
                        help="rows to measure (default: all but official and the matmul/triton compiled rows)")
    parser.add_argument("--batch", type=int, nargs=2, metavar=("TRAIN", "INFER"), help="batch sizes (128 256)")
    parser.add_argument("--iters", type=int, nargs=2, metavar=("WARMUP", "TIMED"), help="iterations (10 30)")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast (CPUs without fast bf16)")
    parser.add_argument("--no-detection", action="store_true", help="skip the 800x1344 case")
    parser.add_argument("--official", metavar="PATH", help="a saved official models/fec.py: adds the 'official' row")
    args = parser.parse_args(argv)
    if args.official:
        load_official(args.official)
        if "official" not in args.models:
            args.models = ["official", *args.models]
    elif "official" in args.models:
        parser.error("the 'official' row needs --official PATH (a saved copy of the official models/fec.py)")
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    if args.smoke:
        train_b, infer_b, size, det, warmup, iters = 2, 2, (64, 64), (128, 192), 1, 1
    else:
        train_b, infer_b, size, det, warmup, iters = 128, 256, (224, 224), (800, 1344), 10, 30
    train_b, infer_b = args.batch or (train_b, infer_b)
    warmup, iters = args.iters or (warmup, iters)
    bf16 = not args.fp32
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, timm {timm.__version__}, "
          f"{'bf16 autocast' if bf16 else 'float32'}, channels_last, {size[0]} px, "
          f"train batch {train_b}, inference batch {infer_b}, {warmup} + {iters} iterations")
    rows: Dict[str, Dict[str, Dict[str, float]]] = {}
    began = time.perf_counter()
    for kind in args.models:
        rows[kind] = {
            "train": train_case(kind, device, train_b, size, "classification", warmup, iters, bf16),
            "infer": infer_case(kind, device, infer_b, size, warmup, iters, bf16),
        }
        torch._dynamo.reset()
        print(f"  measured {kind}: train {rows[kind]['train']['img_s']:.0f} img/s, infer "
              f"{rows[kind]['infer']['img_s']:.0f} img/s ({time.perf_counter() - began:.0f} s so far)", flush=True)
    det_kinds = [] if args.no_detection else detection_kinds(args.models)
    det_tables: Dict[str, Dict[str, Dict[str, float]]] = {}
    for kind in det_kinds:
        for precision in ("bf16", "fp32") if bf16 else ("fp32",):
            r = train_case(kind, device, 2, det, "detection", max(1, warmup // 3), max(1, iters // 3),
                           precision == "bf16")
            det_tables.setdefault(precision, {})[kind] = r
            torch._dynamo.reset()
            print(f"  measured detection {kind} {precision}: {r['seconds'] * 1e3:.1f} ms / {r['peak_mib']:.0f} MiB "
                  f"({time.perf_counter() - began:.0f} s so far)", flush=True)
    print(f"\n{'model':<18}{'train img/s':>12}{'train MiB':>11}{'infer img/s':>13}{'infer MiB':>11}")
    for kind, r in rows.items():
        print(f"{kind:<18}{r['train']['img_s']:>12.0f}{r['train']['peak_mib']:>11.0f}"
              f"{r['infer']['img_s']:>13.0f}{r['infer']['peak_mib']:>11.0f}")
    if "poolformer_s12" in rows:
        pf = rows["poolformer_s12"]
        for kind in (k for k in rows if k.startswith("ours")):
            print(f"{kind} / poolformer_s12: train {rows[kind]['train']['img_s'] / pf['train']['img_s']:.2f}x, "
                  f"infer {rows[kind]['infer']['img_s'] / pf['infer']['img_s']:.2f}x")
    for precision, det_rows in det_tables.items():
        base = "official" if "official" in det_rows else "reference"
        if base not in det_rows:
            continue
        ref = det_rows[base]
        print(f"\ndetection {det[0]}x{det[1]} batch 2 train step, {precision}: {base} {ref['seconds'] * 1e3:.1f} ms / "
              f"{ref['peak_mib']:.0f} MiB")
        for kind in (k for k in det_rows if k != base):
            r = det_rows[kind]
            print(f"  {kind}: {r['seconds'] * 1e3:.1f} ms / {r['peak_mib']:.0f} MiB -> "
                  f"{ref['seconds'] / r['seconds']:.2f}x faster, memory ratio {r['peak_mib'] / ref['peak_mib']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"classification": rows, "detection": det_tables}, f, indent=2)


if __name__ == "__main__":
    main()
