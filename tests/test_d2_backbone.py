"""Detectron2 plugin: registered backbones, output shapes and norms, FPN variants, the clustering layout
preset, freezing, the optimizer's parameter groups, configs, ImageNet initialisation through MODEL.WEIGHTS
(FECCheckpointer) and odd image sizes."""
from __future__ import annotations

import glob
import logging
import os

import pytest
import torch
import torch.nn.functional as F

if os.environ.get("FEC_REQUIRE_DETECTRON2") != "1":  # CI requires it: a missing Detectron2 fails
    pytest.importorskip("detectron2")
import d2_plugin  # noqa: E402
from d2_plugin.checkpoint import FECCheckpointer, fec_imagenet_weights  # noqa: E402
from d2_plugin.solver import build_fec_optimizer  # noqa: E402

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model  # noqa: E402

import fec_backbone  # noqa: E402
from fec_backbone.checkpoint import CheckpointError  # noqa: E402
from fec_backbone.checkpoint import map_official_key  # noqa: E402
from helpers import official_state_dict  # noqa: E402
from reference_fec import reference_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "detectron2")
CHANNELS = {"fec_small": [32, 64, 196, 320], "fec_base": [64, 128, 320, 512], "fec_large": [64, 128, 320, 512]}


def make_cfg(config: str = "toy_mask_rcnn_fec_s.yaml", *opts):
    cfg = get_cfg()
    d2_plugin.add_fec_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, config))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def _layout(body):
    """(proposals, folds) per stage, read from the clustering blocks and pools of an FEC model."""
    stages = []
    for stage in body.stages:
        mixers = [m for m in stage.modules() if isinstance(m, fec_backbone.fec.ClusterMixer)]
        pools = [m for m in stage.modules() if isinstance(m, fec_backbone.fec.ClusterPool)]
        assert len({m.proposals for m in mixers}) == 1 and len({m.folds for m in mixers + pools}) == 1
        stages.append((mixers[0].proposals, mixers[0].folds))
    return stages


def _preset_layout(preset):
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    p = fec_backbone.PRESETS[preset]
    return [(pair(a), pair(b)) for a, b in zip(p["proposals"], p["folds"])]


def test_builders_registered():
    for name in ("build_fec_backbone", "build_fec_fpn_backbone", "build_retinanet_fec_fpn_backbone"):
        assert BACKBONE_REGISTRY.get(name) is not None


@pytest.mark.parametrize("name", ["fec_small", "fec_base", "fec_large"])
def test_fec_backbone_outputs(name):
    cfg = make_cfg("toy_mask_rcnn_fec_s.yaml", "MODEL.BACKBONE.NAME", "build_fec_backbone", "MODEL.FEC.NAME", name)
    backbone = build_backbone(cfg).eval()
    assert isinstance(backbone.body, fec_backbone.FEC)  # the core model itself, not a copy
    shapes = backbone.output_shape()
    assert list(shapes) == ["res2", "res3", "res4", "res5"]
    assert [s.channels for s in shapes.values()] == CHANNELS[name]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]
    assert backbone.size_divisibility == 32
    assert backbone.padding_constraints == {"size_divisibility": 32}
    assert _layout(backbone.body) == _preset_layout("detection")  # the reference detection layout
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = backbone(x)
        raw = backbone.body.forward_intermediates(x, intermediates_only=True)
    for (key, spec), ref in zip(shapes.items(), raw):
        assert out[key].shape == (1, spec.channels, 64 // spec.stride, 96 // spec.stride)
        norm = backbone.out_norms[key]
        assert isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == 1
        torch.testing.assert_close(out[key], F.group_norm(ref, 1, norm.weight, norm.bias, norm.eps))


def test_fpn_backbone():
    backbone = build_backbone(make_cfg("mask_rcnn_fec_s_fpn_1x_coco.yaml")).eval()
    shapes = backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        f"p{i}": (256, 2**i) for i in range(2, 7)
    }
    assert backbone.size_divisibility == 32
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {"p2": (16, 16), "p3": (8, 8), "p4": (4, 4), "p5": (2, 2), "p6": (1, 1)}


