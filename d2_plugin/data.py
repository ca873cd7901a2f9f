"""Data helpers: checking COCO-format datasets before training, and a training loader that resumes at
the right place in its sample stream.

Detectron2 reads annotations lazily and reports a malformed file or a missing image deep inside the
loader (a ``KeyError`` or a failed read hours into training). :func:`validate_coco_instances` checks a
COCO instances file and its images up front and raises :class:`CocoFormatError` naming the file and
the problem.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Iterable, List, Optional

from detectron2.data import MetadataCatalog, build_detection_train_loader

from fec_backbone.training import ResumableSampler

__all__ = [
    "CocoFormatError",
    "build_resumable_train_loader",
    "check_datasets",
    "validate_coco_instances",
]

logger = logging.getLogger(__name__)


class CocoFormatError(ValueError):
    """A COCO instances file that cannot be used, or one of its images that is missing or unreadable."""


def _fail(json_file: str, problem: str) -> None:
    raise CocoFormatError(f"{json_file}: {problem}")


def _number_list(value: Any, length: Optional[int] = None) -> bool:
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def _check_annotation(json_file: str, i: int, ann: Any, image_ids: set, category_ids: set) -> None:
    where = f"annotations[{i}]"
    if not isinstance(ann, dict):
        _fail(json_file, f"{where} is a {type(ann).__name__}, not an object")
    for key in ("id", "image_id", "category_id", "bbox"):
        if key not in ann:
            _fail(json_file, f"{where} (id {ann.get('id', '?')}) has no {key!r}")
    where = f"{where} (id {ann['id']})"
    if ann["image_id"] not in image_ids:
        _fail(json_file, f"{where} refers to image_id {ann['image_id']!r}, which is not in 'images'")
    if ann["category_id"] not in category_ids:
        _fail(json_file, f"{where} has category_id {ann['category_id']!r}, which is not in 'categories'")
    box = ann["bbox"]
    if not _number_list(box, 4) or box[2] < 0 or box[3] < 0:
        _fail(json_file, f"{where} has bbox {box!r}; expected [x, y, width, height] with width, height >= 0")
    seg = ann.get("segmentation")
    if seg is None or isinstance(seg, dict):
        return  # no mask, or RLE (checked by pycocotools)
    if not isinstance(seg, list) or not seg:
        _fail(json_file, f"{where} has segmentation {seg!r}; expected a list of polygons or an RLE object")
    for polygon in seg:
        if not _number_list(polygon) or len(polygon) < 6 or len(polygon) % 2:
            _fail(
                json_file,
                f"{where} has a polygon {str(polygon)[:80]}; a polygon is a flat list [x1, y1, x2, y2, ...] of "
                "at least 3 points",
            )


def validate_coco_instances(json_file: str, image_root: str, check_image_sizes: bool = True) -> Dict[str, int]:
    """Check a COCO instances file and the presence of its images; returns counts of images,
    annotations and categories. Raises :class:`CocoFormatError` naming the file and the problem:
    unreadable or invalid JSON, missing sections or fields, annotations pointing to unknown images or
    categories, malformed boxes or polygons, missing images, images whose size differs from the file."""
    if not os.path.isfile(json_file):
        raise CocoFormatError(f"{json_file}: annotation file not found")
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{json_file}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise CocoFormatError(f"{json_file}: cannot be read ({e})") from e
    if not isinstance(data, dict):
        _fail(json_file, f"the top level is a {type(data).__name__}; a COCO file is an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            _fail(json_file, f"has no {key!r} list" if key not in data else f"{key!r} is not a list")
    category_ids = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            _fail(json_file, f"categories[{i}] needs 'id' and 'name', got {str(cat)[:80]}")
        category_ids.add(cat["id"])
    image_ids: set = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            _fail(json_file, f"images[{i}] is a {type(img).__name__}, not an object")
        for key in ("id", "file_name", "width", "height"):
            if key not in img:
                _fail(json_file, f"images[{i}] (id {img.get('id', '?')}) has no {key!r}")
        if img["id"] in image_ids:
            _fail(json_file, f"images[{i}]: image id {img['id']!r} appears twice")
        image_ids.add(img["id"])
    for i, ann in enumerate(data["annotations"]):
        _check_annotation(json_file, i, ann, image_ids, category_ids)
    _check_images(json_file, image_root, data["images"], check_image_sizes)
    return {"images": len(image_ids), "annotations": len(data["annotations"]), "categories": len(category_ids)}


def _check_images(json_file: str, image_root: str, images: List[Dict], check_sizes: bool) -> None:
    from PIL import Image

    missing = [img for img in images if not os.path.isfile(os.path.join(image_root, img["file_name"]))]
    if missing:
        first = os.path.join(image_root, missing[0]["file_name"])
        _fail(
            json_file,
            f"{len(missing)} of {len(images)} images are missing under {image_root!r}, "
            f"e.g. {missing[0]['file_name']!r} (image id {missing[0]['id']}): {first} does not exist",
        )
    if not check_sizes:
        return
    for img in images:
        path = os.path.join(image_root, img["file_name"])
        try:
            with Image.open(path) as im:
                width, height = im.size
        except Exception as e:  # PIL raises several types for damaged files
            raise CocoFormatError(f"{json_file}: image {path} (id {img['id']}) cannot be read: {e}") from e
        if (width, height) != (img["width"], img["height"]):
            _fail(
                json_file,
                f"image {path} (id {img['id']}) is {width}x{height} but the file says "
                f"{img['width']}x{img['height']} (width x height)",
            )


def check_datasets(names: Iterable[str], check_image_sizes: bool = False) -> None:
    """Validate every named dataset registered from a COCO json (``json_file``/``image_root`` metadata),
    on the main process; the other processes wait for the result."""
    from detectron2.utils import comm

    if comm.is_main_process():
        for name in names:
            meta = MetadataCatalog.get(name)
            json_file, image_root = getattr(meta, "json_file", None), getattr(meta, "image_root", None)
            if json_file and image_root and json_file.endswith(".json"):
                logger.info("dataset %s: checking %s and its images under %s ...", name, json_file, image_root)
                counts = validate_coco_instances(json_file, image_root, check_image_sizes)
                logger.info("dataset %s: %s", name, counts)
    comm.synchronize()


def build_resumable_train_loader(cfg, seed: int, start_iter: int = 0, mapper=None):
    """``build_detection_train_loader`` with the shared :class:`fec_backbone.training.ResumableSampler`
    (Detectron2's rank split of an endless shuffled stream) started after the samples of iterations
    ``0 .. start_iter - 1``. The continuation is exact with ``DATALOADER.NUM_WORKERS 0`` and
    ``ASPECT_RATIO_GROUPING False``; otherwise workers and grouping buffers reorder nearby samples."""
    from detectron2.data import get_detection_dataset_dicts
    from detectron2.utils import comm

    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"resumable loading supports DATALOADER.SAMPLER_TRAIN 'TrainingSampler', got {cfg.DATALOADER.SAMPLER_TRAIN!r}"
        )
    dataset = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    per_rank = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    sampler = ResumableSampler(len(dataset), comm.get_rank(), comm.get_world_size(), seed=seed,
                               start=start_iter * per_rank)
    kwargs: Dict[str, Any] = {} if mapper is None else {"mapper": mapper}
    # The loader gets its own generator (``seed``): Detectron2 makes the loader's iterator lazily, at the
    # first step after a (re)start, and torch's DataLoader draws its base seed from the global generator
    # when no generator is given, which would shift the resumed run's random stream.
    return build_detection_train_loader(cfg, dataset=dataset, sampler=sampler, seed=seed, **kwargs)
