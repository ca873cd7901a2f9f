"""The ADE20K recipe's settings against mmseg 0.24, each checked against an independent restatement: the
photometric distortion (``PhotoMetricDistortion``: uint8 steps, OpenCV's HSV), the loss (``CrossEntropyLoss``
with ``avg_non_ignore=False``: labelled pixels summed, divided by all), synchronised BatchNorm under DDP
(``SyncBN``: one BatchNorm over the global batch, on CPU processes too, reverted to BatchNorm afterwards), the
official model's summary (decoder 4,161,174 parameters) and resuming checkpoints written before these
settings."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fec_backbone.toy_scenes import odd_one_out
from fec_backbone.training import ResumeConfigError, check_resume_config
from seg_plugin.data import IGNORE_INDEX, Distortion, draw_distortion, photometric_distortion
from seg_plugin.semantic_fpn import SemanticFPN
from seg_plugin.sync_batchnorm import CpuSyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm
from seg_plugin.train_ade20k import (RUN_ONLY, _plain, _with_legacy_defaults, build_model, load_config, model_summary,
                                     segmentation_loss)

REPO = Path(__file__).resolve().parent.parent
FPN_S = REPO / "configs" / "segmentation" / "fpn_fec_s_ade20k_80k.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


# --- photometric distortion ------------------------------------------------------------------------------------

def restated_hsv(rgb: np.ndarray) -> np.ndarray:
    """8-bit RGB -> HSV as OpenCV documents it: V = max, S = 255 (V - min) / V, H in degrees from the channel
    that is the maximum, halved to fit 0..179; rounded to the nearest integer."""
    x = rgb.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    spread = v - x.min(-1)
    s = np.divide(255 * spread, v, out=np.zeros_like(v), where=v > 0)
    d = np.where(spread > 0, spread, 1)
    h = np.select([v == r, v == g], [60 * (g - b) / d, 120 + 60 * (b - r) / d], 240 + 60 * (r - g) / d)
    h = np.where(spread > 0, h % 360, 0)
    return np.stack([np.floor(h / 2 + 0.5) % 180, np.floor(s + 0.5), v], -1).astype(np.uint8)


def restated_rgb(hsv: np.ndarray) -> np.ndarray:
    """8-bit HSV (H 0..179) -> RGB: the hexcone sector of 2H degrees, v, v(1-s), v(1-sf), v(1-s(1-f)), in
    float32 and truncated (as OpenCV's 8-bit path does)."""
    h = hsv[..., 0].astype(np.float32) * np.float32(2 / 60)
    s = hsv[..., 1].astype(np.float32) / np.float32(255)
    v = hsv[..., 2].astype(np.float32) / np.float32(255)
    sector, f = np.floor(h).astype(np.int64) % 6, h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    return np.clip(np.floor(np.choose(sector[..., None], choices) * 255), 0, 255).astype(np.uint8)


def opencv_hsv(rgb):
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)


def opencv_rgb(hsv):
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def restated_distortion(image: np.ndarray, d: Distortion, to_hsv=restated_hsv, to_rgb=restated_rgb) -> np.ndarray:
    """mmseg's steps as its docstring lists them: 1 brightness, 2 contrast (first), 3 to HSV, 4 saturation,
    5 hue, 6 back to RGB, 7 contrast (last); every step clips to 0..255 and truncates to uint8."""
    def to_uint8(values):
        return np.clip(values, 0, 255).astype(np.uint8)

    steps = []
    if d.brightness is not None:
        steps.append(lambda x: to_uint8(x.astype(np.float32) + np.float32(d.brightness)))
    contrast = [] if d.contrast is None else [lambda x: to_uint8(x.astype(np.float32) * np.float32(d.contrast))]
    steps += contrast if d.contrast_first else []

    def saturation(x):
        hsv = to_hsv(x).copy()
        hsv[..., 1] = to_uint8(hsv[..., 1].astype(np.float32) * np.float32(d.saturation))
        return to_rgb(hsv)

    def hue(x):
        hsv = to_hsv(x).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + d.hue) % 180
        return to_rgb(hsv)

    steps += [saturation] if d.saturation is not None else []
    steps += [hue] if d.hue is not None else []
    steps += [] if d.contrast_first else contrast
    for step in steps:
        image = step(image)
    return image


