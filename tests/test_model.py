"""FEC equals the reference formulation, and behaves as a timm model."""
from __future__ import annotations

import pytest
import timm
import torch

import fec_backbone
from fec_backbone import FEC, PRESETS, count_parameters
from fec_backbone.fec import ClusterPool, FrozenConv1x1
from helpers import NOISE_ULPS, grads_by_our_key, oracle_pair, randomize_scalars, rel_err

OFFICIAL_PARAMS = {"fec_small": 5_727_528, "fec_base": 15_086_848, "fec_large": 29_720_344}


def _layer(name: str) -> str:
    """The layer a parameter belongs to: ``stem``, ``stages.<i>.downsample``, ``stages.<i>.blocks.<j>``..."""
    parts = name.split(".")
    return ".".join(parts[:4] if parts[2] == "blocks" else parts[:3]) if parts[0] == "stages" else parts[0]


def _errors(ref, ours, x):
    """Relative errors (:func:`helpers.rel_err`) of the output, the input gradient and every parameter
    gradient. Each gradient's rounding allowance is scaled by the largest gradient of its layer, the
    size of the terms its backward pass sums."""
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    errors = {"output": rel_err(y_ours, y_ref)}
    upstream = torch.randn_like(y_ref)
    y_ref.backward(upstream)
    y_ours.backward(upstream)
    errors["input gradient"] = rel_err(x_ours.grad, x_ref.grad)
    ref_grads = grads_by_our_key(ref)
    layer_scale = {}
    for name, _ in ours.named_parameters():
        layer_scale[_layer(name)] = max(layer_scale.get(_layer(name), 0.0), ref_grads[name].abs().max().item())
    for name, p in ours.named_parameters():
        errors[name] = rel_err(p.grad, ref_grads[name], layer_scale[_layer(name)])
    return errors


def _compare(ref, ours, x, tol):
    errors = _errors(ref, ours, x)
    worst = max(errors, key=errors.get)
    assert errors[worst] < tol, f"{worst}: relative error {errors[worst]:.3g} (tolerance {tol:g})"


@pytest.mark.parametrize(
    "name,preset,size",
    [("fec_small", "classification", 224), ("fec_small", "detection", 128), ("fec_base", "segmentation", 160)],
)
@pytest.mark.parametrize("seed", [1, 2])
def test_equals_reference_float64(name, preset, size, seed):
    """Exactness on fresh random inputs: in float64 no assignment can flip by rounding, so the output and
    every gradient agree to 1e-9 of their own size (beyond a few ulps of rounding)."""
    torch.manual_seed(seed)
    ref, ours = oracle_pair(name, preset)
    ref.double(), ours.double()
    _compare(ref, ours, torch.randn(2, 3, size, size, dtype=torch.float64), 1e-9)


@pytest.mark.parametrize("name,preset,size", [("fec_small", "classification", 224), ("fec_small", "detection", 128)])
def test_equals_reference_float32(name, preset, size):
    """Outputs and all gradients within 2e-6 of their own size in float32, beyond NOISE_ULPS ulps of their
    layer's scale (measured: the largest difference, the input gradient's, is about 9 ulps).

    Float32 rounding can flip a near-tied argmax for some inputs, a discontinuity of the function
    itself; the seed is fixed, and the float64 test above covers fresh inputs.
    """
    ref, ours = oracle_pair(name, preset)
    _compare(ref, ours, torch.randn(2, 3, size, size), 2e-6)


def test_stage3_similarity_features_get_no_gradient_at_detection_preset_128px():
    """Why the stage-3 ``token_mixer.f`` gradients are rounding noise (about 1e-17 in float64) in the
    detection preset at 128 px, in the oracle as here: 7x7 centres on a 4x4 map make every point a
    one-pixel centre of its own (adaptive pooling of 4 into 7 bins), its most similar centre with cosine 1
    whatever ``f`` is; clusters are single points and ``f`` cannot change the output."""
    model = timm.create_model("fec_small", preset="detection").double()
    randomize_scalars(model)
    with fec_backbone.record_clusters(model.stages[3]) as records:
        model(torch.randn(2, 3, 128, 128, dtype=torch.float64)).sum().backward()
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    own_centre = (2 * rows * 7 + 2 * cols).expand(2, 8, 4, 4)
    blocks = [r for r in records if r.kind == "block"]
    assert len(blocks) == 2 and all(torch.equal(r.assignment, own_centre) for r in blocks)
    for block in model.stages[3].blocks:
        mixer = block.token_mixer
        scale = max(p.grad.abs().max().item() for p in block.parameters())
        assert mixer.v.weight.grad.abs().max() > 1e-3 * scale  # the values do matter
        for p in (mixer.f.weight, mixer.f.bias):
            assert p.grad.abs().max() <= NOISE_ULPS * torch.finfo(torch.float64).eps * scale


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_parameter_count_matches_official(name):
    assert count_parameters(timm.create_model(name)) == OFFICIAL_PARAMS[name]


