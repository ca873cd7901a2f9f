"""FEC ImageNet weights for smp's standard weight mechanism, offline (command: :mod:`seg_plugin.weights`).

smp 0.6 loads a registry encoder's weights with ``hf_hub_download(repo_id, revision)`` from the
entry's ``pretrained_settings`` (``config.json`` and ``model.safetensors``), which serves files from
the local Hugging Face cache without touching the network when ``revision`` is a commit hash and the
files are cached. FEC weights are not published on the Hub, so the ``install`` command converts an
official FEC ImageNet checkpoint into the encoder's state dict and writes it into that cache under a
fixed repository id and revision (``fec-backbone/<encoder>.imagenet`` at :data:`REVISION`):

    python -m seg_plugin.weights install --checkpoint fec_small.pth            # encoder detected
    python -m seg_plugin.weights install --checkpoint fec_small.pth --encoder fec_s --cache-dir DIR
    python -m seg_plugin.weights status

Afterwards ``smp.Unet("fec_s")`` (``encoder_weights="imagenet"``, smp's default) loads them. Before,
it raises :class:`WeightsNotInstalledError`, which says to run the command or pass
``encoder_weights=None``. The cache is ``huggingface_hub``'s (``HF_HUB_CACHE`` / ``HF_HOME``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Mapping, Optional

import torch

from fec_backbone import CheckpointError, detect_variant, fit_state_dict, read_fec_weights
from fec_backbone.training import atomic_write

__all__ = [
    "ENCODER_VARIANTS",
    "REVISION",
    "WeightsNotInstalledError",
    "install",
    "installed_path",
    "pretrained_settings",
    "repo_id",
]

#: smp encoder name -> FEC variant (timm name).
ENCODER_VARIANTS: Dict[str, str] = {"fec_s": "fec_small", "fec_b": "fec_base", "fec_l": "fec_large"}
#: The cache revision the converted weights are stored under (a fixed id of this file format, in the
#: 40-hex form that lets ``hf_hub_download`` answer from the cache alone).
REVISION: str = hashlib.sha1(b"fec-backbone smp encoder weights, format 1").hexdigest()
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class WeightsNotInstalledError(FileNotFoundError):
    """ImageNet weights were requested for an FEC encoder whose converted weights are not installed."""


def repo_id(encoder: str) -> str:
    """The (local) Hugging Face repository id smp looks up for ``encoder``'s ImageNet weights."""
    return f"fec-backbone/{encoder}.imagenet"


