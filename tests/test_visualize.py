"""Cluster visualisation: chained maps equal a pixel-by-pixel calculation, checkpoints of
every ecosystem load with strict key checks, and ``fec visualize`` writes a non-blank PNG."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image

from classification.toy_data import draw_toy_scene
from fec_backbone import cli
from fec_backbone.checkpoint import CheckpointError
from fec_backbone.checkpoint import extract_fec_weights
from fec_backbone.visualize import cluster_maps, kmeans, load_fec_backbone
from fec_backbone.fec import ClusterMixer, ClusterPool
from helpers import brute_force_block_ids, brute_force_pool_targets, capture_inputs, randomize_scalars
from reference_fec import reference_model


def _maps(model: nn.Module, size: int, clusters: int = 3):
    x = torch.randn(1, 3, size, size)
    return cluster_maps(model, lambda: model.forward_intermediates(x, intermediates_only=True), clusters)


def _chain(targets, y: int, x: int):
    """The flat position of stride-4 point (y, x) on each later stage's map, pool by pool."""
    positions, position = [], (y, x)
    for target in targets:
        flat = int(target[position])
        positions.append(flat)
        position = divmod(flat, target.shape[1] // 2)
    return positions


def test_kmeans_recovers_separated_groups_deterministically():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(3).repeat_interleave(20)
    x = centres[truth] + 0.3 * torch.randn(60, 2, generator=gen)
    labels = kmeans(x, 3)
    assert torch.equal(labels, truth)  # groups numbered by first occurrence
    assert torch.equal(labels, kmeans(x, 3))
    assert kmeans(x[:2], 5).tolist() == [0, 1]  # k above the number of points: one group each


@pytest.mark.parametrize("preset,size", [("classification", 96), ("detection", 128)])
def test_maps_equal_a_pixel_by_pixel_calculation(preset, size):
    """Regions, block clusters and k-means groups of ``cluster_maps`` equal what follows from evaluating
    each layer's similarities pixel by pixel (``helpers.brute_force_*``) and following each stride-4
    point through the pools in plain Python; detection: folded clustering in stages 0 and 1."""
    model = timm.create_model("fec_small", num_classes=0, preset=preset).double().eval()
    randomize_scalars(model)
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    inputs, handles = capture_inputs(model, (ClusterMixer, ClusterPool))
    maps = cluster_maps(model, lambda: model.forward_intermediates(x, intermediates_only=True), 3)
    for handle in handles:
        handle.remove()
    layers = dict(model.named_modules())
    pools = [f"stages.{k}.downsample" for k in (1, 2, 3)]
    targets = [brute_force_pool_targets(layers[name], inputs[name])[0] for name in pools]
    last_blocks = [f"stages.{k}.blocks.{len(model.stages[k].blocks) - 1}.token_mixer" for k in range(4)]
    block_ids = [brute_force_block_ids(layers[name], inputs[name])[0, 0].flatten() for name in last_blocks]
    h0 = size // 4
    assert [name for name, _, _ in maps.blocks] == last_blocks and [s for _, s, _ in maps.blocks] == [0, 1, 2, 3]
    assert torch.equal(maps.regions[0], torch.arange(h0 * h0).view(h0, h0))
    for y in range(h0):
        for x_ in range(h0):
            positions = [y * h0 + x_] + _chain(targets, y, x_)
            assert [int(r[y, x_]) for r in maps.regions] == positions, (y, x_)
            assert [int(ids[y, x_]) for _, _, ids in maps.blocks] == [int(block_ids[k][positions[k]]) for k in range(4)]
    # k-means groups of the final centres: their features are the 2x2 averages of the last pool's conv_f map
    last = layers[pools[-1]]
    feats = inputs[pools[-1]][0] @ last.conv_f.weight.flatten(1).T + last.conv_f.bias  # [h, w, C]
    centres = feats.unfold(0, 2, 2).unfold(1, 2, 2).mean((-1, -2)).flatten(0, 1)  # [h/2 * w/2, C], row-major
    used = sorted(set(maps.regions[-1].flatten().tolist()))
    labels = kmeans(centres[used], 3)
    expected = torch.tensor([int(labels[used.index(int(p))]) for p in maps.regions[-1].flatten()]).view(h0, h0)
    assert torch.equal(maps.groups, expected) and maps.num_groups == min(3, len(used))


def test_maps_of_an_fec_inside_another_model():
    class Detector(nn.Module):  # the shape of a Detectron2 model: backbone.bottom_up.body is the FEC
        def __init__(self):
            super().__init__()
            self.backbone = nn.Module()
            self.backbone.bottom_up = nn.Module()
            self.backbone.bottom_up.body = timm.create_model("fec_small", num_classes=0, preset="detection")
            self.head = nn.Conv2d(320, 4, 1)

        def forward(self, x):
            return self.head(self.backbone.bottom_up.body.forward_intermediates(x, intermediates_only=True)[-1])

    wrapper = Detector().eval()
    x = torch.randn(1, 3, 128, 128)
    outer = cluster_maps(wrapper, lambda: wrapper(x), 4)
    body = wrapper.backbone.bottom_up.body
    inner = cluster_maps(body, lambda: body.forward_intermediates(x, intermediates_only=True), 4)
    assert all(torch.equal(a, b) for a, b in zip(outer.regions, inner.regions))
    assert torch.equal(outer.groups, inner.groups)
    assert outer.blocks[0][0] == "backbone.bottom_up.body.stages.0.blocks.2.token_mixer"


def _trained_like(preset: str = "classification") -> nn.Module:
    model = timm.create_model("fec_small", num_classes=0, preset=preset)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def _save(obj, path) -> str:
    torch.save(obj, path)
    return str(path)


def test_detectron2_checkpoint_with_pruned_layers_loads(tmp_path):
    body = _trained_like("detection")
    body.prune_intermediate_layers([0, 1, 2], prune_norm=True)  # out_features res2..res4: no stage 4, no norm
    state = {f"backbone.bottom_up.body.{k}": v for k, v in body.state_dict().items()}
    state.update({"backbone.bottom_up.out_norms.res2.weight": torch.ones(32),
                  "backbone.fpn_lateral2.weight": torch.zeros(256, 32, 1, 1),
                  "roi_heads.box_predictor.cls_score.weight": torch.zeros(81, 1024)})
    path = _save({"model": state, "iteration": 10}, tmp_path / "model_final.pth")
    model, info = load_fec_backbone("fec_small", path)
    assert info["prefix"] == "backbone.bottom_up.body." and info["preset"] == "detection"
    assert len(model.stages) == 3 and isinstance(model.norm, nn.Identity)
    assert model.stages[0].blocks[0].token_mixer.folds == (2, 2)
    for key, value in body.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    maps = _maps(model, 128)
    assert len(maps.regions) == 3 and maps.num_groups == 3


def test_smp_and_official_checkpoints_load(tmp_path):
    encoder = _trained_like("segmentation")  # the layout of seg_plugin's FecEncoder inside an smp model
    encoder.prune_intermediate_layers([0, 1, 2, 3], prune_norm=True)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"encoder.out_norms.{i}.weight": torch.ones(c) for i, c in enumerate((32, 64, 196, 320))})
    state.update({"decoder.conv.weight": torch.zeros(8, 8, 3, 3),
                  "segmentation_head.0.weight": torch.zeros(2, 8, 1, 1)})
    path = _save({"model": state, "iteration": 3}, tmp_path / "smp.pth")
    model, info = load_fec_backbone("fec_small", path)
    assert info["prefix"] == "encoder." and info["preset"] == "segmentation"
    assert info["not used here, ignored"] == "out_norms (4 tensors)"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in encoder.state_dict().items())

    official = reference_model("fec_small").state_dict()  # official key layout, with a 1000-class head
    path = _save({"state_dict": official}, tmp_path / "official.pth")
    model, info = load_fec_backbone("fec_small", path)
    assert info["preset"] == "classification" and len(model.stages) == 4
    assert torch.equal(model.stem.proj.weight, official["patch_embed.proj.weight"])
    mm = {f"backbone.{k}": v for k, v in official.items() if not k.startswith("head.")}  # mmdet-style
    path = _save({"state_dict": mm}, tmp_path / "mmdet.pth")
    model, info = load_fec_backbone("fec_small", path, preset="classification")
    assert torch.equal(model.stages[1].downsample.conv_f.weight, official["network.1.conv_f.weight"])


