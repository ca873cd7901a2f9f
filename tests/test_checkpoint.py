"""Official-format checkpoints load through timm's ordinary route; bad files are explained."""
from __future__ import annotations

import pytest
import safetensors.torch
import timm
import torch

from fec_backbone.checkpoint import CheckpointError
from fec_backbone.checkpoint import map_official_key
from helpers import official_state_dict, rel_err
from reference_fec import reference_model


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """An official-layout FEC-S state dict (as the authors' ImageNet checkpoint) saved in every wrapping."""
    state = official_state_dict("fec_small", seed=3)
    ref = reference_model("fec_small")
    ref.load_state_dict(state)
    root = tmp_path_factory.mktemp("ckpt")
    files = {
        "raw": root / "fec_small_raw.pth",
        "state_dict": root / "fec_small_sd.pth",
        "model": root / "fec_small_model.pth",
        "safetensors": root / "fec_small.safetensors",
    }
    torch.save(state, files["raw"])
    torch.save({"state_dict": state, "epoch": 299}, files["state_dict"])
    torch.save({"model": state, "args": {"lr": 1e-3}}, files["model"])
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(files["safetensors"]))
    return ref, state, files


def _load(name, path, **kwargs):
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


@pytest.mark.parametrize("wrapping", ["raw", "state_dict", "model", "safetensors"])
def test_official_checkpoint_loads_exactly(official, wrapping):
    ref, state, files = official
    model = _load("fec_small", files[wrapping]).eval()
    ours = model.state_dict()
    for key, value in state.items():
        assert torch.equal(ours[map_official_key(key)], value), key
    x = torch.randn(1, 3, 224, 224)
    assert rel_err(model(x), ref.eval()(x)) < 2e-6  # float32: as tests/test_model.py


def test_official_checkpoint_with_features_only_and_other_presets(official):
    _, state, files = official
    features = _load("fec_small", files["state_dict"], features_only=True, preset="detection")
    assert torch.equal(features.state_dict()["model.stages.2.blocks.4.token_mixer.v.weight"], state["network.4.4.token_mixer.v.weight"])
    assert [o.shape[1] for o in features(torch.randn(1, 3, 128, 128))] == [32, 64, 196, 320]
    seg = _load("fec_small", files["raw"], proposals=(10, 10, 5, 5))
    assert torch.equal(seg.stages[1].downsample.conv_f.weight, state["network.1.conv_f.weight"])


def test_official_checkpoint_with_new_head_and_in_chans(official):
    _, state, files = official
    model = _load("fec_small", files["raw"], num_classes=10, in_chans=1)
    assert model.head.out_features == 10
    assert torch.equal(model.stages[0].blocks[0].mlp.fc1.weight, state["network.0.0.mlp.fc1.weight"])
    stem = model.stem.proj.weight
    assert stem.shape[1] == 3
    assert rel_err(stem[:, 0], state["patch_embed.proj.weight"][:, :3].sum(1)) == 0.0  # a sum of 3: rounding only
    assert torch.equal(stem[:, 1:], state["patch_embed.proj.weight"][:, 3:])


def test_checkpoint_of_another_variant_names_the_keys(official):
    _, _, files = official
    with pytest.raises(CheckpointError, match=r"missing keys: .*unexpected keys: .*shape mismatches"):
        try:
            _load("fec_base", files["raw"])
        except CheckpointError as err:
            raise CheckpointError(str(err).replace("\n", " ")) from None


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet10t").state_dict(), path)
    with pytest.raises(CheckpointError, match="no FEC weights in this checkpoint"):
        _load("fec_small", path)


@pytest.mark.parametrize("content,match", [
    (b"this is not a checkpoint", "cannot read checkpoint"),
    (b"", "cannot read checkpoint"),
])
def test_corrupt_file_is_explained(tmp_path, content, match):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        _load("fec_small", path)


def test_truncated_file_is_explained(official, tmp_path):
    _, _, files = official
    data = files["raw"].read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        _load("fec_small", path)


def test_missing_file_is_explained(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        _load("fec_small", tmp_path / "nope.pth")


def test_pickled_code_is_not_run(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match=r"builtins.print, which are not plain data"):
        _load("fec_small", path)
