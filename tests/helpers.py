"""Helpers shared by the tests: the oracle paired with our model, and error measures."""
from __future__ import annotations

from typing import Dict, Tuple

import timm
import torch

import fec_backbone
from fec_backbone.checkpoint import map_official_key
from reference_fec import RefFEC, reference_model


def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 1.0) -> float:
    """Largest absolute difference relative to the largest magnitude of the reference ``b``.

    Magnitudes below ``floor`` count as ``floor``: small quantities (a scalar gradient summed over
    many points, a gradient that is zero up to rounding) are compared absolutely, not by their noise.
    """
    return ((a - b).abs().max() / b.abs().max().clamp_min(floor)).item()


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
