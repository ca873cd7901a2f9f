"""Classification training and validation on the generated toy data: learning, agreement with
validate.py, exact resume after a kill, DDP with 2 processes, AMP, and clear checkpoint errors."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys

import pytest
import torch

from classification import train, validate
from classification.data import DatasetError, ImageReadError
from classification.toy_data import make_toy_imagefolder
from fec_backbone import cluster_ops
from fec_backbone.checkpoint import CheckpointError
from fec_backbone.training import ResumeConfigError
from reference_fec import reference_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CFG = os.path.join(ROOT, "configs", "classification", "toy.yaml")
IN1K_CFG = os.path.join(ROOT, "configs", "classification", "fec_small_in1k.yaml")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(autouse=True)
def _keep_thread_count():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data") / "toy")
    make_toy_imagefolder(root, train_per_class=48, val_per_class=16, size=32, verbose=False)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data") / "tiny")
    make_toy_imagefolder(root, train_per_class=4, val_per_class=2, size=32, verbose=False)
    return root


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_training_runs_and_validate_agrees(toy, tmp_path):
    """Two short epochs (what the full toy recipe learns, against a control, is tests/test_learning.py)."""
    out = str(tmp_path / "run")
    result = train.main(["-c", TOY_CFG, "--data-dir", toy, "--img-size", "32", "-b", "16", "--epochs", "2",
                         "--workers", "0", "--threads", "1", "--output", out, "--log-tb"])
    assert result["eval"]["count"] == 64
    rows = _rows(os.path.join(out, "summary.csv"))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])  # the optimizer steps do descend
    for name in ("last.pth.tar", "model_best.pth.tar", "checkpoint-1.pth.tar", "args.yaml"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(out, "tb")))
    results_file = str(tmp_path / "val.json")
    val = validate.main([toy, "--checkpoint", os.path.join(out, "last.pth.tar"), "-j", "0", "--threads", "1",
                         "--results-file", results_file])
    assert val["count"] == 64 and val["data_config"]["input_size"] == [3, 32, 32]
    assert val["top1"] == pytest.approx(float(rows[-1]["eval_top1"]), abs=1e-9)
    assert val["top5"] == pytest.approx(float(rows[-1]["eval_top5"]), abs=1e-9)
    assert val["loss"] == pytest.approx(float(rows[-1]["eval_loss"]), rel=1e-4)
    assert os.path.isfile(results_file)
    with pytest.raises(SystemExit, match="already holds a run"):  # a fresh run never overwrites one
        train.main(["-c", TOY_CFG, "--data-dir", toy, "--output", out])
    with pytest.raises(CheckpointError, match="checkpoint of 'fec_small', not of --model 'fec_base'"):
        validate.main([toy, "--checkpoint", os.path.join(out, "last.pth.tar"), "--model", "fec_base"])
    with pytest.raises(CheckpointError, match="is a checkpoint of 'fec_small', but --model is 'fec_base'"):
        train.main(["-c", TOY_CFG, "--data-dir", toy, "--model", "fec_base",
                    "--resume", os.path.join(out, "last.pth.tar")])


def test_cooldown_epochs_are_trained_at_the_minimum_lr(tiny, tmp_path):
    """The official recipe trains 300 cosine epochs and then 10 at min_lr (the scheduler returns 310, and the
    official train.py loops to that): ``--cooldown-epochs`` adds epochs, the last ones at ``--min-lr``."""
    out = str(tmp_path / "run")
    train.main(["-c", TOY_CFG, "--data-dir", tiny, "--img-size", "32", "-b", "8", "--epochs", "2",
                "--cooldown-epochs", "2", "--warmup-epochs", "0", "--no-sched-on-updates", "--min-lr", "1e-5",
                "--workers", "0", "--threads", "1", "--output", out])
    rows = _rows(os.path.join(out, "summary.csv"))
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]
    assert [float(r["lr"]) for r in rows[2:]] == [1e-5, 1e-5] and float(rows[0]["lr"]) > 1e-4
    in1k = train.parse_args(["-c", IN1K_CFG])[0]
    assert (in1k.epochs, in1k.cooldown_epochs, in1k.warmup_epochs) == (300, 10, 5)


@pytest.mark.parametrize("speed", [[], ["--torchcompile", "aot_eager"]], ids=["eager", "compiled"])
def test_resume_after_kill_continues_identically(tiny, tmp_path, speed):
    # the full reference recipe (RandAugment, mixup/cutmix, random erasing, smoothing, drop path) with EMA
    # and a loader worker, so that every random source must be restored; also compiled
    args = speed + ["-c", IN1K_CFG, "--data-dir", tiny, "--img-size", "32", "-b", "8", "--epochs", "2", "--cooldown-epochs", "0",
            "--warmup-epochs", "1", "--workers", "1", "--model-ema", "--no-amp", "--threads", "1",
            "--log-interval", "1"]
    straight = str(tmp_path / "straight")
    train.main(args + ["--output", straight])

    killed = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "classification.train", *args, "--output", killed],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=ROOT)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Train: 1 ["):  # one step into the second epoch: kill without warning
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(lines)
    last = os.path.join(killed, "last.pth.tar")
    assert torch.load(last, weights_only=True)["epoch"] == 0

    with pytest.raises(ResumeConfigError, match=r"\['lr'\]"):  # the shared resume policy: trajectory settings stay
        train.main(["--resume", last, "--threads", "1", "--lr", "0.5"])
    train.main(["--resume", last, "--threads", "1", "--log-interval", "3"])  # run-only settings may change
    a = torch.load(os.path.join(straight, "last.pth.tar"), weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["epoch"] == b["epoch"] == 1 and a["num_updates"] == b["num_updates"] == 4
    for key in ("state_dict", "state_dict_ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    timing = {"train_img_per_sec", "eval_img_per_sec", "eval_ema_img_per_sec"}
    rows_a, rows_b = _rows(os.path.join(straight, "summary.csv")), _rows(os.path.join(killed, "summary.csv"))
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows_a] == \
           [{k: v for k, v in r.items() if k not in timing} for r in rows_b]


def test_ddp_two_processes_with_torchrun(tiny, tmp_path):
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "classification.train",
           "-c", TOY_CFG, "--data-dir", tiny, "--img-size", "32", "-b", "8", "--epochs", "1", "--workers", "0",
           "--grad-accum-steps", "2", "--clip-grad", "1.0", "--amp", "--amp-dtype", "bfloat16", "--output", out]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "distributed: 2 processes, backend gloo" in log
    assert "DDP: the weights are identical in all 2 processes" in log
    rows = _rows(os.path.join(out, "summary.csv"))
    assert rows[0]["eval_count"] == "8" and rows[0]["train_images"] == "16"  # every image once per epoch
    ckpt = torch.load(os.path.join(out, "last.pth.tar"), weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])


def test_float16_amp_with_loss_scaler_and_ema(tiny, tmp_path):
    out = str(tmp_path / "fp16")
    result = train.main(["-c", TOY_CFG, "--data-dir", tiny, "--img-size", "32", "-b", "8", "--epochs", "1",
                         "--workers", "0", "--threads", "1", "--amp", "--amp-dtype", "float16", "--model-ema",
                         "--output", out])
    assert torch.isfinite(torch.tensor(result["train"]["loss"]))
    ckpt = torch.load(os.path.join(out, "last.pth.tar"), weights_only=True)
    assert "amp_scaler" in ckpt and "state_dict_ema" in ckpt
    val = validate.main([tiny, "--checkpoint", os.path.join(out, "last.pth.tar"), "--use-ema", "-j", "0"])
    assert val["top1"] == pytest.approx(result["eval"]["ema_top1"], abs=1e-9)


def test_official_checkpoint_errors(tiny, tmp_path):
    path = str(tmp_path / "official_fec_small.pth")
    torch.save({"state_dict": reference_model("fec_small").state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"(?s)missing keys: .*shape mismatches: norm.bias: checkpoint \(320,\) "
                                              r"vs model \(512,\)"):
        validate.main([tiny, "--checkpoint", path, "--model", "fec_base"])
    with pytest.raises(DatasetError, match="4 class folders but the checkpoint's classifier has 1000 outputs"):
        validate.main([tiny, "--checkpoint", path, "--model", "fec_small"])


def test_bad_data_stops_training_with_a_clear_error(tmp_path):
    root = str(tmp_path / "toy")
    make_toy_imagefolder(root, train_per_class=2, val_per_class=1, size=32, verbose=False)
    args = ["-c", TOY_CFG, "--data-dir", root, "--img-size", "32", "-b", "8", "--workers", "1", "--threads", "1"]
    bad = os.path.join(root, "train", "top_left", "top_left_0001.png")
    with open(bad, "wb") as f:
        f.write(b"truncated")
    with pytest.raises(ImageReadError, match="top_left_0001.png"):
        train.main(args + ["--output", str(tmp_path / "a")])
    os.remove(bad)
    os.makedirs(os.path.join(root, "val", "hexagon"))
    with pytest.raises(DatasetError, match=r"contain no images \(hexagon\)"):
        train.main(args + ["--output", str(tmp_path / "b")])


def test_config_with_unknown_key_is_rejected(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: fec_small\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        train.parse_args(["-c", str(cfg)])
    err = capsys.readouterr().err
    assert "unknown keys in" in err and "learning_rate" in err


def test_torchcompile_trains_the_same_run_and_checkpoints_plain_keys(tiny, tmp_path):
    """``--torchcompile`` (timm's flag; here the ``aot_eager`` backend: dynamo and AOTAutograd, which decide what
    the graph computes, without Inductor's code generation, too slow for CI on a CPU) and ``--cluster-backend``
    change how a run computes, not what it learns: the same losses and weights as the eager run within float
    rounding (relative to each tensor's scale), checkpoint keys without ``_orig_mod.``, an EMA (the exact
    resume of a compiled run: test_resume_after_kill_continues_identically)."""
    common = ["-c", TOY_CFG, "--data-dir", tiny, "--img-size", "32", "-b", "8", "--epochs", "2", "--workers", "0",
              "--threads", "1", "--model-ema", "--model-ema-decay", "0.9"]
    eager = train.main(common + ["--output", str(tmp_path / "eager")])
    backend = cluster_ops.get_backend()
    compiled = train.main(common + ["--output", str(tmp_path / "compiled"), "--torchcompile", "aot_eager",
                                    "--cluster-backend", "matmul"])
    assert cluster_ops.get_backend() == backend  # the run's backend is not left behind for the caller
    assert abs(compiled["train"]["loss"] - eager["train"]["loss"]) <= 1e-4 * abs(eager["train"]["loss"])
    a = torch.load(tmp_path / "eager" / "last.pth.tar", weights_only=True)
    b = torch.load(tmp_path / "compiled" / "last.pth.tar", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys() and not any("_orig_mod" in k for k in b["state_dict"])
    for key in ("state_dict", "state_dict_ema"):
        for name, value in a[key].items():
            if value.is_floating_point():
                scale = value.abs().max().item() or 1.0
                assert (b[key][name] - value).abs().max().item() <= 1e-4 * scale, (key, name)
    assert b["args"]["torchcompile"] == "aot_eager" and b["args"]["cluster_backend"] == "matmul"