def images():
    """A few test images: generated scenes (flat shapes on shaded ground) and uniform noise (every hue)."""
    rng = np.random.default_rng(7)
    scenes = [odd_one_out(rng, 48, same_kind=False).image for _ in range(3)]
    return scenes + [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(3)]


def colour_sample():
    """Every RGB colour on a grid of step 3 (0, 3, ..., 255) as one image."""
    v = np.arange(0, 256, 3, dtype=np.uint8)
    return np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(len(v), -1, 3)


def test_opencv_hsv_is_the_documented_8bit_hsv_and_rgb_input_matches_mmseg_bgr():
    """The conversions the distortion uses are OpenCV's 8-bit HSV (H 0..179, S and V 0..255), within one level
    of the documented formulas on a grid of the whole colour cube; and an RGB image with COLOR_RGB2HSV gives
    exactly the H, S, V that mmseg's BGR image gives with COLOR_BGR2HSV (mmcv.bgr2hsv), and back."""
    colours = colour_sample()
    ours, restated = opencv_hsv(colours).astype(int), restated_hsv(colours).astype(int)
    hue = np.abs(ours[..., 0] - restated[..., 0])
    assert ours[..., 0].max() == 179 and np.minimum(hue, 180 - hue).max() <= 1
    assert np.abs(ours[..., 1:] - restated[..., 1:]).max() <= 1
    bgr = np.ascontiguousarray(colours[..., ::-1])
    assert np.array_equal(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV), opencv_hsv(colours))
    h, s, v = np.meshgrid(np.arange(0, 180, 2), np.arange(0, 256, 5), np.arange(0, 256, 5), indexing="ij")
    triples = np.stack([h, s, v], -1).astype(np.uint8).reshape(90, -1, 3)
    assert np.abs(opencv_rgb(triples).astype(int) - restated_rgb(triples)).max() <= 1
    assert np.array_equal(cv2.cvtColor(triples, cv2.COLOR_HSV2BGR)[..., ::-1], opencv_rgb(triples))


def test_distortion_is_mmsegs_steps_exactly():
    """With OpenCV's conversions the restatement and the implementation agree pixel for pixel, for many draws
    on every test image (brightness, contrast first and last, saturation, hue, and combinations)."""
    rng = np.random.default_rng(0)
    fixed = [Distortion(brightness=-31.7), Distortion(contrast=1.43, contrast_first=True), Distortion(contrast=0.55),
             Distortion(saturation=0.61), Distortion(saturation=1.49), Distortion(hue=-18), Distortion(hue=17),
             Distortion(12.5, 0.8, False, 1.3, 5), Distortion(-20.0, 1.2, True, 0.7, -9)]
    for image in images():
        for d in fixed + [draw_distortion(rng) for _ in range(30)]:
            out = photometric_distortion(image, d)
            assert out.dtype == np.uint8 and out.shape == image.shape
            assert np.array_equal(out, restated_distortion(image, d, opencv_hsv, opencv_rgb)), d


def test_distortion_against_the_documented_hsv_formulas():
    """End to end with the restated conversions: they may differ from OpenCV's by one level, and one hue level
    (2 degrees) moves a channel by up to 255 * 2 / 60 = 8.5 per HSV round trip; so at most 18 apart over the two
    HSV steps, and most pixels equal (a flat shape whose hue rounds the other way differs in all its pixels:
    about 10% of the pixels of these images)."""
    rng = np.random.default_rng(1)
    equal = []
    for image in images():
        for _ in range(20):
            d = draw_distortion(rng)
            diff = np.abs(photometric_distortion(image, d).astype(int) - restated_distortion(image, d))
            assert diff.max() <= 18, d
            equal.append((diff == 0).mean())
    assert np.mean(equal) > 0.85


