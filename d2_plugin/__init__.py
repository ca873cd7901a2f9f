"""Detectron2 plugin for the FEC backbone.

``import d2_plugin`` applies the compatibility shims (:mod:`d2_plugin.compat`) and registers the
backbones ``build_fec_backbone``, ``build_fec_fpn_backbone`` and ``build_retinanet_fec_fpn_backbone``
with Detectron2's ``BACKBONE_REGISTRY``; :func:`add_fec_config` adds the ``MODEL.FEC`` options::

    import d2_plugin
    from detectron2.config import get_cfg

    cfg = get_cfg()
    d2_plugin.add_fec_config(cfg)
    cfg.merge_from_file("configs/detectron2/mask_rcnn_fec_s_fpn_1x_coco.yaml")
"""
from . import compat

compat.apply()

from .backbone import (  # noqa: E402  (detectron2 is importable only after the shims)
    FECBackbone,
    build_fec_backbone,
    build_fec_fpn_backbone,
    build_retinanet_fec_fpn_backbone,
    load_imagenet_weights,
)
from .config import add_fec_config  # noqa: E402

__all__ = [
    "FECBackbone",
    "add_fec_config",
    "build_fec_backbone",
    "build_fec_fpn_backbone",
    "build_retinanet_fec_fpn_backbone",
    "load_imagenet_weights",
]
