"""The generated toy datasets' names, registered the way Detectron2 registers its builtin ones.

``import d2_plugin`` registers ``fec_toy_train`` / ``fec_toy_val`` and ``fec_toy_mini_train`` /
``fec_toy_mini_val`` as COCO instances under ``$DETECTRON2_DATASETS/<variant>`` (default
``datasets/<variant>``), as ``detectron2/data/datasets/builtin.py`` registers ``coco_2017_*`` whether or not
the files are there: loading is lazy. Generating the data is an explicit step,
``python -m d2_plugin.toy_data`` (or the demo, which generates what it uses); a name used before its
data exists fails with :class:`ToyDataNotGeneratedError` saying the command to run.

Layout of a variant folder (what :mod:`d2_plugin.toy_data` writes): ``annotations/instances_<split>.json``
and the images in ``<split>/``.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

__all__ = [
    "TOY_CLASSES",
    "TOY_SPLITS",
    "TOY_VARIANTS",
    "ToyDataNotGeneratedError",
    "annotation_file",
    "datasets_root",
    "register_all_toy_datasets",
    "register_toy_dataset",
]

#: The toy datasets' classes, in category id order (ids 1, 2, 3).
TOY_CLASSES = ("circle", "square", "triangle")
TOY_SPLITS = ("train", "val")
#: Generated datasets by name prefix: images per split.
TOY_VARIANTS: Dict[str, Dict[str, int]] = {
    "fec_toy": {"num_train": 240, "num_val": 48},
    "fec_toy_mini": {"num_train": 16, "num_val": 8},
}


class ToyDataNotGeneratedError(FileNotFoundError):
    """A registered toy dataset whose files have not been generated yet."""


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` (default ``datasets``), where Detectron2 looks for its builtin datasets."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def annotation_file(folder: str, split: str) -> str:
    """The COCO instances file of ``split`` in a toy dataset folder."""
    return os.path.join(folder, "annotations", f"instances_{split}.json")


def _generate_hint(folder: str, prefix: str) -> str:
    if prefix in TOY_VARIANTS and os.path.basename(os.path.normpath(folder)) == prefix:
        root = os.path.dirname(os.path.normpath(folder)) or "."
        return (f"python -m d2_plugin.toy_data --out {root} --variant {prefix}"
                + ("" if os.path.abspath(root) == os.path.abspath(datasets_root())
                   else f" (and DETECTRON2_DATASETS={root} for the runs that use it)"))
    return f"python -c \"from d2_plugin.toy_data import make_toy_coco; make_toy_coco('{folder}')\""


def _toy_loader(name: str, folder: str, prefix: str, split: str):
    json_file, image_root = annotation_file(folder, split), os.path.join(folder, split)

    def load() -> List[Dict]:
        if not os.path.isfile(json_file):
            raise ToyDataNotGeneratedError(
                f"dataset {name!r} has not been generated: {json_file} does not exist. Generate it with "
                f"`{_generate_hint(folder, prefix)}`, or run `python -m d2_plugin.demo`, which generates its data"
            )
        return load_coco_json(json_file, image_root, name)

    return load, json_file, image_root


def register_toy_dataset(folder: str, prefix: str = "fec_toy") -> List[str]:
    """Register ``<prefix>_train`` / ``<prefix>_val`` as COCO instances in ``folder`` (lazily, generated or
    not), replacing earlier registrations of these names; returns the names."""
    names = []
    for split in TOY_SPLITS:
        name = f"{prefix}_{split}"
        load, json_file, image_root = _toy_loader(name, folder, prefix, split)
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, load)
        # thing_classes up front, as builtin.py sets COCO's: a predictor names the classes without the data
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco",
                                      thing_classes=list(TOY_CLASSES))
        names.append(name)
    return names


def register_all_toy_datasets(root: Optional[str] = None) -> List[Tuple[str, str]]:
    """Register every variant of :data:`TOY_VARIANTS` under ``root/<variant>`` (default
    :func:`datasets_root`); returns ``(name, folder)`` pairs."""
    root = datasets_root() if root is None else root
    return [(name, os.path.join(root, variant))
            for variant in TOY_VARIANTS for name in register_toy_dataset(os.path.join(root, variant), variant)]
