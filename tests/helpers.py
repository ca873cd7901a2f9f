"""Helpers shared by the tests: the oracle paired with our model, and error measures."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import timm
import torch

import fec_backbone
from fec_backbone.checkpoint import map_official_key
from reference_fec import RefFEC, reference_model


#: Rounding steps, in units of the dtype's epsilon times the scale of the computation, that a result may
#: be off by before it counts as an error (a deep network accumulates a few; see :func:`rel_err`).
NOISE_ULPS = 16


def rel_err(a: torch.Tensor, b: torch.Tensor, scale: Optional[float] = None) -> float:
    """Largest absolute difference of ``a`` from the reference ``b``, relative to ``b``'s own largest
    magnitude, after an allowance for rounding noise.

    ``scale`` is the magnitude of the computation that produced ``b`` (the largest value among the terms
    it sums, e.g. the largest gradient of the same layer): differences up to
    ``NOISE_ULPS * eps(dtype) * scale`` are rounding, not error, and are subtracted. This is what
    matters for a tensor that is zero up to rounding (a gradient that cancels analytically): its noise
    is within the allowance, while any real difference shows in full. Without ``scale`` the allowance is
    taken from ``b`` itself, a purely relative measure. A zero reference gives 0.0 or ``inf``.
    """
    ref = b.abs().max().item()
    allowance = NOISE_ULPS * torch.finfo(b.dtype).eps * (ref if scale is None else scale)
    excess = max((a - b).abs().max().item() - allowance, 0.0)
    if ref == 0.0:
        return 0.0 if excess == 0.0 else math.inf
    return excess / ref


#: aten ops that only make views or metadata: no kernel launch on a GPU.
VIEW_OPS = frozenset({"view", "_unsafe_view", "reshape", "_reshape_alias", "t", "transpose", "permute", "expand",
                      "unsqueeze", "squeeze", "select", "slice", "split", "unbind", "as_strided", "alias", "detach",
                      "promote_types"})


def aten_op_counts(fn: Callable[[], object]) -> Counter:
    """How often ``fn()`` calls each aten op (by name), its backward included when ``fn`` runs one."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts: Counter = Counter()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return counts


def kernel_count(counts: Counter) -> int:
    """The ops of :func:`aten_op_counts` that launch kernels (all but :data:`VIEW_OPS`)."""
    return sum(n for op, n in counts.items() if op not in VIEW_OPS)


def randomize_scalars(model: torch.nn.Module) -> None:
    """Give layer scales and similarity alpha/beta non-trivial values so every path matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_scale" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("sim_alpha"):
                p.uniform_(0.5, 2.0)
            elif name.endswith("sim_beta"):
                p.uniform_(-1.0, 1.0)


def model_results(model: torch.nn.Module, x: torch.Tensor, backend: str) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Logits of ``model(x)`` with ``backend`` as the default clustering backend, and every parameter's
    gradient of their sum of squares."""
    from fec_backbone import cluster_ops

    previous = cluster_ops.get_backend()
    cluster_ops.set_backend(backend)
    try:
        model.zero_grad()
        out = model(x)
    finally:
        cluster_ops.set_backend(previous)
    out.square().sum().backward()  # the graph is built; the backward needs no selection
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_results(mine: Tuple[torch.Tensor, Dict[str, torch.Tensor]],
                        expected: Tuple[torch.Tensor, Dict[str, torch.Tensor]]) -> None:
    """:func:`model_results` of two float64 runs agree: logits to 1e-10, every gradient to 1e-8 of the
    largest gradient (stage-3 ``f`` gradients cancel to rounding noise)."""
    (out, grads), (ref, ref_grads) = mine, expected
    assert rel_err(out.cpu(), ref.cpu()) < 1e-10
    scale = max(g.abs().max().item() for g in ref_grads.values())
    for name, grad in ref_grads.items():
        assert rel_err(grads[name].cpu(), grad.cpu(), scale) < 1e-8, name


def assert_backend_matches_torch(backend: str, device: torch.device, preset: str = "classification") -> None:
    """A whole FEC-S (two 64x64 images, float64) run with ``backend`` gives the ``torch`` backend's
    logits and gradients (:func:`assert_same_results`)."""
    model = timm.create_model("fec_small", num_classes=10, preset=preset).to(device, torch.float64)
    randomize_scalars(model)
    x = torch.randn(2, 3, 64, 64, device=device, dtype=torch.float64)
    expected = model_results(model, x, "torch")
    assert_same_results(model_results(model, x, backend), expected)


def oracle_pair(name: str = "fec_small", preset: str = "classification", **kwargs) -> Tuple[RefFEC, fec_backbone.FEC]:
    """The reference formulation and our model with the same (official-layout) weights."""
    layout = fec_backbone.PRESETS[preset]
    ref = reference_model(name, proposals=layout["proposals"], folds=layout["folds"], **kwargs)
    randomize_scalars(ref)
    ours = timm.create_model(name, preset=preset, **kwargs)
    ours.load_state_dict(fec_backbone.checkpoint_filter_fn(ref.state_dict(), ours), strict=True)
    return ref, ours


