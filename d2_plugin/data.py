"""Data loading for the trainer: the dataset dicts Detectron2 loads, checked once up front for what
Detectron2 would report late or unclearly, and a training loader that resumes at the right place in its
sample stream.

Detectron2 itself parses a COCO file (``load_coco_json``, through pycocotools) and validates or forgives
much of it: polygons of fewer than 3 points are dropped with a warning, as are annotations of unknown
images; crowd RLE masks are accepted; images without usable annotations are filtered out for training.
:func:`load_dataset_dicts` calls Detectron2's own ``get_detection_dataset_dicts`` (one load, the same
result) and adds only:

* a failed load becomes :class:`CocoFormatError` naming the dataset, its json file and the problem
  (invalid JSON with its line and column, a missing section or field that pycocotools/Detectron2 report
  as a bare ``KeyError``, an annotation of an unknown category...), chained to the original error;
* every image file is checked to exist before training or evaluation starts (Detectron2 would fail at
  the first batch that reads a missing one, possibly hours in), with a count and the first missing path;
* for training, annotations without a box (Detectron2's mapper fails on them with ``KeyError: 'bbox'``
  when their image is first sampled) and a training set with no usable annotation at all.

Anything Detectron2 accepts is accepted: the checks never refuse a dataset it trains on.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)

from fec_backbone.training import ResumableSampler

from .datasets import ToyDataNotGeneratedError

__all__ = [
    "CocoFormatError",
    "build_checked_test_loader",
    "build_resumable_train_loader",
    "check_dataset_dicts",
    "load_dataset_dicts",
]

logger = logging.getLogger(__name__)


class CocoFormatError(ValueError):
    """A dataset that Detectron2 cannot use: an unreadable or malformed annotation file, missing images,
    annotations without boxes. The message names the dataset, the file and the problem."""


# What a bare KeyError raised while Detectron2/pycocotools load a COCO file means, by missing key.
_MISSING_KEY = {
    "categories": "the file has no 'categories' list",
    "images": "the file has no 'images' list",
    "file_name": "an entry of 'images' has no 'file_name'",
    "height": "an entry of 'images' has no 'height'",
    "width": "an entry of 'images' has no 'width'",
    "image_id": "an entry of 'annotations' has no 'image_id'",
    "category_id": "an entry of 'annotations' has no 'category_id'",
    "id": "an entry of 'images', 'annotations' or 'categories' has no 'id'",
    "name": "an entry of 'categories' has no 'name'",
    "counts": "an RLE 'segmentation' has no 'counts'",
    "size": "an RLE 'segmentation' has no 'size'",
}


def _describe(name: str, err: BaseException) -> Optional[str]:
    """The problem behind a failed load of COCO dataset ``name``, in words; None when it is not a COCO
    file's problem that we can put better than Detectron2."""
    meta = MetadataCatalog.get(name)
    json_file = getattr(meta, "json_file", None)
    if not json_file:
        return None
    where = f"dataset {name!r}, annotation file {json_file}"
    if isinstance(err, json.JSONDecodeError):
        return f"{where}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
    if isinstance(err, UnicodeDecodeError):
        return f"{where}: not a text (UTF-8) JSON file ({err})"
    if isinstance(err, FileNotFoundError) and not os.path.isfile(json_file):
        return (f"{where}: the file does not exist (Detectron2's builtin datasets live under "
                f"$DETECTRON2_DATASETS, now {os.getenv('DETECTRON2_DATASETS', 'datasets')!r})")
    if isinstance(err, OSError):
        return f"{where}: cannot be read ({err})"
    if isinstance(err, KeyError):
        message = err.args[0] if err.args else ""
        if isinstance(message, str) and message in _MISSING_KEY:
            return f"{where}: {_MISSING_KEY[message]} (Detectron2/pycocotools: KeyError {message!r})"
        return f"{where}: {message}"  # Detectron2's own words, e.g. an unknown category_id
    if isinstance(err, AssertionError) and "is empty" in str(err):
        return f"{where}: it lists no images ('images' is missing or empty)"
    if isinstance(err, (AssertionError, ValueError, TypeError, IndexError)):
        return f"{where}: Detectron2 cannot load it: {type(err).__name__}: {err}"
    return None


def _no_training_data(names: Sequence[str]) -> str:
    """Why a training set has no usable annotation: re-reads the json files (only after Detectron2
    found nothing to train on)."""
    reasons = []
    for name in names:
        json_file = getattr(MetadataCatalog.get(name), "json_file", None)
        reason = "no image has a non-crowd annotation"
        if json_file and os.path.isfile(json_file):
            try:
                with open(json_file, encoding="utf-8") as f:
                    data = json.load(f)
                if isinstance(data, dict) and "annotations" not in data:
                    reason = "the file has no 'annotations' list"
                elif isinstance(data, dict) and not data["annotations"]:
                    reason = "its 'annotations' list is empty"
            except (OSError, ValueError):
                pass
        reasons.append(f"dataset {name!r}" + (f", annotation file {json_file}" if json_file else "") + f": {reason}")
    return ("nothing to train on: Detectron2 keeps only images with a non-crowd annotation, and none is left. "
            + "; ".join(reasons))


