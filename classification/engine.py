"""Training and evaluation steps, checkpoint files and per-epoch seeding shared by ``train`` and ``validate``."""
from __future__ import annotations

import contextlib
import random
import time
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from timm.utils import CheckpointSaver, accuracy, dispatch_clip_grad

from fec_backbone.checkpoint import check_keys
from fec_backbone.training import atomic_save

__all__ = [
    "amp_autocast",
    "seed_epoch",
    "train_one_epoch",
    "evaluate",
    "AtomicCheckpointSaver",
    "load_model_state",
]

Logger = Callable[[str], None]
AutocastFactory = Callable[[], contextlib.AbstractContextManager]


def amp_autocast(device: torch.device, enabled: bool, dtype: str = "bfloat16") -> AutocastFactory:
    """A factory of autocast contexts (``bfloat16`` or ``float16``), or of null contexts without AMP."""
    if not enabled:
        return contextlib.nullcontext
    if dtype not in ("bfloat16", "float16"):
        raise ValueError(f"--amp-dtype must be bfloat16 or float16, got {dtype!r}")
    torch_dtype = getattr(torch, dtype)
    return lambda: torch.autocast(device.type, dtype=torch_dtype)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 63-bit seed determined by the run seed, the epoch and the process rank."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0] >> 1)