def official_state_dict(name: str = "fec_small", seed: int = 0, noise: float = 0.01) -> Dict[str, torch.Tensor]:
    """A stand-in for the authors' ImageNet checkpoint: the official key layout (``patch_embed``,
    ``network.<i>``, ``norm``, ``head``) with distinct, seeded values in every tensor."""
    generator = torch.Generator().manual_seed(seed)
    state = reference_model(name).state_dict()
    return {k: v + noise * torch.randn(v.shape, generator=generator) for k, v in state.items()}


def grads_by_our_key(ref: RefFEC) -> Dict[str, torch.Tensor]:
    return {map_official_key(k): p.grad for k, p in ref.named_parameters()}


def _bins(size: int, count: int) -> list:
    """The index ranges adaptive average pooling of ``size`` into ``count`` bins averages."""
    return [(i * size // count, -(-(i + 1) * size // count)) for i in range(count)]


def brute_force_block_ids(mixer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Cluster ids of a ``ClusterMixer`` on its input ``x`` ``[B, H, W, C]``, computed pixel by pixel
    from the definition: each pixel's fold region, that region's centres (bin averages of the ``f``
    features), ``sigmoid(beta + alpha * cosine)`` to each, the first best one; id ``region * M + centre``.
    Returns ``[B, heads, H, W]``, the layout of :class:`fec_backbone.ClusterRecord` for blocks."""
    b, h, w, _ = x.shape
    feats = (x.double() @ mixer.f.weight.double().flatten(1).T + mixer.f.bias.double()).view(b, h, w, mixer.heads, -1)
    (fh, fw), (ph, pw) = mixer.folds, mixer.proposals
    rh, rw = h // fh, w // fw
    alpha, beta = mixer.sim_alpha.double(), mixer.sim_beta.double()
    ids = torch.empty(b, mixer.heads, h, w, dtype=torch.long)
    for n in range(b):
        for head in range(mixer.heads):
            for ry in range(fh):
                for rx in range(fw):
                    region = feats[n, ry * rh:(ry + 1) * rh, rx * rw:(rx + 1) * rw, head]
                    centres = torch.stack([region[r0:r1, c0:c1].mean((0, 1))
                                           for r0, r1 in _bins(rh, ph) for c0, c1 in _bins(rw, pw)])
                    unit_c = centres / centres.norm(dim=1, keepdim=True)
                    for y in range(rh):
                        for x_ in range(rw):
                            p = region[y, x_]
                            sim = torch.sigmoid(beta + alpha * (unit_c @ (p / p.norm())))
                            ids[n, head, ry * rh + y, rx * rw + x_] = (ry * fw + rx) * ph * pw + int(sim.argmax())
    return ids


def brute_force_pool_targets(pool: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """For each pixel of a (non-dilated) ``ClusterPool``'s input ``x`` ``[B, H, W, C]``, the flat index
    on the ``H/2 x W/2`` output map of the centre it votes for, from the definition: its fold region, the
    region's centres (2x2 averages of the ``conv_f`` features), the first most cosine-similar one, placed
    at its region's offset on the output map. Returns ``[B, H, W]``, as ``ClusterRecord`` for pools."""
    b, h, w, _ = x.shape
    feats = x.double() @ pool.conv_f.weight.double().flatten(1).T + pool.conv_f.bias.double()
    fh, fw = pool.folds
    rh, rw = h // fh, w // fw
    out_w = w // 2
    targets = torch.empty(b, h, w, dtype=torch.long)
    for n in range(b):
        for ry in range(fh):
            for rx in range(fw):
                region = feats[n, ry * rh:(ry + 1) * rh, rx * rw:(rx + 1) * rw]
                cells = [(cy, cx) for cy in range(rh // 2) for cx in range(rw // 2)]
                centres = torch.stack([region[2 * cy:2 * cy + 2, 2 * cx:2 * cx + 2].mean((0, 1)) for cy, cx in cells])
                unit_c = centres / centres.norm(dim=1, keepdim=True)
                for y in range(rh):
                    for x_ in range(rw):
                        p = region[y, x_]
                        cy, cx = cells[int((unit_c @ (p / p.norm())).argmax())]
                        targets[n, ry * rh + y, rx * rw + x_] = (ry * (rh // 2) + cy) * out_w + rx * (rw // 2) + cx
    return targets


def capture_inputs(model: torch.nn.Module, kinds: tuple) -> Tuple[Dict[str, torch.Tensor], list]:
    """Record the input of every submodule of the given types during forward passes: ``(inputs by
    module name, hook handles to remove)``."""
    inputs: Dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, kinds):
            handles.append(module.register_forward_pre_hook(
                lambda m, args, name=name: inputs.__setitem__(name, args[0].detach().clone())))
    return inputs, handles


#: scikit-learn's two sample photographs (427x640 RGB), the real pictures the predict commands are tried on
PHOTOGRAPHS = ("china.jpg", "flower.jpg")


def save_photographs(folder: Path, quality: int = 95) -> Path:
    """Write :data:`PHOTOGRAPHS` into ``folder`` as JPEG files; returns ``folder``."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    for name in PHOTOGRAPHS:
        Image.fromarray(load_sample_image(name)).save(Path(folder) / name, quality=quality)
    return Path(folder)
