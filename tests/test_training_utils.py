"""The shared training helpers of fec_backbone.training: atomic saving, RNG capture/restore, the resumable
sampler, the generated-data manifest and the resume policy."""
from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch

from fec_backbone.checkpoint import CheckpointError, read_checkpoint
from fec_backbone.training import (
    GeneratedDataError,
    ResumableSampler,
    ResumeConfigError,
    atomic_save,
    atomic_write,
    capture_rng_state,
    check_resume_config,
    ensure_generated,
    restore_rng_state,
)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "sub" / "ckpt.pth"
    atomic_save({"w": torch.arange(3)}, path)
    assert torch.equal(read_checkpoint(path)["w"], torch.arange(3))
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(path) as f:
            f.write(b"half a checkpoint")
            raise RuntimeError("disk full")
    assert torch.equal(read_checkpoint(path)["w"], torch.arange(3))  # old file intact
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth"]  # no temporary file left
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*bad\.pth"):
        read_checkpoint(tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "none.pth")


def _draws():
    return random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(3).tolist()


def test_rng_state_round_trips_through_a_weights_only_checkpoint():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.randn()  # leave cached Gaussians in both generators
    buffer = io.BytesIO()
    torch.save({"rng": capture_rng_state()}, buffer)
    expected = _draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    buffer.seek(0)
    restore_rng_state(torch.load(buffer, weights_only=True)["rng"])
    assert _draws() == expected


@pytest.mark.parametrize("world", [1, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_resumable_sampler_starts_anywhere_and_covers_each_epoch(world, shuffle):
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    size = 10
    ranks = [take(ResumableSampler(size, r, world, seed=1, shuffle=shuffle), 40) for r in range(world)]
    merged = [ranks[p % world][p // world] for p in range(40)]  # the global stream, rank r at r, r + world, ...
    for epoch in range(4 if world == 1 else 3):
        assert sorted(merged[epoch * size:(epoch + 1) * size]) == list(range(size))
    assert (merged[:size] != merged[size:2 * size]) == shuffle  # a new order each epoch
    for r in range(world):
        for start in (0, 3, 7, 13):
            assert take(ResumableSampler(size, r, world, seed=1, start=start, shuffle=shuffle), 12) == ranks[r][start:start + 12]
        with_positions = take(ResumableSampler(size, r, world, seed=1, start=5, positions=True, shuffle=shuffle), 4)
        assert with_positions == list(zip(ranks[r][5:9], range(5, 9)))
    assert take(ResumableSampler(size, 0, 1, seed=2), size) != ranks[0][:size] or not shuffle
    with pytest.raises(ValueError, match="rank 3 is outside world size 3"):
        ResumableSampler(size, 3, 3)


def test_generated_data_is_reused_regenerated_or_refused(tmp_path):
    calls = []

    def write(folder):
        calls.append(folder)
        (folder / "data.txt").write_text(str(len(calls)))

    root = tmp_path / "toy"
    assert ensure_generated(root, {"n": 4}, write) and (root / "data.txt").read_text() == "1"
    assert not ensure_generated(root, {"n": 4}, write) and len(calls) == 1  # same settings: reused
    assert ensure_generated(root, {"n": 5}, write) and (root / "data.txt").read_text() == "2"  # ours: regenerated
    assert json.loads((root / "fec_generated.json").read_text()) == {"n": 5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no temporary folder left
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(GeneratedDataError, match=r"mine exists and holds files that were not generated here"):
        ensure_generated(foreign, {"n": 4}, write)
    assert (foreign / "thesis.tex").read_text() == "keep me" and len(calls) == 2

    def fail(folder):
        (folder / "part").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_generated(root, {"n": 6}, fail)
    assert (root / "data.txt").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["mine", "toy"]


def test_resume_policy_allows_only_run_only_changes():
    saved = {"data": {"root": "a", "workers": 4}, "optim": {"lr": 0.1, "betas": [0.9, 0.99]},
             "train": {"eval_interval": 10, "kwargs": {"x": 1}}}
    run_only = ["data.root", "data.workers", "train.*_interval"]
    same = {"data": {"root": "a", "workers": 4}, "optim": {"lr": 0.1, "betas": (0.9, 0.99)},
            "train": {"eval_interval": 10, "kwargs": {"x": 1}}}
    assert check_resume_config(saved, same, run_only) == []
    moved = {**same, "data": {"root": "b", "workers": 0}, "train": {"eval_interval": 5, "kwargs": {"x": 1}}}
    assert check_resume_config(saved, moved, run_only) == ["data.root: 'a' -> 'b'", "data.workers: 4 -> 0",
                                                           "train.eval_interval: 10 -> 5"]
    changed = {**moved, "optim": {"lr": 0.2, "betas": [0.9, 0.99]}, "train": {"eval_interval": 5, "kwargs": {"x": 2}}}
    with pytest.raises(ResumeConfigError, match=r"differs from the checkpoint's in \['optim.lr', 'train.kwargs.x'\] "
                                                r"\(optim.lr: 0.1 -> 0.2; train.kwargs.x: 1 -> 2\)"):
        check_resume_config(saved, changed, run_only)
    with pytest.raises(ResumeConfigError, match=r"\['optim.momentum'\]"):
        check_resume_config(saved, {**same, "optim": {**same["optim"], "momentum": 0.9}}, run_only)
