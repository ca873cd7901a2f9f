"""Learning that needs FEC's clustering: the toy recipes train FEC to a clear level, and the same training
with every clustering token mixer switched off (``ClusterMixer`` returning zeros: the MLPs, the
clustering pools and the stem are left) ends at least 10 points lower.

Both toy tasks make that so: their classes share one palette and differ only in which shape's colour no
other shape shares, far apart in the image (``classification/toy_data.py``, ``seg_plugin/toy_data.py``);
the segmentation recipe keeps the rest of the network local (encoder_depth 2, Linknet). Both runs of a
test use the same seed, data and recipe; CPU training is deterministic.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Tuple

import pytest
import torch

from classification import train as cls_train
from classification.toy_data import make_toy_imagefolder
from fec_backbone.fec import ClusterMixer
from seg_plugin.toy_data import generate

REPO = Path(__file__).resolve().parent.parent
CLS_CONFIG = REPO / "configs" / "classification" / "toy.yaml"
SEG_CONFIG = REPO / "configs" / "segmentation" / "toy_linknet_fec_s.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


@contextlib.contextmanager
def mixers_off() -> Iterator[None]:
    """Every FEC clustering token mixer returns zeros while inside (the negative control)."""
    forward = ClusterMixer.forward
    ClusterMixer.forward = lambda self, x: torch.zeros_like(x)
    try:
        yield
    finally:
        ClusterMixer.forward = forward


def train_classification(root: Path, out: Path) -> float:
    """The toy recipe (configs/classification/toy.yaml) on ``root``; the final validation top-1 (%)."""
    result = cls_train.main(["-c", str(CLS_CONFIG), "--data-dir", str(root), "--output", str(out),
                             "--workers", "0", "--threads", "1"])
    return result["eval"]["top1"]


def train_segmentation(root: Path, out: Path) -> float:
    """The toy recipe (configs/segmentation/toy_linknet_fec_s.yaml: Linknet + fec_s) on ``root``; the final mIoU (%).

    The one place these tests call the segmentation trainer."""
    from seg_plugin.train_ade20k import load_config, train

    cfg = load_config(SEG_CONFIG, {"data.root": str(root), "train.progress": False})
    return 100 * train(cfg, out)["final"]["mIoU"]


def with_and_without_mixers(train: Callable[[Path, Path], float], root: Path, out: Path) -> Tuple[float, float]:
    """The same training of FEC and of the control (clustering token mixers off): both final scores."""
    fec = train(root, out / "fec")
    with mixers_off():
        off = train(root, out / "off")
    return fec, off


def test_classification_needs_the_clustering_mixers(tmp_path, capsys):
    root = tmp_path / "toy"
    make_toy_imagefolder(str(root), verbose=False)
    fec, off = with_and_without_mixers(train_classification, root, tmp_path)
    with capsys.disabled():
        print(f"\ntoy classification top-1: FEC {fec:.2f}%, clustering mixers off {off:.2f}% (chance 25%)")
    assert fec >= 65.0
    assert fec - off >= 10.0


def test_segmentation_needs_the_clustering_mixers(tmp_path, capsys):
    root = generate(tmp_path / "toy_ade20k")
    fec, off = with_and_without_mixers(train_segmentation, root, tmp_path)
    with capsys.disabled():
        print(f"\ntoy segmentation mIoU: FEC {fec:.2f}, clustering mixers off {off:.2f}")
    assert fec >= 60.0
    assert fec - off >= 10.0


def test_switching_the_mixers_off_changes_the_model_and_is_undone():
    """The control is what it claims: while switched off, a block adds nothing but its MLP branch."""
    import timm

    model = timm.create_model("fec_small", num_classes=4).eval()
    block = model.stages[0].blocks[0]
    with torch.no_grad():
        block.layer_scale_1.fill_(1.0)
        x = torch.randn(1, 16, 16, 32)
        on = block(x)
        with mixers_off():
            off = block(x)
            mlp_only = x + block.layer_scale_2 * block.mlp(block.norm2(x))
        again = block(x)
    assert torch.equal(off, mlp_only) and not torch.allclose(on, off)
    assert torch.equal(on, again)
