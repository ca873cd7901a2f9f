"""The FEC smp encoders against what smp's own encoder tests (``tests/encoders/base.py``) check:
forward/backward, in_channels 1/3/4, depths, invalid depths, dilation, torch.compile, torch.export,
TorchScript (not supported: a clear RuntimeError); plus the adapter's own guarantees: feature values
equal to the core model's (dilated or not), any input size as a CNN encoder takes it, and smp's
``tu-fec_small`` route with timm's ``output_stride``."""
from __future__ import annotations

import copy
import warnings

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import get_encoder

import seg_plugin
from fec_backbone import PRESETS, CheckpointError
from fec_backbone.fec import to_nchw, to_nhwc
from helpers import randomize_scalars, rel_err
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


def randomized(encoder: FecEncoder) -> FecEncoder:
    """Non-trivial layer scales, similarity scalars and output-norm affines, so every path shows."""
    randomize_scalars(encoder)
    with torch.no_grad():
        for norm in encoder.out_norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return encoder.eval()


def core_like(encoder: FecEncoder, output_stride: int = 32) -> torch.nn.Module:
    """The timm core model (``fec_small``, segmentation preset) at ``output_stride`` with the encoder's
    weights; it has no output norms (those are the encoder's own)."""
    core = timm.create_model("fec_small", preset="segmentation", num_classes=0, output_stride=output_stride)
    missing, unexpected = core.load_state_dict(
        {k: v for k, v in encoder.state_dict().items() if not k.startswith("out_norms.")}, strict=False
    )
    assert not unexpected and all(k.startswith("norm.") for k in missing), (missing, unexpected)
    return core.eval()


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_features_equal_the_core_model(output_stride):
    """Each smp feature map is the core model's ``forward_intermediates`` output passed through the
    encoder's output norm of that stage, bit for bit, dilated or not."""
    encoder = randomized(get_encoder("fec_s", weights=None, output_stride=output_stride))
    core = core_like(encoder, output_stride)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = encoder(x)
        stages = core.forward_intermediates(x, intermediates_only=True)
    assert torch.equal(features[0], x) and features[1].shape == (2, 0, 32, 48)
    for feature, stage, norm in zip(features[2:], stages, encoder.out_norms):
        assert feature.shape == stage.shape
        assert torch.equal(feature, to_nchw(norm(to_nhwc(stage))))
    assert not torch.equal(features[-1], stages[-1])  # the output norms do change the maps


SIZES = [(67, 71), (259, 263), (33, 97), (64, 70)]


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_any_size_gives_the_feature_sizes_of_resnet34(output_stride):
    """Sides the encoder's stride does not divide: every level has the size a CNN encoder gives
    (resnet34's, ``ceil(H / s)``), so smp's decoders line up as with resnet34."""
    encoder = get_encoder("fec_s", weights=None, output_stride=output_stride).eval()
    resnet = get_encoder("resnet34", weights=None, output_stride=output_stride).eval()
    for size in SIZES:
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            ours, theirs = encoder(x), resnet(x)
        assert [f.shape[2:] for f in ours] == [f.shape[2:] for f in theirs], size
        assert [f.shape[1] for f in ours] == encoder.out_channels


def stem_input(run, encoder: FecEncoder, x: torch.Tensor) -> torch.Tensor:
    """What the stem convolution receives (image plus coordinate channels) when ``run(x)`` runs."""
    seen = []
    handle = encoder.stem.proj.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            run(x)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


def test_divisible_input_is_not_padded():
    encoder = get_encoder("fec_s", weights=None).eval()
    assert stem_input(encoder, encoder, torch.rand(1, 3, 64, 96)).shape == (1, 5, 64, 96)
    assert stem_input(encoder, encoder, torch.rand(1, 3, 64, 97)).shape == (1, 5, 64, 128)


