"""DDP trains FEC without find_unused_parameters (conv_f is a buffer), two processes with gloo."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import timm


def _worker(rank: int, world: int, init_file: str, results: str) -> None:
    import fec_backbone  # noqa: F401  (registers the models in the spawned process)

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = timm.create_model("fec_small", num_classes=4)
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    torch.manual_seed(rank)
    for _ in range(3):  # unused parameters would raise on the second step
        x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    torch.save({k: v.detach() for k, v in model.state_dict().items()}, f"{results}.{rank}")
    dist.destroy_process_group()


def test_ddp_without_find_unused_parameters(tmp_path):
    init_file = str(tmp_path / "init")
    results = str(tmp_path / "state")
    mp.spawn(_worker, args=(2, init_file, results), nprocs=2, join=True)
    a, b = torch.load(f"{results}.0"), torch.load(f"{results}.1")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key]), key  # gradients were averaged: replicas stay identical
    assert os.path.exists(f"{results}.1")
