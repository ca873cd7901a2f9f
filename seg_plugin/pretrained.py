"""FEC ImageNet weights for smp's ``encoder_weights="imagenet"``, offline: the cache layout, the converter and
installer, smp's ``pretrained_settings`` for the registry encoders, and loading into an encoder built without them.

smp 0.6 loads a registry encoder's weights with ``hf_hub_download(repo_id, revision=...)`` (``config.json``
and ``model.safetensors``), which answers from the local Hugging Face cache alone when ``revision`` is a
commit hash whose snapshot holds the files. FEC weights are not on the Hub, so :func:`install` converts an
official FEC ImageNet checkpoint into the encoder's state dict and writes that snapshot
(``fec-backbone/<encoder>.imagenet`` at :data:`REVISION`) into ``huggingface_hub``'s cache
(``HF_HUB_CACHE`` / ``HF_HOME``); its command line is ``python -m seg_plugin.weights``. Afterwards
``smp.Unet("fec_s")`` loads them; before, it raises :class:`WeightsNotInstalledError`, which says to run
the command or pass ``encoder_weights=None``. :func:`load_imagenet_weights` puts the same weights into an
encoder built without them (``fec_s`` or smp's ``tu-fec_small`` route), so that a model's saved config need
not ask for them: the trainer builds FEC encoders that way.

This module depends on the core package only (it builds the converted state dict from
:class:`fec_backbone.FEC`); :mod:`seg_plugin.encoder` builds smp's registry entries from it. (The command
line lives in :mod:`seg_plugin.weights`, which the package does not import, so ``python -m`` runs it cleanly.)
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Mapping, Optional

import torch
import torch.nn as nn
from huggingface_hub import constants
from huggingface_hub.file_download import repo_folder_name

from fec_backbone import FEC, VARIANTS, CheckpointError, detect_variant, fit_state_dict, read_fec_weights
from fec_backbone.training import atomic_write

__all__ = ["ENCODER_VARIANTS", "REVISION", "WeightsNotInstalledError", "encoder_base", "has_output_norms", "install",
           "installed_path", "load_encoder_weights", "load_imagenet_weights", "pretrained_settings", "repo_id"]

#: smp encoder name -> FEC variant (timm name).
ENCODER_VARIANTS: Dict[str, str] = {"fec_s": "fec_small", "fec_b": "fec_base", "fec_l": "fec_large"}
#: The cache revision the converted weights are stored under (a fixed id of this file format, in the
#: 40-hex form that lets ``hf_hub_download`` answer from the cache alone).
REVISION: str = hashlib.sha1(b"fec-backbone smp encoder weights, format 1").hexdigest()
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"


class WeightsNotInstalledError(FileNotFoundError):
    """ImageNet weights were requested for an FEC encoder whose converted weights are not installed."""


def repo_id(encoder: str) -> str:
    """The (local) Hugging Face repository id smp looks up for ``encoder``'s ImageNet weights."""
    return f"fec-backbone/{encoder}.imagenet"


