"""A small, deterministic COCO-format instance dataset generated on the spot: coloured shapes whose class
is their kind (circle, square, triangle) on a noisy, shaded background, with boxes and polygon masks (the
core's shapes scenes, :func:`fec_backbone.toy_scenes.shapes_scene`; this module writes them as COCO).

    python -m d2_plugin.toy_data [--out ROOT] [--variant fec_toy|fec_toy_mini]

writes the named variants (:data:`d2_plugin.datasets.TOY_VARIANTS`: ``fec_toy``, 240 / 48 images, and
``fec_toy_mini``, 16 / 8, for tests) under ``ROOT/<variant>`` (default ``$DETECTRON2_DATASETS``, else
``datasets``), where the registered names ``fec_toy_{train,val}`` / ``fec_toy_mini_{train,val}`` read them
(:mod:`d2_plugin.datasets`). In Python::

    make_toy_coco("datasets/fec_toy", num_train=240, num_val=48, seed=0)
    register_toy_dataset("datasets/fec_toy")   # "fec_toy_train", "fec_toy_val"

Images have odd sizes (the first is 250x190), so Detectron2's padding to the backbone's size
divisibility is exercised. The same arguments always give byte-identical files.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from fec_backbone.toy_scenes import shapes_scene
from fec_backbone.training import GeneratedDataError, ensure_generated

from .datasets import TOY_CLASSES, TOY_SPLITS, TOY_VARIANTS, annotation_file, datasets_root, register_toy_dataset

__all__ = [
    "TOY_CLASSES",
    "TOY_SPLITS",
    "TOY_VARIANTS",
    "datasets_root",
    "ensure_toy_coco",
    "main",
    "make_toy_coco",
    "prepare_toy_datasets",
    "register_toy_dataset",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2
FIRST_SIZE = (250, 190)  # width, height of image 0 of every split


def _polygon_area(polygon: Sequence[Tuple[float, float]]) -> float:
    xs, ys = np.array([p[0] for p in polygon]), np.array([p[1] for p in polygon])
    return float(0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def _make_split(root: str, split: str, num_images: int, seed: int, max_objects: int) -> Dict:
    rng = np.random.default_rng([seed, TOY_SPLITS.index(split)])
    image_dir = os.path.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        width, height = FIRST_SIZE if i == 0 else (int(rng.integers(180, 260)), int(rng.integers(150, 250)))
        scene = shapes_scene(rng, width, height, kinds=TOY_CLASSES, max_shapes=max_objects)
        file_name = f"{i:05d}.png"
        Image.fromarray(scene.image).save(os.path.join(image_dir, file_name), format="PNG")
        images.append({"id": i + 1, "file_name": file_name, "width": width, "height": height})
        for name, polygon in zip(scene.kinds, scene.polygons):
            kind = TOY_CLASSES.index(name)
            xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
            x0, y0 = max(min(xs), 0.0), max(min(ys), 0.0)
            box = [round(x0, 2), round(y0, 2), round(min(max(xs), width) - x0, 2), round(min(max(ys), height) - y0, 2)]
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": kind + 1,
                "bbox": box,
                "area": round(_polygon_area(polygon), 2),
                "segmentation": [[c for p in polygon for c in p]],
                "iscrowd": 0,
            })
    return {
        "info": {"description": f"FEC toy shapes ({split})", "version": GENERATOR_VERSION,
                 "generator": {"num_images": num_images, "seed": seed, "max_objects": max_objects}},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(TOY_CLASSES)],
    }


def make_toy_coco(root: str, num_train: int = 240, num_val: int = 48, seed: int = 0, max_objects: int = 3) -> Dict[str, str]:
    """Write ``root/{train,val}/*.png`` and ``root/annotations/instances_{train,val}.json``; returns the json
    path per split. Deterministic: the same arguments give identical files."""
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    out = {}
    for split, count in zip(TOY_SPLITS, (num_train, num_val)):
        data = _make_split(root, split, count, seed, max_objects)
        path = annotation_file(root, split)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True)
        os.replace(tmp, path)
        out[split] = path
        logger.info("toy dataset: %d %s images, %d instances -> %s", count, split, len(data["annotations"]), path)
    return out


def ensure_toy_coco(root: str, num_train: int = 240, num_val: int = 48, seed: int = 0, max_objects: int = 3) -> Dict[str, str]:
    """:func:`make_toy_coco` under the shared generated-data policy
    (:func:`fec_backbone.training.ensure_generated`): kept when generated with these arguments,
    regenerated when generated with others, an error for a non-empty folder this did not generate."""
    settings = {"generator": "d2_toy_coco", "version": GENERATOR_VERSION, "num_train": num_train,
                "num_val": num_val, "seed": seed, "max_objects": max_objects}
    ensure_generated(root, settings, lambda folder: make_toy_coco(str(folder), num_train, num_val, seed, max_objects))
    return {s: annotation_file(root, s) for s in TOY_SPLITS}


def prepare_toy_datasets(names: Sequence[str], root: Optional[str] = None) -> List[str]:
    """Generate (if needed, :func:`ensure_toy_coco`) and register every toy variant that ``names`` refer
    to, under ``root/<variant>`` (default :func:`~d2_plugin.datasets.datasets_root`); returns the registered
    names. Call it in every process: the main one generates while the others wait."""
    from detectron2.utils import comm

    root = datasets_root() if root is None else root
    variants = [v for v in TOY_VARIANTS if any(n in (f"{v}_{s}" for s in TOY_SPLITS) for n in names)]
    registered = []
    for variant in variants:
        if comm.is_main_process():
            ensure_toy_coco(os.path.join(root, variant), **TOY_VARIANTS[variant])
        comm.synchronize()
        registered += register_toy_dataset(os.path.join(root, variant), prefix=variant)
    return registered


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m d2_plugin.toy_data``: generate the toy variants (kept when already generated)."""
    parser = argparse.ArgumentParser(
        prog="python -m d2_plugin.toy_data",
        description="Generate the FEC toy COCO datasets (coloured circles, squares and triangles with boxes and "
                    "polygon masks, odd image sizes) that the registered names fec_toy_{train,val} and "
                    "fec_toy_mini_{train,val} read from $DETECTRON2_DATASETS/<variant>. Deterministic; a variant "
                    "already generated with the same settings is kept.",
        epilog="Example: python -m d2_plugin.toy_data --out datasets --variant fec_toy_mini, then "
               "DETECTRON2_DATASETS=datasets python d2_plugin/train_net.py --config-file "
               "configs/detectron2/toy_mask_rcnn_fec_s.yaml DATASETS.TRAIN \"('fec_toy_mini_train',)\" ...",
    )
    parser.add_argument("--out", metavar="ROOT", default=None,
                        help="datasets root; each variant goes to ROOT/<variant> (default: $DETECTRON2_DATASETS, "
                             f"else ./datasets; now {datasets_root()!r})")
    parser.add_argument("--variant", action="append", choices=sorted(TOY_VARIANTS),
                        help="variant to generate, repeatable (default: all: " + ", ".join(
                            f"{v} {c['num_train']}/{c['num_val']} train/val images" for v, c in TOY_VARIANTS.items())
                        + ")")
    args = parser.parse_args(argv)
    root = datasets_root() if args.out is None else args.out
    for variant in args.variant or list(TOY_VARIANTS):
        folder = os.path.join(root, variant)
        try:
            files = ensure_toy_coco(folder, **TOY_VARIANTS[variant])
        except GeneratedDataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"{variant}: {', '.join(files[s] for s in TOY_SPLITS)} (datasets {variant}_train, {variant}_val)")
    if os.path.abspath(root) != os.path.abspath(datasets_root()):
        print(f"The registered names read $DETECTRON2_DATASETS/<variant>: set DETECTRON2_DATASETS={root} where you use them.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