def test_checkpoint_errors_say_what_does_not_fit(tmp_path):
    sd = _trained_like().state_dict()
    both = {**{f"model.{k}": v for k, v in sd.items()}, **{f"model_ema.{k}": v for k, v in sd.items()}}
    with pytest.raises(CheckpointError, match=r"several FECs, under the prefixes \['model.', 'model_ema.'\]"):
        extract_fec_weights(both)
    sub, prefix, ignored = extract_fec_weights(both, prefix="model_ema.")
    assert prefix == "model_ema." and sub.keys() == sd.keys() and ignored == []
    with pytest.raises(CheckpointError, match="no FEC weights in this checkpoint"):
        extract_fec_weights({"conv1.weight": torch.zeros(1)})
    base = timm.create_model("fec_base", num_classes=0).state_dict()
    path = _save({f"encoder.model.{k}": v for k, v in base.items()}, tmp_path / "base.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatches: norm.bias: checkpoint \(512,\) vs model \(320,\)"):
        load_fec_backbone("fec_small", path)
    broken = {f"backbone.bottom_up.body.{k}": v for k, v in sd.items() if "stages.1.blocks.2." not in k}
    with pytest.raises(CheckpointError, match="missing keys: stages.1.blocks.2"):
        load_fec_backbone("fec_small", _save(broken, tmp_path / "broken.pth"))


