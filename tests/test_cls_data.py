"""Classification data: the generated toy dataset, and clear errors for bad ImageFolder input."""
from __future__ import annotations

import hashlib
import os
import shutil

import pytest
import torch

from classification.data import DatasetError, ImageReadError, ShardSampler, build_dataset, scan_split
from classification.toy_data import CLASSES, make_toy_imagefolder
from fec_backbone.training import GeneratedDataError


def _digest(root: str) -> str:
    h = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            h.update(name.encode())
            with open(os.path.join(folder, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture
def toy(tmp_path):
    root = str(tmp_path / "toy")
    make_toy_imagefolder(root, train_per_class=3, val_per_class=2, size=32, verbose=False)
    return root


def test_toy_data_is_deterministic_and_refuses_to_mix(tmp_path, toy):
    again = str(tmp_path / "again")
    assert make_toy_imagefolder(again, 3, 2, 32, verbose=False) == {"train": 12, "val": 8}
    assert _digest(toy) == _digest(again)
    marker = os.path.join(again, "train", "top_left", "top_left_0000.png")
    stamp = os.stat(marker).st_mtime_ns
    make_toy_imagefolder(again, 3, 2, 32, verbose=False)  # same settings: kept as is
    assert os.stat(marker).st_mtime_ns == stamp
    assert make_toy_imagefolder(again, 4, 2, 32, verbose=False) == {"train": 16, "val": 8}  # ours: regenerated
    assert len(build_dataset(again, "train")) == 16
    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(GeneratedDataError, match="not generated here"):
        make_toy_imagefolder(str(stranger), 3, 2, 32, verbose=False)
    ds = build_dataset(toy, "train")
    assert ds.class_names == sorted(CLASSES) and len(ds) == 12
    img, target = ds[0]
    assert img.size == (32, 32) and target == 0


def test_corrupt_image_error_names_the_file(toy):
    bad = os.path.join(toy, "train", "top_right", "top_right_0001.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n this is not image data")
    ds = build_dataset(toy, "train")
    index = [p for p, _ in ds.reader.samples].index(bad)
    with pytest.raises(ImageReadError, match="top_right_0001.png"):
        ds[index]
    # through a loader worker process as well: the message keeps the path
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, [index]), num_workers=1,
                                         collate_fn=lambda batch: batch)
    with pytest.raises(ImageReadError, match="top_right_0001.png"):
        next(iter(loader))


def test_empty_class_folder_is_reported(toy):
    os.makedirs(os.path.join(toy, "train", "hexagon"))
    with pytest.raises(DatasetError, match=r"contain no images \(hexagon\)"):
        scan_split(os.path.join(toy, "train"))


def test_empty_or_missing_split_is_reported(toy, tmp_path):
    empty = tmp_path / "empty" / "train"
    empty.mkdir(parents=True)
    with pytest.raises(DatasetError, match="is empty: it has no class folders"):
        scan_split(str(empty))
    with pytest.raises(DatasetError, match="split folder not found"):
        build_dataset(toy, "validation")


def test_layout_errors(toy):
    train = os.path.join(toy, "train")
    loose = os.path.join(train, "stray.png")
    shutil.copy(os.path.join(train, "top_left", "top_left_0000.png"), loose)
    with pytest.raises(DatasetError, match="directly inside it"):
        scan_split(train)
    os.remove(loose)
    os.makedirs(os.path.join(train, "top_left", "more"))
    with pytest.raises(DatasetError, match="sub-folders"):
        scan_split(train)


def test_validation_classes_follow_the_training_classes(toy):
    names = build_dataset(toy, "train").class_names
    os.rename(os.path.join(toy, "val", "top_left"), os.path.join(toy, "val", "zz_top_left_removed"))
    with pytest.raises(DatasetError, match="the model does not know"):
        build_dataset(toy, "val", names)
    os.rename(os.path.join(toy, "val", "zz_top_left_removed"), os.path.join(toy, "elsewhere"))
    val = build_dataset(toy, "val", names)  # a missing class keeps the others' indices
    assert sorted({t for _, t in val.reader.samples}) == [names.index(c) for c in ("bottom_left", "bottom_right", "top_right")]


def test_shard_sampler_covers_every_sample_once():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))
    assert [len(ShardSampler(11, r, 3)) for r in range(3)] == [len(s) for s in shards]


def test_the_recipes_randaugment_survives_posterize_to_zero_bits():
    """``rand-m9-mstd0.5-inc1`` reaches magnitude 10, where PosterizeIncreasing keeps 0 bits: Pillow 12 raises
    there (an ImageNet run crashed some epochs in); the training transform gives the black image that
    Pillow < 12 gave, and posterizes as before otherwise."""
    import numpy as np
    import PIL
    from PIL import Image, ImageOps
    from timm.data import create_transform

    from classification.data import posterize_to_any_bits

    transform = create_transform(32, is_training=True, auto_augment="rand-m9-mstd0.5-inc1")
    ops = [op for t in transform.transforms for op in getattr(t, "ops", ()) if "Posterize" in op.name]
    assert ops, transform
    img = Image.new("RGB", (32, 32), (200, 100, 50))
    if int(PIL.__version__.split(".")[0]) >= 12:
        with pytest.raises(ValueError, match="bits"):
            ops[0].aug_fn(img, 0)
    posterize_to_any_bits(transform)
    assert np.asarray(ops[0].aug_fn(img, 0)).max() == 0
    assert np.array_equal(np.asarray(ops[0].aug_fn(img, 3)), np.asarray(ImageOps.posterize(img, 3)))
