"""``python -m d2_plugin.export_model`` (Detectron2's ``tools/deploy/export_model.py`` with FEC registered):
``--export-method tracing --format torchscript`` writes a TorchScript Mask R-CNN FEC-S whose outputs on a
photograph equal the eager model's (``inference(do_postprocess=False)``), also at another padded size than
the traced one; the exports that cannot work (scripting, ONNX, Caffe2) are refused with what does not and why, writing nothing."""
from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

if os.environ.get("FEC_REQUIRE_DETECTRON2") != "1":  # CI requires it: a missing Detectron2 fails
    pytest.importorskip("detectron2")
from sklearn.datasets import load_sample_image  # noqa: E402

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import d2_plugin  # noqa: E402
from d2_plugin.export_model import main, sample_inputs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/detectron2/toy_mask_rcnn_fec_s.yaml"


def _cfg(weights=""):
    cfg = get_cfg()
    d2_plugin.add_fec_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, CONFIG))
    cfg.merge_from_list(["MODEL.WEIGHTS", str(weights), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    return cfg


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A seeded toy Mask R-CNN saved as a checkpoint, traced on china.jpg: ``(eager model, cfg, folder)``."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = build_model(_cfg()).eval()
    torch.save({"model": model.state_dict()}, root / "model.pth")
    for name, size in (("china.jpg", None), ("portrait.jpg", (300, 500))):
        image = Image.fromarray(load_sample_image("china.jpg"))
        (image.resize(size) if size else image).save(root / name, quality=95)
    cfg = _cfg(root / "model.pth")
    assert main(["--config-file", CONFIG, "--sample-image", str(root / "china.jpg"), "--output", str(root / "ts"),
                 *sum((["MODEL.WEIGHTS", str(root / "model.pth")], ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]), [])]) == 0
    return model, cfg, root


@pytest.mark.parametrize("image", ["china.jpg", "portrait.jpg"])
def test_torchscript_tracing_matches_eager(exported, image):
    model, cfg, root = exported
    ts_model = torch.jit.load(str(root / "ts" / "model.ts"))
    inputs = sample_inputs(cfg, str(root / image))
    with torch.no_grad():
        eager = model.inference(inputs, do_postprocess=False)[0]
        boxes, classes, masks, scores, size = ts_model(inputs[0]["image"])
    assert len(eager) > 0 and tuple(size.tolist()) == eager.image_size == tuple(inputs[0]["image"].shape[1:])
    torch.testing.assert_close(boxes, eager.pred_boxes.tensor)
    torch.testing.assert_close(scores, eager.scores)
    torch.testing.assert_close(masks, eager.pred_masks)
    assert torch.equal(classes, eager.pred_classes)


@pytest.mark.parametrize("method,fmt,message", [
    ("scripting", "torchscript", "--export-method scripting does not work with FEC: "),
    ("tracing", "onnx", "--format onnx does not work with the FEC detector: the TorchScript-based ONNX exporter "),
    ("caffe2_tracing", "onnx", "--export-method caffe2_tracing needs Caffe2 (caffe2.python), which PyTorch "),
])
def test_unsupported_exports_are_refused(exported, tmp_path, capsys, method, fmt, message):
    _, _, root = exported
    assert main(["--config-file", CONFIG, "--export-method", method, "--format", fmt, "--output", str(tmp_path),
                 "--sample-image", str(root / "china.jpg"), "MODEL.WEIGHTS", str(root / "model.pth")]) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert not os.listdir(tmp_path)
