"""FEC ImageNet weights through smp's standard mechanism: ``smp.Unet("fec_s")`` with its default
``encoder_weights="imagenet"`` loads the official checkpoint installed by ``seg_plugin.weights``, offline,
in a throwaway Hugging Face cache; without it the error says what to do."""
from __future__ import annotations

import json

import huggingface_hub.constants
import pytest
import segmentation_models_pytorch as smp
import torch

import seg_plugin
from fec_backbone.checkpoint import CheckpointError
from fec_backbone.checkpoint import map_official_key
from helpers import official_state_dict
from seg_plugin import pretrained, weights


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline (HF_HUB_OFFLINE=1): nothing may come from the network."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A fake official FEC-S ImageNet checkpoint (official key layout, as the authors publish it)."""
    state = official_state_dict("fec_small", seed=5, noise=0.02)
    path = tmp_path_factory.mktemp("official") / "fec_small.pth"
    torch.save({"model": state, "epoch": 299}, path)
    return path, state


def assert_encoder_holds(encoder: torch.nn.Module, state: dict, skip_stem: bool = False) -> None:
    ours = encoder.state_dict()
    compared = 0
    for key, value in state.items():
        ours_key = map_official_key(key)
        if key.startswith(("head.", "norm.")) or (skip_stem and ours_key == "stem.proj.weight"):
            continue
        assert torch.equal(ours[ours_key], value), key
        compared += 1
    assert compared == len([k for k in ours if not k.startswith("out_norms.")]) - (1 if skip_stem else 0)
    for key, value in ours.items():
        if key.startswith("out_norms."):  # fresh, as in the reference's segmentation backbone
            fresh = torch.ones_like(value) if key.endswith("weight") else torch.zeros_like(value)
            assert torch.equal(value, fresh), key


def test_without_weights_the_error_says_what_to_do(hf_cache):
    with pytest.raises(seg_plugin.WeightsNotInstalledError) as info:
        smp.Unet("fec_s")
    message = str(info.value)
    assert "python -m seg_plugin.weights install --encoder fec_s --checkpoint" in message
    assert "encoder_weights=None" in message and str(hf_cache) in message
    assert smp.Unet("fec_s", encoder_weights=None).encoder.stem.proj.weight.shape == (32, 5, 4, 4)


def test_install_then_smp_default_loads_the_weights_offline(hf_cache, official, capsys):
    path, state = official
    assert weights.main(["install", "--checkpoint", str(path)]) == 0
    assert "installed fec_s ImageNet weights" in capsys.readouterr().out
    installed = weights.installed_path("fec_s")
    assert installed is not None and installed.is_relative_to(hf_cache)
    model = smp.Unet(encoder_name="fec_s")  # smp's default encoder_weights="imagenet"
    assert_encoder_holds(model.encoder, state)
    fpn = smp.FPN("fec_s", encoder_depth=5, classes=150)
    assert_encoder_holds(fpn.encoder, state)
    dilated = smp.DeepLabV3Plus("fec_s")
    assert_encoder_holds(dilated.encoder, state)
    assert smp.encoders.get_preprocessing_params("fec_s")["mean"] == [0.485, 0.456, 0.406]
    config = json.loads((installed.parent / "config.json").read_text())
    assert config["variant"] == "fec_small" and config["source_checkpoint"] == str(path)
    assert config["output_norms"] == "fresh"  # an ImageNet checkpoint has none
    assert weights.main(["status"]) == 0
    assert f"fec_s (fec_small): {installed}" in capsys.readouterr().out


def test_trained_model_reloads_without_the_imagenet_weights(hf_cache, official, tmp_path, monkeypatch):
    weights.install(official[0])
    model = smp.FPN("fec_s", classes=3).eval()  # config records encoder_weights="imagenet"
    model.save_pretrained(tmp_path / "trained")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(seg_plugin.WeightsNotInstalledError):
        smp.from_pretrained(str(tmp_path / "trained"))
    restored = smp.from_pretrained(str(tmp_path / "trained"), encoder_weights=None).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(restored(x), model(x))