def test_retinanet_backbone():
    cfg = make_cfg("retinanet_fec_s_fpn_1x_coco.yaml")
    backbone = build_backbone(cfg).eval()
    assert {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()} == {
        f"p{i}": (256, 2**i) for i in range(3, 8)
    }
    bottom_up = backbone.bottom_up
    assert list(bottom_up.output_shape()) == ["res3", "res4", "res5"]
    assert "res2" not in bottom_up.out_norms  # the unused level gets no norm
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 128, 128))
    assert tuple(out["p7"].shape) == (1, 256, 1, 1)
    model = build_model(cfg)
    assert type(model).__name__ == "RetinaNet"


def test_bad_backbone_config():
    with pytest.raises(ValueError, match="res6"):
        build_backbone(make_cfg("toy_mask_rcnn_fec_s.yaml", "MODEL.FEC.OUT_FEATURES", ["res2", "res6"]))
    with pytest.raises(ValueError, match="MODEL.FPN.IN_FEATURES"):
        build_backbone(make_cfg("toy_mask_rcnn_fec_s.yaml", "MODEL.FEC.OUT_FEATURES", ["res4", "res5"]))
    with pytest.raises(ValueError, match="fec_tiny"):
        build_backbone(make_cfg("toy_mask_rcnn_fec_s.yaml", "MODEL.FEC.NAME", "fec_tiny"))


def test_freezing():
    backbone = build_backbone(make_cfg("toy_mask_rcnn_fec_s.yaml", "MODEL.FEC.FREEZE_AT", 3, "MODEL.FEC.DROP_PATH_RATE", 0.1))
    body = backbone.bottom_up.body
    frozen = [body.stem, body.stages[0], body.stages[1]]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in body.stages[2:] for p in m.parameters())
    backbone.train()
    assert all(not m.training for f in frozen for m in f.modules())  # no drop path in frozen stages
    assert body.stages[2].training
    out = backbone(torch.randn(1, 3, 64, 64))
    sum(v.sum() for v in out.values()).backward()
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert body.stages[3].blocks[0].mlp.fc1.weight.grad is not None
    free = build_backbone(make_cfg("toy_mask_rcnn_fec_s.yaml", "MODEL.FEC.GRAD_CHECKPOINT", True))
    assert all(p.requires_grad for p in free.parameters())
    assert all(stage.grad_checkpointing for stage in free.bottom_up.body.stages)


@pytest.mark.parametrize("opts, exempt", [
    ((), False),  # the official recipe: mmdet's AdamW without paramwise_cfg decays every parameter
    (("SOLVER.WEIGHT_DECAY_NORM", 0.0, "SOLVER.WEIGHT_DECAY_FEC_SCALARS", 0.0), True),  # the option, not official
])
def test_optimizer_param_groups(opts, exempt):
    cfg = make_cfg("toy_mask_rcnn_fec_s.yaml", *opts)
    model = build_model(cfg)
    optimizer = build_fec_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert all(g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8 for g in optimizer.param_groups)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    lrs = {g["lr"] for g in optimizer.param_groups}
    assert lrs == {cfg.SOLVER.BASE_LR}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(decay) == len(trainable) == sum(len(g["params"]) for g in optimizer.param_groups)
    assert cfg.SOLVER.WEIGHT_DECAY == 1e-4
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.GroupNorm) for p in m.parameters()}
    seen = set()
    for name, p in trainable:
        special = id(p) in norms or name.endswith(("sim_alpha", "sim_beta", "layer_scale_1", "layer_scale_2"))
        if special:
            seen.add(name.rsplit(".", 1)[-1])
        assert decay[id(p)] == (0.0 if special and exempt else cfg.SOLVER.WEIGHT_DECAY), name
    assert {"sim_alpha", "sim_beta", "layer_scale_1", "layer_scale_2", "weight", "bias"} <= seen
    assert any(name.endswith(".bias") and decay[id(p)] == 1e-4 for name, p in trainable)  # biases decay too