def load_dataset_dicts(names: Sequence[str], *, training: bool, **kwargs: Any) -> List[Dict]:
    """``get_detection_dataset_dicts(names, **kwargs)`` (Detectron2's one load of the data), with a failed
    load explained as :class:`CocoFormatError`, then :func:`check_dataset_dicts`."""
    names = list(names)
    try:
        dicts = get_detection_dataset_dicts(names, **kwargs)
    except (CocoFormatError, ToyDataNotGeneratedError):
        raise
    except Exception as err:
        if training and isinstance(err, AssertionError) and str(err).startswith("No valid data found"):
            raise CocoFormatError(_no_training_data(names)) from err
        failed = [(names[0], err)] if len(names) == 1 else []
        for name in names if len(names) > 1 else []:  # which one fails: load them one by one (failure path)
            try:
                DatasetCatalog.get(name)
            except Exception as own:  # noqa: BLE001  (whatever the loader raises)
                failed = [(name, own)]
                break
        problem = _describe(*failed[0]) if failed else None
        if problem is None:
            raise
        raise CocoFormatError(problem) from err
    check_dataset_dicts(dicts, names, training=training)
    return dicts


def _dataset_of(path: str, names: Sequence[str]) -> str:
    for name in names:
        meta = MetadataCatalog.get(name)
        root = getattr(meta, "image_root", None)
        if root and os.path.abspath(path).startswith(os.path.abspath(root) + os.sep):
            json_file = getattr(meta, "json_file", None)
            return f"dataset {name!r}" + (f" (listed in {json_file})" if json_file else "")
    return f"dataset(s) {', '.join(map(repr, names))}"


def check_dataset_dicts(dicts: Sequence[Dict], names: Sequence[str], *, training: bool) -> None:
    """Raise :class:`CocoFormatError` for what Detectron2 would only hit mid-run: missing image files (all
    checked, counted, the first named) and, for training, annotations without a box."""
    if not isinstance(dicts, list):
        return  # a torch Dataset registered by the user: nothing to look into
    missing = [d["file_name"] for d in dicts if "file_name" in d and not os.path.isfile(d["file_name"])]
    if missing:
        raise CocoFormatError(
            f"{len(missing)} of {len(dicts)} images of {', '.join(map(repr, names))} are missing; the first: "
            f"{missing[0]} ({_dataset_of(missing[0], names)})"
        )
    if training:
        boxless = [(d["file_name"], a) for d in dicts for a in d.get("annotations", ()) if "bbox" not in a]
        if boxless:
            path, ann = boxless[0]
            raise CocoFormatError(
                f"{len(boxless)} annotations of {', '.join(map(repr, names))} have no 'bbox', which training needs; "
                f"the first is on image {path} ({_dataset_of(path, names)}), category {ann.get('category_id')}"
            )
    logger.info("datasets %s: %d images, all present", ", ".join(names), len(dicts))


def train_dataset_dicts(cfg) -> List[Dict]:
    """The checked training dicts of ``cfg``, loaded as Detectron2's training loader loads them."""
    return load_dataset_dicts(
        cfg.DATASETS.TRAIN,
        training=True,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )


def build_checked_test_loader(cfg, dataset_name: str, mapper=None):
    """``build_detection_test_loader(cfg, dataset_name)`` over the checked dicts of ``dataset_name``."""
    proposal_files = None
    if cfg.MODEL.LOAD_PROPOSALS:
        proposal_files = [cfg.DATASETS.PROPOSAL_FILES_TEST[list(cfg.DATASETS.TEST).index(dataset_name)]]
    dicts = load_dataset_dicts([dataset_name], training=False, filter_empty=False, proposal_files=proposal_files)
    return build_detection_test_loader(dataset=dicts, mapper=mapper or DatasetMapper(cfg, False),
                                       num_workers=cfg.DATALOADER.NUM_WORKERS)


def build_resumable_train_loader(cfg, seed: int, start_iter: int = 0, mapper=None):
    """``build_detection_train_loader`` over the checked training dicts (:func:`train_dataset_dicts`),
    with the shared :class:`fec_backbone.training.ResumableSampler` (Detectron2's rank split of an endless
    shuffled stream) started after the samples of iterations ``0 .. start_iter - 1``. The continuation
    is exact with ``DATALOADER.NUM_WORKERS 0`` and ``ASPECT_RATIO_GROUPING False``; otherwise workers and
    grouping buffers reorder nearby samples."""
    from detectron2.utils import comm

    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"resumable loading supports DATALOADER.SAMPLER_TRAIN 'TrainingSampler', got {cfg.DATALOADER.SAMPLER_TRAIN!r}"
        )
    dataset = train_dataset_dicts(cfg)
    per_rank = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    sampler = ResumableSampler(len(dataset), comm.get_rank(), comm.get_world_size(), seed=seed,
                               start=start_iter * per_rank)
    kwargs: Dict[str, Any] = {} if mapper is None else {"mapper": mapper}
    # The loader gets its own generator (``seed``): Detectron2 makes the loader's iterator lazily, at the
    # first step after a (re)start, and torch's DataLoader draws its base seed from the global generator
    # when no generator is given, which would shift the resumed run's random stream.
    return build_detection_train_loader(cfg, dataset=dataset, sampler=sampler, seed=seed, **kwargs)
