"""python -m seg_plugin.predict on real photographs (scikit-learn's china.jpg and flower.jpg, 427x640) with a
toy-trained model: an overlay with a legend and a uint8 label map per image at the image's size; grayscale
converted and said so; non-images, empty folders and unmatched patterns refused with what to do."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_image

from helpers import save_photographs
from seg_plugin.ade20k_meta import ADE20K_CLASSES, ADE20K_PALETTE, class_colours
from seg_toy_run import REPO, toy_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return toy_run(tmp_path_factory.mktemp("seg_predict"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return save_photographs(tmp_path_factory.mktemp("photos"))


def predict(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "seg_plugin.predict", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


def test_the_palette_is_ade20ks():
    assert len(ADE20K_CLASSES) == 150 and ADE20K_PALETTE.shape == (150, 3)
    assert ADE20K_CLASSES[:3] == ("wall", "building", "sky") and ADE20K_CLASSES[-1] == "flag"
    assert ADE20K_PALETTE[0].tolist() == [120, 120, 120] and ADE20K_PALETTE[2].tolist() == [6, 230, 230]
    assert len({tuple(c) for c in ADE20K_PALETTE.tolist()}) == 149  # mmseg's: 140,140,140 twice (road, 48)


def test_predict_photographs_and_a_grayscale_image(run, photos, tmp_path):
    _, out, _ = run
    gray = tmp_path / "gray.png"
    Image.fromarray(load_sample_image("china.jpg")).convert("L").save(gray)
    done = predict(photos, gray, "--checkpoint", out / "model", "--out-dir", tmp_path / "pred")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "converted from mode L, 1 channel (grayscale), to RGB" in done.stdout
    colours = class_colours(3)
    for name in ("china", "flower", "gray"):
        overlay = np.asarray(Image.open(tmp_path / "pred" / f"{name}_overlay.png"))
        labels = Image.open(tmp_path / "pred" / f"{name}_labels.png")
        assert overlay.shape == (427, 640, 3) and labels.size == (640, 427) and labels.mode == "L"
        values = np.asarray(labels)
        assert values.max() < 3
        top = int(np.bincount(values.ravel(), minlength=3).argmax())
        swatch = overlay[5:10, 5:10].reshape(-1, 3)
        assert (swatch == colours[top]).all(), "the legend's first swatch is the most frequent class's colour"
        away = overlay[200:, 300:].astype(int)  # outside the legend: the photo blended with the label colours
        photo = np.asarray(Image.open(photos / f"{name}.jpg" if name != "gray" else gray).convert("RGB")).astype(int)
        blend = np.round(photo * 0.5 + colours[values].astype(int) * 0.5)[200:, 300:]
        assert np.abs(away - blend).max() <= 1
    names = [line for line in done.stdout.splitlines() if "china.jpg" in line][0]
    assert any(n in names for n in ("ground", "common", "odd"))


def test_the_checkpoint_file_predicts_as_the_saved_folder(run, photos, tmp_path):
    _, out, _ = run
    for source, folder in ((out / "last.ckpt", "a"), (out / "model", "b")):
        done = predict(photos / "flower.jpg", "--checkpoint", source, "--out-dir", tmp_path / folder)
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = (np.asarray(Image.open(tmp_path / f / "flower_labels.png")) for f in "ab")
    assert np.array_equal(a, b)


def test_bad_inputs_say_what_is_wrong(run, tmp_path):
    _, out, _ = run
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.jpg").write_text("not a picture")
    cases = {tmp_path / "empty": "holds no images", tmp_path / "notes.jpg": "is not a readable image",
             tmp_path / "*.png": "matches no files", tmp_path / "missing.jpg": "does not exist"}
    for arg, message in cases.items():
        done = predict(arg, "--checkpoint", out / "model", "--out-dir", tmp_path / "o")
        assert done.returncode == 2 and message in done.stderr, (arg, done.stderr[-2000:])