def seed_epoch(seed: int, epoch: int, rank: int, loader_generator: Optional[torch.Generator] = None) -> None:
    """Seed every random source of an epoch from ``(seed, epoch, rank)``.

    Python, NumPy (Mixup/CutMix), torch (drop path, random erasing) and the data loader's generator
    (the seeds of its worker processes, which seed the augmentations) start each epoch from a state
    that depends on nothing else, so an epoch run after ``--resume`` is the epoch of an uninterrupted run.
    """
    s = epoch_seed(seed, epoch, rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    if loader_generator is not None:
        loader_generator.manual_seed(s)


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def train_one_epoch(
    epoch: int,
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    *,
    device: torch.device,
    autocast: AutocastFactory,
    num_updates: int,
    accum_steps: int = 1,
    loss_scaler=None,
    lr_scheduler=None,
    model_ema=None,
    mixup_fn=None,
    clip_grad: Optional[float] = None,
    clip_mode: str = "norm",
    world_size: int = 1,
    log: Optional[Logger] = None,
    log_interval: int = 50,
) -> Dict[str, float]:
    """One epoch over ``loader``; returns ``loss`` (mean over processes), ``lr``, ``num_updates``,
    ``images`` (all processes) and ``img_per_sec``."""
    model.train()
    steps = len(loader) // accum_steps
    if steps == 0:
        raise ValueError(
            f"the training loader gives {len(loader)} batches per process, fewer than one optimizer step of "
            f"{accum_steps} accumulated batches; use a smaller --batch-size or more training images"
        )
    loss_sum = torch.zeros((), dtype=torch.float64)
    seen = 0
    start = time.perf_counter()
    batches = iter(loader)
    params = [p for p in model.parameters() if p.requires_grad]
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        for micro in range(accum_steps):
            images, targets = next(batches)
            images, targets = images.to(device), targets.to(device)
            if mixup_fn is not None:
                images, targets = mixup_fn(images, targets)
            last = micro == accum_steps - 1
            sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with autocast():
                    loss = criterion(model(images), targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss is {loss.item()} at epoch {epoch}, step {step}: lower --lr, enable "
                        "--clip-grad, or use bfloat16 instead of float16"
                    )
                if loss_scaler is not None:
                    loss_scaler(loss / accum_steps, optimizer, clip_grad=clip_grad, clip_mode=clip_mode,
                                parameters=params, need_update=last)
                else:
                    (loss / accum_steps).backward()
                    if last:
                        if clip_grad is not None:
                            dispatch_clip_grad(params, clip_grad, mode=clip_mode)
                        optimizer.step()
            loss_sum += loss.detach().double() * images.shape[0]
            seen += images.shape[0]
        num_updates += 1
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates)
        if model_ema is not None:
            model_ema.update(model, step=num_updates)
        if log is not None and (step % log_interval == 0 or step == steps - 1):
            rate = seen * world_size / (time.perf_counter() - start)
            log(
                f"Train: {epoch} [{step + 1:>4d}/{steps}] loss {loss.item():.4f} (avg {loss_sum.item() / seen:.4f}) "
                f"lr {optimizer.param_groups[0]['lr']:.3e} {rate:.1f} img/s"
            )
    elapsed = time.perf_counter() - start
    totals = _all_reduce_sum(torch.tensor([loss_sum.item(), float(seen)], dtype=torch.float64))
    return {
        "loss": totals[0].item() / totals[1].item(),
        "lr": optimizer.param_groups[0]["lr"],
        "num_updates": num_updates,
        "images": int(totals[1].item()),
        "img_per_sec": totals[1].item() / elapsed,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    *,
    device: torch.device,
    autocast: AutocastFactory = contextlib.nullcontext,
    log: Optional[Logger] = None,
    log_interval: int = 50,
    prefix: str = "Test",
) -> Dict[str, float]:
    """Top-1/top-5 accuracy (percent) and mean cross-entropy over every sample of ``loader`` (summed
    over processes; with fewer than 5 classes, top-5 counts all classes)."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top-1 hits, top-5 hits, samples
    start = time.perf_counter()
    for step, (images, targets) in enumerate(loader):
        images, targets = images.to(device), targets.to(device)
        with autocast():
            logits = model(images)
        logits = logits.float()
        n = targets.numel()
        top1, top5 = accuracy(logits, targets, topk=(1, 5))  # timm's metric (top-5 covers all of < 5 classes)
        totals += torch.tensor([
            nn.functional.cross_entropy(logits, targets, reduction="sum").item(),
            round(top1.item() * n / 100.0),  # hits, back from percent
            round(top5.item() * n / 100.0),
            n,
        ], dtype=torch.float64)
        if log is not None and (step % log_interval == 0 or step == len(loader) - 1):
            log(f"{prefix}: [{step + 1:>4d}/{len(loader)}] top-1 {100 * totals[1] / totals[3]:.2f}%")
    elapsed = time.perf_counter() - start
    totals = _all_reduce_sum(totals)
    count = int(totals[3].item())
    if count == 0:
        raise ValueError("the evaluation loader gave no images")
    return {
        "loss": totals[0].item() / count,
        "top1": 100.0 * totals[1].item() / count,
        "top5": 100.0 * totals[2].item() / count,
        "count": count,
        "img_per_sec": count / elapsed,
    }


class AtomicCheckpointSaver(CheckpointSaver):
    """timm's CheckpointSaver (``last``, ``checkpoint-<epoch>`` and ``model_best`` files, top-N
    history), writing whatever ``state_fn(epoch)`` returns.

    timm writes ``tmp.pth.tar`` and renames it over ``last.pth.tar``; the file is written through the
    shared :func:`fec_backbone.training.atomic_save` (flushed to disk, renamed into place), so a crash at
    any moment leaves the previous or the new checkpoint, never a part.
    """

    def __init__(self, state_fn: Callable[[int], Dict[str, Any]], checkpoint_dir: str, max_history: int = 10,
                 decreasing: bool = False):
        super().__init__(model=None, optimizer=None, checkpoint_dir=checkpoint_dir, recovery_dir=checkpoint_dir,
                         max_history=max_history, decreasing=decreasing)
        self.state_fn = state_fn

    def _save(self, save_path: str, epoch: int, metric: Optional[float] = None) -> None:
        state = self.state_fn(epoch)
        state.update(epoch=epoch, version=2, saver=self.state_dict(epoch, metric))
        if metric is not None:
            state["metric"] = metric
        atomic_save(state, save_path)


def load_model_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Load a training checkpoint's ``state_dict`` strictly, raising :class:`CheckpointError` that lists
    missing, unexpected and mis-shaped keys (classifier included)."""
    check_keys(state_dict, model.state_dict(), what)
    model.load_state_dict(state_dict, strict=True)

