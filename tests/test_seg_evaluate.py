"""python -m seg_plugin.evaluate and the test modes of seg_plugin.inference: slide is whole when one window
covers the image and averages overlapping windows; flip TTA is the mean of the flipped predictions; the
metric is mmseg's (sums over the split, 255 ignored); sharding takes every image once; our checkpoints and
saved folders give the trainer's numbers; wrong files and missing data are refused by name."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import segmentation_models_pytorch as smp
import seg_plugin  # noqa: F401  (registers the FEC encoders)
from fec_backbone import CheckpointError
from seg_plugin import evaluate as ev
from seg_plugin.data import AugmentConfig, eval_image
from seg_plugin.inference import (_starts, aug_inference, forward_padded, load_model, predict_scores,
                                  slide_inference, whole_inference)
from seg_toy_run import toy_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return toy_run(tmp_path_factory.mktemp("seg_eval"))


@pytest.fixture(scope="module")
def unet():
    return smp.Unet("fec_s", encoder_weights=None, classes=4).eval()


def test_slide_equals_whole_when_one_window_covers_the_image(unet):
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        whole = whole_inference(unet, x, (70, 100))
        for crop in ((64, 96), (128, 128)):
            assert torch.equal(slide_inference(unet, x, (70, 100), crop=crop, stride=(32, 32)), whole)


def test_slide_windows_follow_mmseg_and_overlaps_are_averaged():
    assert _starts(612, 512, 341) == [0, 100]  # mmseg: ceil((612 - 512) / 341) + 1 windows, the last flush
    assert _starts(1024, 512, 341) == [0, 341, 512] and _starts(300, 512, 341) == [0]
    torch.manual_seed(0)
    pointwise = nn.Conv2d(3, 5, 1)  # windows change nothing for a 1x1 conv: the average must equal whole
    x = torch.randn(1, 3, 50, 70)
    with torch.inference_mode():
        whole = whole_inference(pointwise, x, (50, 70), divisor=1)
        slide = slide_inference(pointwise, x, (50, 70), crop=(32, 32), stride=(9, 13), divisor=1)
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-6)


def test_any_size_is_padded_and_cropped_back(unet):
    x = torch.randn(1, 3, 45, 77)
    with torch.inference_mode():
        out = forward_padded(unet, x, 32)
        full = unet(F.pad(x, (0, 19, 0, 19)))
    assert out.shape == (1, 4, 45, 77) and torch.equal(out, full[..., :45, :77])


def test_flip_tta_is_the_mean_of_the_flipped_predictions(unet):
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    cfg = AugmentConfig(eval_scale=(128, 32))
    with torch.inference_mode():
        got = aug_inference(unet, image, cfg, ratios=(1.0,), flip=True)
        x = eval_image(image, cfg)[None]
        plain = whole_inference(unet, x, (40, 56)).softmax(1)
        flipped = whole_inference(unet, x.flip(-1), (40, 56)).softmax(1).flip(-1)
        two = aug_inference(unet, image, cfg, ratios=(1.0, 1.5), flip=False)
        big = whole_inference(unet, eval_image(image, cfg, (192, 48))[None], (40, 56)).softmax(1)
    assert not torch.allclose(plain, flipped)
    torch.testing.assert_close(got, (plain + flipped) / 2)
    torch.testing.assert_close(two, (plain + big) / 2)


def test_the_metric_is_mmsegs_sums_over_the_split():
    rng = np.random.default_rng(0)
    preds = [torch.from_numpy(rng.integers(0, 4, (9, 11))) for _ in range(3)]
    labels = [torch.from_numpy(rng.choice([0, 1, 2, 255], (9, 11))) for _ in range(3)]  # class 3 never labelled
    sums = sum(ev.area_sums(p, t, 4) for p, t in zip(preds, labels))
    result = ev.summarize(sums, ["a", "b", "c", "d"])
    p, t = torch.cat([x.ravel() for x in preds]), torch.cat([x.ravel() for x in labels])
    keep = t != 255
    p, t = p[keep], t[keep]
    ious = [((p == k) & (t == k)).sum().item() / ((p == k) | (t == k)).sum().item() for k in range(4)]
    assert [c["IoU"] for c in result["classes"]] == pytest.approx(ious)
    assert ious[3] == 0 and math.isnan(result["classes"][3]["Acc"])  # predicted, never labelled: IoU 0
    assert result["mIoU"] == pytest.approx(np.mean(ious)) and result["aAcc"] == pytest.approx((p == t).float().mean())
    absent = ev.summarize(torch.tensor([[1, 0], [1, 0], [1, 0]]), ["a", "b"])
    assert math.isnan(absent["classes"][1]["IoU"]) and absent["mIoU"] == 1.0  # absent from both: left out


@pytest.mark.parametrize("count", [7, 32, 1])
def test_sharding_counts_every_image_once(count):
    shards = [ev.shard(count, rank, 2) for rank in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(count))
    assert sum(map(len, shards)) == count  # no padding (DistributedSampler would repeat one for 7)
    with pytest.raises(ValueError):
        ev.shard(count, 2, 2)


def test_evaluate_a_checkpoint_and_a_saved_folder_gives_the_trainers_numbers(run, capsys):
    root, out, result = run
    assert ev.main(["--checkpoint", str(out / "last.ckpt")]) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "eval_validation_whole.json").read_text())
    assert data["images"] == 32 and data["mode"] == "whole" and data["model"]["kind"] == "trainer checkpoint"
    assert data["mIoU"] == pytest.approx(result["final"]["mIoU"], abs=1e-6)
    assert data["aAcc"] == pytest.approx(result["final"]["aAcc"], abs=1e-6)
    assert [c["name"] for c in data["classes"]] == ["ground", "common", "odd"] and "odd" in printed
    assert f"mIoU {100 * data['mIoU']:.2f}" in printed
    target = out / "saved.json"
    assert ev.main(["--checkpoint", str(out / "model"), "--out", str(target), "--mode", "slide", "--crop", "32"]) == 0
    saved = json.loads(target.read_text())
    assert saved["model"]["kind"] == "saved model" and saved["mIoU"] == pytest.approx(data["mIoU"], abs=1e-6)


def test_wrong_files_and_missing_data_are_refused_by_name(run, tmp_path, capsys):
    root, out, _ = run
    cls = tmp_path / "fec_small_cls.pth.tar"
    torch.save({"epoch": 3, "arch": "fec_small", "state_dict": {"head.weight": torch.zeros(2, 2)}}, cls)
    with pytest.raises(CheckpointError, match="classification checkpoint"):
        load_model(cls)
    assert ev.main(["--checkpoint", str(cls), "--data-root", str(root)]) == 2
    assert "classification checkpoint" in capsys.readouterr().err
    assert ev.main(["--checkpoint", str(out / "last.ckpt"), "--data-root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere/images/validation does not exist" in err and "ADEChallengeData2016 layout" in err
    with pytest.raises(CheckpointError, match="neither a saved smp model"):
        load_model(tmp_path)


def test_an_official_checkpoint_loads_with_its_class_names(tmp_path):
    from test_docs import official_stand_ins

    official_stand_ins(tmp_path)
    loaded = load_model(tmp_path / "fpn_fec_small_ade20k.pth")
    assert loaded.kind == "official mmseg checkpoint" and loaded.num_classes == 150
    assert loaded.class_names[:2] == ["class_0", "class_1"] and loaded.augment.eval_scale == (2048, 512)
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    assert predict_scores(loaded, image, scale=(128, 64)).shape == (150, 37, 53)