def test_presets_change_no_parameter():
    shapes = {p: {k: v.shape for k, v in timm.create_model("fec_small", preset=p).state_dict().items()} for p in PRESETS}
    assert shapes["classification"] == shapes["detection"] == shapes["segmentation"]
    model = timm.create_model("fec_small", preset="detection")
    mixers = [b.token_mixer for s in model.stages for b in s.blocks]
    assert [m.proposals for m in mixers][0] == (7, 7) and mixers[0].folds == (2, 2) and mixers[-1].folds == (1, 1)
    custom = timm.create_model("fec_small", proposals=(3, 3, 2, (1, 2)), folds=1)
    assert custom.stages[3].blocks[0].token_mixer.proposals == (1, 2)


def test_conv_f_is_a_buffer_and_every_parameter_learns():
    model = timm.create_model("fec_small", num_classes=10)
    pools = [m for m in model.modules() if isinstance(m, ClusterPool)]
    assert len(pools) == 3
    for pool in pools:
        assert isinstance(pool.conv_f, FrozenConv1x1)
        assert not any(True for _ in pool.conv_f.parameters())
    keys = model.state_dict().keys()
    assert {"stages.1.downsample.conv_f.weight", "stages.3.downsample.conv_f.bias"} <= set(keys)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_reference_conv_f_never_gets_a_gradient():
    """The measured fact behind the buffer: in the official formulation conv_f's grad stays None."""
    ref, _ = oracle_pair("fec_small")
    ref(torch.randn(1, 3, 64, 64)).sum().backward()
    no_grad = sorted(n for n, p in ref.named_parameters() if p.grad is None)
    assert no_grad == [f"network.{i}.conv_f.{w}" for i in (1, 3, 5) for w in ("bias", "weight")]


def test_fold_that_does_not_divide_is_rejected():
    model = timm.create_model("fec_small", folds=(3, 1, 1, 1))
    with pytest.raises(ValueError, match="divisible by 3"):
        model(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("shape,match", [
    ((1, 3, 100, 64), "divisible by 32"),
    ((1, 4, 64, 64), "in_chans=4"),
    ((3, 64, 64), "4-D"),
])
def test_bad_input_is_explained(shape, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model("fec_small")(torch.randn(*shape))


def test_timm_model_api():
    model = timm.create_model("fec_small", num_classes=7, drop_path_rate=0.1)
    assert timm.is_model("fec_small") and "fec_large" in timm.list_models("fec_*")
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["first_conv"] == "stem.proj"
    x = torch.randn(2, 3, 96, 96)
    model.eval()
    feats = model.forward_features(x)
    assert feats.shape == (2, 320, 3, 3)
    assert model.forward_head(feats).shape == (2, 7)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 320)
    assert torch.allclose(model(x), model.forward_head(feats))
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
    model.reset_classifier(0, "")
    assert model(x).shape == (2, 320, 3, 3)
    assert {"stages.0.blocks.0.layer_scale_1", "stages.3.blocks.1.token_mixer.sim_alpha"} <= model.no_weight_decay()
    groups = model.group_matcher()
    assert groups["stem"] == r"^stem"
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["crop_pct"] == 0.875 and data_cfg["interpolation"] == "bicubic"


def test_forward_intermediates_and_pruning():
    model = timm.create_model("fec_small").eval()
    x = torch.randn(1, 3, 64, 64)
    final, inter = model.forward_intermediates(x)
    assert [t.shape[1:] for t in inter] == [(32, 16, 16), (64, 8, 8), (196, 4, 4), (320, 2, 2)]
    assert torch.allclose(final, model.forward_features(x))
    only = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    assert torch.allclose(only[0], inter[1]) and torch.allclose(only[1], inter[2])
    kept = model.prune_intermediate_layers(indices=2)
    assert kept == [2, 3] or list(kept) == [2, 3]
    assert len(model.stages) == 4


def test_features_only_strides_and_channels():
    model = timm.create_model("fec_small", features_only=True, out_indices=(0, 1, 2, 3))
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [32, 64, 196, 320]
    outs = model(torch.randn(2, 3, 128, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 32, 24), (2, 64, 16, 12), (2, 196, 8, 6), (2, 320, 4, 3)]


def test_feature_norms_normalise_every_returned_map_and_follow_pruning():
    """``feature_norms=True`` is the official dense-prediction backbone: each returned stage map passes its
    own single-group norm (``out_norms.<i>``, the official ``norm0/2/4/6``), also through timm's
    ``features_only``; pruning keeps the norms of the stages kept."""
    plain = timm.create_model("fec_small", num_classes=0).eval()
    model = timm.create_model("fec_small", num_classes=0, feature_norms=True).eval()
    assert sorted(k for k in model.state_dict() if k.startswith("out_norms.")) == [
        f"out_norms.{i}.{p}" for i in range(4) for p in ("bias", "weight")]
    model.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        for norm in model.out_norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        raw = plain.forward_intermediates(x, intermediates_only=True)
        normed = model.forward_intermediates(x, intermediates_only=True)
        for stage, out, norm in zip(raw, normed, model.out_norms):
            assert torch.equal(out, norm(stage.permute(0, 2, 3, 1).contiguous()).permute(0, 3, 1, 2))
            assert not torch.equal(out, stage)
        features = timm.create_model("fec_small", features_only=True, out_indices=(0, 1), feature_norms=True)
        assert sorted(k for k in features.state_dict() if "out_norms" in k) == [
            f"model.out_norms.{i}.{p}" for i in range(2) for p in ("bias", "weight")]


def test_in_chans():
    model = timm.create_model("fec_small", in_chans=1)
    assert model.stem.proj.in_channels == 3
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 1000)