@pytest.mark.parametrize("output_stride", [32, 16])
def test_padded_input_features_are_the_documented_crop(output_stride):
    """A 67x71 image is zero-padded to 96x96 at the bottom and right; its pixels keep the coordinate
    channels they have unpadded (the ramps continue into the padding); each stride-s map is cropped to
    ceil(67/s) x ceil(71/s) before its output norm. The expectation is built here from those rules
    with the core model's stages."""
    encoder = randomized(get_encoder("fec_s", weights=None, output_stride=output_stride))
    core = core_like(encoder, output_stride)
    h, w = 67, 71
    x = torch.randn(2, 3, h, w)
    padded_in = stem_input(encoder, encoder, x)
    assert padded_in.shape == (2, 5, 96, 96)
    assert torch.equal(padded_in[:, :3, :h, :w], x)
    assert not padded_in[:, :3, h:].any() and not padded_in[:, :3, :, w:].any()
    plain_in = stem_input(encoder.stem, encoder, x)  # the stem on the unpadded image
    assert torch.equal(padded_in[:, 3:, :h, :w], plain_in[:, 3:])
    rows, cols = torch.linspace(-0.5, 0.5, h), torch.linspace(-0.5, 0.5, w)
    assert rel_err(padded_in[0, 3, :h, :w], rows[:, None].expand(h, w)) < 1e-6
    assert rel_err(padded_in[0, 4, :h, :w], cols[None, :].expand(h, w)) < 1e-6
    row_steps = padded_in[0, 3, 1:, 0] - padded_in[0, 3, :-1, 0]  # the ramps continue past 0.5
    col_steps = padded_in[0, 4, 0, 1:] - padded_in[0, 4, 0, :-1]
    assert rel_err(row_steps, torch.full((95,), 1 / (h - 1))) < 1e-5
    assert rel_err(col_steps, torch.full((95,), 1 / (w - 1))) < 1e-5

    image = F.pad(x, (0, 96 - w, 0, 96 - h))
    steps = torch.arange(96.0)
    ramps = torch.stack((steps[:, None].expand(96, 96) / (h - 1) - 0.5, steps[None, :].expand(96, 96) / (w - 1) - 0.5))
    stem = encoder.stem.proj
    with torch.no_grad():
        t = F.conv2d(torch.cat((image, ramps.expand(2, 2, 96, 96)), 1), stem.weight, stem.bias, stride=4)
        expected = []
        for stage, norm, stride in zip(core.stages, encoder.out_norms, core.feature_info):
            t = stage(t)  # [B, C, H, W]
            s = stride["reduction"]
            expected.append(to_nchw(norm(to_nhwc(t[:, :, : -(-h // s), : -(-w // s)]))))
        features = encoder(x)
    for feature, reference in zip(features[2:], expected):
        assert feature.shape == reference.shape
        assert rel_err(feature, reference) < 1e-5


def test_too_small_or_malformed_input_is_explained():
    encoder = get_encoder("fec_s", weights=None)
    with pytest.raises(ValueError, match=r"at least 2x2 pixels .* got 1x40"):
        encoder(torch.rand(1, 3, 1, 40))
    with pytest.raises(ValueError, match=r"4-D \[B, C, H, W\]"):
        encoder(torch.rand(3, 64, 64))


def test_load_state_dict_drops_what_an_encoder_does_not_hold():
    full = get_encoder("fec_s", weights=None)
    state = dict(full.state_dict(), **{"head.weight": torch.zeros(1000, 320), "norm.weight": torch.ones(320)})
    shallow = get_encoder("fec_s", weights=None, depth=3)
    shallow.load_state_dict(state)
    for key, value in shallow.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key
    with pytest.raises(CheckpointError, match="missing keys: stem.proj.bias, stem.proj.weight"):
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


# smp's timm-universal route: ``tu-fec_small`` (timm's features_only model; smp passes output_stride
# to timm, which dilates through the same FEC.set_output_stride as the registry encoder).


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
    tuned = get_encoder("tu-fec_small", weights=None, proposals=(10, 10, 5, 5))
    assert tuned.model.model.stages[3].blocks[0].token_mixer.proposals == (5, 5)


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_timm_universal_route_dilated_equals_the_registry_encoder(output_stride):
    """``tu-fec_small`` with smp's output_stride: the strides smp's dilated test expects, and (same
    weights) the registry encoder's dilated features before its output norms."""
    encoder = randomized(get_encoder("fec_s", weights=None, output_stride=output_stride))
    universal = get_encoder("tu-fec_small", weights=None, output_stride=output_stride, preset="segmentation").eval()
    assert universal.output_stride == encoder.output_stride == output_stride
    universal.model.model.load_state_dict({k: v for k, v in encoder.state_dict().items() if not k.startswith("out_norms.")})
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours, theirs = encoder(x), universal(x)
    assert strides(x, theirs)[0] == [min(s, output_stride) for s in STRIDES]
    for a, b, norm in zip(ours[2:], theirs[2:], encoder.out_norms):
        assert torch.equal(a, to_nchw(norm(to_nhwc(b))))
    with pytest.raises(ValueError, match=r"FEC supports output_stride \[8, 16, 32\].*got 4"):
        get_encoder("tu-fec_small", weights=None, output_stride=4)


def test_seg_plugin_imports_run_one_way():
    """Within the project-wide rule (tests/test_imports.py: no cycles, no function-level imports): the
    weights converter needs only the core package, and nothing imports the installer's command line
    (``python -m seg_plugin.weights`` runs it fresh)."""
    from test_imports import import_graph

    graph, _ = import_graph()
    assert not [t for t in graph["seg_plugin.pretrained"] if t.startswith("seg_plugin")]
    assert "seg_plugin.pretrained" in graph["seg_plugin.encoder"]
    assert not [m for m, targets in graph.items() if "seg_plugin.weights" in targets]


def test_registry_entries_are_smp_style_data_beside_the_encoder():
    from seg_plugin import encoder as encoder_module

    for name, entry in encoder_module.fec_encoders.items():
        assert set(entry) == {"encoder", "pretrained_settings", "params"}
        assert entry["encoder"] is FecEncoder and smp.encoders.encoders[name] is entry
        assert entry["params"] == seg_plugin.encoder_params(name)