def test_weights_with_other_in_channels_and_shallower_depth(hf_cache, official):
    path, state = official
    weights.install(path, "fec_s")
    one = smp.Unet("fec_s", in_channels=1, encoder_depth=3, decoder_channels=(64, 32, 16))
    stem = state["patch_embed.proj.weight"]
    assert torch.allclose(one.encoder.stem.proj.weight[:, :1], stem[:, :3].sum(1, keepdim=True))
    assert torch.equal(one.encoder.stem.proj.weight[:, 1:], stem[:, 3:])
    assert torch.equal(one.encoder.stages[1].blocks[0].mlp.fc1.weight, state["network.2.0.mlp.fc1.weight"])
    assert len(one.encoder.stages) == 2


def test_custom_encoder_params_share_the_weights(hf_cache, official):
    path, state = official
    weights.install(path, "fec_s")
    name = seg_plugin.register_encoder("fec_s_test_weights", "fec_s", proposals=(7, 7, 7, 7))
    try:
        encoder = smp.Unet(name).encoder
        assert_encoder_holds(encoder, state)
        assert encoder.stages[0].blocks[0].token_mixer.proposals == (7, 7)
    finally:
        smp.encoders.encoders.pop(name)


def test_other_variants_say_they_are_not_installed(hf_cache, official):
    weights.install(official[0], "fec_s")
    with pytest.raises(seg_plugin.WeightsNotInstalledError, match="encoder 'fec_b' are not installed"):
        smp.FPN("fec_b")