def test_stem_coordinates_are_the_official_bits_on_any_device():
    """The stem's coordinate ramps are the official code's float32 quotients ``i / (size - 1)`` (divided
    correctly rounded, on the CPU), whatever device computes them. CUDA divides by a Python number as
    ``a * (1 / b)``; emulated here in both precisions: in float32 (as the stem once computed) some
    coordinates move by one ulp, in float64 rounded to float32 (:func:`coordinate_ramp`) none do."""
    import numpy as np

    from fec_backbone.fec import coordinate_ramp

    moved = 0
    for size in range(2, 2050):
        i = np.arange(size)
        official = i.astype(np.float32) / np.float32(size - 1) - np.float32(0.5)
        cuda64 = (i.astype(np.float64) * (1.0 / (size - 1))).astype(np.float32) - np.float32(0.5)
        cuda32 = i.astype(np.float32) * (np.float32(1.0) / np.float32(size - 1)) - np.float32(0.5)
        assert np.array_equal(cuda64, official), size
        assert np.array_equal(coordinate_ramp(size, size, torch.device("cpu")).numpy(), official), size
        moved += int((cuda32 != official).any())
    assert moved > 100  # the float32 reciprocal is a real difference, not one this test cannot see
    padded = coordinate_ramp(40, 32, torch.device("cpu"))
    assert padded.dtype == torch.float32 and padded[31] == 0.5 and padded[-1] > 0.5


def test_gradient_checkpointing_gives_same_gradients():
    model = timm.create_model("fec_small", num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, plain[n], atol=1e-6), n


def test_direct_construction_and_unknown_preset():
    assert isinstance(FEC(num_classes=2), FEC)
    with pytest.raises(ValueError, match="unknown preset"):
        FEC(preset="panoptic")
    with pytest.raises(ValueError, match="one entry per stage"):
        FEC(proposals=(4, 4))
    assert fec_backbone.__version__


def test_dilated_pool_keeps_resolution_and_weights():
    model = timm.create_model("fec_small", preset="segmentation", num_classes=0)
    x = torch.randn(1, 3, 128, 128)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.stages[3].downsample.dilate(2)
    model.stages[2].downsample.dilate(2)
    assert model.state_dict().keys() == before.keys()
    maps = model.forward_intermediates(x, intermediates_only=True)
    assert [tuple(m.shape[-2:]) for m in maps] == [(32, 32), (16, 16), (16, 16), (16, 16)]
    with pytest.raises(ValueError, match="dilated by 2 or 4"):
        model.stages[1].downsample.dilate(3)