def test_neutral_settings_are_identities_up_to_the_uint8_round_trip():
    """Saturation 1.0 and hue 0 change nothing but what the uint8 HSV round trip changes (at most 6 levels on
    the colour grid: H has 180 levels); brightness 0 and contrast 1.0 are exact identities."""
    for image in [*images(), colour_sample()]:
        round_trip = opencv_rgb(opencv_hsv(image))
        assert np.array_equal(photometric_distortion(image, Distortion(saturation=1.0)), round_trip)
        assert np.array_equal(photometric_distortion(image, Distortion(hue=0)), round_trip)
        assert np.abs(round_trip.astype(int) - image).max() <= 6
        for d in (Distortion(), Distortion(brightness=0.0), Distortion(contrast=1.0), Distortion(contrast=1.0,
                                                                                                 contrast_first=True)):
            assert np.array_equal(photometric_distortion(image, d), image)
    flipped = images()[0][:, ::-1]  # a view, as the flip hands it over
    assert np.array_equal(photometric_distortion(flipped, Distortion(hue=3)),
                          photometric_distortion(np.ascontiguousarray(flipped), Distortion(hue=3)))


class NumpyRandomNames:
    """numpy.random's ``randint``/``uniform`` (the calls mmseg makes) over a Generator."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def randint(self, low, high=None):
        return int(self.rng.integers(low, high))

    def uniform(self, low, high):
        return float(self.rng.uniform(low, high))


def mmseg_draws(random: NumpyRandomNames) -> Distortion:
    """The random calls of mmseg 0.24's ``PhotoMetricDistortion.__call__``, in its order (``mode == 1``: the
    contrast step comes first); the parameter of a step is drawn only when its coin says so."""
    found = {}

    def contrast():
        if random.randint(2):
            found["contrast"] = random.uniform(0.5, 1.5)

    if random.randint(2):
        found["brightness"] = random.uniform(-32, 32)
    mode = random.randint(2)
    if mode == 1:
        contrast()
    if random.randint(2):
        found["saturation"] = random.uniform(0.5, 1.5)
    if random.randint(2):
        found["hue"] = random.randint(-18, 18)
    if mode == 0:
        contrast()
    return Distortion(contrast_first=mode == 1, **found)


def test_draws_follow_mmsegs_calls_and_ranges():
    for seed in range(300):
        ours, mmseg = np.random.default_rng(seed), NumpyRandomNames(np.random.default_rng(seed))
        assert draw_distortion(ours) == mmseg_draws(mmseg)
    rng = np.random.default_rng(123)
    draws = [draw_distortion(rng) for _ in range(4000)]
    for name in ("brightness", "contrast", "saturation", "hue"):
        applied = [getattr(d, name) for d in draws if getattr(d, name) is not None]
        assert abs(len(applied) / len(draws) - 0.5) < 0.04, name
    assert abs(np.mean([d.contrast_first for d in draws]) - 0.5) < 0.04
    assert all(-32 <= d.brightness < 32 for d in draws if d.brightness is not None)
    assert all(0.5 <= d.contrast < 1.5 for d in draws if d.contrast is not None)
    assert all(0.5 <= d.saturation < 1.5 for d in draws if d.saturation is not None)
    assert {d.hue for d in draws if d.hue is not None} == set(range(-18, 18))  # numpy's randint(-18, 18)


# --- loss --------------------------------------------------------------------------------------------------------

def test_loss_is_mmsegs_cross_entropy_over_all_pixels():
    """Two images of 1x2 pixels, three classes, one pixel ignored (255): mmseg's default divides the summed
    cross-entropy of the 3 labelled pixels by all 4 pixels; avg_non_ignore divides by the 3."""
    logits = torch.tensor([[[[2.0, 0.5]], [[0.0, 1.0]], [[-1.0, 3.0]]],
                           [[[0.3, -0.2]], [[1.5, 0.1]], [[0.2, 0.4]]]])  # [B=2, C=3, H=1, W=2]
    labels = torch.tensor([[[0, IGNORE_INDEX]], [[2, 1]]])

    def ce(scores, label):
        return math.log(sum(math.exp(s) for s in scores)) - scores[label]

    summed = ce([2.0, 0.0, -1.0], 0) + ce([0.3, 1.5, 0.2], 2) + ce([-0.2, 0.1, 0.4], 1)
    assert segmentation_loss(logits, labels).item() == pytest.approx(summed / 4, rel=1e-6)
    assert segmentation_loss(logits, labels, avg_non_ignore=True).item() == pytest.approx(summed / 3, rel=1e-6)
    assert segmentation_loss(logits, torch.full_like(labels, IGNORE_INDEX)).item() == 0.0


def test_loss_resizes_the_logits_to_the_labels_as_mmseg():
    """Logits at a quarter of the label size are resized bilinearly with align_corners=False first."""
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 5, 4, 6), torch.randint(0, 5, (2, 16, 24))
    labels[0, :3] = IGNORE_INDEX
    up = F.interpolate(logits, size=(16, 24), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(up, labels, ignore_index=IGNORE_INDEX, reduction="sum") / labels.numel()
    assert torch.allclose(segmentation_loss(logits, labels), expected)
    corners = F.interpolate(logits, size=(16, 24), mode="bilinear", align_corners=True)
    assert not torch.allclose(segmentation_loss(logits, labels), segmentation_loss(corners, labels))


def test_the_recipe_has_mmsegs_loss_default():
    assert load_config(FPN_S).loss.avg_non_ignore is False and load_config(None).loss.avg_non_ignore is False


# --- SyncBatchNorm -----------------------------------------------------------------------------------------------

def _sync_worker(rank: int, world: int, store: str, inputs: dict, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        bn = nn.BatchNorm2d(3)
        bn.load_state_dict(inputs["state"])
        model = convert_sync_batchnorm(nn.Sequential(bn)).train()
        half = inputs["x"].shape[0] // world
        x = inputs["x"][rank * half:(rank + 1) * half].clone().requires_grad_(True)
        y = model(x)
        (y * inputs["w"][rank * half:(rank + 1) * half]).sum().backward()
        synced = model[0]
        torch.save({"y": y.detach(), "x_grad": x.grad, "weight_grad": synced.weight.grad, "bias_grad": synced.bias.grad,
                    "running_mean": synced.running_mean, "running_var": synced.running_var,
                    "type": type(synced).__name__}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_sync_batchnorm_on_cpu_processes_is_one_batchnorm_over_the_global_batch(tmp_path):
    """Two gloo processes, each with half of a batch: outputs, input gradients and running statistics are those
    of one BatchNorm over the whole batch, and the parameter gradients sum to its gradients (DDP averages
    them over the processes, as it averages the processes' losses)."""
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    reference = nn.BatchNorm2d(3)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
    inputs = {"state": {k: v.clone() for k, v in reference.state_dict().items()},
              "x": 3 * torch.randn(4, 3, 5, 6) + 1, "w": torch.randn(4, 3, 5, 6)}
    mp.spawn(_sync_worker, args=(2, str(tmp_path / "store"), inputs, str(tmp_path / "out")), nprocs=2)
    ranks = [torch.load(tmp_path / f"out.{r}") for r in range(2)]
    x = inputs["x"].clone().requires_grad_(True)
    y = reference.train()(x)
    (y * inputs["w"]).sum().backward()
    assert all(r["type"] == "CpuSyncBatchNorm" for r in ranks)
    assert torch.allclose(torch.cat([r["y"] for r in ranks]), y.detach(), atol=1e-5)
    assert torch.allclose(torch.cat([r["x_grad"] for r in ranks]), x.grad, atol=1e-5)
    assert torch.allclose(ranks[0]["weight_grad"] + ranks[1]["weight_grad"], reference.weight.grad, atol=1e-4)
    assert torch.allclose(ranks[0]["bias_grad"] + ranks[1]["bias_grad"], reference.bias.grad, atol=1e-4)
    for r in ranks:
        assert torch.allclose(r["running_mean"], reference.running_mean, atol=1e-6)
        assert torch.allclose(r["running_var"], reference.running_var, atol=1e-5)


@pytest.mark.parametrize("device_type, synced_class", [("cpu", CpuSyncBatchNorm), ("cuda", nn.SyncBatchNorm)])
def test_sync_batchnorm_converts_and_reverts_the_decoders_batchnorms(device_type, synced_class):
    """The conversion the trainer's DDP runs make: every BatchNorm of the model (the Semantic FPN head's 7)
    becomes a synchronised one (torch's for CUDA, ours for CPU) holding the same tensors, and reverting gives
    BatchNorm2d back, same tensors; in one process CpuSyncBatchNorm trains as BatchNorm."""
    model = SemanticFPN("fec_s", encoder_weights=None, classes=150)
    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    before = {n: (type(m), m.weight) for n, m in norms}
    assert len(before) == 7 and all(t is nn.BatchNorm2d and n.startswith("decoder.") for n, (t, _) in before.items())
    convert_sync_batchnorm(model, device_type)
    synced = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert synced.keys() == before.keys() and all(type(m) is synced_class for m in synced.values())
    assert all(m.weight is before[n][1] for n, m in synced.items())
    revert_sync_batchnorm(model)
    after = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert {n: type(m) for n, m in after.items()} == {n: t for n, (t, _) in before.items()}
    assert all(m.weight is before[n][1] for n, m in after.items())
    plain, single = nn.BatchNorm2d(4).train(), CpuSyncBatchNorm(4).train()
    x = torch.randn(3, 4, 5, 5)
    assert torch.allclose(single(x), plain(x)) and torch.allclose(single.running_var, plain.running_var)


# --- model summary and resuming older checkpoints ----------------------------------------------------------------

def test_model_summary_shows_the_official_decoder_count():
    lines = model_summary(build_model(load_config(FPN_S, {"model.encoder_weights": "none"})))
    assert lines[0] == "semanticfpn-fec_s (SemanticFPN): 9,490,394 parameters"
    assert lines[-1] == "  decoder + segmentation_head: 4,161,174 parameters"
    assert [line.split()[:2] for line in lines[1:4]] == [["encoder", "FecEncoder"], ["decoder", "SemanticFPNDecoder"],
                                                        ["segmentation_head", "SemanticFPNHead"]]


def test_checkpoints_written_before_these_settings_name_them_when_resumed():
    """A checkpoint's settings from before loss.avg_non_ignore and train.sync_batchnorm existed stand for what
    the trainer did then (labelled-pixel mean, no SyncBN): resuming under today's defaults names both
    settings, and setting them as they were resumes."""
    old = _plain(load_config(FPN_S))
    del old["loss"], old["train"]["sync_batchnorm"]
    with pytest.raises(ResumeConfigError, match=r"\['loss.avg_non_ignore', 'train.sync_batchnorm'\]"):
        check_resume_config(_with_legacy_defaults(old), _plain(load_config(FPN_S)), RUN_ONLY)
    as_before = load_config(FPN_S, {"loss.avg_non_ignore": True, "train.sync_batchnorm": False})
    assert check_resume_config(_with_legacy_defaults(old), _plain(as_before), RUN_ONLY) == []
    current = _plain(load_config(FPN_S))
    assert _with_legacy_defaults(current) == current  # today's checkpoints are read as they are
