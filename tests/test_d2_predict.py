"""``python -m d2_plugin.predict`` on real photographs (scikit-learn's china.jpg and flower.jpg, 427x640) with
the toy Mask R-CNN trained a few iterations here and with an official-format mmdet checkpoint: the pictures
and the JSON files (boxes XYXY, scores, class names, masks as COCO RLE) agree with ``FECPredictor`` run in
this process; grey and RGBA images are converted and logged; a non-image file, an empty folder and a
checkpoint of another task are refused with messages that say so."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
import timm
import torch
from PIL import Image

if os.environ.get("FEC_REQUIRE_DETECTRON2") != "1":  # CI requires it: a missing Detectron2 fails
    pytest.importorskip("detectron2")
from sklearn.datasets import load_sample_image  # noqa: E402

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402

import d2_plugin  # noqa: E402
from d2_plugin.predict import FECPredictor, main  # noqa: E402
from d2_plugin.toy_data import TOY_CLASSES, prepare_toy_datasets  # noqa: E402
from d2_plugin.trainer import Trainer  # noqa: E402
from helpers import save_photographs  # noqa: E402
from test_d2_official import save_official  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/detectron2/toy_mask_rcnn_fec_s.yaml"
COCO_CONFIG = "configs/detectron2/mask_rcnn_fec_s_fpn_1x_coco.yaml"
TRAIN = ["DATASETS.TRAIN", "('fec_toy_mini_train',)", "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "2",
         "SOLVER.MAX_ITER", "6", "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "1000"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """``model_final.pth`` of the toy Mask R-CNN after a few iterations of our trainer."""
    root = tmp_path_factory.mktemp("predict")
    prepare_toy_datasets(["fec_toy_mini_train"], root=str(root / "datasets"))
    cfg = get_cfg()
    d2_plugin.add_fec_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, CONFIG))
    cfg.merge_from_list([*TRAIN, "OUTPUT_DIR", str(root / "run")])
    seed_all_rng(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return root / "run" / "model_final.pth"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return save_photographs(tmp_path_factory.mktemp("photos"))


def _cfg(weights, threshold):
    cfg = get_cfg()
    d2_plugin.add_fec_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, CONFIG))
    cfg.merge_from_list(["MODEL.WEIGHTS", str(weights), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(threshold)])
    cfg.freeze()
    return cfg


def test_predict_command_on_photographs(weights, photos, tmp_path):
    """The command in a new process, on a folder of two photographs: per image a PNG of the input's size
    that differs from the photo (detections drawn) and a JSON whose instances are what ``FECPredictor``
    finds in this process (boxes, scores, classes by toy name, masks decoded from the RLE)."""
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "d2_plugin.predict", "--config-file", CONFIG, "--input", str(photos),
                           "--output", str(out), "--confidence-threshold", "0.05", "--opts", "MODEL.WEIGHTS", str(weights)],
                          cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "wrote 2 pictures and JSON files to" in proc.stdout
    predictor = FECPredictor(_cfg(weights, 0.05))
    for name in ("china", "flower"):
        photo = load_sample_image(f"{name}.jpg")
        picture = np.asarray(Image.open(out / f"{name}.png").convert("RGB"))
        assert picture.shape == photo.shape == (427, 640, 3)
        record = json.loads((out / f"{name}.json").read_text())
        assert (record["height"], record["width"]) == (427, 640) and record["file"].endswith(f"{name}.jpg")
        found = record["instances"]
        expected = predictor(np.asarray(Image.open(photos / f"{name}.jpg"))[:, :, ::-1])["instances"]
        assert 0 < len(found) == len(expected) <= 20, (len(found), len(expected))
        assert np.abs(picture.astype(int) - np.asarray(Image.open(photos / f"{name}.jpg")).astype(int)).mean() > 1
        np.testing.assert_allclose([i["bbox"] for i in found], expected.pred_boxes.tensor.numpy(), atol=0.01)
        np.testing.assert_allclose([i["score"] for i in found], expected.scores.numpy(), atol=1e-4)
        assert [i["category_id"] for i in found] == expected.pred_classes.tolist()
        assert all(i["category_name"] == TOY_CLASSES[i["category_id"]] for i in found)
        assert all(0 <= x0 <= x1 <= 640 and 0 <= y0 <= y1 <= 427 for x0, y0, x1, y1 in (i["bbox"] for i in found))
        for item, mask in zip(found, expected.pred_masks.numpy()):
            rle = dict(item["segmentation"], counts=item["segmentation"]["counts"].encode())
            assert item["segmentation"]["size"] == [427, 640]
            np.testing.assert_array_equal(mask_util.decode(rle).astype(bool), mask)


def test_grey_and_rgba_images_are_converted(weights, photos, tmp_path, caplog):
    china = load_sample_image("china.jpg")
    Image.fromarray(china).convert("L").save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([china, np.full(china.shape[:2], 128, np.uint8)])).save(tmp_path / "rgba.png")
    log = logging.getLogger("d2_plugin.predict")  # setup_logger makes "d2_plugin" not propagate to caplog's root
    log.addHandler(caplog.handler)
    try:
        assert main(["--config-file", CONFIG, "--input", str(tmp_path / "grey.png"), str(tmp_path / "rgba.png"),
                     "--output", str(tmp_path / "out"), "--confidence-threshold", "0.0",
                     "--opts", "MODEL.WEIGHTS", str(weights)]) == 0
    finally:
        log.removeHandler(caplog.handler)
    assert "grey.png: L image (1 channel) converted to RGB" in caplog.text
    assert "rgba.png: RGBA image (4 channels) converted to RGB (alpha channel dropped)" in caplog.text
    for name in ("grey", "rgba"):
        assert np.asarray(Image.open(tmp_path / "out" / f"{name}.png")).shape[:2] == (427, 640)
        assert json.loads((tmp_path / "out" / f"{name}.json").read_text())["instances"]


@pytest.mark.parametrize("case", ["not_an_image", "empty_folder", "nothing_matches", "classification_checkpoint",
                                  "no_weights"])
def test_clear_errors(case, weights, photos, tmp_path, capsys):
    inputs, weight = [str(photos / "china.jpg")], str(weights)
    if case == "not_an_image":
        (tmp_path / "notes.jpg").write_text("not a picture")
        inputs, message = [str(tmp_path / "notes.jpg")], "notes.jpg' is not an image that PIL can read"
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "readme.txt").write_text("no images here")
        inputs, message = [str(tmp_path / "empty")], "empty' holds no image files (.jpg, .jpeg, .png"
    elif case == "nothing_matches":
        inputs, message = [str(tmp_path / "*.jpg")], "is no file or folder, and no file matches it as a glob pattern"
    elif case == "classification_checkpoint":
        weight = str(tmp_path / "fec_small_imagenet.pth")
        torch.save(timm.create_model("fec_small", num_classes=1000).state_dict(), weight)
        message = "is not a checkpoint of this detector: "
    else:
        weight, message = "", "MODEL.WEIGHTS is empty: give a trained detector"
    assert main(["--config-file", CONFIG, "--input", *inputs, "--output", str(tmp_path / "out"),
                 "--opts", "MODEL.WEIGHTS", weight]) == 1
    err = capsys.readouterr().err
    assert message in err, err
    if case == "classification_checkpoint":
        assert "(parts backbone, backbone.bottom_up, proposal_generator, roi_heads; e.g. " in err
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_official_mmdet_checkpoint_names_coco_classes(photos, tmp_path, caplog):
    """An official mmdet FEC-S Mask R-CNN file (80 COCO classes, official layout) as MODEL.WEIGHTS of the COCO
    config: loaded whole, and the JSON names COCO's classes (Detectron2's builtin metadata of coco_2017_val)."""
    path = tmp_path / "mask_rcnn_fec_small_fpn_1x_coco.pth"
    save_official(path)
    with caplog.at_level("INFO", logger="fvcore"):
        assert main(["--config-file", COCO_CONFIG, "--input", str(photos / "flower.jpg"), "--output", str(tmp_path / "out"),
                     "--confidence-threshold", "0.0", "--opts", "MODEL.WEIGHTS", str(path), "MODEL.DEVICE", "cpu",
                     "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "256"]) == 0
    assert "every model tensor filled" in caplog.text
    found = json.loads((tmp_path / "out" / "flower.json").read_text())["instances"]
    coco = MetadataCatalog.get("coco_2017_val").thing_classes
    assert found and all(i["category_name"] == coco[i["category_id"]] for i in found)
    assert {"person", "bicycle"} <= set(coco)