def test_wrong_variant_and_bad_files_are_explained(hf_cache, official, tmp_path, capsys):
    path, _ = official
    assert weights.main(["install", "--checkpoint", str(path), "--encoder", "fec_b"]) == 2
    err = capsys.readouterr().err
    assert "is an fec_small checkpoint (smp encoder fec_s), not fec_base (fec_b)" in err
    assert weights.installed_path("fec_b") is None
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    assert weights.main(["install", "--checkpoint", str(broken)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(CheckpointError, match="no FEC weights in this checkpoint"):
        weights.install(other)
    pruned = tmp_path / "pruned.pth"
    torch.save({k: v for k, v in official[1].items() if not k.startswith("network.6.")}, pruned)
    with pytest.raises(CheckpointError, match="fits none of the FEC variants"):
        weights.install(pruned)
    assert weights.main(["install", "--checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err


def test_reinstall_is_atomic_and_idempotent(hf_cache, official):
    path, state = official
    first = weights.install(path)
    blob = first.resolve()
    second = weights.install(path)
    assert first == second and second.resolve() == blob
    leftovers = [p for p in hf_cache.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


def test_timm_universal_route_loads_an_official_checkpoint(official):
    """``tu-fec_small`` takes the official file through timm's own mechanism (no cache involved)."""
    path, state = official
    model = smp.Unet("tu-fec_small", encoder_weights=True, pretrained_cfg_overlay=dict(file=str(path)))
    ours = model.encoder.model.model.state_dict()
    for key, value in state.items():
        if not key.startswith(("head.", "norm.")):
            assert torch.equal(ours[map_official_key(key)], value), key
    with pytest.raises(RuntimeError, match="No pretrained weights exist for fec_small"):
        smp.Unet("tu-fec_small", encoder_weights=True)  # no file given: timm says so


@pytest.mark.parametrize("encoder", ["fec_s", "fec_b", "fec_l"])
def test_converted_weights_have_exactly_the_encoders_keys(encoder):
    """The converter builds its target from the core model (no dependence on the smp encoder module):
    its keys and shapes are those of the registry encoder at depth 5."""
    from seg_plugin.encoder import FecEncoder, encoder_params

    target = pretrained._encoder_target(encoder)
    ours = FecEncoder(**encoder_params(encoder)).state_dict()
    theirs = target.state_dict()
    assert list(theirs) == list(ours)
    assert all(theirs[k].shape == ours[k].shape for k in ours)


def test_imagenet_weights_load_into_either_route_built_without_them(hf_cache, official):
    """``load_imagenet_weights`` gives a model built with ``encoder_weights=None`` the installed weights:
    the registry encoder, and smp's timm route with the same settings (``tu-fec_small``,
    ``feature_norms=True``), at depth 2 too; the saved configs then say ``encoder_weights=None``."""
    path, state = official
    with pytest.raises(seg_plugin.WeightsNotInstalledError, match="python -m seg_plugin.weights install"):
        seg_plugin.load_imagenet_weights(smp.Unet("fec_s", encoder_weights=None).encoder, "fec_s")
    installed = weights.install(path)
    registry = smp.Unet("fec_s", encoder_weights=None)
    assert seg_plugin.load_imagenet_weights(registry.encoder, "fec_s") == installed
    assert_encoder_holds(registry.encoder, state)
    assert registry.config["encoder_weights"] is None
    for depth in (5, 2):
        universal = smp.Linknet("tu-fec_small", encoder_weights=None, encoder_depth=depth, feature_norms=True,
                                preset="segmentation", proposals=(2, 2, 2, 2))
        seg_plugin.load_imagenet_weights(universal.encoder, "tu-fec_small")
        ours = universal.encoder.model.model.state_dict()
        for key, value in state.items():
            ours_key = map_official_key(key)
            if ours_key in ours:
                assert torch.equal(ours[ours_key], value), key
        assert len(universal.encoder.model.model.stages) == max(depth - 1, 1)
    plain = smp.Unet("tu-fec_small", encoder_weights=None)  # no output norms: the installed (fresh) ones are left out
    seg_plugin.load_imagenet_weights(plain.encoder, "tu-fec_small")
    assert torch.equal(plain.encoder.model.model.stem.proj.weight, state["patch_embed.proj.weight"])
    with pytest.raises(KeyError, match="not an FEC smp encoder"):
        seg_plugin.load_imagenet_weights(smp.Unet("resnet18", encoder_weights=None).encoder, "resnet18")


def test_install_takes_the_backbone_of_an_official_mmdet_file_with_its_output_norms(hf_cache, tmp_path, capsys):
    """``python -m seg_plugin.weights install --checkpoint mask_rcnn_fec_small_fpn_1x_coco.pth``: an official
    mmdet file (``meta``, ``state_dict`` with ``backbone.*`` next to the neck and heads) installs fec_s with
    its stem, stages and output norms (``backbone.norm0/2/4/6``) from the file; smp then loads them."""
    from reference_fec import reference_model

    backbone = reference_model("fec_small", fork_feat=True)
    generator = torch.Generator().manual_seed(11)
    official = {f"backbone.{k}": v + 0.05 * torch.randn(v.shape, generator=generator)
                for k, v in backbone.state_dict().items()}
    assert {k for k in official if k.startswith("backbone.norm")} == {f"backbone.norm{i}.{p}" for i in (0, 2, 4, 6)
                                                                       for p in ("weight", "bias")}
    official.update({"neck.lateral_convs.0.conv.weight": torch.zeros(256, 32, 1, 1),
                     "rpn_head.rpn_conv.weight": torch.zeros(256, 256, 3, 3),
                     "roi_head.bbox_head.fc_cls.weight": torch.zeros(81, 1024)})
    path = tmp_path / "mask_rcnn_fec_small_fpn_1x_coco.pth"
    torch.save({"meta": {"mmdet_version": "2.24.1", "CLASSES": tuple(f"c{i}" for i in range(80))},
                "state_dict": official, "optimizer": {"state": {}, "param_groups": []}}, path)
    assert weights.main(["install", "--checkpoint", str(path)]) == 0
    assert "installed fec_s weights: the backbone of" in capsys.readouterr().out
    config = json.loads((weights.installed_path("fec_s").parent / "config.json").read_text())
    assert config["output_norms"] == "checkpoint" and config["source_checkpoint"] == str(path)
    encoder = smp.Unet("fec_s").encoder  # encoder_weights="imagenet": the installed snapshot
    ours = encoder.state_dict()
    for key, value in official.items():
        if key.startswith("backbone."):
            assert torch.equal(ours[map_official_key(key[len("backbone."):])], value), key
    assert not torch.equal(ours["out_norms.0.weight"], torch.ones_like(ours["out_norms.0.weight"]))
    assert len(ours) == len([k for k in official if k.startswith("backbone.")])  # every encoder tensor from the file
