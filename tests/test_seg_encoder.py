"""The FEC smp encoders against what smp's own encoder tests (``tests/encoders/base.py``) check:
forward/backward, in_channels 1/3/4, depths, invalid depths, dilation, torch.compile, torch.export,
TorchScript (not supported: a clear RuntimeError); plus the adapter's own guarantees."""
from __future__ import annotations

import copy
import warnings

import pytest
import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.encoders import get_encoder

import seg_plugin
from fec_backbone import PRESETS
from seg_plugin import FecEncoder

NAMES = ["fec_s", "fec_b", "fec_l"]
STRIDES = [1, 2, 4, 8, 16, 32]


pytestmark = pytest.mark.usefixtures("one_thread")


def strides(sample: torch.Tensor, features) -> list:
    return [sample.shape[2] // f.shape[2] for f in features], [sample.shape[3] // f.shape[3] for f in features]


@pytest.fixture(scope="module")
def sample() -> torch.Tensor:
    return torch.rand(1, 3, 64, 64)


def test_registered_in_smp_registry():
    base = [3, 0, 64, 128, 320, 512]
    expected = {"fec_s": [3, 0, 32, 64, 196, 320], "fec_b": base, "fec_l": base}
    for name, channels in expected.items():
        entry = smp.encoders.encoders[name]
        assert entry["encoder"] is FecEncoder
        assert entry["params"]["out_channels"] == channels
        assert set(entry["pretrained_settings"]) == {"imagenet"}
        assert name in smp.encoders.get_encoder_names()


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name, sample):
    encoder = get_encoder(name, in_channels=3, weights=None)
    features = encoder(sample)
    assert len(features) == 6
    assert [f.shape[1] for f in features] == encoder.out_channels
    sum(f.mean() for f in features[2:]).backward()
    no_grad = [n for n, p in encoder.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient (DDP would need find_unused_parameters): {no_grad}"


@pytest.mark.parametrize("in_channels", [1, 3, 4])
def test_in_channels(in_channels):
    encoder = get_encoder("fec_s", in_channels=in_channels, weights=None).eval()
    assert encoder.out_channels[0] == in_channels
    assert encoder.stem.proj.in_channels == in_channels + 2
    with torch.inference_mode():
        features = encoder(torch.rand(1, in_channels, 64, 64))
    assert features[0].shape[1] == in_channels and features[-1].shape == (1, 320, 2, 2)
    with pytest.raises(ValueError, match=f"built for {in_channels} input channels"):
        encoder(torch.rand(1, in_channels + 1, 64, 64))


def test_set_in_channels_adapts_pretrained_stem_and_keeps_coordinates():
    encoder = FecEncoder(**seg_plugin.encoder_params("fec_s"))
    old = encoder.stem.proj.weight.detach().clone()
    one = copy.deepcopy(encoder)
    one.set_in_channels(1, pretrained=True)
    assert torch.allclose(one.stem.proj.weight[:, 0], old[:, :3].sum(1))
    assert torch.equal(one.stem.proj.weight[:, 1:], old[:, 3:])
    four = copy.deepcopy(encoder)
    four.set_in_channels(4, pretrained=True)
    assert torch.equal(four.stem.proj.weight[:, 4:], old[:, 3:])
    assert torch.allclose(four.stem.proj.weight[:, 3], old[:, 0] * 3 / 4)
    fresh = copy.deepcopy(encoder)
    fresh.set_in_channels(2, pretrained=False)
    assert fresh.stem.proj.weight.shape[1] == 4 and not torch.equal(fresh.stem.proj.weight[:, 2:], old[:, 3:])


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_depth(depth, sample):
    encoder = get_encoder("fec_s", weights=None, depth=depth).eval()
    with torch.no_grad():
        features = encoder(sample)
    assert len(features) == depth + 1
    assert strides(sample, features) == (STRIDES[: depth + 1], STRIDES[: depth + 1])
    assert encoder.output_stride == STRIDES[depth]
    assert len(encoder.out_channels) == depth + 1
    assert len(encoder.stages) == max(depth - 1, 1)  # stages past the depth are not kept


@pytest.mark.parametrize("depth", [0, 6])
def test_invalid_depth(depth):
    with pytest.raises(ValueError, match="depth should be in range"):
        get_encoder("fec_s", weights=None, depth=depth)


@pytest.mark.parametrize("stride", [8, 16])
def test_dilated(stride, sample):
    encoder = get_encoder("fec_s", weights=None, output_stride=stride).eval()
    with torch.no_grad():
        features = encoder(sample)
    h, w = strides(sample, features)
    assert h == w == [min(stride, s) for s in STRIDES]
    assert encoder.output_stride == stride
    assert sum(s.downsample.dilated for s in encoder.stages[1:]) == {16: 1, 8: 2}[stride]


def test_invalid_output_stride():
    with pytest.raises(ValueError, match="output_stride should be 8, 16 or 32, got 4"):
        get_encoder("fec_s", weights=None, output_stride=4)
    encoder = get_encoder("fec_s", weights=None, output_stride=16)
    with pytest.raises(ValueError, match="already dilated"):
        encoder.make_dilated(8)


def test_segmentation_preset_is_the_default_and_params_are_settable():
    encoder = get_encoder("fec_s", weights=None)
    proposals = [s.blocks[0].token_mixer.proposals[0] for s in encoder.stages]
    assert proposals == list(PRESETS["segmentation"]["proposals"])
    name = seg_plugin.register_encoder("fec_s_test_det", "fec_s", preset="detection")
    detection = get_encoder(name, weights=None)
    assert [s.blocks[0].token_mixer.folds for s in detection.stages] == [(2, 2), (2, 2), (1, 1), (1, 1)]
    assert [s.blocks[0].token_mixer.proposals for s in detection.stages] == [(7, 7)] * 4
    custom = get_encoder(seg_plugin.register_encoder("fec_s_test_p", "fec_s", proposals=(6, 6, 3, 3)), weights=None)
    assert [s.blocks[0].token_mixer.proposals for s in custom.stages] == [(6, 6), (6, 6), (3, 3), (3, 3)]
    assert custom.state_dict().keys() == encoder.state_dict().keys()
    with pytest.raises(ValueError, match="cannot be encoder params"):
        seg_plugin.register_encoder("fec_s_bad", "fec_s", depth=3)
    with pytest.raises(ValueError, match="already an smp encoder"):
        seg_plugin.register_encoder("resnet18", "fec_s")
    smp.encoders.encoders.pop("fec_s_test_det")
    smp.encoders.encoders.pop("fec_s_test_p")


@pytest.mark.parametrize("size", [(63, 64), (64, 80), (48, 48)])
def test_input_not_divisible_by_32_rejected_clearly(size):
    encoder = get_encoder("fec_s", weights=None)
    with pytest.raises(ValueError, match=r"divisible by 32, got \d+x\d+; resize or pad the image \(e.g. to \d+x\d+\)"):
        encoder(torch.rand(1, 3, *size))


def test_load_state_dict_drops_what_an_encoder_does_not_hold():
    full = get_encoder("fec_s", weights=None)
    state = dict(full.state_dict(), **{"head.weight": torch.zeros(1000, 320), "norm.weight": torch.ones(320)})
    shallow = get_encoder("fec_s", weights=None, depth=3)
    shallow.load_state_dict(state)
    for key, value in shallow.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key
    with pytest.raises(RuntimeError, match="Missing key"):
        shallow.load_state_dict({k: v for k, v in state.items() if not k.startswith("stem.")})


def test_torch_script_raises_runtime_error():
    encoder = get_encoder("fec_s", weights=None).eval()
    assert not encoder._is_torch_scriptable
    with pytest.raises(RuntimeError, match="torch.compile or torch.export"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.script(encoder)


@pytest.mark.parametrize("output_stride", [32, 16])
def test_torch_export(output_stride):
    encoder = get_encoder("fec_s", weights=None, output_stride=output_stride).eval()
    assert encoder._is_torch_exportable
    sample = torch.rand(1, 3, 32, 32)
    exported = torch.export.export(encoder, args=(sample,), strict=True)
    with torch.inference_mode():
        eager, out = encoder(sample), exported.module()(sample)
    assert len(eager) == len(out)
    for a, b in zip(eager, out):
        torch.testing.assert_close(a, b)


def test_torch_compile():
    encoder = get_encoder("fec_s", weights=None).eval()
    assert encoder._is_torch_compilable
    sample = torch.rand(1, 3, 32, 32)
    torch.compiler.reset()
    compiled = torch.compile(encoder, fullgraph=True, dynamic=True, backend="eager")
    with torch.inference_mode():
        for a, b in zip(encoder(sample), compiled(sample)):
            torch.testing.assert_close(a, b)


# smp's timm-universal route: ``tu-fec_small`` (no dilation there: a clear ValueError, as smp's test
# expects with supports_dilated=False).


def test_timm_universal_route(sample):
    encoder = get_encoder("tu-fec_small", weights=None)
    assert encoder.out_channels == [3, 0, 32, 64, 196, 320]
    features = encoder(sample)
    assert strides(sample, features)[0] == STRIDES
    features[-1].mean().backward()
    for depth in (3, 4, 5):
        with torch.no_grad():
            assert len(get_encoder("tu-fec_small", weights=None, depth=depth).eval()(sample)) == depth + 1
    for in_channels in (1, 4):
        get_encoder("tu-fec_small", weights=None, in_channels=in_channels).eval()(torch.rand(1, in_channels, 64, 64))
    with pytest.raises(ValueError, match="output_stride=32 only"):
        get_encoder("tu-fec_small", weights=None, output_stride=16)
    tuned = get_encoder("tu-fec_small", weights=None, proposals=(10, 10, 5, 5))
    assert tuned.model.model.stages[3].blocks[0].token_mixer.proposals == (5, 5)
