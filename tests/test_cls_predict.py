"""``python -m classification.predict`` on real photographs (scikit-learn's china.jpg and flower.jpg): as
docs/classification.md runs it with a toy checkpoint of the trainer, with an official-layout ImageNet
checkpoint and random weights (ImageNet class names), images of other modes, and its clear errors."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo

from classification import predict, train
from classification.data import DatasetError, ImageReadError
from classification.toy_data import make_toy_imagefolder
from fec_backbone.checkpoint import CheckpointError
from helpers import save_photographs
from reference_fec import reference_model

sklearn_datasets = pytest.importorskip("sklearn.datasets")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CFG = os.path.join(ROOT, "configs", "classification", "toy.yaml")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
TOY_CLASSES = ["bottom_left", "bottom_right", "top_left", "top_right"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with china.jpg and flower.jpg (427x640 photographs) and ``output/toy/last.pth.tar``."""
    root = tmp_path_factory.mktemp("predict")
    save_photographs(root)
    data = str(root / "data" / "toy")
    make_toy_imagefolder(data, train_per_class=4, val_per_class=2, size=32, verbose=False)
    threads = torch.get_num_threads()
    train.main(["-c", TOY_CFG, "--data-dir", data, "--epochs", "1", "-b", "8", "--workers", "0", "--threads", "1",
                "--output", str(root / "output" / "toy")])
    torch.set_num_threads(threads)
    return root


def _run(cwd, *args):
    done = subprocess.run([sys.executable, "-m", "classification.predict", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)
    return done


def test_documented_command_on_china_jpg_with_the_toy_checkpoint(workdir):
    done = _run(workdir, "china.jpg", "--checkpoint", "output/toy/last.pth.tar", "--results-dir", "output/predict")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "china.jpg" and len(lines) == 5  # 4 classes: top-5 shows all 4
    ranked = [line.split() for line in lines[1:]]
    assert [r[0] for r in ranked] == ["1.", "2.", "3.", "4."]
    assert sorted(r[3] for r in ranked) == TOY_CLASSES  # the names the trainer recorded
    probs = [float(r[1]) for r in ranked]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-3)
    assert "'input_size': (3, 32, 32)" in done.stderr  # the training's recorded data config
    with open(workdir / "output" / "predict" / "topk.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["filename"] == "china.jpg"
    assert [rows[0][f"label_{j}"] for j in range(4)] == [r[3] for r in ranked]


def test_folder_random_weights_imagenet_names_and_other_modes(workdir, tmp_path, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(workdir / "china.jpg", photos / "china.jpg")
    Image.open(workdir / "flower.jpg").convert("L").save(photos / "flower_grey.png")
    Image.open(workdir / "china.jpg").convert("RGBA").save(photos / "china_rgba.png")
    (photos / "notes.txt").write_text("not an image, and not picked from a folder")
    caplog.set_level("INFO", logger="predict")
    results = predict.main([str(photos), "--results-dir", str(tmp_path / "out"), "--results-format", "csv", "json"])
    assert [os.path.basename(r["filename"]) for r in results] == ["china.jpg", "china_rgba.png", "flower_grey.png"]
    names = {ImageNetInfo().index_to_description(i) for i in range(1000)}
    assert all(len(r["label"]) == 5 and set(r["label"]) <= names for r in results)
    assert results[0]["index"] == results[1]["index"]  # RGBA: the alpha channel dropped, the same pixels
    assert "1-channel image (mode L) converted to RGB" in caplog.text
    assert "4-channel image (mode RGBA) converted to RGB" in caplog.text
    assert "random weights, the classes are meaningless" in caplog.text
    with open(tmp_path / "out" / "topk.json") as f:
        assert json.load(f) == results
    one = predict.main([str(photos / "china.jpg"), "--img-size", "320", "--results-dir", str(tmp_path / "out")])
    assert len(one) == 1


def test_official_imagenet_checkpoint(workdir, tmp_path):
    official = reference_model("fec_small").state_dict()  # official key layout, 1000-class head
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in official.items()}
    path = tmp_path / "fec_small.pth.tar"
    torch.save({"state_dict": official, "state_dict_ema": ema, "arch": "fec", "epoch": 299}, path)
    glob_pattern = str(workdir / "*.jpg")
    results = predict.main([glob_pattern, "--model", "fec_small", "--checkpoint", str(path),
                            "--results-dir", str(tmp_path)])
    assert [os.path.basename(r["filename"]) for r in results] == ["china.jpg", "flower.jpg"]
    model = timm.create_model("fec_small").eval()
    model.load_state_dict({k: v for k, v in predict.load_classifier(str(path), None, True)[0].state_dict().items()})
    assert torch.equal(model.stem.proj.weight, ema["patch_embed.proj.weight"])  # EMA weights first


def test_clear_errors(workdir, tmp_path):
    toy = str(workdir / "output" / "toy" / "last.pth.tar")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="notes.txt.*not an image file"):
        predict.main([str(tmp_path / "notes.txt"), "--checkpoint", toy, "--results-dir", str(tmp_path)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        predict.main([str(tmp_path / "empty")])
    with pytest.raises(DatasetError, match="no such file or folder"):
        predict.main([str(tmp_path / "missing.jpg")])
    with pytest.raises(CheckpointError, match="checkpoint of 'fec_small', not of --model 'fec_base'"):
        predict.main([str(workdir / "china.jpg"), "--model", "fec_base", "--checkpoint", toy])
    body = timm.create_model("fec_small", num_classes=0, feature_norms=True).state_dict()
    lightning = tmp_path / "last.ckpt"  # the segmentation trainer's: the smp model under the module's `model.`
    torch.save({"state_dict": {f"model.encoder.{k}": v for k, v in body.items()}, "global_step": 8}, lightning)
    with pytest.raises(CheckpointError, match="not a classification checkpoint.*'model.encoder.'.*Lightning"):
        predict.main([str(workdir / "china.jpg"), "--checkpoint", str(lightning)])
    d2 = tmp_path / "model_final.pth"
    torch.save({"model": {f"backbone.bottom_up.body.{k}": v for k, v in body.items()}, "iteration": 9}, d2)
    with pytest.raises(CheckpointError, match="not a classification checkpoint.*Detectron2"):
        predict.main([str(workdir / "china.jpg"), "--checkpoint", str(d2)])
    done = _run(workdir, "china.jpg", "--checkpoint", str(d2))
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith("error: ")
    with pytest.raises(DatasetError, match="divisible by 32"):
        predict.main([str(workdir / "china.jpg"), "--img-size", "100"])