def test_configs():
    expected = {
        "mask_rcnn_fec_s_fpn_1x_coco.yaml": ("fec_small", "GeneralizedRCNN", 2e-4),
        "mask_rcnn_fec_b_fpn_1x_coco.yaml": ("fec_base", "GeneralizedRCNN", 2e-4),
        "mask_rcnn_fec_l_fpn_1x_coco.yaml": ("fec_large", "GeneralizedRCNN", 2e-4),
        "retinanet_fec_s_fpn_1x_coco.yaml": ("fec_small", "RetinaNet", 1e-4),
    }
    for file, (name, arch, lr) in expected.items():
        cfg = make_cfg(file)
        assert (cfg.MODEL.FEC.NAME, cfg.MODEL.META_ARCHITECTURE, cfg.SOLVER.BASE_LR) == (name, arch, lr), file
        assert cfg.MODEL.MASK_ON == (arch == "GeneralizedRCNN")
        # the layout is fec_backbone.PRESETS["detection"], written nowhere else
        assert (cfg.MODEL.FEC.PRESET, list(cfg.MODEL.FEC.PROPOSALS), list(cfg.MODEL.FEC.FOLDS)) == ("detection", [], [])
        s = cfg.SOLVER
        epoch = 7330
        assert (s.IMS_PER_BATCH, s.WARMUP_ITERS, s.WARMUP_FACTOR, s.WARMUP_METHOD, s.MAX_ITER) == (
            16, 500, 0.001, "linear", 12 * epoch)
        # weight decay on every parameter (mmdet's AdamW has no paramwise_cfg)
        assert (s.WEIGHT_DECAY, s.WEIGHT_DECAY_NORM, s.WEIGHT_DECAY_BIAS, s.WEIGHT_DECAY_FEC_SCALARS) == (
            1e-4, 1e-4, None, None), file
        if arch == "GeneralizedRCNN":  # the official schedule_1x.py: step=[8, 9, 11], gamma=0.2
            assert (tuple(s.STEPS), s.GAMMA) == ((8 * epoch, 9 * epoch, 11 * epoch), 0.2), file
        else:  # no official RetinaNet: PVT v2's, on mmdet's schedule_1x (step=[8, 11], gamma 0.1)
            assert (tuple(s.STEPS), s.GAMMA) == ((8 * epoch, 11 * epoch), 0.1), file
        assert (cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.FORMAT) == ((800,), 1333, "RGB")
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.RANDOM_FLIP) == (800, 1333, "horizontal")
    for file in glob.glob(os.path.join(CONFIGS, "*.yaml")):
        make_cfg(os.path.basename(file))  # every file, bases included, merges


