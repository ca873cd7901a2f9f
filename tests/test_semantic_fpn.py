"""The official Semantic FPN (mmseg 0.24 ``FPN`` neck + ``FPNHead``) as an smp model: the official decoder's
parameter count and initialisation, the official computation (against ``tests/reference_downstream.py``),
any smp encoder, and official ADE20K checkpoints converted key by key."""
from __future__ import annotations

import math

import pytest
import torch

import seg_plugin  # noqa: F401  (registers the FEC encoders)
from fec_backbone import CheckpointError
from helpers import randomize_scalars, rel_err
from reference_downstream import mmseg_fpn_head, mmseg_fpn_neck, mmseg_semantic_fpn, official_semantic_fpn_state_dict
from reference_fec import reference_model
from seg_plugin.official import load_official_semantic_fpn, map_official_semantic_fpn
from seg_plugin.semantic_fpn import SemanticFPN

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent
WIDTHS = {"fec_s": (32, 64, 196, 320), "fec_b": (64, 128, 320, 512), "fec_l": (64, 128, 320, 512)}
VARIANT = {"fec_s": "fec_small", "fec_b": "fec_base", "fec_l": "fec_large"}


def official_decoder_parameters(widths, classes=150) -> int:
    """Parameters of mmseg's FPN(widths, 256, 4) + FPNHead(channels=128, 150 classes), counted from its
    structure: convs with bias in the neck; per level 1/1/2/3 bias-free 3x3 convs with a BN (weight, bias);
    the 1x1 classifier."""
    neck = sum(256 * c + 256 for c in widths) + len(widths) * (256 * 256 * 9 + 256)
    head = 0
    for stride in (4, 8, 16, 32):
        for k in range(max(1, int(math.log2(stride) - 2))):
            head += (256 if k == 0 else 128) * 128 * 9 + 2 * 128
    return neck + head + 128 * classes + classes


@pytest.mark.parametrize("encoder", sorted(WIDTHS))
def test_decoder_has_the_official_parameter_count(encoder):
    model = SemanticFPN(encoder, encoder_weights=None, classes=150)
    ours = sum(p.numel() for m in (model.decoder, model.segmentation_head) for p in m.parameters())
    assert ours == official_decoder_parameters(WIDTHS[encoder])
    if encoder == "fec_s":
        assert ours == 4_161_174  # the official 4.16 M


def test_initialisation_is_the_official_one():
    torch.manual_seed(0)
    model = SemanticFPN("fec_s", encoder_weights=None, classes=150)
    neck = [*model.decoder.lateral_convs, *model.decoder.fpn_convs]
    assert all(torch.count_nonzero(c.bias) == 0 for c in neck)
    fan = 256 * 9 + 256 * 9
    assert abs(model.decoder.fpn_convs[0].weight.std().item() - math.sqrt(2 / fan)) < 0.1 * math.sqrt(2 / fan)  # Xavier
    conv = model.decoder.scale_heads[0][0].conv
    assert conv.bias is None and abs(conv.weight.std().item() - math.sqrt(2 / (128 * 9))) < 0.1 * math.sqrt(2 / (128 * 9))
    seg = model.segmentation_head.conv_seg
    assert abs(seg.weight.std().item() - 0.01) < 0.001 and torch.count_nonzero(seg.bias) == 0


