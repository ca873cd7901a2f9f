"""End to end on the generated data, in fresh processes as a user runs it: ``train_net.py`` (as a script
from another folder, and as ``python -m d2_plugin.train_net``) trains Mask R-CNN FEC-S on CPU until box
AP is clearly above the untrained model's (COCOEvaluator, box and mask AP) and ``--eval-only`` on its
``model_final.pth`` reproduces the numbers; a run interrupted after a checkpoint resumes, in process and
with ``--resume`` in a new one, into exactly the continuation of an uninterrupted run; an official FEC
ImageNet training checkpoint initialises the backbone through ``MODEL.WEIGHTS``; the AMP trainer's state
is checkpointed."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy.testing
import pytest
import torch

if os.environ.get("FEC_REQUIRE_DETECTRON2") != "1":  # CI requires it: a missing Detectron2 fails
    pytest.importorskip("detectron2")
import detectron2  # noqa: E402
from d2_plugin.toy_data import prepare_toy_datasets  # noqa: E402
from d2_plugin.trainer import Trainer  # noqa: E402

from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import HookBase  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402

import d2_plugin  # noqa: E402
from fec_backbone.checkpoint import map_official_key  # noqa: E402
from fec_backbone.training import ResumeConfigError  # noqa: E402
from helpers import official_state_dict  # noqa: E402

# One thread here and in the processes started (same count: bit-equal numbers); on a shared 2-core machine
# two threads per process made a training step 4x slower.
pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "detectron2", "toy_mask_rcnn_fec_s.yaml")
CONFIG_NAME = "configs/detectron2/toy_mask_rcnn_fec_s.yaml"  # as the documentation writes it
MINI = ["DATASETS.TRAIN", "('fec_toy_mini_train',)", "DATASETS.TEST", "('fec_toy_mini_val',)", "SOLVER.IMS_PER_BATCH", "2"]


# The learning run: trained from scratch on the 240 generated training images, evaluated on 8 held-out
# ones (fec_toy_mini_val); the same seed gives the same untrained model for the baseline. Measured on
# Detectron2 main: box AP 0.5 untrained, 15.1 after these 200 iterations (6.9 after 150 at lr 1e-3,
# 2.6 after 200 at lr 4e-3). About 70 s of training with 2 idle cores.
LEARN = ["DATASETS.TRAIN", "('fec_toy_train',)", "DATASETS.TEST", "('fec_toy_mini_val',)", "SOLVER.MAX_ITER", "200",
         "SOLVER.BASE_LR", "0.002", "SOLVER.WARMUP_ITERS", "20", "SOLVER.CHECKPOINT_PERIOD", "1000"]
LEARN_MARGIN = {"AP": 1.0, "AP50": 5.0}  # box AP points above the untrained model


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    prepare_toy_datasets(["fec_toy_mini_train", "fec_toy_train"], root=str(root))
    return root


def _run(args, datasets_dir, cwd, module=False):
    """``train_net.py`` in a new process started in ``cwd`` (not the checkout): the script by its path, or
    ``python -m d2_plugin.train_net``. Same thread count as this process, for bit-equal numbers."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_dir), OMP_NUM_THREADS=str(torch.get_num_threads()),
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    entry = ["-m", "d2_plugin.train_net"] if module else [os.path.join(ROOT, "d2_plugin", "train_net.py")]
    proc = subprocess.run([sys.executable, *entry, *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


def _ap_lines(log):
    """{task: [AP, AP50, AP75, APs, APm, APl]} from the "copypaste:" lines of the evaluation log."""
    rows = [line.split("copypaste: ", 1)[1] for line in log.splitlines() if "copypaste: " in line]
    return {rows[i][len("Task: "):]: [float(v) for v in rows[i + 2].split(",")]
            for i in range(len(rows)) if rows[i].startswith("Task: ")}


def test_train_net_learns(datasets_dir, tmp_path):
    """``train_net.py`` trains Mask R-CNN FEC-S from scratch for a short while: box AP on held-out images
    ends clearly above the untrained model's (same seed, ``--eval-only``), COCOEvaluator reports box and
    mask AP, and ``--eval-only`` on the final weights, in another process, reproduces the numbers. Run
    from an empty folder, with the config named as in the documentation (the packaged copy is found)."""
    untrained = _ap_lines(_run(["--config-file", CONFIG_NAME, "--eval-only", *LEARN,
                                "OUTPUT_DIR", str(tmp_path / "untrained")], datasets_dir, tmp_path, module=True))
    out = tmp_path / "run"
    log = _run(["--config-file", CONFIG_NAME, *LEARN, "OUTPUT_DIR", str(out)], datasets_dir, tmp_path)
    assert f"Detectron2 {detectron2.__version__} at " in log
    trained = _ap_lines(log)
    assert set(trained) == set(untrained) == {"bbox", "segm"}
    assert all(len(v) == 6 and 0 <= v[0] <= 100 for v in trained.values())
    print(f"box AP {untrained['bbox'][0]:.1f} -> {trained['bbox'][0]:.1f}, "
          f"mask AP {untrained['segm'][0]:.1f} -> {trained['segm'][0]:.1f}")
    for i, name in enumerate(("AP", "AP50")):
        assert trained["bbox"][i] >= untrained["bbox"][i] + LEARN_MARGIN[name], (name, untrained, trained)
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == int(LEARN[LEARN.index("SOLVER.MAX_ITER") + 1])
    assert "bbox/AP" in metrics[-1] and "segm/AP" in metrics[-1]
    log = _run(["--config-file", CONFIG_NAME, "--eval-only", *LEARN, "MODEL.WEIGHTS", str(out / "model_final.pth"),
                "OUTPUT_DIR", str(tmp_path / "eval")], datasets_dir, tmp_path)
    numpy.testing.assert_equal(_ap_lines(log), trained)  # NaN (no large objects) compares equal


class _Crash(HookBase):
    def __init__(self, at: int):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise RuntimeError("simulated crash")


class _Losses(HookBase):
    def __init__(self):
        self.losses = {}

    def after_step(self):
        self.losses[self.trainer.iter] = self.trainer.storage.history("total_loss").latest()


SHORT = [*MINI, "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "2",
         "MODEL.FEC.DROP_PATH_RATE", "0.1"]


def _trainer(output_dir, seed, resume=False, *opts):
    cfg = get_cfg()
    d2_plugin.add_fec_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list([*SHORT, "OUTPUT_DIR", str(output_dir), *opts])
    seed_all_rng(seed)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    losses = _Losses()
    trainer.register_hooks([losses])
    return trainer, losses


def test_resume_after_interruption_is_exact(datasets_dir, tmp_path):
    """4 iterations straight vs. 2, a crash, and a resumed run from the last checkpoint: same losses at
    every iteration and identical final weights (random augmentation, RPN/ROI sampling and drop path
    included: generator states and the sample-stream position come back from the checkpoint). Resumed
    in this process and, from a copy of the interrupted run, by ``train_net.py --resume`` in a new one."""
    straight, straight_losses = _trainer(tmp_path / "straight", seed=0)
    straight.train()

    crashed, crashed_losses = _trainer(tmp_path / "crashed", seed=0)
    crashed.register_hooks([_Crash(at=1)])  # right after the checkpoint of iteration 1
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.train()
    assert (tmp_path / "crashed" / "last_checkpoint").read_text() == "model_0000001.pth"
    saved = torch.load(tmp_path / "crashed" / "model_0000001.pth", weights_only=True)
    assert {"model", "trainer", "iteration", "rng"} <= set(saved)  # trainer: optimizer, scheduler
    shutil.copytree(tmp_path / "crashed", tmp_path / "crashed_cli")

    with pytest.raises(ResumeConfigError, match=r"\['SOLVER.BASE_LR'\]"):  # the shared resume policy
        _trainer(tmp_path / "crashed", 123, True, "SOLVER.BASE_LR", "0.5")
    resumed, resumed_losses = _trainer(tmp_path / "crashed", 123, True, "SOLVER.CHECKPOINT_PERIOD", "3")
    assert resumed.start_iter == 2
    resumed.train()

    expected = straight_losses.losses
    assert crashed_losses.losses == {i: expected[i] for i in (0, 1)}
    assert resumed_losses.losses == {i: expected[i] for i in (2, 3)}
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final = torch.load(tmp_path / "crashed" / "model_final.pth", weights_only=True)
    assert all(torch.equal(final["model"][k], a[k]) for k in a)

    log = _run(["--config-file", CONFIG, "--resume", *SHORT, "OUTPUT_DIR", str(tmp_path / "crashed_cli")],
               datasets_dir, tmp_path)
    assert "Loading trainer from" in log  # resumed (not started over), in a process that only ran the command line
    final = torch.load(tmp_path / "crashed_cli" / "model_final.pth", weights_only=True)
    assert final["iteration"] == 3 and all(torch.equal(final["model"][k], a[k]) for k in a)


def test_official_imagenet_checkpoint_through_model_weights(datasets_dir, tmp_path):
    """An ImageNet checkpoint as the official FEC train.py saves it (timm's CheckpointSaver: state_dict,
    state_dict_ema, epoch, arch, args as an argparse.Namespace; official keys patch_embed.proj.*,
    network.<i>.* with even i the block stages and odd i the ClusterPool downsamples, norm.*, head.*),
    given as MODEL.WEIGHTS to train_net.py in a new process: the log says what was loaded where, and the
    run's model_final.pth (one step with the whole FEC frozen) holds exactly the EMA weights in the backbone."""
    plain = official_state_dict("fec_small", seed=3, noise=1.0)
    ema = {k: v + 0.5 for k, v in plain.items()}
    assert {"patch_embed.proj.weight", "network.0.0.mlp.fc1.weight", "network.1.conv_f.weight", "norm.weight",
            "head.weight"} <= set(plain), sorted(plain)[:20]  # the layout the docstring promises
    path = tmp_path / "fec_small.pth.tar"
    torch.save({"epoch": 299, "arch": "fec_small", "state_dict": plain, "state_dict_ema": ema, "metric": 77.1,
                "args": argparse.Namespace(model="fec_small", lr=1e-3, epochs=300, scale=[0.08, 1.0])}, path)
    out = tmp_path / "run"
    log = _run(["--config-file", CONFIG_NAME, *MINI, "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "1", "MODEL.FEC.FREEZE_AT", "5",
                "MODEL.WEIGHTS", str(path), "OUTPUT_DIR", str(out)], datasets_dir, tmp_path)
    backbone = {map_official_key(k): v for k, v in ema.items() if not k.startswith(("head.", "norm."))}
    line = (f"FEC ImageNet weights from {path} ('state_dict_ema', official key layout): {len(backbone)} backbone tensors "
            "loaded into backbone.bottom_up.body; FPN, output norms and heads (proposal_generator, roi_heads) start fresh")
    assert line in log, log[-3000:]
    final = torch.load(out / "model_final.pth", weights_only=True)["model"]
    prefix = "backbone.bottom_up.body."
    body = {k[len(prefix):]: v for k, v in final.items() if k.startswith(prefix)}
    assert body.keys() == backbone.keys()
    assert all(torch.equal(body[k], backbone[k]) for k in body)


def test_amp_trainer_state_is_checkpointed(datasets_dir, tmp_path):
    """SOLVER.AMP.ENABLED selects Detectron2's AMPTrainer; its grad scaler and the optimizer are part of
    the trainer state that Detectron2's DefaultTrainer checkpoints (``_trainer``), which an exact resume needs."""
    from detectron2.engine import AMPTrainer

    cfg = get_cfg()
    d2_plugin.add_fec_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list([*MINI, "SOLVER.AMP.ENABLED", "True", "OUTPUT_DIR", str(tmp_path)])
    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, AMPTrainer)
    state = trainer.state_dict()["_trainer"]
    assert {"optimizer", "grad_scaler"} <= set(state)
