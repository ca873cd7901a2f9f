"""Detectron2 plugin for the FEC backbone (Detectron2 main; see docs/detectron2.md).

``import d2_plugin`` registers the backbones ``build_fec_backbone``, ``build_fec_fpn_backbone`` and
``build_retinanet_fec_fpn_backbone`` with Detectron2's ``BACKBONE_REGISTRY``; :func:`add_fec_config`
adds the ``MODEL.FEC`` options; :class:`FECCheckpointer` (a ``DetectionCheckpointer``) loads
``MODEL.WEIGHTS``, FEC ImageNet checkpoints and the official mmdet COCO checkpoints included. It also registers the toy dataset names
``fec_toy_{train,val}`` / ``fec_toy_mini_{train,val}`` (:mod:`d2_plugin.datasets`)::

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
from .datasets import register_all_toy_datasets

# Detectron2's builtin style: the toy dataset names exist from import on, under $DETECTRON2_DATASETS;
# their data is generated on request (python -m d2_plugin.toy_data, or the demo).
register_all_toy_datasets()

__all__ = [
    "FECBackbone",
    "FECCheckpointer",
    "add_fec_config",
    "build_fec_backbone",
    "build_fec_fpn_backbone",
    "build_retinanet_fec_fpn_backbone",
]
