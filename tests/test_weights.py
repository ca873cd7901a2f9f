"""One weight-loading API (``fec_backbone.checkpoint``) behind every route, fed with the files users have.

The central file is a real timm ``CheckpointSaver`` checkpoint, written as the official ``train.py``
writes it: ``state_dict``, ``state_dict_ema`` (EMA weights that differ from the plain ones), optimizer,
AMP scaler state, epoch, arch, metric and ``args`` as an ``argparse.Namespace``. Each route must load the
EMA weights by default and the plain ones on request: timm's ``file=`` route (also with
``features_only``), ``load_fec_weights``, Detectron2's ``MODEL.WEIGHTS`` (its checkpointer),
smp's weights installer, ``classification.validate`` and ``fec visualize``.
"""
from __future__ import annotations

import argparse
import os

import pytest
import timm
import torch
from timm.utils import CheckpointSaver, ModelEmaV3, NativeScaler

import fec_backbone
from fec_backbone.checkpoint import CheckpointError, extract_fec_weights, map_official_key, read_checkpoint
from helpers import official_state_dict
from reference_fec import reference_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _equal_to(model_state: dict, official: dict, prefix: str = "") -> bool:
    """Whether every stem/stage tensor of ``official`` (official keys) is in ``model_state`` unchanged."""
    keys = [k for k in official if not k.startswith(("head.", "norm."))]
    return all(torch.equal(model_state[prefix + map_official_key(k)], official[k]) for k in keys)


@pytest.fixture(scope="module")
def saver_file(tmp_path_factory):
    """A checkpoint as the official train.py saves it, with EMA weights that differ from the plain ones."""
    root = tmp_path_factory.mktemp("saver")
    model = reference_model("fec_small")
    model.load_state_dict(official_state_dict("fec_small", seed=11))
    ema = ModelEmaV3(model, decay=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)  # the plain weights move on; the EMA copy stays behind
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()
    args = argparse.Namespace(model="fec_small", lr=1e-3, epochs=300, opt_betas=None, scale=[0.08, 1.0])
    saver = CheckpointSaver(model=model, optimizer=optimizer, args=args, model_ema=ema, amp_scaler=NativeScaler(),
                            checkpoint_dir=str(root), recovery_dir=str(root), max_history=1)
    saver.save_checkpoint(epoch=299, metric=77.1)
    path = root / "last.pth.tar"
    raw = torch.load(path, map_location="cpu", weights_only=False)  # test-side check of what the saver wrote
    assert isinstance(raw["args"], argparse.Namespace) and {"state_dict", "state_dict_ema", "optimizer"} <= set(raw)
    plain, averaged = raw["state_dict"], raw["state_dict_ema"]
    assert not torch.equal(plain["patch_embed.proj.weight"], averaged["patch_embed.proj.weight"])
    return path, plain, averaged


class Settings:
    """A plain class, but not on the allow-list: a file holding one must be refused and named, never unpickled."""


def test_reader_allows_the_namespace_but_no_other_class(saver_file, tmp_path):
    path, _, _ = saver_file
    assert isinstance(read_checkpoint(path)["args"], argparse.Namespace)

    bad = tmp_path / "custom.pth"
    torch.save({"state_dict": {}, "cfg": Settings()}, bad)
    with pytest.raises(CheckpointError, match=r"test_weights\..*Settings.*not plain data"):
        read_checkpoint(bad)


def test_ema_by_default_plain_on_request(saver_file):
    path, plain, averaged = saver_file
    model = timm.create_model("fec_small")
    result = fec_backbone.load_fec_weights(model, path)
    assert _equal_to(model.state_dict(), averaged) and not result.kept_initial
    fec_backbone.load_fec_weights(model, path, use_ema=False)
    assert _equal_to(model.state_dict(), plain)


