"""ADE20K training on the generated toy data, on CPU, through Lightning: the toy recipe (Linknet + FEC-S) learns (mIoU
above the untrained model's), an interrupted run resumes to exactly the uninterrupted result, SIGTERM
writes a checkpoint, DDP runs under torchrun with AMP and accumulation, configs inherit the recipe."""
from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from fec_backbone import cluster_ops
from fec_backbone.checkpoint import CheckpointError
from fec_backbone.training import ResumableSampler, ResumeConfigError
from seg_plugin.data import ADE20KDataset
from seg_plugin.toy_data import generate
from seg_plugin.train_ade20k import (CHECKPOINT, ConfigError, SegmentationModule, _augment, _unused_parameters,
                                     build_model, load_config, segmentation_loss, train)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "segmentation"
TOY_CONFIG = CONFIGS / "toy_linknet_fec_s.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "toy_ade20k")


def toy_config(root, **overrides):
    base = {"data.root": str(root), "train.progress": False, "data.crop_size": 32}
    return load_config(TOY_CONFIG, {**base, **overrides})


def rows(path, column=None):
    """Rows of a CSV log; with ``column``, only the rows where it is filled."""
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if column is None or r[column] != ""]


def env():
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")


def test_training_on_toy_data_beats_the_untrained_model(toy, tmp_path, capsys):
    cfg = toy_config(toy, **{"train.eval_interval": 600, "train.checkpoint_interval": 600})
    result = train(cfg, tmp_path / "run")
    before, after = result["initial"]["mIoU"], result["final"]["mIoU"]
    with capsys.disabled():
        print(f"\ntoy Linknet + fec_s, 600 iterations at 32 px: mIoU {100 * before:.2f} -> {100 * after:.2f}, "
              f"{result['sec_per_iter']:.3f} s/iteration")
    assert after > before + 0.3 and after > 0.6
    assert result["final"]["aAcc"] > 0.85 and result["final"]["images"] == 32
    assert result["final"]["iteration"] == result["iterations"] == 600 and result["unused_parameters"] == []
    log = tmp_path / "run" / "metrics.csv"
    evals = rows(log, "val/mIoU")
    assert [int(r["step"]) for r in evals] == [0, 599]  # Lightning's step: iteration - 1 (the untrained eval: 0)
    per_class = [float(evals[-1][f"val/IoU/{i}:{name}"]) for i, name in enumerate(["ground", "common", "odd"])]
    assert per_class == pytest.approx(result["final"]["IoU"], rel=1e-6)
    assert abs(sum(per_class) / 3 - after) < 1e-5 and float(evals[-1]["val/mIoU"]) == pytest.approx(after, rel=1e-6)
    losses = rows(log, "train/loss")
    assert [int(r["step"]) for r in losses] == list(range(19, 600, 20))
    assert float(losses[-1]["train/loss"]) < 0.5 * float(losses[0]["train/loss"])
    lrs = {int(r["step"]): float(r["lr-AdamW"]) for r in rows(log, "lr-AdamW")}
    assert list(lrs) == list(range(19, 600, 20))
    assert list(lrs.values()) == pytest.approx([4e-3 * (1 - s / 600) ** 0.9 for s in lrs], rel=1e-6)  # poly 0.9
    import segmentation_models_pytorch as smp

    saved = smp.from_pretrained(str(tmp_path / "run" / "model"))
    assert isinstance(saved, smp.Linknet) and saved.config["encoder_name"] == "tu-fec_small"
    assert saved.encoder.model.model.stages[0].blocks[0].token_mixer.proposals == (2, 2)