def test_dilated_pool_sends_each_pixel_its_centre():
    """Without the skip path and norm, a dilated pool's output at a pixel is the pooled value of the
    centre that pixel voted for: the non-dilated pool's output, spread back to the pixels."""
    torch.manual_seed(0)
    plain = timm.create_model("fec_small").stages[1].downsample.eval()
    x = torch.randn(1, 16, 16, 32)
    captured = {}
    plain.norm2.forward = lambda t: captured.setdefault("plain", t)
    plain.conv_skip.forward = lambda t: torch.zeros(1, 64, 8, 8)
    plain(x)
    plain.dilate(2)
    plain.norm2.forward = lambda t: captured.setdefault("dilated", t)
    plain.conv_skip.forward = lambda t: torch.zeros(1, 64, 16, 16)
    with fec_backbone.record_clusters(plain) as records:
        plain(x)
    index = records[0].assignment.view(-1)
    spread = captured["plain"].reshape(64, 64)[index]
    assert plain.conv_skip.stride == (1, 1) and plain.conv_skip.dilation == (1, 1)
    assert torch.allclose(captured["dilated"].reshape(256, 64), spread)
    assert records[0].kind == "dilated_pool"


@pytest.mark.parametrize("output_stride,reductions", [(16, [4, 8, 16, 16]), (8, [4, 8, 8, 8])])
def test_output_stride_through_timm(output_stride, reductions):
    """timm's ``output_stride``: the deeper stages stay at it (their pools dilated), feature_info says so,
    and the stages before the first dilated pool compute exactly what the undilated model does."""
    plain = timm.create_model("fec_small", features_only=True, preset="segmentation").eval()
    model = timm.create_model("fec_small", features_only=True, preset="segmentation", output_stride=output_stride)
    model.load_state_dict(plain.state_dict())
    assert model.feature_info.reduction() == reductions
    pools = [s.downsample for s in model.model.stages[1:]]
    assert [p.rate if p.dilated else 0 for p in pools] == {16: [0, 0, 2], 8: [0, 2, 4]}[output_stride]
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        outs, ref = model.eval()(x), plain(x)
    assert [tuple(o.shape) for o in outs] == [(2, c, 128 // r, 96 // r) for c, r in zip([32, 64, 196, 320], reductions)]
    undilated = reductions.index(output_stride) + 1  # stages up to the first that would go past output_stride
    for a, b in zip(outs[:undilated], ref[:undilated]):
        assert torch.equal(a, b)
    classifier = timm.create_model("fec_small", output_stride=output_stride, num_classes=5)
    assert classifier(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_bad_output_stride_is_explained():
    for bad in (4, 12, 64):
        with pytest.raises(ValueError, match=rf"FEC supports output_stride \[8, 16, 32\].*got {bad}"):
            timm.create_model("fec_small", output_stride=bad)
    model = timm.create_model("fec_small", output_stride=16)
    with pytest.raises(ValueError, match="already dilated to output stride 16"):
        model.set_output_stride(8)
    timm.create_model("fec_small", output_stride=32).set_output_stride(32)  # the undilated stride: nothing to do


def test_fx_features_are_nchw_and_equal_the_default_features():
    """``feature_cls="fx"`` (timm's FX extraction of the ``stages.<i>`` that ``feature_info`` names) and
    torchvision-style ``create_feature_extractor`` give the maps of the default ``features_only`` model:
    NCHW, same values."""
    from timm.models import create_feature_extractor

    x = torch.randn(2, 3, 64, 96)
    torch.manual_seed(1)
    getter = timm.create_model("fec_small", features_only=True).eval()
    torch.manual_seed(1)
    fx = timm.create_model("fec_small", features_only=True, feature_cls="fx").eval()
    with torch.no_grad():
        want, got = getter(x), fx(x)
        extracted = create_feature_extractor(getter.model, [f"stages.{i}" for i in range(4)])(x)
    shapes = [(2, c, 64 // r, 96 // r) for c, r in zip(getter.feature_info.channels(), getter.feature_info.reduction())]
    assert [tuple(t.shape) for t in want] == shapes
    assert [tuple(t.shape) for t in got] == shapes
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    assert all(torch.equal(a, b) for a, b in zip(want, extracted.values()))
    with pytest.raises(ValueError, match="feature_norms=True do not reach"):
        timm.create_model("fec_small", features_only=True, feature_cls="fx", feature_norms=True)
