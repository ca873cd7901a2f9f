"""Registration of the FEC encoders in smp's encoder registry (``smp.encoders.encoders``).

Entries follow smp's format: ``{"encoder": class, "pretrained_settings": {...}, "params": {...}}``;
``params`` are the encoder's constructor arguments, so they are where an entry's FEC settings live
(``preset``, ``proposals``, ``folds``, ``drop_path_rate``, ...). smp passes a model's extra keyword
arguments only to ``tu-`` encoders, so a registry encoder with other settings is a registry entry of
its own: :func:`register_encoder`.
"""
from __future__ import annotations

from typing import Any, Dict

import segmentation_models_pytorch as smp

from fec_backbone import VARIANTS

from .encoder import FecEncoder
from .weights import ENCODER_VARIANTS, pretrained_settings

__all__ = ["encoder_params", "register_encoder", "register_encoders"]

#: Set by smp (``encoder_depth``, ``encoder_output_stride``, ``in_channels``) or fixed by the encoder.
_RESERVED = ("out_channels", "depth", "output_stride", "in_chans", "num_classes", "global_pool")


def encoder_params(base: str, **overrides: Any) -> Dict[str, Any]:
    """Constructor params of the registry encoder ``base`` (``fec_s``/``fec_b``/``fec_l``) with
    ``overrides`` applied: the segmentation preset (proposals 10, 10, 5, 5) unless overridden."""
    if base not in ENCODER_VARIANTS:
        raise KeyError(f"unknown FEC encoder {base!r}; choose one of {sorted(ENCODER_VARIANTS)}")
    reserved = sorted(set(overrides) & set(_RESERVED))
    if reserved:
        raise ValueError(
            f"{reserved} cannot be encoder params: smp sets depth, output stride and input channels "
            "(encoder_depth, encoder_output_stride, in_channels)"
        )
    args = dict(VARIANTS[ENCODER_VARIANTS[base]])
    return {"out_channels": [3, 0, *args["embed_dims"]], "preset": "segmentation", **args, **overrides}


def register_encoder(name: str, base: str = "fec_s", **params: Any) -> str:
    """Register ``name`` as ``base`` with other FEC settings, e.g.
    ``register_encoder("fec_s_det", "fec_s", preset="detection")`` or ``proposals=(7, 7, 7, 7)``.

    ``proposals``/``folds`` change no weights, so the entry shares ``base``'s ImageNet weights. A name
    already registered for another encoder raises ``ValueError``. Returns ``name``.
    """
    existing = smp.encoders.encoders.get(name)
    if existing is not None and existing["encoder"] is not FecEncoder:
        raise ValueError(f"{name!r} is already an smp encoder ({existing['encoder'].__name__}); choose another name")
    smp.encoders.encoders[name] = {
        "encoder": FecEncoder,
        "pretrained_settings": pretrained_settings(name, base),
        "params": encoder_params(base, **params),
    }
    return name


def register_encoders() -> None:
    """Add ``fec_s``, ``fec_b``, ``fec_l`` to ``smp.encoders.encoders`` (idempotent)."""
    for name in ENCODER_VARIANTS:
        register_encoder(name, name)