def _cache_dir(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _repo_dir(encoder: str, cache_dir: Optional[str | os.PathLike] = None) -> Path:
    return _cache_dir(cache_dir) / ("models--" + repo_id(encoder).replace("/", "--"))


def installed_path(encoder: str, cache_dir: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """The cached ``model.safetensors`` of ``encoder`` if it is installed (with its config), else None."""
    snapshot = _repo_dir(encoder, cache_dir) / "snapshots" / REVISION
    weights, config = snapshot / WEIGHTS_FILE, snapshot / CONFIG_FILE
    return weights if weights.is_file() and config.is_file() else None


def _missing_message(encoder: str, base: str) -> str:
    where = _repo_dir(base) / "snapshots" / REVISION
    return (
        f"FEC ImageNet weights for smp encoder {encoder!r} are not installed (looked in {where}). "
        "FEC weights are not on the Hugging Face Hub; convert the official checkpoint once with\n"
        f"    python -m seg_plugin.weights install --encoder {base} "
        f"--checkpoint /path/to/{ENCODER_VARIANTS[base]}.pth\n"
        f"or build the model without them: smp.Unet({encoder!r}, encoder_weights=None)"
    )


class _FecPretrainedSettings(dict):
    """smp's ``pretrained_settings`` mapping (``{"imagenet": {"repo_id", "revision"}}``) that checks,
    when smp looks the weights up, that they are installed, and otherwise says how to install them."""

    def __init__(self, encoder: str, base: str):
        super().__init__(imagenet={"repo_id": repo_id(base), "revision": REVISION})
        self.encoder = encoder
        self.base = base

    def __getitem__(self, key: str) -> Dict[str, str]:
        settings = super().__getitem__(key)
        if installed_path(self.base) is None:
            raise WeightsNotInstalledError(_missing_message(self.encoder, self.base))
        return settings

    def __reduce__(self):
        return (type(self), (self.encoder, self.base))


def pretrained_settings(encoder: str, base: Optional[str] = None) -> Dict[str, Dict[str, str]]:
    """``pretrained_settings`` for the registry entry ``encoder`` (weights of ``base``, default itself)."""
    base = base or encoder
    if base not in ENCODER_VARIANTS:
        raise KeyError(f"unknown FEC encoder {base!r}; choose one of {sorted(ENCODER_VARIANTS)}")
    return _FecPretrainedSettings(encoder, base)


def detect_encoder(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The FEC encoder name whose architecture the FEC weights fit, or CheckpointError."""
    variant = detect_variant(state_dict)
    for encoder, name in ENCODER_VARIANTS.items():
        if name == variant:
            return encoder
    raise CheckpointError(f"the checkpoint fits none of the FEC variants ({', '.join(ENCODER_VARIANTS.values())})")


def convert(state_dict: Mapping[str, torch.Tensor], encoder: str) -> Dict[str, torch.Tensor]:
    """FEC weights (:func:`fec_backbone.read_fec_weights`) as ``encoder``'s full state dict (depth 5).

    Stem and stages come from the checkpoint; the output norms, which the ImageNet model does not have,
    keep their fresh initialisation (weight 1, bias 0), as in the reference's segmentation backbone.
    """
    from .encoder import FecEncoder
    from .registry import encoder_params

    target = FecEncoder(**encoder_params(encoder))
    out = fit_state_dict(state_dict, target, allow_missing=("out_norms.",))
    out.update({k: v for k, v in target.state_dict().items() if k.startswith("out_norms.")})
    return {k: v.detach().contiguous() for k, v in out.items()}


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def _place(repo: Path, name: str, data: bytes) -> None:
    """Store ``data`` as the cache does: a content-addressed blob and a snapshot link to it."""
    digest = hashlib.sha256(data).hexdigest()
    blob = repo / "blobs" / digest
    if not blob.is_file():
        _write_atomic(blob, data)
    link = repo / "snapshots" / REVISION / name
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{name}.link.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(os.path.relpath(blob, link.parent), tmp)
        os.replace(tmp, link)
    except OSError:  # file systems without symlinks: a copy, as huggingface_hub itself falls back to
        _write_atomic(link, data)


def install(
    checkpoint: str | os.PathLike,
    encoder: Optional[str] = None,
    cache_dir: Optional[str | os.PathLike] = None,
) -> Path:
    """Convert an official FEC ImageNet checkpoint and install it for smp's ``encoder_weights="imagenet"``.

    Any checkpoint shape :func:`fec_backbone.read_fec_weights` takes (a training file gives its EMA
    weights). Returns the installed ``model.safetensors``. Raises :class:`~fec_backbone.checkpoint.CheckpointError`
    naming the file and the problem for unreadable checkpoints or the wrong variant.
    """
    from safetensors.torch import save as save_safetensors
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    state = read_fec_weights(checkpoint)
    if encoder is None:
        encoder = detect_encoder(state)
    elif encoder not in ENCODER_VARIANTS:
        raise KeyError(f"unknown FEC encoder {encoder!r}; choose one of {sorted(ENCODER_VARIANTS)}")
    try:
        weights = convert(state, encoder)
    except CheckpointError as err:
        try:
            actual = detect_encoder(state)
        except CheckpointError:
            raise CheckpointError(f"{os.fspath(checkpoint)!r} cannot be installed as {encoder}: {err}") from err
        raise CheckpointError(
            f"{os.fspath(checkpoint)!r} is an {ENCODER_VARIANTS[actual]} checkpoint (smp encoder {actual}), "
            f"not {ENCODER_VARIANTS[encoder]} ({encoder}): pass --encoder {actual}, or leave --encoder out"
        ) from err
    config = {
        "encoder": encoder,
        "variant": ENCODER_VARIANTS[encoder],
        "source_checkpoint": os.path.abspath(os.fspath(checkpoint)),
        "source_sha256": hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest(),
        "input_space": "RGB",
        "input_range": [0, 1],
        "mean": list(IMAGENET_DEFAULT_MEAN),
        "std": list(IMAGENET_DEFAULT_STD),
    }
    repo = _repo_dir(encoder, cache_dir)
    _place(repo, WEIGHTS_FILE, save_safetensors(weights, metadata={"format": "pt"}))
    _place(repo, CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    _write_atomic(repo / "refs" / "main", REVISION.encode())
    return repo / "snapshots" / REVISION / WEIGHTS_FILE