def _mmcv_lr(it: int, epoch_iters: int = 7330, steps=(8, 9, 11), gamma=0.2, warmup=500, ratio=0.001) -> float:
    """The lr factor of the official schedule at iteration ``it``, as mmcv's StepLrUpdaterHook computes it
    (by epoch: gamma to the number of steps passed; linear warm-up by iteration: 1 - (1 - it / 500) * 0.999)."""
    regular = gamma ** sum(it // epoch_iters >= s for s in steps)
    return regular * (1 - (1 - it / warmup) * (1 - ratio)) if it < warmup else regular


@pytest.mark.parametrize("config, steps, gamma", [
    ("mask_rcnn_fec_s_fpn_1x_coco.yaml", (8, 9, 11), 0.2),
    ("retinanet_fec_s_fpn_1x_coco.yaml", (8, 11), 0.1),
])
def test_lr_schedule_is_the_official_one(config, steps, gamma):
    """Detectron2's scheduler from our configs gives, iteration by iteration, the lr of mmcv's epoch-based step
    policy with linear warm-up (official schedule_1x.py; RetinaNet: mmdet's, as PVT v2's RetinaNet uses)."""
    from detectron2.solver import build_lr_scheduler

    cfg = make_cfg(config)
    scheduler = build_lr_scheduler(cfg, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR))
    e = 7330
    for it in (0, 1, 250, 499, 500, 8 * e - 1, 8 * e, 9 * e - 1, 9 * e, 11 * e - 1, 11 * e, 12 * e - 1):
        got = scheduler._multiplier(it / cfg.SOLVER.MAX_ITER)
        assert got == pytest.approx(_mmcv_lr(it, steps=steps, gamma=gamma), rel=1e-9), it


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory):
    """An official-layout FEC-S ImageNet checkpoint (the oracle's keys: patch_embed, network.<i>, norm,
    head), nested under "model" as the official release files are."""
    state = official_state_dict("fec_small", noise=1.0)
    path = tmp_path_factory.mktemp("imagenet") / "fec_small_official.pth"
    torch.save({"model": state}, path)
    return path, state


def _assert_backbone_equals(body_state, official):
    mapped = {map_official_key(k): v for k, v in official.items()}
    assert set(body_state) <= set(mapped), sorted(set(body_state) - set(mapped))[:5]
    for key, value in body_state.items():
        assert torch.equal(value, mapped[key]), key


@pytest.mark.parametrize("config, opts, body, fresh", [
    ("mask_rcnn_fec_s_fpn_1x_coco.yaml", (), "backbone.bottom_up.body",
     "FPN, output norms and heads (proposal_generator, roi_heads) start fresh"),
    ("retinanet_fec_s_fpn_1x_coco.yaml", (), "backbone.bottom_up.body", "FPN, output norms and heads (head) start fresh"),
    ("mask_rcnn_fec_s_fpn_1x_coco.yaml", ("MODEL.BACKBONE.NAME", "build_fec_backbone", "MODEL.RPN.IN_FEATURES", ["res4"],
                                          "MODEL.ROI_HEADS.IN_FEATURES", ["res4"], "MODEL.ANCHOR_GENERATOR.SIZES", [[32, 64]]),
     "backbone.body", "output norms and heads (proposal_generator, roi_heads) start fresh"),
])
def test_imagenet_weights_through_model_weights(official_checkpoint, caplog, config, opts, body, fresh):
    """``MODEL.WEIGHTS`` route: FECCheckpointer recognises the ImageNet file, puts every backbone tensor in
    place under the backbone's prefix of each builder, and says so; the rest starts fresh."""
    path, state = official_checkpoint
    model = build_model(make_cfg(config, *opts))
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(body + ".")}
    with caplog.at_level(logging.INFO, logger="fvcore"):
        FECCheckpointer(model).load(str(path))
    fec = model.get_submodule(body)
    _assert_backbone_equals(fec.state_dict(), state)
    assert len(fec.state_dict()) == len([k for k in state if not k.startswith(("head.", "norm."))])
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # nothing else touched
    line = f"FEC ImageNet weights from {path} ('model', official key layout): {len(fec.state_dict())} backbone " \
           f"tensors loaded into {body}; {fresh}"
    assert line in caplog.text, caplog.text[-2000:]


def test_other_checkpoints_take_detectron2s_path():
    """A Detectron2 checkpoint of ours (FEC under backbone.bottom_up.body.) is no ImageNet file: the
    recogniser leaves it to Detectron2's ordinary loading, as it does a file without FEC weights."""
    model = build_model(make_cfg())
    assert fec_imagenet_weights({"model": model.state_dict(), "iteration": 3}, model, "model_final.pth") is None
    assert fec_imagenet_weights({"model": {"conv1.weight": torch.zeros(1)}}, model, "r50.pth") is None


