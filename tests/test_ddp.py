"""DDP trains FEC without find_unused_parameters (conv_f is a buffer), two processes with gloo; also compiled
after wrapping, as the trainers' compile switches do it."""
from __future__ import annotations

from typing import Dict

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import timm

import fec_backbone  # noqa: F401  (registers the models with timm)


def _worker(rank: int, world: int, init_file: str, results: str, compile_backend: str = "") -> None:
    import fec_backbone  # noqa: F401  (registers the models in the spawned process)

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = timm.create_model("fec_small", num_classes=4)
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    if compile_backend:
        ddp = torch.compile(ddp, backend=compile_backend)
    torch.manual_seed(rank)
    for _ in range(3):  # unused parameters would raise on the second step
        x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, f"{results}.{rank}")
    dist.destroy_process_group()


def _train(folder, compile_backend: str = "") -> Dict[str, Dict[str, torch.Tensor]]:
    """Three DDP steps on two ranks; the final state of each rank."""
    mp.spawn(_worker, args=(2, str(folder / "init"), str(folder / "state"), compile_backend), nprocs=2, join=True)
    return {rank: torch.load(folder / f"state.{rank}") for rank in (0, 1)}


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("ddp_eager"))


def test_ddp_without_find_unused_parameters(eager_run):
    a, b = eager_run[0], eager_run[1]
    torch.manual_seed(0)
    start = timm.create_model("fec_small", num_classes=4).state_dict()
    assert a.keys() == b.keys() == start.keys()
    for key in a:
        # the ranks saw different batches, but gradients were averaged: the replicas stay bit-identical
        assert torch.equal(a[key], b[key]), key
    trained = [k for k, v in start.items() if v.is_floating_point() and not torch.equal(a[k], v)]
    frozen = [k for k in start if "conv_f" in k]
    # every parameter moved in 3 AdamW steps; the conv_f buffers, which no optimizer sees, did not
    assert all(torch.equal(a[k], start[k]) for k in frozen) and len(frozen) == 6
    assert sorted(trained) == sorted(n for n, _ in timm.create_model("fec_small", num_classes=4).named_parameters())


def test_compiled_ddp_trains_as_eager_ddp(eager_run, tmp_path):
    """torch.compile over the DDP model (``aot_eager``: dynamo and AOTAutograd decide what the graph computes;
    Inductor's code generation is too slow for CI here): the replicas stay identical and equal the eager
    run's within float rounding, relative to each tensor's scale."""
    compiled = _train(tmp_path, "aot_eager")
    for key, value in eager_run[0].items():
        assert torch.equal(compiled[0][key], compiled[1][key]), key
        if value.is_floating_point():
            scale = value.abs().max().item() or 1.0
            assert (compiled[0][key] - value).abs().max().item() <= 1e-4 * scale, key
