"""ADE20K training on the generated toy data, on CPU: Semantic FPN + FEC-S learns (mIoU above the
untrained model's), an interrupted run resumes to exactly the uninterrupted result, SIGTERM writes a
checkpoint, DDP runs under torchrun, AMP runs."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seg_plugin.toy_data import generate
from seg_plugin.train_ade20k import CHECKPOINT, ConfigError, _unused_parameters, build_model, load_config, train

REPO = Path(__file__).resolve().parent.parent
TOY_CONFIG = REPO / "configs" / "segmentation" / "toy_fpn_fec_s.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "toy_ade20k")


def toy_config(root, **overrides):
    base = {"data.root": str(root), "train.progress": False, "data.crop_size": 32}
    return load_config(TOY_CONFIG, {**base, **overrides})


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def env():
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")


def test_training_on_toy_data_beats_the_untrained_model(toy, tmp_path, capsys):
    cfg = toy_config(toy, **{"train.iterations": 300, "train.eval_interval": 300, "train.checkpoint_interval": 300})
    result = train(cfg, tmp_path / "run")
    before, after = result["initial"]["mIoU"], result["final"]["mIoU"]
    with capsys.disabled():
        print(f"\ntoy FPN + fec_s, 300 iterations at 32 px: mIoU {100 * before:.2f} -> {100 * after:.2f}, "
              f"{result['sec_per_iter']:.3f} s/iteration")
    assert after > before + 0.3 and after > 0.6
    assert result["final"]["aAcc"] > 0.85 and result["final"]["images"] == 16
    assert result["unused_parameters"] == []
    evals = rows(tmp_path / "run" / "log_eval.csv")
    assert [int(r["iteration"]) for r in evals] == [0, 300]
    per_class = [r for r in rows(tmp_path / "run" / "per_class_iou.csv") if r["iteration"] == "300"]
    assert [r["class_name"] for r in per_class] == ["ground", "disc", "box", "stripes"]
    assert abs(sum(float(r["IoU"]) for r in per_class) / 4 - after) < 1e-5
    assert len(rows(tmp_path / "run" / "log_train.csv")) == 15


def test_interrupted_run_resumes_to_the_identical_result(toy, tmp_path):
    """Uninterrupted 8 iterations vs. a crash at iteration 6 (checkpoint at 4) and --resume; data-loader
    workers differ between the runs on purpose. Weights, optimizer state and logs must be identical."""
    settings = {"train.iterations": 8, "train.checkpoint_interval": 4, "train.eval_interval": 8,
                "train.eval_at_start": False, "train.log_interval": 1}
    straight = train(toy_config(toy, **settings), tmp_path / "straight")

    def crash(iteration):
        if iteration == 6:
            raise KeyboardInterrupt("simulated crash")

    interrupted_cfg = toy_config(toy, **settings, **{"data.workers": 1})
    with pytest.raises(KeyboardInterrupt):
        train(interrupted_cfg, tmp_path / "resumed", on_iteration=crash)
    assert torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)["iteration"] == 4
    resumed = train(interrupted_cfg, tmp_path / "resumed", resume=tmp_path / "resumed" / CHECKPOINT)

    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    ca = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=True)
    cb = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)
    for (ka, va), (kb, vb) in zip(ca["optimizer"]["state"].items(), cb["optimizer"]["state"].items()):
        assert all(torch.equal(va[s], vb[s]) for s in va)
    assert ca["scheduler"] == cb["scheduler"] and ca["iteration"] == cb["iteration"] == 8
    assert rows(tmp_path / "straight" / "log_train.csv") != []
    strip = lambda rs: [(r["iteration"], r["loss"], r["lr"]) for r in rs]  # noqa: E731
    assert strip(rows(tmp_path / "straight" / "log_train.csv")) == strip(rows(tmp_path / "resumed" / "log_train.csv"))
    assert straight["final"]["mIoU"] == resumed["final"]["mIoU"]

    with pytest.raises(ConfigError, match="already holds a run"):
        train(interrupted_cfg, tmp_path / "resumed")
    changed = toy_config(toy, **settings, **{"optim.lr": 0.01})
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's in \['optim.lr'\]"):
        train(changed, tmp_path / "resumed", resume=tmp_path / "resumed" / CHECKPOINT)
    with pytest.raises(ConfigError, match="checkpoint not found"):
        train(interrupted_cfg, tmp_path / "other", resume=tmp_path / "other" / CHECKPOINT)


def test_sigterm_writes_a_checkpoint_and_resume_continues(toy, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "seg_plugin.train_ade20k", "--config", str(TOY_CONFIG), "--data-root", str(toy),
               "--out-dir", str(out), "--set", "data.crop_size=32", "--set", "train.log_interval=1",
               "--set", "train.eval_at_start=false", "--set", "train.progress=false", "--iterations", "30"]
    proc = subprocess.Popen(command, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log_train.csv"
    deadline = time.time() + 240
    while time.time() < deadline and not (log.is_file() and len(rows(log)) >= 2):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    saved = torch.load(out / CHECKPOINT, weights_only=True)["iteration"]
    assert 2 <= saved < 30 and f"interrupted at iteration {saved}; checkpoint written to" in err
    refused = subprocess.run(command + ["--resume", "--set", "optim.lr=0.5"], cwd=REPO, env=env(),
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "differs from the checkpoint's in ['optim.lr']" in refused.stderr
    resumed = subprocess.run(command + ["--resume"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"iterations {saved}->30" in resumed.stdout and "final mIoU" in resumed.stdout
    assert [int(r["iteration"]) for r in rows(log)] == list(range(1, 31))


def test_ddp_under_torchrun_with_amp_and_accumulation(toy, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "seg_plugin.train_ade20k", "--config", str(TOY_CONFIG), "--data-root", str(toy),
               "--out-dir", str(out), "--iterations", "4", "--batch-size", "8", "--amp",
               "--set", "data.crop_size=32", "--set", "train.eval_at_start=false",
               "--set", "train.progress=false", "--set", "train.log_interval=2", "--set", "train.grad_accum=2",
               "--set", "train.tensorboard=true"]
    done = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es) x 2 accumulation x 2" in done.stdout and "final mIoU" in done.stdout
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    saved = torch.load(out / CHECKPOINT, weights_only=True)
    assert saved["world_size"] == 2 and len(saved["rng"]) == 2 and saved["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    assert [r["iteration"] for r in rows(out / "log_train.csv")] == ["2", "4"]


def test_unused_parameters_are_detected_for_ddp(toy):
    """Decoders that skip encoder levels leave those levels' output norms without gradient: DDP is then
    built with find_unused_parameters (FPN, the reference, uses every parameter)."""
    cfg = toy_config(toy, **{"model.arch": "deeplabv3", "model.arch_kwargs": {}})
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unused = _unused_parameters(model, 32, torch.device("cpu"))
    assert unused == [f"encoder.out_norms.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BatchNorm statistics kept
    assert all(p.grad is None for p in model.parameters())



def test_command_line_errors_are_one_clear_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "seg_plugin.train_ade20k", "--config", str(TOY_CONFIG),
                           "--data-root", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "out")],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "nowhere/images/training does not exist" in done.stderr
    assert "Traceback" not in done.stderr