def test_imagenet_weights_of_another_variant(tmp_path):
    wrong = tmp_path / "fec_base.pth"
    torch.save(reference_model("fec_base").state_dict(), wrong)
    model = build_model(make_cfg("mask_rcnn_fec_s_fpn_1x_coco.yaml"))
    with pytest.raises(CheckpointError, match=r"fec_base\.pth.*\n(.*\n)*.*is an fec_base checkpoint; create the model as fec_base"):
        FECCheckpointer(model).load(str(wrong))


def test_model_fec_weights_is_gone(tmp_path):
    """The removed MODEL.FEC.WEIGHTS fails clearly wherever it is set, pointing to MODEL.WEIGHTS."""
    with pytest.raises(KeyError, match="MODEL.FEC.WEIGHTS.*set MODEL.WEIGHTS"):
        make_cfg("mask_rcnn_fec_s_fpn_1x_coco.yaml", "MODEL.FEC.WEIGHTS", "fec_small.pth")
    old = tmp_path / "old.yaml"
    old.write_text(f'_BASE_: "{os.path.join(CONFIGS, "mask_rcnn_fec_s_fpn_1x_coco.yaml")}"\n'
                   'MODEL:\n  FEC:\n    WEIGHTS: "fec_small.pth"\n')
    with pytest.raises(KeyError, match="MODEL.FEC.WEIGHTS.*set MODEL.WEIGHTS"):
        make_cfg(str(old))
    cfg = make_cfg()
    cfg.MODEL.FEC.WEIGHTS = "fec_small.pth"  # in Python, where yacs lets new keys in
    with pytest.raises(ValueError, match="set MODEL.WEIGHTS"):
        build_backbone(cfg)


