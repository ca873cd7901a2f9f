"""Detectron2 plugin for the FEC backbone (Detectron2 main; see docs/detectron2.md).

``import d2_plugin`` registers the backbones ``build_fec_backbone``, ``build_fec_fpn_backbone`` and
``build_retinanet_fec_fpn_backbone`` with Detectron2's ``BACKBONE_REGISTRY``; :func:`add_fec_config`
adds the ``MODEL.FEC`` options; :class:`FECCheckpointer` (a ``DetectionCheckpointer``) loads
``MODEL.WEIGHTS``, FEC ImageNet checkpoints included::

    import d2_plugin
    from detectron2.config import get_cfg
    from fec_backbone.model_zoo import get_config_file

    cfg = get_cfg()
    d2_plugin.add_fec_config(cfg)
    cfg.merge_from_file(get_config_file("detectron2/mask_rcnn_fec_s_fpn_1x_coco.yaml"))
"""
from .backbone import (
    FECBackbone,
    build_fec_backbone,
    build_fec_fpn_backbone,
    build_retinanet_fec_fpn_backbone,
)
from .checkpoint import FECCheckpointer
from .config import add_fec_config

__all__ = [
    "FECBackbone",
    "FECCheckpointer",
    "add_fec_config",
    "build_fec_backbone",
    "build_fec_fpn_backbone",
    "build_retinanet_fec_fpn_backbone",
]