def test_cli_writes_a_picture(tmp_path, capsys):
    image = tmp_path / "scene.png"
    draw_toy_scene(0, 128).save(image)
    sd = _trained_like("detection").state_dict()
    ckpt = _save({"model": {f"backbone.bottom_up.body.{k}": v for k, v in sd.items()}}, tmp_path / "d2.pth")
    out = tmp_path / "out" / "clusters.png"
    assert cli.main(["visualize", str(image), "--model", "fec_small", "--checkpoint", ckpt, "--clusters", "4",
                     "--size", "128", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "preset: detection" in printed and "k-means of the final centres: 4 groups" in printed
    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert pixels.shape[0] > 400 and pixels.shape[1] > 1000  # two rows of panels, five columns
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # not blank
    assert cli.main(["visualize", str(image), "--out", str(tmp_path / "x.png"), "--size", "100"]) == 2
    assert "divisible by 32" in capsys.readouterr().err


def _segmentation_outputs(tmp_path, encoder_params):
    """Stand-ins for what ``seg_plugin.train_ade20k`` writes: ``last.ckpt`` (Lightning: the module's ``model.``
    prefix, the settings under ``config``) and the smp ``model/`` folder (``save_pretrained``)."""
    from seg_plugin.train_ade20k import _plain, build_model, get_cfg

    cfg = get_cfg()
    cfg.model.encoder_weights = None
    cfg.model.encoder_params.update(encoder_params)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    ckpt = _save({"state_dict": state, "config": _plain(cfg), "global_step": 8}, tmp_path / "last.ckpt")
    model.save_pretrained(str(tmp_path / "model"))
    return ckpt, str(tmp_path / "model"), model


@pytest.mark.parametrize("encoder_params,preset", [({}, "segmentation"), ({"preset": "detection"}, "detection")])
def test_cli_takes_the_segmentation_trainers_outputs(tmp_path, capsys, encoder_params, preset):
    """``fec visualize IMAGE --checkpoint output/fpn_fec_s/last.ckpt`` and ``... --checkpoint output/fpn_fec_s/model``
    as docs/segmentation.md writes them: the FEC under ``model.encoder.`` / ``encoder.`` (registry encoder) or
    ``...encoder.model.model.`` (smp's timm route) is found, with the recorded layout (else segmentation)."""
    image = tmp_path / "scene.png"
    draw_toy_scene(0, 128).save(image)
    ckpt, folder, model = _segmentation_outputs(tmp_path, encoder_params)
    for source in (ckpt, folder):
        out = tmp_path / "clusters.png"
        assert cli.main(["visualize", str(image), "--checkpoint", source, "--size", "128", "--out", str(out)]) == 0, \
            capsys.readouterr().err
        printed = capsys.readouterr().out
        assert f"preset: {preset}" in printed and "model: fec_small" in printed and out.is_file(), printed
        assert "encoder." in printed  # the prefix found
    loaded, info = load_fec_backbone(None, folder)
    wanted = {k.split("stem.proj.", 1)[1]: v for k, v in model.state_dict().items() if "stem.proj." in k}
    assert all(torch.equal(loaded.stem.proj.state_dict()[k], v) for k, v in wanted.items())
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["visualize", str(image), "--checkpoint", str(empty), "--out", str(tmp_path / "x.png")]) == 2
    assert "folder without model.safetensors" in capsys.readouterr().err