def _official_file(tmp_path, encoder="fec_s", classes=150, seed=0):
    """An official mmseg ADE20K checkpoint as the official train.py saves it (mmcv's ``save_checkpoint``:
    ``meta``, ``state_dict``, ``optimizer``), random weights in the official layout and shapes."""
    backbone = reference_model(VARIANT[encoder], fork_feat=True, proposals=(10, 10, 5, 5))
    randomize_scalars(backbone)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if name.startswith("norm"):
                p.add_(0.2 * torch.randn_like(p))
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update(official_semantic_fpn_state_dict(WIDTHS[encoder], classes, seed))
    meta = {"mmseg_version": "0.24.0+abc1234", "config": "model = dict(type='EncoderDecoder', ...)",
            "CLASSES": tuple(f"class_{i}" for i in range(classes)), "PALETTE": [[0, 0, 0]] * classes,
            "iter": 80000, "epoch": 1, "env_info": "...", "seed": 0, "exp_name": "fpn_fec_small_ade20k_80k.py"}
    path = tmp_path / f"fpn_{VARIANT[encoder]}_ade20k.pth"
    torch.save({"meta": meta, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path, backbone.eval(), state


def test_official_checkpoint_computes_what_the_official_model_computes(tmp_path):
    """Converted whole, per part: the encoder's four maps are the official backbone's (``norm0/2/4/6``
    included), the neck and head are mmseg's, and the logits at the image size are the official model's."""
    path, backbone, state = _official_file(tmp_path)
    model, summary = load_official_semantic_fpn(path)
    assert summary.variant == "fec_small" and summary.classes == 150
    assert summary.mapped == {"backbone": 286, "neck": 16, "decode_head": 7 * 6 + 2}
    assert summary.class_names[:2] == ["class_0", "class_1"]
    model, backbone = model.double(), backbone.double()
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        official_maps = backbone(x)
        ours_maps = model.encoder(x)[-4:]
        for a, b in zip(ours_maps, official_maps):
            assert rel_err(a, b) < 1e-10
        neck = mmseg_fpn_neck(state, official_maps)
        ours_out = model.decoder(ours_maps)
        head_body = mmseg_fpn_head({**state, "decode_head.conv_seg.weight": torch.eye(128, dtype=torch.float64)[..., None, None],
                                    "decode_head.conv_seg.bias": torch.zeros(128, dtype=torch.float64)}, neck)
        assert rel_err(ours_out, head_body) < 1e-10
        assert rel_err(model(x), mmseg_semantic_fpn(state, official_maps, x.shape[-2:])) < 1e-10


def test_official_checkpoints_of_other_variants_and_bad_files(tmp_path):
    path, _, state = _official_file(tmp_path, "fec_b", classes=3)
    model, summary = load_official_semantic_fpn(path)
    assert summary.variant == "fec_base" and summary.classes == 3 and model.segmentation_head.conv_seg.out_channels == 3
    extra = dict(state, **{"auxiliary_head.conv_seg.weight": torch.zeros(3, 64, 1, 1)})
    with pytest.raises(CheckpointError, match=r"map to no part.*auxiliary_head"):
        map_official_semantic_fpn({"state_dict": extra})
    with pytest.raises(CheckpointError, match="not an official FEC Semantic FPN checkpoint.*top-level modules"):
        map_official_semantic_fpn({"state_dict": {"roi_head.x": torch.zeros(1), "backbone.patch_embed.proj.weight": torch.zeros(1)}})
    missing = {k: v for k, v in state.items() if "fpn_convs.3" not in k}
    torch.save({"state_dict": missing}, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match=r"does not fill.*fpn_convs\.3"):
        load_official_semantic_fpn(tmp_path / "cut.pth")


def test_any_smp_encoder_and_any_size():
    model = SemanticFPN("resnet18", encoder_weights=None, classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)
        fec = SemanticFPN("fec_s", encoder_weights=None, classes=4).eval()
        assert fec(torch.randn(1, 3, 67, 101)).shape == (1, 4, 67, 101)


def test_official_checkpoint_converts_on_the_command_line_and_reloads_in_a_new_process(tmp_path):
    """``python -m seg_plugin.weights convert-official FILE --out DIR``, then ``smp.from_pretrained(DIR)`` in a fresh
    process gives the converted model's logits; ``smp.create_model("semanticfpn", ...)`` works too."""
    import json
    import subprocess
    import sys

    path, _, _ = _official_file(tmp_path)
    out = tmp_path / "fpn_fec_small_ade20k"
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "seg_plugin.weights", "convert-official", str(path), "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "official Semantic FPN fec_small, 150 classes" in proc.stdout and "backbone 286" in proc.stdout
    assert json.loads((out / "config.json").read_text())["_model_class"] == "SemanticFPN"
    x = torch.randn(1, 3, 64, 64)
    model, _ = load_official_semantic_fpn(path)
    with torch.no_grad():
        expected = model(x)
    torch.save(x, tmp_path / "x.pt")
    code = ("import torch, seg_plugin, segmentation_models_pytorch as smp\n"
            f"m = smp.from_pretrained({str(out)!r}).eval()\n"
            f"torch.save(m(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(torch.load(tmp_path / "y.pt"), expected)
    bad = subprocess.run([sys.executable, "-m", "seg_plugin.weights", "convert-official", str(tmp_path / "x.pt"),
                          "--out", str(tmp_path / "no")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "error:" in bad.stderr


def test_semantic_fpn_is_an_smp_architecture():
    import segmentation_models_pytorch as smp

    model = smp.create_model("semanticfpn", encoder_name="fec_s", encoder_weights=None, classes=2)
    assert isinstance(model, SemanticFPN) and smp.SemanticFPN is SemanticFPN
    with pytest.raises(ValueError, match="encoder_depth must be 5"):
        SemanticFPN("fec_s", encoder_depth=4, encoder_weights=None)