def test_timm_file_route_and_features_only(saver_file):
    path, plain, averaged = saver_file
    model = timm.create_model("fec_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert _equal_to(model.state_dict(), averaged)
    assert torch.equal(model.head.weight, averaged["head.weight"])
    model = timm.create_model("fec_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), use_ema=False))
    assert _equal_to(model.state_dict(), plain)
    features = timm.create_model("fec_small", pretrained=True, features_only=True, preset="detection",
                                 pretrained_cfg_overlay=dict(file=str(path)))
    assert _equal_to(features.state_dict(), averaged, prefix="model.")


def test_wrappers_and_prefixes(tmp_path):
    official = official_state_dict("fec_small", seed=12)
    shapes = {
        "ddp": {"model": {f"module.{k}": v for k, v in official.items()}},
        "compiled_ddp": {f"_orig_mod.module.{k}": v for k, v in official.items()},
        "mmdet": {"meta": {"CLASSES": ("person", "car"), "epoch": 12},
                  "state_dict": {**{f"backbone.{k}": v for k, v in official.items() if not k.startswith(("head.", "norm."))},
                                 "backbone.norm0.weight": torch.ones(32), "neck.lateral_convs.0.conv.weight": torch.zeros(1)}},
    }
    for name, obj in shapes.items():
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        model = timm.create_model("fec_small", num_classes=0, preset="detection")
        model.prune_intermediate_layers(4, prune_norm=name == "mmdet")
        fec_backbone.load_fec_weights(model, path)
        assert _equal_to(model.state_dict(), official), name
    weights, prefix, ignored = extract_fec_weights(tmp_path / "mmdet.pth")
    assert prefix == "backbone." and ignored == [] and "stem.proj.weight" in weights
    assert torch.equal(weights["out_norms.0.weight"], torch.ones(32))  # the official output norm norm0
    with pytest.raises(CheckpointError, match="no FEC weights under the prefix 'encoder.'"):
        fec_backbone.read_fec_weights(tmp_path / "mmdet.pth", prefix="encoder.")


def test_wrong_variant_is_named(saver_file):
    path, _, _ = saver_file
    with pytest.raises(CheckpointError, match="is an fec_small checkpoint; create the model as fec_small"):
        fec_backbone.load_fec_weights(timm.create_model("fec_base"), path)
    with pytest.raises(CheckpointError, match="classifier has 1000 classes but the model 10"):
        timm.create_model("fec_small", pretrained=True, num_classes=10,
                          pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    model = timm.create_model("fec_small", pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.head.out_features == 10  # timm's convention: another num_classes starts a new classifier


def test_detectron2_routes(saver_file, tmp_path):
    if os.environ.get("FEC_REQUIRE_DETECTRON2") != "1":
        pytest.importorskip("detectron2")
    import d2_plugin
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from fec_backbone.model_zoo import get_config_file

    path, plain, averaged = saver_file
    cfg = get_cfg()
    d2_plugin.add_fec_config(cfg)
    cfg.merge_from_file(get_config_file("detectron2/mask_rcnn_fec_s_fpn_1x_coco.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    d2_plugin.FECCheckpointer(model).load(str(path))  # what MODEL.WEIGHTS does
    assert _equal_to(model.backbone.bottom_up.body.state_dict(), averaged)


def test_smp_installer_takes_the_ema_weights(saver_file, tmp_path, monkeypatch):
    seg_plugin = pytest.importorskip("seg_plugin")
    path, _, averaged = saver_file
    installed = seg_plugin.install(path, cache_dir=tmp_path / "hf")
    from safetensors.torch import load_file

    assert _equal_to(load_file(str(installed)), averaged)


def test_validate_and_visualize_take_the_ema_weights(saver_file, tmp_path):
    from classification.toy_data import make_toy_imagefolder
    from classification.validate import main as validate
    from fec_backbone.visualize import load_fec_backbone

    path, plain, averaged = saver_file
    model, _ = load_fec_backbone("fec_small", str(path))
    assert _equal_to(model.state_dict(), averaged)
    model, _ = load_fec_backbone("fec_small", str(path), use_ema=False)
    assert _equal_to(model.state_dict(), plain)

    data = tmp_path / "toy"
    make_toy_imagefolder(str(data), train_per_class=1, val_per_class=1, size=32, verbose=False)
    folder = data / "val"
    classes = sorted(os.listdir(folder))
    class_map = tmp_path / "classes.txt"
    class_map.write_text("\n".join(classes + [f"unused_{i}" for i in range(1000 - len(classes))]) + "\n")
    common = [str(data), "--checkpoint", str(path), "--class-map", str(class_map), "--img-size", "64", "-j", "0"]
    ema = validate(common)
    plain_result = validate(common + ["--no-use-ema"])
    assert ema["model"] == "fec_small" and ema["use_ema"] and not plain_result["use_ema"]
    assert ema["loss"] != plain_result["loss"]  # different weights give different losses on the same images


def official_dense_file(path, preset: str = "detection", seed: int = 3):
    """A file in the layout of an official mmdet / mmseg checkpoint's backbone: ``meta`` and ``state_dict``
    with ``backbone.`` + the dense-prediction FEC's keys (``patch_embed``, ``network.<i>``, the output norms
    ``norm0/2/4/6``; no final norm, no classifier) and a neck tensor; random weights. Returns the file and
    the official backbone (the oracle) holding those weights."""
    from fec_backbone import PRESETS
    from helpers import randomize_scalars

    torch.manual_seed(seed)
    ref = reference_model("fec_small", fork_feat=True, **PRESETS[preset])
    randomize_scalars(ref)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.startswith("norm"):
                p.add_(0.3 * torch.randn_like(p))
    state = {f"backbone.{k}": v for k, v in ref.state_dict().items()}
    state["neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 32, 1, 1)
    torch.save({"meta": {"mmdet_version": "2.24.0", "CLASSES": ("person",), "epoch": 12}, "state_dict": state}, path)
    return path, ref.eval()


def test_an_official_downstream_backbone_loads_into_every_timm_route(tmp_path):
    """The backbone of an official detection/segmentation checkpoint: into a classifier (its final norm and
    classifier, which the file lacks, keep their initial values and are said so), ``features_only`` (no
    complaint about the final norm it does not use), and ``features_only`` with ``feature_norms`` (the
    output norms ``norm0/2/4/6`` loaded too), also through timm's ``pretrained_cfg_overlay`` route; the
    output-normed maps equal the official backbone's."""
    path, ref = official_dense_file(tmp_path / "mask_rcnn_fec_small_fpn_1x_coco.pth")
    classifier = timm.create_model("fec_small", preset="detection")
    result = fec_backbone.load_fec_weights(classifier, path)
    assert sorted(result.kept_initial) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    assert [k for k in result.ignored if k.startswith("out_norms.")] and len(result.loaded) == 278
    plain = timm.create_model("fec_small", features_only=True, preset="detection")
    assert fec_backbone.load_fec_weights(plain, path).kept_initial == []
    dense = timm.create_model("fec_small", features_only=True, preset="detection", feature_norms=True)
    loaded = fec_backbone.load_fec_weights(dense, path)
    assert loaded.kept_initial == [] and loaded.ignored == [] and len(loaded.loaded) == 286
    routed = timm.create_model("fec_small", features_only=True, preset="detection", feature_norms=True, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path)))
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        expected = ref.double()(x)
        for model in (dense, routed):
            for ours, theirs in zip(model.double().eval()(x), expected):
                assert (ours - theirs).abs().max() <= 1e-10 * theirs.abs().max()
