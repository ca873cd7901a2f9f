"""Generated COCO data (deterministic, odd sizes, valid for pycocotools) and clear errors for
malformed annotation files and missing images."""
from __future__ import annotations

import filecmp
import json
import os

import pytest

if os.environ.get("FEC_REQUIRE_DETECTRON2") != "1":  # CI requires it: a missing Detectron2 fails
    pytest.importorskip("detectron2")
import d2_plugin  # noqa: E402,F401
from d2_plugin.data import CocoFormatError, check_datasets, validate_coco_instances  # noqa: E402
from d2_plugin.toy_data import TOY_CLASSES, make_toy_coco, register_toy_dataset  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    make_toy_coco(str(root), num_train=6, num_val=3, seed=1)
    return root


def _load(root, split="train"):
    with open(root / "annotations" / f"instances_{split}.json") as f:
        return json.load(f)


def test_toy_data_is_deterministic(toy, tmp_path):
    make_toy_coco(str(tmp_path), num_train=6, num_val=3, seed=1)
    for rel in ["annotations/instances_train.json", "annotations/instances_val.json", "train/00000.png", "train/00005.png", "val/00002.png"]:
        assert filecmp.cmp(toy / rel, tmp_path / rel, shallow=False), rel
    other = tmp_path / "other"
    make_toy_coco(str(other), num_train=6, num_val=3, seed=2)
    assert not filecmp.cmp(toy / "train/00001.png", other / "train/00001.png", shallow=False)


def test_toy_data_content(toy):
    data = _load(toy)
    assert [c["name"] for c in data["categories"]] == list(TOY_CLASSES)
    assert (data["images"][0]["width"], data["images"][0]["height"]) == (250, 190)
    assert any(img["width"] % 32 or img["height"] % 32 for img in data["images"])
    assert len(data["annotations"]) >= len(data["images"])
    assert validate_coco_instances(str(toy / "annotations/instances_train.json"), str(toy / "train")) == {
        "images": 6, "annotations": len(data["annotations"]), "categories": 3}
    names = register_toy_dataset(str(toy), prefix="fec_toytest")
    assert names == ["fec_toytest_train", "fec_toytest_val"]
    dicts = DatasetCatalog.get("fec_toytest_train")
    assert len(dicts) == 6 and all(a["segmentation"] and len(a["bbox"]) == 4 for d in dicts for a in d["annotations"])
    assert MetadataCatalog.get("fec_toytest_train").thing_classes == list(TOY_CLASSES)


def _write(path, data):
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: '{"images": [', "not valid JSON (line 1"),
        (lambda d: {k: v for k, v in d.items() if k != "annotations"}, "has no 'annotations' list"),
        (lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": [1, 2, 3]}]}, "bbox"),
        (lambda d: {**d, "annotations": [{**d["annotations"][0], "segmentation": [[1, 2, 3, 4]]}]}, "at least 3 points"),
        (lambda d: {**d, "annotations": [{**d["annotations"][0], "category_id": 9}]}, "category_id 9"),
        (lambda d: {**d, "annotations": [{**d["annotations"][0], "image_id": 999}]}, "image_id 999"),
        (lambda d: {**d, "images": [{k: v for k, v in d["images"][0].items() if k != "file_name"}] + d["images"][1:]},
         "images[0] (id 1) has no 'file_name'"),
        (lambda d: {**d, "images": [{**d["images"][0], "width": 251}] + d["images"][1:]}, "is 250x190 but the file says 251x190"),
    ],
)
def test_malformed_annotation_file(toy, tmp_path, corrupt, message):
    bad = _write(tmp_path / "instances_bad.json", corrupt(_load(toy)))
    with pytest.raises(CocoFormatError) as info:
        validate_coco_instances(bad, str(toy / "train"))
    assert bad in str(info.value) and message in str(info.value)


def test_missing_image(toy, tmp_path):
    data = _load(toy)
    data["images"][2]["file_name"] = "gone.png"
    bad = _write(tmp_path / "instances_missing.json", data)
    with pytest.raises(CocoFormatError) as info:
        validate_coco_instances(bad, str(toy / "train"))
    text = str(info.value)
    assert bad in text and "'gone.png'" in text and os.path.join(str(toy / "train"), "gone.png") in text
    with pytest.raises(CocoFormatError, match="annotation file not found"):
        validate_coco_instances(str(tmp_path / "nothing.json"), str(toy / "train"))


def test_registered_dataset_checked_before_training(toy, tmp_path):
    """train_net.py checks every COCO dataset of the config; a broken one stops it with the file named."""
    data = _load(toy)
    data["images"][0]["file_name"] = "missing_00000.png"
    bad = _write(tmp_path / "instances_user.json", data)
    name = "fec_test_user_dataset"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, bad, str(toy / "train"))
    with pytest.raises(CocoFormatError, match="missing_00000.png"):
        check_datasets([name])
    good = register_toy_dataset(str(toy), prefix="fec_toycheck")
    check_datasets(good)  # the intact files pass