@pytest.mark.parametrize("compile_backend", ["", "aot_eager"], ids=["eager", "compiled"])
def test_interrupted_run_resumes_to_the_identical_result(toy, tmp_path, compile_backend):
    """Uninterrupted 8 iterations vs. a crash at iteration 6 (checkpoint and evaluation at 4) and a resume;
    gradient accumulation on, data-loader workers differ between the runs on purpose. Weights, optimizer
    state and logs must be identical; also with the training step compiled (``train.compile``)."""
    settings = {"train.iterations": 8, "train.checkpoint_interval": 4, "train.eval_interval": 4,
                "train.eval_at_start": False, "train.log_interval": 1, "train.grad_accum": 2,
                "train.compile": compile_backend}
    straight = train(toy_config(toy, **settings), tmp_path / "straight")

    class Crash(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 6:
                raise RuntimeError("simulated crash")

    interrupted_cfg = toy_config(toy, **settings, **{"data.workers": 1})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(interrupted_cfg, tmp_path / "resumed", callbacks=[Crash()])
    assert torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)["global_step"] == 4
    resumed = train(interrupted_cfg, tmp_path / "resumed", resume=tmp_path / "resumed" / CHECKPOINT)

    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    ca = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=True)
    cb = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)
    sa, sb = ca["optimizer_states"][0]["state"], cb["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k][s], sb[k][s]) for k in sa for s in sa[k])
    assert ca["lr_schedulers"] == cb["lr_schedulers"] and ca["global_step"] == cb["global_step"] == 8
    log_a, log_b = rows(tmp_path / "straight" / "metrics.csv"), rows(tmp_path / "resumed" / "metrics.csv")
    assert len(rows(tmp_path / "straight" / "metrics.csv", "train/loss")) == 8 and log_a == log_b
    assert [e["mIoU"] for e in straight_evals(log_a)] == [e["mIoU"] for e in straight_evals(log_b)]
    assert straight["final"] == resumed["final"]

    with pytest.raises(ConfigError, match="already holds a run"):
        train(interrupted_cfg, tmp_path / "resumed")
    changed = toy_config(toy, **{**settings, "optim.lr": 0.01, "train.log_interval": 5})  # log_interval: run-only
    with pytest.raises(ResumeConfigError, match=r"differs from the checkpoint's in \['optim.lr'\]"):
        train(changed, tmp_path / "resumed", resume=tmp_path / "resumed" / CHECKPOINT)
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        train(interrupted_cfg, tmp_path / "other", resume=tmp_path / "other" / CHECKPOINT)
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*bad\.ckpt"):
        train(interrupted_cfg, tmp_path / "other", resume=tmp_path / "bad.ckpt")


def test_compiled_training_step_learns_what_the_eager_one_learns(toy, tmp_path):
    """``train.compile`` (the ``aot_eager`` backend here: dynamo and AOTAutograd decide what the graph computes;
    Inductor's code generation is too slow for CI on a CPU) and ``train.cluster_backend`` change how, not what.
    One step from the same weights: the loss equals the eager one's to float32 rounding and every gradient
    within 1e-5 of its own scale. Six steps of training: the losses within 1e-3 (rounding differences, from the
    matmul backend's other order of sums and AOTAutograd's decompositions, grow with each AdamW step). The saved
    model has the eager model's keys (no ``_orig_mod.``)."""
    cfg = toy_config(toy, **{"train.iterations": 6, "train.eval_at_start": False, "train.log_interval": 1})
    fast = toy_config(toy, **{"train.iterations": 6, "train.eval_at_start": False, "train.log_interval": 1,
                              "train.compile": "aot_eager", "train.cluster_backend": "matmul"})
    images, labels = next(iter(torch.utils.data.DataLoader(
        ADE20KDataset(toy, "training", 3, _augment(cfg)), batch_size=4,
        sampler=ResumableSampler(480, positions=True))))
    torch.manual_seed(0)
    eager = SegmentationModule(cfg, ["ground", "common", "odd"])
    compiled = SegmentationModule(fast, ["ground", "common", "odd"])
    compiled.load_state_dict(eager.state_dict())
    results = []
    for module, backend in ((eager, "torch"), (compiled, "matmul")):
        cluster_ops.set_backend(backend)
        try:
            loss = segmentation_loss(module.train_forward(images), labels, cfg.loss.avg_non_ignore)
            loss.backward()
        finally:
            cluster_ops.set_backend("auto")
        results.append((loss.item(), {n: p.grad for n, p in module.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert abs(loss_a - loss_b) <= 1e-6 * loss_a and grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        assert (grad - grads_b[name]).abs().max() <= 1e-5 * (grad.abs().max() or 1.0), name

    train(cfg, tmp_path / "eager")
    train(fast, tmp_path / "compiled")
    losses = [[float(r["train/loss"]) for r in rows(tmp_path / run / "metrics.csv", "train/loss")]
              for run in ("eager", "compiled")]
    assert len(losses[0]) == 6 and all(abs(a - b) <= 1e-3 * abs(a) for a, b in zip(*losses)), losses
    saved = [load_file(tmp_path / run / "model" / "model.safetensors").keys() for run in ("eager", "compiled")]
    assert saved[0] == saved[1] and not any("_orig_mod" in k for k in saved[1])


def straight_evals(log):
    return [{"step": r["step"], "mIoU": r["val/mIoU"]} for r in log if r["val/mIoU"]]


def test_sigterm_writes_a_checkpoint_and_resume_continues(toy, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "seg_plugin.train_ade20k", "--config", str(TOY_CONFIG), "--data-root", str(toy),
               "--out-dir", str(out)]
    opts = ["data.crop_size", "32", "train.log_interval", "1", "train.eval_at_start", "false", "train.progress", "false",
            "train.iterations", "30"]
    proc = subprocess.Popen(command + opts + ["train.checkpoint_interval", "2"], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / CHECKPOINT).is_file():  # running: iteration 2 saved
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    saved = torch.load(out / CHECKPOINT, weights_only=True)["global_step"]
    assert 3 <= saved < 30 and f"interrupted at iteration {saved}; checkpoint written to" in err
    refused = subprocess.run(command + ["--resume"] + opts + ["optim.lr", "0.5"], cwd=REPO, env=env(),
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "differs from the checkpoint's in ['optim.lr']" in refused.stderr
    resumed = subprocess.run(command + ["--resume"] + opts, cwd=REPO, env=env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"iterations {saved}->30" in resumed.stdout and "final mIoU" in resumed.stdout
    assert [int(r["step"]) for r in rows(out / "metrics.csv", "train/loss")] == list(range(30))


def test_ddp_under_torchrun_with_amp_and_accumulation(toy, tmp_path):
    """Two gloo processes: the global batch split over processes and accumulation, each rank's own random
    stream, the evaluation over both halves; the decoder's BatchNorms are SyncBatchNorm in both workers (the
    official SyncBN) and the saved model holds plain BatchNorm2d again."""
    import segmentation_models_pytorch as smp

    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "seg_plugin.train_ade20k", "--config", str(TOY_CONFIG), "--data-root", str(toy),
               "--out-dir", str(out), "train.iterations", "4", "train.batch_size", "8", "train.amp", "true",
               "data.crop_size", "32", "train.eval_at_start", "false", "train.progress", "false",
               "train.log_interval", "2", "train.grad_accum", "2", "train.tensorboard", "true"]
    done = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es) x 2 accumulation x 2" in done.stdout and "final mIoU" in done.stdout
    assert "(32 images)" in done.stdout  # the evaluation counts both ranks' halves of the validation split
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    saved = torch.load(out / CHECKPOINT, weights_only=True)
    assert len(saved["rng"]) == 2 and saved["global_step"] == 4
    assert not torch.equal(saved["rng"][0]["torch"], saved["rng"][1]["torch"])  # each rank's own generator
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    assert [r["step"] for r in rows(out / "metrics.csv", "train/loss")] == ["1", "3"]
    assert "normalisation: SyncBatchNorm across the processes (train.sync_batchnorm true, 2 process(es))" in done.stdout
    saved_model = smp.from_pretrained(str(out / "model"))
    norms = [m for m in saved_model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(type(m) is torch.nn.BatchNorm2d for m in norms)  # Linknet's decoder BatchNorms
    for rank in (0, 1):
        assert (f"[rank {rank}] BatchNorm: {len(norms)} layer(s) synchronised across 2 processes (CpuSyncBatchNorm), "
                "0 not synchronised") in done.stdout, done.stdout[-3000:]
    state = load_file(out / "model" / "model.safetensors")
    assert {"decoder.blocks.0.block.0.1.running_var", "decoder.blocks.0.block.0.1.num_batches_tracked"} <= set(state)


def test_evaluation_metrics_leave_out_absent_classes(toy):
    """mIoU averages the classes present in labels or predictions (as mmseg); an absent class's IoU is NaN."""
    module = SegmentationModule(toy_config(toy), ["ground", "common", "odd"])
    module.metrics.update(torch.tensor([[0, 0, 1, 1]]), torch.tensor([[0, 1, 1, 255]]))  # 255: ignored
    result = module.metrics.compute()
    assert result["IoU"][:2].tolist() == [0.5, 0.5] and result["IoU"][2].isnan()
    assert float(result["mIoU"]) == 0.5 and float(result["aAcc"]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("config", ["toy", "fpn"])
def test_unused_parameters_are_detected_for_ddp(toy, config):
    """Decoders that skip encoder levels leave those levels' output norms without gradient: DDP is then
    built with find_unused_parameters (FPN, the reference, uses every parameter). Both encoder routes: the
    toy recipe's (encoder_params: smp's tu-fec_small) and the ADE20K recipe's (registry fec_s)."""
    settings = {"model.arch": "deeplabv3", "model.encoder_depth": 5}
    if config == "toy":
        cfg, prefix = toy_config(toy, **settings), "encoder.model.model."
    else:
        cfg = load_config(CONFIGS / "fpn_fec_s_ade20k_80k.yaml", {**settings, "model.encoder_weights": None})
        prefix = "encoder."
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unused = _unused_parameters(model, 32, torch.device("cpu"))
    assert unused == [f"{prefix}out_norms.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BatchNorm statistics kept
    assert all(p.grad is None for p in model.parameters())


def test_registry_route_loads_the_imagenet_weights_without_recording_them(tmp_path, monkeypatch):
    """The ADE20K recipe (fec_s, encoder_weights imagenet): the installed weights are in the built model, its
    config says encoder_weights=None; not installed, the error says how to install them."""
    import huggingface_hub.constants
    import segmentation_models_pytorch as smp

    import seg_plugin
    from helpers import official_state_dict

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = load_config(CONFIGS / "fpn_fec_s_ade20k_80k.yaml", {"data.num_classes": 3})
    with pytest.raises(seg_plugin.WeightsNotInstalledError, match="python -m seg_plugin.weights install"):
        build_model(cfg)
    state = official_state_dict("fec_small", seed=4)
    torch.save(state, tmp_path / "fec_small.pth")
    seg_plugin.install(tmp_path / "fec_small.pth")
    names = set(smp.encoders.encoders)
    model = build_model(cfg)
    assert set(smp.encoders.encoders) == names and type(model.encoder) is seg_plugin.FecEncoder
    assert torch.equal(model.encoder.stem.proj.weight, state["patch_embed.proj.weight"])
    assert torch.equal(model.encoder.stages[1].blocks[0].mlp.fc1.weight, state["network.2.0.mlp.fc1.weight"])
    assert model.config["encoder_weights"] is None and model.config["encoder_name"] == "fec_s"


def test_configs_inherit_the_recipe_and_reject_unknown_keys(tmp_path):
    small, base = load_config(CONFIGS / "fpn_fec_s_ade20k_80k.yaml"), load_config(CONFIGS / "fpn_fec_b_ade20k_80k.yaml")
    assert base.model.encoder == "fec_b" and load_config(CONFIGS / "fpn_fec_l_ade20k_80k.yaml").model.encoder == "fec_l"
    assert {**base, "model": None} == {**small, "model": None}
    assert base.model.arch == "semanticfpn" and base.model.arch_kwargs == {
        "semanticfpn": {"decoder_pyramid_channels": 256, "decoder_segmentation_channels": 128, "decoder_dropout": 0.1},
        "fpn": {"decoder_dropout": 0.1}}
    assert small.loss.avg_non_ignore is False and small.train.sync_batchnorm is True
    toy = load_config(TOY_CONFIG)
    assert toy.model.arch == "linknet" and toy.model.encoder_depth == 2 and toy.model.arch_kwargs == {}
    assert toy.optim.weight_decay == 1e-4 and toy.train.iterations == 600
    (tmp_path / "typo.yaml").write_text(f"_BASE_: {TOY_CONFIG}\ntrain:\n  iteration: 5\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown setting 'train.iteration'"):
        load_config(tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match=r"command line: .*Type mismatch.*train.iterations"):
        load_config(TOY_CONFIG, {"train.iterations": "many"})
    assert math.isclose(load_config(TOY_CONFIG, {"optim.lr": "2.0e-3"}).optim.lr, 2e-3)


def test_command_line_errors_are_one_clear_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "seg_plugin.train_ade20k", "--config", str(TOY_CONFIG),
                           "--data-root", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "out")],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "nowhere/images/training does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    typo = subprocess.run([sys.executable, "-m", "seg_plugin.train_ade20k", "--out-dir", str(tmp_path / "out"),
                           "train.iters", "5"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert typo.returncode == 2 and typo.stderr.startswith("error: command line: unknown setting 'train.iters'")


TRAIN_AND_RECORD = r"""
import sys, torch
import segmentation_models_pytorch as smp
import seg_plugin
from lightning.pytorch.callbacks import Callback
from seg_plugin.train_ade20k import load_config, train
from seg_plugin.pretrained import _fec_of

config, root, out, standin = sys.argv[1:5]
names = set(smp.encoders.encoders)
torch.set_num_threads(1)


class Keep(Callback):
    def on_train_start(self, trainer, module):  # the installed ImageNet weights are in the encoder
        stem = _fec_of(module.model.encoder).stem.proj.weight
        assert torch.equal(stem, torch.load(standin)["patch_embed.proj.weight"]), "ImageNet weights not loaded"

    def on_fit_end(self, trainer, module):
        self.model = module.model


keep = Keep()
cfg = load_config(config, {"data.root": root, "train.progress": False, "train.iterations": 3,
                           "train.eval_at_start": False, "train.log_interval": 1})
train(cfg, out, callbacks=[keep])
assert set(smp.encoders.encoders) == names, sorted(set(smp.encoders.encoders) - names)
x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    torch.save({"x": x, "y": keep.model.eval()(x)}, out + "/expected.pt")
"""

RELOAD = r"""
import sys, torch
import seg_plugin, segmentation_models_pytorch as smp
from seg_plugin.pretrained import _fec_of

torch.set_num_threads(1)
model = smp.from_pretrained(sys.argv[1] + "/model").eval()
expected = torch.load(sys.argv[1] + "/expected.pt")
with torch.inference_mode():
    y = model(expected["x"])
assert torch.equal(y, expected["y"]), (y - expected["y"]).abs().max()
fec = _fec_of(model.encoder)
mixer = fec.stages[0].blocks[0].token_mixer
assert (mixer.proposals, mixer.folds) == ((2, 2), (2, 2)), (mixer.proposals, mixer.folds)
assert fec.stages[0].blocks[-1].drop_path.drop_prob > 0
print(type(model).__name__, "reloaded, same outputs")
"""


def test_trained_model_reloads_in_a_new_process_with_its_settings(toy, tmp_path):
    """The toy recipe with other FEC settings (detection preset, 2x2 centres, drop path) and the ImageNet
    weights, trained by the trainer in one process, then ``smp.from_pretrained`` in another that has no
    ImageNet weights installed: the same model (settings and outputs, bit for bit). Training writes no
    name into smp's encoder registry."""
    from helpers import official_state_dict

    standin = tmp_path / "fec_small.pth"
    torch.save(official_state_dict("fec_small", seed=3), standin)
    with_weights = dict(env(), HF_HUB_CACHE=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    installed = subprocess.run([sys.executable, "-m", "seg_plugin.weights", "install", "--checkpoint", str(standin)],
                               cwd=REPO, env=with_weights, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    config = tmp_path / "toy_other_settings.yaml"
    config.write_text(f"_BASE_: {TOY_CONFIG}\nmodel:\n  encoder_weights: imagenet\n"
                      "  encoder_params:\n    preset: detection\n    drop_path_rate: 0.1\n")
    out = tmp_path / "run"
    trained = subprocess.run([sys.executable, "-c", TRAIN_AND_RECORD, str(config), str(toy), str(out), str(standin)],
                             cwd=REPO, env=with_weights, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    elsewhere = dict(env(), HF_HUB_CACHE=str(tmp_path / "empty_cache"), HF_HUB_OFFLINE="1")
    reloaded = subprocess.run([sys.executable, "-c", RELOAD, str(out)], cwd=tmp_path, env=elsewhere,
                              capture_output=True, text=True, timeout=300)
    assert reloaded.returncode == 0, reloaded.stderr[-3000:]
    assert "Linknet reloaded, same outputs" in reloaded.stdout
    assert "built as smp's tu-fec_small with feature_norms=True, preset='detection'" in trained.stdout
    assert "proposals=[2, 2, 2, 2], drop_path_rate=0.1" in trained.stdout
    import json

    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["encoder_name"] == "tu-fec_small" and saved["encoder_weights"] is None
    assert {k: saved[k] for k in ("feature_norms", "preset", "proposals", "drop_path_rate")} == {
        "feature_norms": True, "preset": "detection", "proposals": [2, 2, 2, 2], "drop_path_rate": 0.1}


def test_checkpoints_of_the_registry_route_resume_on_the_timm_route(toy):
    """A run of the toy recipe checkpointed before encoder_params models took smp's timm route has the
    encoder under model.encoder.: its keys move to model.encoder.model.model. (the same modules)."""
    from seg_plugin.train_ade20k import upgrade_state_dict

    module = SegmentationModule(toy_config(toy), ["ground", "common", "odd"])
    ours = module.state_dict()
    assert "model.encoder.model.model.stem.proj.weight" in ours
    old = {k.replace("model.encoder.model.model.", "model.encoder."): v + 1 for k, v in ours.items()}
    upgraded = upgrade_state_dict(old, ours)
    assert list(upgraded) == list(ours)
    module.load_state_dict(upgraded)
    assert torch.equal(module.model.encoder.model.model.stem.proj.weight, old["model.encoder.stem.proj.weight"])
    assert upgrade_state_dict(ours, ours) is ours


def test_timm_route_checkpoint_file_is_loaded_not_recorded(tmp_path):
    """``tu-fec_small`` with timm's ``pretrained_cfg_overlay.file`` in encoder_params: the trainer loads the
    file into the encoder itself, so the saved config names neither the file nor pretrained weights."""
    from helpers import official_state_dict

    state = official_state_dict("fec_small", seed=6)
    torch.save({"state_dict": state}, tmp_path / "fec_small.pth")
    config = tmp_path / "tu.yaml"
    config.write_text(f"_BASE_: {CONFIGS / 'fpn_fec_s_ade20k_80k.yaml'}\nmodel:\n  encoder: tu-fec_small\n"
                      f"  encoder_params:\n    feature_norms: true\n    preset: segmentation\n"
                      f"    pretrained_cfg_overlay:\n      file: {tmp_path / 'fec_small.pth'}\n")
    model = build_model(load_config(config, {"data.num_classes": 3}))
    assert torch.equal(model.encoder.model.model.stem.proj.weight, state["patch_embed.proj.weight"])
    assert model.config["encoder_weights"] is None and "pretrained_cfg_overlay" not in model.config