def _snapshot(encoder: str, cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """The cache folder whose files ``hf_hub_download`` returns for ``encoder``'s weights at :data:`REVISION`."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    return cache / repo_folder_name(repo_id=repo_id(encoder), repo_type="model") / "snapshots" / REVISION


def installed_path(encoder: str, cache_dir: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """The cached ``model.safetensors`` of ``encoder`` if it is installed (with its config), else None."""
    snapshot = _snapshot(encoder, cache_dir)
    installed = (snapshot / WEIGHTS_FILE).is_file() and (snapshot / CONFIG_FILE).is_file()
    return snapshot / WEIGHTS_FILE if installed else None


def encoder_base(name: str) -> Optional[str]:
    """The registry encoder (``fec_s``/``fec_b``/``fec_l``) whose ImageNet weights fit the smp encoder
    ``name``: itself, or the one of smp's timm route to the same variant (``tu-fec_small`` -> ``fec_s``;
    a timm pretrained tag is ignored); None for other encoders."""
    if name in ENCODER_VARIANTS:
        return name
    if name.startswith("tu-"):
        variant = name[3:].split(".", 1)[0]
        return next((base for base, v in ENCODER_VARIANTS.items() if v == variant), None)
    return None


def _not_installed(encoder: str, base: str) -> WeightsNotInstalledError:
    return WeightsNotInstalledError(
        f"FEC ImageNet weights for smp encoder {encoder!r} are not installed (looked in "
        f"{_snapshot(base)}). FEC weights are not on the Hugging Face Hub; convert the official "
        f"checkpoint once with\n    python -m seg_plugin.weights install --encoder {base} "
        f"--checkpoint /path/to/{ENCODER_VARIANTS[base]}.pth\n"
        f"or build the model without them: smp.Unet({encoder!r}, encoder_weights=None)"
    )


class _FecPretrainedSettings(dict):
    """smp's ``pretrained_settings`` mapping (``{"imagenet": {"repo_id", "revision"}}``) that checks,
    when smp looks the weights up, that they are installed, and otherwise says how to install them."""

    def __init__(self, encoder: str, base: str):
        super().__init__(imagenet={"repo_id": repo_id(base), "revision": REVISION})
        self.encoder, self.base = encoder, base

    def __getitem__(self, key: str) -> Dict[str, str]:
        settings = super().__getitem__(key)
        if installed_path(self.base) is None:
            raise _not_installed(self.encoder, self.base)
        return settings

    def __reduce__(self):
        return (type(self), (self.encoder, self.base))


def pretrained_settings(encoder: str, base: Optional[str] = None) -> Dict[str, Dict[str, str]]:
    """``pretrained_settings`` for the registry entry ``encoder`` (weights of ``base``, default itself)."""
    base = base or encoder
    if base not in ENCODER_VARIANTS:
        raise KeyError(f"unknown FEC encoder {base!r}; choose one of {sorted(ENCODER_VARIANTS)}")
    return _FecPretrainedSettings(encoder, base)


def _encoder_target(encoder: str) -> FEC:
    """A fresh core model with exactly the state-dict keys of ``encoder``'s smp encoder at depth 5: the
    variant with its output norms (``feature_norms``), no classifier, no final norm."""
    target = FEC(**VARIANTS[ENCODER_VARIANTS[encoder]], num_classes=0, feature_norms=True)
    target.prune_intermediate_layers(list(range(len(target.stages))), prune_norm=True, prune_head=True)
    return target


def convert(state_dict: Mapping[str, torch.Tensor], encoder: str) -> Dict[str, torch.Tensor]:
    """FEC weights (:func:`fec_backbone.read_fec_weights`) as ``encoder``'s full state dict (depth 5).

    Stem and stages come from the checkpoint. The output norms come from it too when it has them (the
    backbone of an official mmdet/mmseg file: ``norm0/2/4/6``, which the core reads as ``out_norms.*``);
    an ImageNet checkpoint has none, and they keep their fresh initialisation (weight 1, bias 0), as in
    the reference's segmentation backbone.
    """
    target = _encoder_target(encoder)
    out = fit_state_dict(state_dict, target, allow_missing=("out_norms.",))
    out.update({k: v for k, v in target.state_dict().items() if k.startswith("out_norms.") and k not in out})
    return {k: v.detach().contiguous() for k, v in out.items()}


def has_output_norms(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether FEC weights hold output norms (a dense-prediction backbone: official mmdet/mmseg files)."""
    return any(k.startswith("out_norms.") for k in state_dict)


def _fec_of(encoder: nn.Module) -> FEC:
    """The core model inside an smp encoder: the registry encoder itself, or the model that smp's
    ``tu-`` route wraps (``TimmUniversalEncoder.model``, timm's feature wrapper, ``.model``)."""
    if isinstance(encoder, FEC):
        return encoder
    inner = getattr(getattr(encoder, "model", None), "model", None)
    if isinstance(inner, FEC):
        return inner
    raise TypeError(f"{type(encoder).__name__} is not an FEC smp encoder (fec_s/b/l or tu-fec_*)")


