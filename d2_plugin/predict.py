"""Run an FEC detector on image files and save what it finds, as Detectron2's ``demo/demo.py`` does.

    python -m d2_plugin.predict --config-file configs/detectron2/mask_rcnn_fec_s_fpn_1x_coco.yaml \
        --input photos/ --output predictions/ --opts MODEL.WEIGHTS mask_rcnn_fec_small_fpn_1x_coco.pth

``--input`` takes files, folders (their image files) or glob patterns. For each image, ``OUTPUT/<name>.png``
is the picture with boxes, masks, class names and scores drawn by Detectron2's ``Visualizer`` and
``OUTPUT/<name>.json`` the instances: boxes XYXY in input pixels, scores, classes (index and name) and masks
as COCO RLE. The model is Detectron2's ``DefaultPredictor`` (resize to ``INPUT.MIN_SIZE_TEST``, padding
to the backbone's size divisibility), its weights loaded by :class:`~d2_plugin.checkpoint.FECCheckpointer`:
a checkpoint of our trainer or an official mmdet FEC detector checkpoint, which must fill the whole model.
Class names come from the metadata of ``DATASETS.TEST[0]`` (COCO's for the COCO configs).
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.engine import DefaultPredictor
from detectron2.structures import Instances
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

from fec_backbone import CheckpointError
from fec_backbone.model_zoo import resolve_config

from .checkpoint import FECCheckpointer
from .config import add_fec_config

__all__ = ["FECPredictor", "PredictError", "get_parser", "instances_to_json", "list_images", "main", "read_rgb_image",
           "setup_cfg"]

logger = logging.getLogger("d2_plugin.predict")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class PredictError(ValueError):
    """An input or a setting the predictor cannot work with; the message says which and why."""


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """The config of ``--config-file`` with the ``MODEL.FEC`` options, ``--opts`` and the confidence threshold."""
    cfg = get_cfg()
    add_fec_config(cfg)
    cfg.merge_from_file(resolve_config(args.config_file))
    cfg.merge_from_list(args.opts)
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = args.confidence_threshold
    cfg.freeze()
    return cfg


class _WholeModelCheckpointer(FECCheckpointer):
    """:class:`FECCheckpointer` that refuses a file leaving model tensors unfilled (a backbone-only or
    classification checkpoint, another detector): predicting with fresh heads would draw noise."""

    def _load_model(self, checkpoint: Dict[str, Any]):
        incompatible = super()._load_model(checkpoint)
        missing = list(incompatible.missing_keys)
        if missing:
            parts = sorted({".".join(k.split(".")[:2]) if k.startswith("backbone.bottom_up.") else k.split(".")[0]
                            for k in missing})
            raise CheckpointError(
                f"MODEL.WEIGHTS {self._path!r} is not a checkpoint of this detector: {len(missing)} of the model's "
                f"tensors are not in it (parts {', '.join(parts)}; e.g. {', '.join(missing[:3])}). A classification "
                "or backbone-only checkpoint initialises training (train_net.py MODEL.WEIGHTS ...); predicting "
                "needs a trained detector of this config: our model_final.pth or an official mmdet FEC checkpoint"
            )
        return incompatible

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        self._path = path
        return super().load(path, checkpointables)


class FECPredictor(DefaultPredictor):
    """``DefaultPredictor`` whose ``MODEL.WEIGHTS`` are read by :class:`FECCheckpointer` and must fill the
    whole model (:class:`~fec_backbone.CheckpointError` otherwise)."""

    def __init__(self, cfg: CfgNode):
        if not cfg.MODEL.WEIGHTS:
            raise PredictError("MODEL.WEIGHTS is empty: give a trained detector, e.g. --opts MODEL.WEIGHTS "
                               "output/model_final.pth (or an official mmdet FEC Mask R-CNN checkpoint)")
        if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
            raise PredictError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but CUDA is not available: "
                               "add MODEL.DEVICE cpu to --opts")
        weights = cfg.MODEL.WEIGHTS
        if "://" not in weights and not os.path.isfile(weights):
            raise PredictError(f"MODEL.WEIGHTS {weights!r} does not exist")
        unloaded = cfg.clone()
        unloaded.defrost()
        unloaded.MODEL.WEIGHTS = ""  # DefaultPredictor's own DetectionCheckpointer then loads nothing
        super().__init__(unloaded)
        self.cfg = cfg
        _WholeModelCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)


def list_images(inputs: Sequence[str]) -> List[str]:
    """The image files that ``--input`` names: files as given, a folder's files with an image extension
    (sorted), a glob pattern's matches (sorted). :class:`PredictError` for a path that names nothing, an
    empty folder or pattern, or two images of the same file name (their outputs would collide)."""
    paths: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, f)))
            if not found:
                raise PredictError(f"--input folder {item!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        elif os.path.isfile(item):
            found = [item]
        else:
            found = sorted(p for p in glob.glob(os.path.expanduser(item)) if os.path.isfile(p))
            if not found:
                raise PredictError(f"--input {item!r} is no file or folder, and no file matches it as a glob pattern")
        paths.extend(found)
    names: Dict[str, str] = {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in names and names[stem] != path:
            raise PredictError(f"{names[stem]!r} and {path!r} have the same name: their outputs would overwrite "
                               "each other; predict them into different --output folders")
        names[stem] = path
    return list(dict.fromkeys(paths))


def read_rgb_image(path: str) -> np.ndarray:
    """The image at ``path`` as ``H x W x 3`` RGB uint8, EXIF orientation applied. Other modes (grey, RGBA,
    palette, CMYK) are converted to RGB and logged (an alpha channel is dropped). :class:`PredictError` for a
    file that is not an image."""
    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise PredictError(f"{path!r} is not an image that PIL can read ({err})") from err
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        channels = len(image.getbands())
        logger.info("%s: %s image (%d channel%s) converted to RGB%s", path, image.mode, channels,
                    "" if channels == 1 else "s", " (alpha channel dropped)" if "A" in image.getbands() else "")
    return convert_PIL_to_numpy(image, "RGB")


def instances_to_json(instances: Instances, class_names: Optional[Sequence[str]]) -> List[Dict[str, Any]]:
    """One dict per instance: ``bbox`` (XYXY, input pixels), ``score``, ``category_id`` (the model's class
    index), ``category_name`` and, for masks, ``segmentation`` (COCO RLE: ``size`` [H, W] and ``counts``)."""
    boxes = instances.pred_boxes.tensor.tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    masks = instances.pred_masks.numpy() if instances.has("pred_masks") else None
    results = []
    for i, (box, score, cls) in enumerate(zip(boxes, scores, classes)):
        item: Dict[str, Any] = {"bbox": [round(v, 2) for v in box], "score": round(score, 4), "category_id": cls,
                                "category_name": class_names[cls] if class_names else str(cls)}
        if masks is not None:
            rle = mask_util.encode(np.asfortranarray(masks[i].astype(np.uint8)))
            item["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        results.append(item)
    return results


def _class_names(cfg: CfgNode, metadata) -> Optional[List[str]]:
    names = metadata.get("thing_classes", None)
    classes = cfg.MODEL.RETINANET.NUM_CLASSES if cfg.MODEL.META_ARCHITECTURE == "RetinaNet" else cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if names is None or len(names) != classes:
        logger.warning("no class names for the model's %d classes in the metadata of %r (%s): classes are shown "
                       "by index", classes, metadata.name, "none" if names is None else f"{len(names)} names")
        return None
    return list(names)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m d2_plugin.predict",
        description="Detect objects in images with an FEC detector; save each picture with its detections drawn "
                    "(Detectron2's Visualizer) and the instances as JSON (boxes XYXY, scores, classes, masks as COCO RLE).",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE",
                        help="Detectron2 config, a path or a packaged name such as "
                             "configs/detectron2/mask_rcnn_fec_s_fpn_1x_coco.yaml")
    parser.add_argument("--input", nargs="+", required=True,
                        help="image files, folders (their image files) or glob patterns such as 'photos/*.jpg'")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder for <name>.png (the drawing) and <name>.json (the instances)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="minimum score of the instances kept (default 0.5)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. MODEL.WEIGHTS output/model_final.pth MODEL.DEVICE cpu")
    return parser


def predict(args: argparse.Namespace) -> List[str]:
    """Run the predictor over ``args.input`` and write the outputs; returns the JSON files written."""
    cfg = setup_cfg(args)
    paths = list_images(args.input)
    predictor = FECPredictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused")
    class_names = _class_names(cfg, metadata)
    os.makedirs(args.output, exist_ok=True)
    written = []
    for path in paths:
        rgb = read_rgb_image(path)
        start = time.perf_counter()
        instances = predictor(rgb[:, :, ::-1])["instances"].to("cpu")  # DefaultPredictor takes BGR, whatever INPUT.FORMAT
        logger.info("%s: %d instances in %.2f s", path, len(instances), time.perf_counter() - start)
        stem = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0])
        Visualizer(rgb, metadata, instance_mode=ColorMode.IMAGE).draw_instance_predictions(instances).save(stem + ".png")
        record = {"file": path, "height": rgb.shape[0], "width": rgb.shape[1], "weights": cfg.MODEL.WEIGHTS,
                  "confidence_threshold": args.confidence_threshold,
                  "instances": instances_to_json(instances, class_names)}
        with open(stem + ".json", "w") as f:
            json.dump(record, f)
        written.append(stem + ".json")
    logger.info("wrote %d pictures and JSON files to %s", len(written), args.output)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="detectron2", abbrev_name="d2")
    setup_logger(name="d2_plugin", abbrev_name="fec")
    logger.info("Arguments: %s", args)
    try:
        predict(args)
    except (PredictError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
