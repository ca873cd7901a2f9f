"""Reading FEC checkpoints safely and reporting clearly when one does not fit.

Files are read with ``torch.load(weights_only=True)`` (no pickled code runs) or as ``.safetensors``.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, Mapping

import torch

__all__ = ["CheckpointError", "read_checkpoint", "unwrap_state_dict", "check_keys"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


def unwrap_state_dict(obj: Mapping) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint saved raw, under ``state_dict``/``model``, or by DDP (``module.``)."""
    for nest in ("state_dict", "model"):
        if isinstance(obj.get(nest), Mapping):
            obj = obj[nest]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):] if k.startswith("module.") else k: v for k, v in tensors.items()}
    return tensors


def read_checkpoint(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """Read a ``.pth``/``.pt``/``.safetensors`` checkpoint into a flat state dict, or raise
    :class:`CheckpointError` naming the file and the problem."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path!r}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch/safetensors raise many types for damaged files
        raise CheckpointError(
            f"cannot read checkpoint {path!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
            "The file is damaged, truncated, not a PyTorch/safetensors checkpoint, or holds pickled objects "
            "other than tensors (only weights are loaded, with weights_only=True)"
        ) from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path!r} holds a {type(obj).__name__}, not a state dict")
    state_dict = unwrap_state_dict(obj)
    if not state_dict:
        raise CheckpointError(f"checkpoint {path!r} contains no tensors")
    return state_dict


def check_keys(
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    what: str,
    ignore_prefixes: Iterable[str] = (),
) -> None:
    """Raise :class:`CheckpointError` listing missing keys, unexpected keys and shape mismatches."""
    ignore = tuple(ignore_prefixes)
    keys = {k for k in state_dict if not k.startswith(ignore)}
    wanted = {k for k in expected if not k.startswith(ignore)}
    missing, unexpected = sorted(wanted - keys), sorted(keys - wanted)
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(keys & wanted)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return

    def show(items: list) -> str:
        return ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")

    lines = [f"the checkpoint does not fit {what}:"]
    if missing:
        lines.append(f"  missing keys: {show(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys: {show(unexpected)}")
    if shapes:
        lines.append(f"  shape mismatches: {show(shapes)}")
    lines.append("  Check that the checkpoint is an FEC checkpoint of the same variant (fec_small/base/large).")
    raise CheckpointError("\n".join(lines))
