"""``TEST.AUG.ENABLED True`` as in Detectron2's ``tools/train_net.py``: ``Trainer.test_with_TTA`` evaluates the
model wrapped in ``GeneralizedRCNNWithTTA`` and reports its results under names ending ``_TTA``, beside the
plain evaluation, both with ``--eval-only`` and after training (then also in ``metrics.json``)."""
from __future__ import annotations

import json
import os

import pytest

if os.environ.get("FEC_REQUIRE_DETECTRON2") != "1":  # CI requires it: a missing Detectron2 fails
    pytest.importorskip("detectron2")
from detectron2.engine import default_argument_parser  # noqa: E402

from d2_plugin.toy_data import prepare_toy_datasets  # noqa: E402
from d2_plugin.trainer import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = "configs/detectron2/toy_mask_rcnn_fec_s.yaml"
# Two small sizes and their flips: four passes per image, cheap on a CPU.
TTA = ["DATASETS.TRAIN", "('fec_toy_mini_train',)", "DATASETS.TEST", "('fec_toy_mini_val',)", "SOLVER.IMS_PER_BATCH", "2",
       "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.AUG.ENABLED", "True",
       "TEST.AUG.MIN_SIZES", "(112, 144)", "TEST.AUG.MAX_SIZE", "224"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    prepare_toy_datasets(["fec_toy_mini_train", "fec_toy_mini_val"], root=str(root))
    return root


@pytest.mark.parametrize("eval_only", [True, False], ids=["eval_only", "after_training"])
def test_tta_results_have_their_own_names(datasets, tmp_path, eval_only):
    args = default_argument_parser().parse_args(
        ["--config-file", CONFIG, *(["--eval-only"] if eval_only else []), *TTA, "OUTPUT_DIR", str(tmp_path)])
    res = main(args)
    if eval_only:
        assert set(res) == {"bbox", "segm", "bbox_TTA", "segm_TTA"}, res.keys()
        assert res["bbox_TTA"].keys() == res["bbox"].keys() and "AP" in res["segm_TTA"]
    else:  # the TTA hook runs after PeriodicWriter's last write, as in tools/train_net.py: logged, not in metrics.json
        last = json.loads((tmp_path / "metrics.json").read_text().splitlines()[-1])
        assert "bbox/AP" in last and not any(k.endswith("_TTA") for k in last)
        assert (tmp_path / "model_final.pth").stat().st_mtime <= tta_file(tmp_path).stat().st_mtime
    assert tta_file(tmp_path).is_file()
    assert (tmp_path / "inference" / "fec_toy_mini_val" / "coco_instances_results.json").is_file()


def tta_file(output_dir):
    return output_dir / "inference_TTA" / "fec_toy_mini_val" / "coco_instances_results.json"
