"""FEC for segmentation-models-pytorch: encoders ``fec_s``/``fec_b``/``fec_l``, the official Semantic FPN, and
ADE20K training.

``import seg_plugin`` registers the encoders in ``smp.encoders.encoders`` (and, through ``fec_backbone``, the
timm models behind smp's ``tu-fec_small`` route) and the architecture ``smp.SemanticFPN``::

    import segmentation_models_pytorch as smp
    import seg_plugin

    model = smp.Unet(encoder_name="fec_s", encoder_weights=None, classes=150)

Other FEC settings travel with the model through smp's timm route, which records them in a saved
model's config (``smp.Unet("tu-fec_small", feature_norms=True, preset="segmentation", proposals=...)``:
``fec_s`` with those settings). Imports run one way: ``pretrained`` (core only) <- ``encoder`` <- trainer;
``weights`` is the installer's command line (``python -m seg_plugin.weights``), which the package does not import.
"""
from __future__ import annotations

import fec_backbone  # noqa: F401  (registers fec_small/base/large with timm for smp's tu- route)

from .encoder import FecEncoder, encoder_params, fec_encoders, register_encoder, register_encoders
from .pretrained import (ENCODER_VARIANTS, WeightsNotInstalledError, install, installed_path, load_encoder_weights,
                         load_imagenet_weights)
from .semantic_fpn import SemanticFPN, register_architecture

register_encoders()
register_architecture()

__all__ = [
    "ENCODER_VARIANTS",
    "FecEncoder",
    "SemanticFPN",
    "WeightsNotInstalledError",
    "encoder_params",
    "fec_encoders",
    "install",
    "installed_path",
    "load_encoder_weights",
    "load_imagenet_weights",
    "register_architecture",
    "register_encoder",
    "register_encoders",
]
