"""ADE20K-layout data: the generated toy set, label handling, the reference augmentation, and errors
that name the file and the problem for bad input."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from seg_plugin.data import (
    IGNORE_INDEX,
    ADE20KDataset,
    AugmentConfig,
    SegDataError,
    class_names,
    read_pair,
    rescale_size,
    scan_split,
)
from fec_backbone.training import ResumableSampler
from seg_plugin.toy_data import TOY_CLASSES, generate
from seg_plugin.train_ade20k import ConfigError, load_config

TOY_AUG = AugmentConfig(scale=(256, 64), crop_size=64, eval_scale=(256, 64))


def digest(root) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("toy") / "toy_ade20k", train=8, val=4)


def test_toy_data_is_deterministic_and_in_ade20k_layout(toy, tmp_path):
    again = generate(tmp_path / "again", train=8, val=4)
    assert digest(again) == digest(toy)
    assert generate(toy, train=8, val=4) == toy  # already there: kept
    other = generate(tmp_path / "other", train=8, val=4)
    generate(other, train=9, val=4)  # generated here with other settings: regenerated
    assert len(scan_split(other, "training")) == 9
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not generated here")
    with pytest.raises(FileExistsError, match="not generated here"):
        generate(tmp_path / "mine", train=8, val=4)
    pairs = scan_split(toy, "training")
    assert len(pairs) == 8 and all(i.suffix == ".jpg" and a.suffix == ".png" for i, a in pairs)
    assert len(scan_split(toy, "validation")) == 4
    raw = np.concatenate([np.asarray(Image.open(a)).ravel() for _, a in pairs])
    assert set(np.unique(raw)) == {0, 1, 2, 3}  # 0: unlabelled boundaries
    assert class_names(toy, 3) == list(TOY_CLASSES)
    assert class_names(toy, 150) == [f"class_{i}" for i in range(150)]


def test_labels_reduce_zero_and_keep_ignore(tmp_path):
    root = tmp_path / "ade"
    write_pair(root, "a", np.array([[0, 1, 2], [150, 255, 3]], np.uint8))
    image, labels = read_pair(*scan_split(root, "training")[0], num_classes=150)
    assert image.shape == (2, 3, 3)
    assert labels.tolist() == [[IGNORE_INDEX, 0, 1], [149, IGNORE_INDEX, 2]]


def write_pair(root, name, labels, image_size=None, split="training", mode="L"):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    h, w = image_size or labels.shape
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(root / "images" / split / f"{name}.jpg")
    ann = Image.fromarray(labels) if mode == "L" else Image.fromarray(np.stack([labels] * 3, -1))
    ann.save(root / "annotations" / split / f"{name}.png")


def test_size_mismatch_names_both_files(tmp_path):
    write_pair(tmp_path, "bad", np.ones((4, 6), np.uint8), image_size=(4, 5))
    with pytest.raises(SegDataError, match=r"annotation .*bad\.png is 6x4 \(WxH\) but its image .*bad\.jpg is 5x4"):
        read_pair(*scan_split(tmp_path, "training")[0], num_classes=150)


def test_label_above_class_count_names_file_and_values(tmp_path):
    labels = np.ones((4, 4), np.uint8)
    labels[0, :2] = (151, 200)
    labels[1, 0] = 255  # the ignore value is fine
    write_pair(tmp_path, "high", labels)
    message = r"high\.png has label values \[151, 200\] above the class count \(150; 0 and 255 are ignored\) in 2 pixel"
    with pytest.raises(SegDataError, match=message):
        read_pair(*scan_split(tmp_path, "training")[0], num_classes=150)
    write_pair(tmp_path, "high", np.full((4, 4), 5, np.uint8))
    with pytest.raises(SegDataError, match=r"label values \[5\] above the class count \(4;"):
        read_pair(*scan_split(tmp_path, "training")[0], num_classes=4)


def test_missing_annotation_names_the_file(tmp_path):
    write_pair(tmp_path, "a", np.ones((4, 4), np.uint8))
    write_pair(tmp_path, "b", np.ones((4, 4), np.uint8))
    (tmp_path / "annotations" / "training" / "b.png").unlink()
    message = r"annotation file missing for 1 image\(s\) of .*images/training: .*annotations/training/b\.png"
    with pytest.raises(SegDataError, match=message):
        scan_split(tmp_path, "training")
    with pytest.raises(SegDataError, match=r"missing for 1 image"):
        ADE20KDataset(tmp_path, "training", 150, TOY_AUG)


def test_other_bad_input_is_explained(tmp_path):
    with pytest.raises(SegDataError, match=r"images/validation does not exist: expected the ADEChallengeData2016"):
        scan_split(tmp_path, "validation")
    write_pair(tmp_path, "rgb", np.ones((4, 4), np.uint8), mode="RGB")
    with pytest.raises(SegDataError, match=r"rgb\.png has image mode 'RGB'; expected a single-channel label map"):
        read_pair(*scan_split(tmp_path, "training")[0], num_classes=150)
    (tmp_path / "annotations" / "training" / "rgb.png").write_bytes(b"garbage")
    with pytest.raises(SegDataError, match=r"cannot read annotation .*rgb\.png"):
        read_pair(*scan_split(tmp_path, "training")[0], num_classes=150)
    (tmp_path / "images" / "training" / "rgb.jpg").write_bytes(b"garbage")
    with pytest.raises(SegDataError, match=r"cannot read image .*rgb\.jpg"):
        read_pair(*scan_split(tmp_path, "training")[0], num_classes=150)
    empty = tmp_path / "empty"
    (empty / "images" / "training").mkdir(parents=True)
    (empty / "annotations" / "training").mkdir(parents=True)
    with pytest.raises(SegDataError, match="contains no images"):
        scan_split(empty, "training")


def test_bad_file_in_a_loader_names_the_file(tmp_path):
    write_pair(tmp_path, "ok", np.ones((40, 40), np.uint8))
    write_pair(tmp_path, "worse", np.full((40, 40), 9, np.uint8))
    data = ADE20KDataset(tmp_path, "training", 4, TOY_AUG)
    loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=ResumableSampler(len(data), positions=True), num_workers=1)
    with pytest.raises(SegDataError, match=r"worse\.png has label values \[9\]"):
        next(iter(loader))


def test_train_sample_follows_the_reference_pipeline(toy):
    data = ADE20KDataset(toy, "training", 4, TOY_AUG, seed=3)
    image, labels = data[(0, 0)]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert labels.shape == (64, 64) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
    again = ADE20KDataset(toy, "training", 4, TOY_AUG, seed=3)[(0, 0)]
    assert torch.equal(image, again[0]) and torch.equal(labels, again[1])  # a function of (seed, rank, position)
    other = data[(0, 1)]
    assert not torch.equal(image, other[0])
    tiny = AugmentConfig(scale=(64, 16), ratio_range=(1.0, 1.0), crop_size=64)
    small = ADE20KDataset(toy, "training", 4, tiny, seed=3)
    image, labels = small[(0, 0)]  # rescaled below the crop: padded (image 0, label ignored)
    assert (labels[-1] == IGNORE_INDEX).all() and (image[:, -1] == 0).all()


def test_eval_sample_keeps_original_labels(toy):
    """Labels stay at the original size; the image is rescaled as mmseg's keep-ratio Resize does (the
    largest factor with long side <= 256 and short side <= 64, rounded), then sized up to multiples of 32."""
    data = ADE20KDataset(toy, "validation", 4, TOY_AUG, train=False)
    for i in range(len(data)):
        image, labels = data[i]
        _, raw = read_pair(*data.pairs[i], 4)
        assert labels.shape == raw.shape and torch.equal(labels, torch.from_numpy(raw.astype(np.int64)))
        h, w = raw.shape
        factor = min(256 / max(h, w), 64 / min(h, w))
        expected = [-(-int(side * factor + 0.5) // 32) * 32 for side in (h, w)]
        assert list(image.shape) == [3, *expected], (i, h, w)
    assert rescale_size(512, 683, (2048, 512)) == (683, 512)
    assert rescale_size(300, 4000, (2048, 512)) == (2048, 154)


def test_config_errors_name_the_setting(tmp_path):
    cfg = load_config("configs/segmentation/fpn_fec_s_ade20k_80k.yaml")
    assert cfg["model"]["arch"] == "semanticfpn" and cfg["optim"]["lr"] == 1e-4 and cfg["train"]["iterations"] == 80000
    assert cfg["train"]["batch_size"] == 16 and cfg["data"]["crop_size"] == 512 and cfg["optim"]["poly_power"] == 0.9
    with pytest.raises(ConfigError, match="unknown setting 'train.iters'"):
        load_config(None, {"train.iters": 3})
    assert load_config("configs/segmentation/fpn_fec_s_ade20k_80k.yaml", {"model.arch": "unet"}).model.arch == "unet"
    with pytest.raises(ConfigError, match=r"model.arch_kwargs \['decoder_dropout'\] are not arguments of smp.Unet"):
        load_config(None, {"model.arch": "unet", "model.arch_kwargs": {"decoder_dropout": 0.1}})
    with pytest.raises(ConfigError, match="not an smp architecture"):
        load_config(None, {"model.arch": "segnet"})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="train.batch_size must be a positive integer"):
        load_config(None, {"train.batch_size": 0})


def test_eval_image_is_the_official_align_resize(tmp_path):
    """mmseg's AlignResize as OpenCV (mmcv.imresize) does it: the keep-ratio rescale first (40x70 to 64x112
    within (256, 64)), then a second bilinear resize, not padding, to multiples of 32 (64x128)."""
    import cv2

    rng = np.random.default_rng(0)
    (tmp_path / "images" / "validation").mkdir(parents=True)
    (tmp_path / "annotations" / "validation").mkdir(parents=True)
    pixels = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "images" / "validation" / "a.png")
    Image.fromarray(np.ones((40, 70), np.uint8)).save(tmp_path / "annotations" / "validation" / "a.png")
    aug = AugmentConfig(eval_scale=(256, 64), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    image, labels = ADE20KDataset(tmp_path, "validation", 4, aug, train=False)[0]
    rescaled = cv2.resize(pixels, (112, 64), interpolation=cv2.INTER_LINEAR)
    aligned = cv2.resize(rescaled, (128, 64), interpolation=cv2.INTER_LINEAR)
    assert image.shape == (3, 64, 128) and labels.shape == (40, 70)
    assert torch.equal(image, torch.from_numpy(aligned.astype(np.float32)).permute(2, 0, 1))