def load_encoder_weights(encoder: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load FEC weights in this package's layout (an installed snapshot, or
    :func:`fec_backbone.read_fec_weights` of an official checkpoint) into an smp FEC encoder of either
    route, checked key by key (:func:`fec_backbone.fit_state_dict`): the classifier, the final norm and
    stages or output norms beyond the encoder's depth are left out, output norms the weights lack keep
    their initial values, another ``in_channels`` adapts the stem."""
    fec = _fec_of(encoder)
    state = dict(state_dict)
    if fec.out_norms is None:
        state = {k: v for k, v in state.items() if not k.startswith("out_norms.")}
    fitted = fit_state_dict(state, fec, allow_missing=("out_norms.",), staged=("out_norms",))
    kept = {k: v for k, v in fec.state_dict().items() if k.startswith("out_norms.") and k not in fitted}
    fec.load_state_dict({**fitted, **kept})


def load_imagenet_weights(encoder: nn.Module, name: str, cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """Load the installed ImageNet weights of smp encoder ``name`` (``fec_s``/``fec_b``/``fec_l`` or
    ``tu-fec_small``/``_base``/``_large``) into ``encoder``, a model's encoder built with
    ``encoder_weights=None``; the weights are then part of the model's state dict and its saved config
    does not ask for them. Returns the file read; :class:`WeightsNotInstalledError` when not installed."""
    from safetensors.torch import load_file

    base = encoder_base(name)
    if base is None:
        raise KeyError(f"{name!r} is not an FEC smp encoder; FEC ImageNet weights fit {sorted(ENCODER_VARIANTS)} "
                       f"and {sorted('tu-' + v for v in ENCODER_VARIANTS.values())}")
    path = installed_path(base, cache_dir)
    if path is None:
        raise _not_installed(name, base)
    load_encoder_weights(encoder, load_file(path, device="cpu"))
    return path


def install(checkpoint: str | os.PathLike, encoder: Optional[str] = None,
            cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """Convert an official FEC ImageNet checkpoint and install it for smp's ``encoder_weights="imagenet"``.

    Any checkpoint shape :func:`fec_backbone.read_fec_weights` takes (a training file gives its EMA
    weights; an official mmdet/mmseg file, e.g. ``mask_rcnn_fec_small_fpn_1x_coco.pth``, its backbone with
    its output norms). Returns the installed ``model.safetensors``. Raises
    :class:`~fec_backbone.checkpoint.CheckpointError`
    naming the file and the problem for unreadable checkpoints or the wrong variant. Each file is
    written atomically, the weights before the config that marks them installed.
    """
    from safetensors.torch import save as save_safetensors
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    state, where = read_fec_weights(checkpoint), repr(os.fspath(checkpoint))
    actual = {variant: name for name, variant in ENCODER_VARIANTS.items()}.get(detect_variant(state))
    if encoder is None and actual is None:
        raise CheckpointError(f"{where} fits none of the FEC variants ({', '.join(ENCODER_VARIANTS.values())})")
    encoder = encoder or actual
    if encoder not in ENCODER_VARIANTS:
        raise KeyError(f"unknown FEC encoder {encoder!r}; choose one of {sorted(ENCODER_VARIANTS)}")
    try:
        weights = convert(state, encoder)
    except CheckpointError as err:
        if actual is None:
            raise CheckpointError(f"{where} cannot be installed as {encoder}: {err}") from err
        raise CheckpointError(
            f"{where} is an {ENCODER_VARIANTS[actual]} checkpoint (smp encoder {actual}), "
            f"not {ENCODER_VARIANTS[encoder]} ({encoder}): pass --encoder {actual}, or leave --encoder out"
        ) from err
    config = {
        "encoder": encoder,
        "variant": ENCODER_VARIANTS[encoder],
        "source_checkpoint": os.path.abspath(os.fspath(checkpoint)),
        "source_sha256": hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest(),
        "output_norms": "checkpoint" if has_output_norms(state) else "fresh",
        "input_space": "RGB",
        "input_range": [0, 1],
        "mean": list(IMAGENET_DEFAULT_MEAN),
        "std": list(IMAGENET_DEFAULT_STD),
    }
    snapshot = _snapshot(encoder, cache_dir)
    for name, data in ((WEIGHTS_FILE, save_safetensors(weights, metadata={"format": "pt"})),
                       (CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())):
        with atomic_write(snapshot / name) as f:
            f.write(data)
    return snapshot / WEIGHTS_FILE