@pytest.mark.parametrize("sizes", [[(190, 250)], [(97, 131), (160, 203)]])
def test_odd_image_sizes(sizes):
    """Images of any size go through: Detectron2 pads the batch to the backbone's divisibility (32)."""
    model = build_model(make_cfg()).eval()
    inputs = [{"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8), "height": h, "width": w} for h, w in sizes]
    images = model.preprocess_image(inputs)
    assert images.tensor.shape[-2] % 32 == 0 and images.tensor.shape[-1] % 32 == 0
    assert images.image_sizes == sizes
    with torch.no_grad():
        outputs = model(inputs)
    for out, (h, w) in zip(outputs, sizes):
        assert out["instances"].image_size == (h, w)
        assert out["instances"].pred_masks.shape[-2:] == (h, w)


def test_layout_preset_and_overrides():
    """MODEL.FEC.PRESET picks a layout of fec_backbone.PRESETS; PROPOSALS / FOLDS override it per stage."""
    plain = "MODEL.BACKBONE.NAME", "build_fec_backbone"
    body = build_backbone(make_cfg("toy_mask_rcnn_fec_s.yaml", *plain, "MODEL.FEC.PRESET", "segmentation")).body
    assert _layout(body) == _preset_layout("segmentation")
    body = build_backbone(make_cfg("toy_mask_rcnn_fec_s.yaml", *plain, "MODEL.FEC.PROPOSALS", [5, 5, 3, 3])).body
    assert _layout(body) == [((p, p), f) for p, (_, f) in zip([5, 5, 3, 3], _preset_layout("detection"))]
    with pytest.raises(ValueError, match="preset"):
        build_backbone(make_cfg("toy_mask_rcnn_fec_s.yaml", *plain, "MODEL.FEC.PRESET", "detector"))


def test_size_divisibility_follows_folds():
    """Folds must divide their stage's map: the padding grows with them (here stage 1 folds 8 -> 64)."""
    cfg = make_cfg("toy_mask_rcnn_fec_s.yaml", "MODEL.FEC.FOLDS", [2, 8, 1, 1])
    model = build_model(cfg).eval()
    assert model.backbone.size_divisibility == model.backbone.bottom_up.size_divisibility == 64
    inputs = [{"image": torch.randint(0, 255, (3, 70, 90), dtype=torch.uint8)}]
    assert tuple(model.preprocess_image(inputs).tensor.shape[-2:]) == (128, 128)
    with torch.no_grad():
        model(inputs)


def test_compiled_backbone_meets_a_bounded_number_of_padded_sizes():
    """MODEL.FEC.COMPILE: 20 batches resized as Detectron2 resizes them (shortest edge from a range, longest
    capped), padded by ``ImageList`` to the compiled backbone's size divisibility (128), pass a backbone
    compiled with static shapes. Bound: one graph per distinct padded batch size (here shortest edges 100-160
    and longest up to 256 give padded sides of 128 or 256, so at most 2 x 2 = 4), never one per batch,
    and every output and gradient equals the eager backbone's. Checkpoint keys stay plain. (The ``aot_eager``
    backend: dynamo and AOTAutograd decide the graphs and what they compute; Inductor's code generation is too
    slow for CI on a CPU, and tests/test_compile.py checks it on the model.)"""
    import random

    from detectron2.data.transforms import ResizeShortestEdge
    from detectron2.structures import ImageList
    from torch._dynamo.backends.registry import lookup_backend

    graphs = []

    def counting(gm, example_inputs):
        graphs.append(tuple(t.shape for t in example_inputs if isinstance(t, torch.Tensor) and t.ndim == 4))
        return lookup_backend("aot_eager")(gm, example_inputs)

    torch._dynamo.reset()
    eager = d2_plugin.FECBackbone("fec_small", out_features=["res2", "res5"]).double()
    compiled = d2_plugin.FECBackbone("fec_small", out_features=["res2", "res5"]).double()
    compiled.load_state_dict(eager.state_dict())
    assert compiled.compile_static(128, backend=counting) is compiled
    assert compiled.size_divisibility == 128 and list(compiled.state_dict()) == list(eager.state_dict())
    resize = ResizeShortestEdge((100, 160), max_size=256, sample_style="range")
    rng = random.Random(0)
    shapes = set()
    for _ in range(20):
        h, w = rng.randint(100, 400), rng.randint(100, 400)
        step = resize.get_transform(torch.zeros(h, w, 3).numpy())
        out_h, out_w = step.new_h, step.new_w
        x = ImageList.from_tensors([torch.randn(3, out_h, out_w, dtype=torch.float64)],
                                   size_divisibility=compiled.size_divisibility).tensor.requires_grad_()
        shapes.add(tuple(x.shape))
        ours, theirs = compiled(x), eager(x)
        for name in ours:
            assert (ours[name] - theirs[name]).abs().max() <= 1e-10 * theirs[name].abs().max(), name
        grad_ours, = torch.autograd.grad(sum(m.square().sum() for m in ours.values()), x)
        grad_eager, = torch.autograd.grad(sum(m.square().sum() for m in theirs.values()), x)
        assert (grad_ours - grad_eager).abs().max() <= 1e-10 * grad_eager.abs().max()
    assert all(s[2] % 128 == 0 and s[3] % 128 == 0 for s in shapes)
    assert 1 < len(shapes) <= 4 and len(graphs) == len(shapes), (sorted(shapes), graphs)
    torch._dynamo.reset()


def test_compile_options_in_the_config():
    cfg = make_cfg("mask_rcnn_fec_s_fpn_1x_coco.yaml", "MODEL.FEC.COMPILE", True, "MODEL.FEC.COMPILE_BACKEND", "eager",
                   "MODEL.FEC.CLUSTER_BACKEND", "matmul")
    try:
        fpn = build_backbone(cfg)
        assert fpn.size_divisibility == 128 and fpn.bottom_up.size_divisibility == 128
        assert fec_backbone.cluster_ops.get_backend() == "matmul"
        with pytest.raises(ValueError, match="must be a multiple of the backbone's size divisibility 32"):
            d2_plugin.FECBackbone("fec_small").compile_static(100)
    finally:
        fec_backbone.cluster_ops.set_backend("auto")
        torch._dynamo.reset()
