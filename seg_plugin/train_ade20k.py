"""ADE20K semantic segmentation with an smp model and an FEC encoder: the FEC paper's recipe.

Semantic FPN (``smp.FPN``) with FEC, AdamW (lr 1e-4, weight decay 1e-4), poly schedule (power 0.9),
80k iterations at batch 16, 512x512 crops after random rescaling (0.5-2.0) and flipping, single-scale
evaluation at short side 512; mIoU, per-class IoU and pixel accuracy from torchmetrics. Any smp
architecture by ``--arch``.

    python -m seg_plugin.train_ade20k --config configs/segmentation/fpn_fec_s_ade20k_80k.yaml \\
        --data-root data/ADEChallengeData2016 --out-dir output/fpn_fec_s_ade20k
    torchrun --nproc_per_node 4 -m seg_plugin.train_ade20k --config ... --amp      # DDP (batch is global)
    python -m seg_plugin.train_ade20k ... --resume                                    # continue a run

Outputs in ``--out-dir``: ``checkpoint_last.pth`` (written atomically every ``checkpoint_interval``
iterations and when the run is interrupted by SIGINT/SIGTERM), ``log_train.csv``, ``log_eval.csv``,
``per_class_iou.csv``, ``tensorboard/``, and the final model in smp's format (``model/``, load with
``smp.from_pretrained``). A resumed run continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import inspect
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

import segmentation_models_pytorch as smp

from fec_backbone.checkpoint import CheckpointError

from ._files import atomic_write
from .data import IGNORE_INDEX, ADE20KDataset, ADE20KEvalDataset, AugmentConfig, SegDataError, TrainStream, class_names
from .hub import WeightsNotInstalledError
from .registry import register_encoder, register_encoders

__all__ = ["DEFAULTS", "ConfigError", "build_model", "evaluate", "load_config", "train", "main"]

#: The reference recipe (FEC's ``fpn_fec_*_ade20k_80k`` mmseg configs); config files override it.
DEFAULTS: Dict[str, Dict[str, Any]] = {
    "model": {
        "arch": "fpn",
        "encoder": "fec_s",
        "encoder_weights": "imagenet",
        "encoder_depth": None,
        "encoder_params": {},
        "arch_kwargs": {},
    },
    "data": {
        "root": "data/ADEChallengeData2016",
        "train_split": "training",
        "val_split": "validation",
        "num_classes": 150,
        "scale": [2048, 512],
        "ratio_range": [0.5, 2.0],
        "crop_size": 512,
        "cat_max_ratio": 0.75,
        "flip_prob": 0.5,
        "photometric": True,
        "mean": [123.675, 116.28, 103.53],
        "std": [58.395, 57.12, 57.375],
        "eval_scale": [2048, 512],
        "size_divisor": 32,
        "workers": 4,
    },
    "optim": {"lr": 1.0e-4, "weight_decay": 1.0e-4, "betas": [0.9, 0.999], "poly_power": 0.9},
    "train": {
        "iterations": 80000,
        "batch_size": 16,
        "grad_accum": 1,
        "amp": False,
        "seed": 0,
        "deterministic": False,
        "eval_interval": 8000,
        "eval_at_start": False,
        "checkpoint_interval": 8000,
        "log_interval": 50,
        "tensorboard": True,
        "progress": True,
        "device": "auto",
        "cpu_threads": None,
    },
}
#: Settings a resumed run may change (they do not affect the training trajectory).
RESUMABLE_CHANGES = {
    "data.root",
    "data.workers",
    "train.eval_interval",
    "train.checkpoint_interval",
    "train.log_interval",
    "train.tensorboard",
    "train.progress",
    "train.cpu_threads",
}
FREE_FORM = {"model.encoder_params", "model.arch_kwargs"}
CHECKPOINT = "checkpoint_last.pth"


class ConfigError(ValueError):
    """An invalid configuration or command line; the message says which setting and why."""


# ----------------------------------------------------------------------------------------- config


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and name not in FREE_FORM:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _merge(base: Dict[str, Any], update: Mapping[str, Any], source: str, prefix: str = "") -> None:
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in base:
            known = ", ".join(sorted(base))
            raise ConfigError(f"{source}: unknown setting {name!r} (known in this section: {known})")
        if isinstance(base[key], dict) and name not in FREE_FORM:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {name!r} must be a mapping, got {value!r}")
            _merge(base[key], value, source, name + ".")
        else:
            base[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)


def load_config(
    path: Optional[str | os.PathLike] = None, overrides: Optional[Mapping[str, Any]] = None
) -> Dict[str, Any]:
    """:data:`DEFAULTS` updated by a yaml/json file and then by ``{"section.key": value}`` overrides;
    unknown settings raise :class:`ConfigError`."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        with open(path, encoding="utf-8") as f:
            loaded = json.load(f) if path.suffix == ".json" else yaml.safe_load(f)
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
        _merge(cfg, loaded or {}, str(path))
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"override {dotted!r} must be written section.key=value")
        _merge(cfg, {section: {key: value}}, "command line")
    _validate(cfg)
    return cfg


def _validate(cfg: Dict[str, Any]) -> None:
    arch = cfg["model"]["arch"].lower()
    if arch not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ConfigError(
            f"model.arch {arch!r} is not an smp architecture; choose one of {sorted(smp.MODEL_ARCHITECTURES_MAPPING)}"
        )
    model_cls = smp.MODEL_ARCHITECTURES_MAPPING[arch]
    accepted = set(inspect.signature(model_cls.__init__).parameters) - {"self", "kwargs"}
    fixed = {"encoder_name", "encoder_weights", "encoder_depth", "in_channels", "classes"}
    unknown = sorted(set(cfg["model"]["arch_kwargs"]) - (accepted - fixed))
    if unknown:
        raise ConfigError(
            f"model.arch_kwargs {unknown} are not arguments of smp.{model_cls.__name__} "
            f"(accepted: {sorted(accepted - fixed)})"
        )
    train, data = cfg["train"], cfg["data"]
    for key in ("iterations", "batch_size", "grad_accum", "eval_interval", "checkpoint_interval", "log_interval"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {train[key]!r}")
    if not isinstance(data["num_classes"], int) or not 1 <= data["num_classes"] < IGNORE_INDEX:
        raise ConfigError(
            f"data.num_classes must be an integer in [1, {IGNORE_INDEX - 1}], got {data['num_classes']!r}"
        )
    if data["crop_size"] % data["size_divisor"]:
        raise ConfigError(
            f"data.crop_size {data['crop_size']} must be divisible by data.size_divisor {data['size_divisor']}"
        )


def _augment(cfg: Dict[str, Any]) -> AugmentConfig:
    d = cfg["data"]
    return AugmentConfig(
        scale=tuple(d["scale"]),
        ratio_range=tuple(d["ratio_range"]),
        crop_size=d["crop_size"],
        cat_max_ratio=d["cat_max_ratio"],
        flip_prob=d["flip_prob"],
        photometric=d["photometric"],
        mean=tuple(d["mean"]),
        std=tuple(d["std"]),
        eval_scale=tuple(d["eval_scale"]),
        size_divisor=d["size_divisor"],
    )


# ------------------------------------------------------------------------------------------ model


def build_model(cfg: Dict[str, Any]) -> nn.Module:
    """The smp model of ``cfg["model"]``: registry encoders (``fec_s``...) get ``encoder_params`` through
    a registry entry of their own, ``tu-`` encoders as model keyword arguments (smp passes them to timm)."""
    m = cfg["model"]
    register_encoders()
    encoder, params = m["encoder"], dict(m["encoder_params"])
    weights = m["encoder_weights"]
    if isinstance(weights, str) and weights.lower() in ("none", "null", ""):
        weights = None
    kwargs: Dict[str, Any] = dict(m["arch_kwargs"])
    if encoder.startswith("tu-"):
        kwargs.update(params)
        weights = True if weights else None
    elif params:
        digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
        encoder = register_encoder(f"{encoder}_{digest}", encoder, **params)
    if m["encoder_depth"] is not None:
        kwargs["encoder_depth"] = m["encoder_depth"]
    return smp.create_model(
        m["arch"],
        encoder_name=encoder,
        encoder_weights=weights,
        in_channels=3,
        classes=cfg["data"]["num_classes"],
        **kwargs,
    )


def _unused_parameters(model: nn.Module, crop: int, device: torch.device) -> List[str]:
    """Parameters that receive no gradient in this architecture (e.g. encoder levels a decoder skips)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.train()
        model(torch.zeros(2, 3, crop, crop, device=device)).float().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    return unused


# --------------------------------------------------------------------------------------- evaluate


def _metrics(num_classes: int, device: torch.device):
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassJaccardIndex

    common = dict(num_classes=num_classes, ignore_index=IGNORE_INDEX, validate_args=False)
    return MetricCollection(
        {
            "mIoU": MulticlassJaccardIndex(average="macro", **common),
            "IoU": MulticlassJaccardIndex(average="none", **common),
            "aAcc": MulticlassAccuracy(average="micro", **common),
            "support": MulticlassConfusionMatrix(**common),
        }
    ).to(device)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Single-scale evaluation: logits at the evaluation scale, resized to the annotation, argmax.

    Returns ``mIoU`` (mean over classes present in the labels or predictions, as mmseg), ``aAcc``
    (pixel accuracy), per-class ``IoU`` (NaN for classes absent from both) and ``images``; summed over
    all ranks under DDP.
    """
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    metrics = _metrics(num_classes, device)
    images = 0
    for image, labels in tqdm(loader, desc="eval", leave=False, disable=not progress, dynamic_ncols=True):
        image, labels = image.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(image)
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        metrics.update(logits.argmax(1), labels)
        images += image.shape[0]
    result = metrics.compute()
    model.train(was_training)
    confmat = result["support"]
    present = (confmat.sum(0) + confmat.sum(1)) > 0
    iou = torch.where(present, result["IoU"], torch.full_like(result["IoU"], float("nan")))
    if dist.is_available() and dist.is_initialized():
        count = torch.tensor([images], device=device)
        dist.all_reduce(count)
        images = int(count.item())
    return {"mIoU": float(result["mIoU"]), "aAcc": float(result["aAcc"]), "IoU": iou.cpu().tolist(), "images": images}


# ------------------------------------------------------------------------------------------- logs


class _Csv:
    """A CSV log that, on resume, drops rows written after the checkpoint it resumes from."""

    def __init__(self, path: Path, fields: List[str], resume_iteration: Optional[int]):
        self.path, self.fields = path, fields
        rows = []
        if resume_iteration is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= resume_iteration]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, **row: Any) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)


# ------------------------------------------------------------------------------------ checkpoints


def _save_atomic(obj: Any, path: Path) -> None:
    with atomic_write(path) as f:
        torch.save(obj, f)


def _rng_state(device: torch.device) -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> List[str]:
    a, b = _flatten(saved), _flatten(current)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)


# ------------------------------------------------------------------------------------------ train


class _Stop:
    """SIGINT/SIGTERM: finish the current iteration, write a checkpoint, exit."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "_Stop":
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Interrupted(RuntimeError):
    """Training stopped by a signal after writing a checkpoint; ``--resume`` continues it."""


def _distributed() -> Tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if world > 1:
        return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def _device(cfg: Dict[str, Any], local_rank: int) -> torch.device:
    choice = cfg["train"]["device"]
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device is 'cuda' but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if choice != "cpu":
        raise ConfigError(f"train.device must be 'auto', 'cuda' or 'cpu', got {choice!r}")
    return torch.device("cpu")


def train(
    cfg: Dict[str, Any],
    out_dir: str | os.PathLike,
    resume: Optional[str | os.PathLike] = None,
    on_iteration: Optional[Callable[[int], None]] = None,
) -> Dict[str, Any]:
    """Train (or continue training) ``cfg``'s model; returns the final evaluation, the untrained one
    when ``train.eval_at_start``, and timing. ``on_iteration(i)`` is called after iteration ``i``."""
    threads = torch.get_num_threads()
    if cfg["train"]["cpu_threads"] is not None:
        torch.set_num_threads(cfg["train"]["cpu_threads"])
    try:
        return _train(cfg, Path(out_dir), resume, on_iteration)
    finally:
        torch.set_num_threads(threads)


def _train(
    cfg: Dict[str, Any],
    out: Path,
    resume: Optional[str | os.PathLike],
    on_iteration: Optional[Callable[[int], None]],
) -> Dict[str, Any]:
    from tqdm import tqdm

    rank, world, local_rank = _distributed()
    device = _device(cfg, local_rank)
    t, d = cfg["train"], cfg["data"]
    ckpt_path = out / CHECKPOINT
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if resume is None and ckpt_path.exists():
        raise ConfigError(
            f"{out} already holds a run ({ckpt_path}); continue it with --resume or choose another --out-dir"
        )
    per_step = world * t["grad_accum"]
    if t["batch_size"] % per_step:
        raise ConfigError(
            f"train.batch_size {t['batch_size']} is not divisible by world size x grad_accum "
            f"({world} x {t['grad_accum']})"
        )
    batch = t["batch_size"] // per_step
    torch.use_deterministic_algorithms(bool(t["deterministic"]), warn_only=True)

    checkpoint = None
    if resume is not None:
        resume = Path(resume)
        if not resume.is_file():
            raise ConfigError(f"--resume: checkpoint not found: {resume}")
        checkpoint = torch.load(resume, map_location="cpu", weights_only=True)
        changes = _config_changes(checkpoint["config"], cfg)
        if changes:
            raise ConfigError(
                f"--resume: the configuration differs from the checkpoint's in {changes}; resume with the "
                f"same settings (only {sorted(RESUMABLE_CHANGES)} may change) or start a new --out-dir"
            )

    aug = _augment(cfg)
    train_set = ADE20KDataset(d["root"], d["train_split"], d["num_classes"], aug, seed=t["seed"], rank=rank)
    val_set = ADE20KEvalDataset(d["root"], d["val_split"], d["num_classes"], aug)
    val_set.indices = val_set.indices[rank::world]
    torch.manual_seed(t["seed"])
    model = build_model(cfg).to(device)
    unused = _unused_parameters(model, d["crop_size"], device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["optim"]["lr"], betas=tuple(cfg["optim"]["betas"]),
                                  weight_decay=cfg["optim"]["weight_decay"])
    scheduler = torch.optim.lr_scheduler.PolynomialLR(
        optimizer, total_iters=t["iterations"], power=cfg["optim"]["poly_power"]
    )
    amp_dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if t["amp"] else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    torch.manual_seed(t["seed"] + 1 + rank)
    start = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        start = checkpoint["iteration"]
        if checkpoint["world_size"] == world:
            _set_rng_state(checkpoint["rng"][rank], device)
        elif rank == 0:
            print(f"resuming with {world} processes instead of {checkpoint['world_size']}: data order and "
                  "random state differ from an uninterrupted run", file=sys.stderr)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=bool(unused)
        )

    stream = TrainStream(len(train_set), rank, world, seed=t["seed"], start=start * batch * t["grad_accum"])
    train_loader = DataLoader(train_set, batch_size=batch, sampler=stream, num_workers=d["workers"],
                              pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(t["seed"]),
                              persistent_workers=d["workers"] > 0)
    val_loader = DataLoader(
        val_set, batch_size=1, num_workers=d["workers"], generator=torch.Generator().manual_seed(t["seed"])
    )
    names = class_names(d["root"], d["num_classes"])

    resume_at = start if checkpoint is not None else None
    logs = {}
    writer = None
    if rank == 0:
        logs["train"] = _Csv(out / "log_train.csv", ["iteration", "loss", "lr", "sec_per_iter", "data_sec"], resume_at)
        logs["eval"] = _Csv(out / "log_eval.csv", ["iteration", "mIoU", "aAcc"], resume_at)
        logs["classes"] = _Csv(out / "per_class_iou.csv", ["iteration", "class_id", "class_name", "IoU"], resume_at)
        if t["tensorboard"]:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ConfigError("train.tensorboard is on but tensorboard is not installed: pip install tensorboard, "
                                  "or set train.tensorboard=false (CSV logs are always written)") from err
            writer = SummaryWriter(str(out / "tensorboard"), purge_step=start if checkpoint is not None else None)
        print(f"{cfg['model']['arch']} + {cfg['model']['encoder']}: {sum(p.numel() for p in model.parameters()):,} "
              f"parameters, {len(train_set)} training / {len(val_set) * world} validation images, "
              f"batch {t['batch_size']} "
              f"({world} process(es) x {t['grad_accum']} accumulation x {batch}), device {device}, "
              f"iterations {start}->{t['iterations']}", flush=True)

    def run_eval(iteration: int) -> Dict[str, Any]:
        result = evaluate(model, val_loader, d["num_classes"], device, amp_dtype, progress=t["progress"] and rank == 0)
        if rank == 0:
            logs["eval"].write(iteration=iteration, mIoU=f"{result['mIoU']:.6f}", aAcc=f"{result['aAcc']:.6f}")
            for i, (name, iou) in enumerate(zip(names, result["IoU"])):
                value = "" if math.isnan(iou) else f"{iou:.6f}"
                logs["classes"].write(iteration=iteration, class_id=i, class_name=name, IoU=value)
            if writer is not None:
                writer.add_scalar("val/mIoU", result["mIoU"], iteration)
                writer.add_scalar("val/aAcc", result["aAcc"], iteration)
            tqdm.write(f"[iter {iteration}] mIoU {100 * result['mIoU']:.2f}  aAcc {100 * result['aAcc']:.2f}  "
                       f"({result['images']} images)")
        return result

    def save(iteration: int) -> None:
        states = [None] * world
        if world > 1:
            dist.all_gather_object(states, _rng_state(device))
        else:
            states = [_rng_state(device)]
        if rank == 0:
            _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "iteration": iteration,
                          "rng": [{k: v.cpu() for k, v in s.items()} for s in states], "world_size": world,
                          "config": cfg}, ckpt_path)

    result: Dict[str, Any] = {}
    if t["eval_at_start"] and start == 0:
        result["initial"] = run_eval(0)
    bar = tqdm(total=t["iterations"], initial=start, desc="train", disable=not (t["progress"] and rank == 0),
               dynamic_ncols=True, mininterval=1.0)
    data_iter = iter(train_loader)
    loss_sum, step_time, data_time, steps = 0.0, 0.0, 0.0, 0
    total_time, total_steps = 0.0, 0
    iteration = start
    with _Stop() as stop:
        while iteration < t["iterations"]:
            model.train()
            tick = time.perf_counter()
            loss_value = 0.0
            for micro in range(t["grad_accum"]):
                fetch = time.perf_counter()
                images, labels = next(data_iter)
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                data_time += time.perf_counter() - fetch
                sync = net.no_sync() if world > 1 and micro < t["grad_accum"] - 1 else nullcontext()
                with sync:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        logits = net(images)
                    valid = (labels != IGNORE_INDEX).sum().clamp_min(1)
                    loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum") / valid
                    scaler.scale(loss / t["grad_accum"]).backward()
                loss_value += loss.item() / t["grad_accum"]
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"training loss is {loss_value} at iteration {iteration + 1}; the last checkpoint is {ckpt_path}"
                )
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            iteration += 1
            elapsed = time.perf_counter() - tick
            loss_sum, step_time, steps = loss_sum + loss_value, step_time + elapsed, steps + 1
            total_time, total_steps = total_time + elapsed, total_steps + 1
            bar.update(1)
            if iteration % t["log_interval"] == 0 or iteration == t["iterations"]:
                if rank == 0:
                    logs["train"].write(iteration=iteration, loss=f"{loss_sum / steps:.6f}", lr=f"{lr:.8g}",
                                        sec_per_iter=f"{step_time / steps:.4f}", data_sec=f"{data_time / steps:.4f}")
                    if writer is not None:
                        writer.add_scalar("train/loss", loss_sum / steps, iteration)
                        writer.add_scalar("train/lr", lr, iteration)
                    bar.set_postfix(loss=f"{loss_sum / steps:.4f}", lr=f"{lr:.3g}", s_it=f"{step_time / steps:.3f}")
                loss_sum, step_time, data_time, steps = 0.0, 0.0, 0.0, 0
            if iteration % t["eval_interval"] == 0 or iteration == t["iterations"]:
                result["final"] = run_eval(iteration)
            if iteration % t["checkpoint_interval"] == 0 or iteration == t["iterations"]:
                save(iteration)
            if on_iteration is not None:
                on_iteration(iteration)
            stopping = torch.tensor([0 if stop.signal is None else 1], device=device)
            if world > 1:
                dist.all_reduce(stopping, op=dist.ReduceOp.MAX)
            if stopping.item() and iteration < t["iterations"]:
                save(iteration)
                bar.close()
                raise Interrupted(f"interrupted at iteration {iteration}; checkpoint written to {ckpt_path}; "
                                  "continue with --resume")
    bar.close()
    if "final" not in result:
        result["final"] = run_eval(iteration)
    if rank == 0:
        final = result["final"]
        model.save_pretrained(str(out / "model"), dataset=f"ADE20K-layout data at {d['root']}",
                              metrics={"mIoU": final.get("mIoU"), "aAcc": final.get("aAcc")})
        if writer is not None:
            writer.close()
    result["sec_per_iter"] = total_time / max(total_steps, 1)
    result["iterations"] = iteration
    result["unused_parameters"] = unused
    return result


# -------------------------------------------------------------------------------------------- cli


def _parse_overrides(items: List[str]) -> Dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: write section.key=value, e.g. train.iterations=1000")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seg_plugin.train_ade20k", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="yaml/json config (default: the reference recipe, configs/segmentation/)")
    parser.add_argument("--data-root", help="ADEChallengeData2016 folder (data.root)")
    parser.add_argument("--out-dir", required=True, help="folder for checkpoints, logs and the final model")
    parser.add_argument("--arch", help="smp architecture, e.g. fpn, unet, deeplabv3plus, upernet (model.arch)")
    parser.add_argument("--encoder", help="encoder, e.g. fec_s, fec_b, fec_l, tu-fec_small (model.encoder)")
    parser.add_argument("--encoder-weights", help="imagenet or none (model.encoder_weights)")
    parser.add_argument("--iterations", type=int, help="train.iterations")
    parser.add_argument("--batch-size", type=int, help="global batch size (train.batch_size)")
    parser.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    parser.add_argument(
        "--resume", nargs="?", const="auto", help="continue from a checkpoint (default: <out-dir>/checkpoint_last.pth)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config setting"
    )
    args = parser.parse_args(argv)
    try:
        overrides = _parse_overrides(args.set)
        for key, value in (("data.root", args.data_root), ("model.arch", args.arch), ("model.encoder", args.encoder),
                           ("model.encoder_weights", args.encoder_weights), ("train.iterations", args.iterations),
                           ("train.batch_size", args.batch_size), ("train.amp", True if args.amp else None)):
            if value is not None:
                overrides[key] = value
        cfg = load_config(args.config, overrides)
        resume = Path(args.out_dir) / CHECKPOINT if args.resume == "auto" else args.resume
        result = train(cfg, args.out_dir, resume)
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        return 130
    except WeightsNotInstalledError as err:
        print(f"error: {err}\n(with this command: --encoder-weights none)", file=sys.stderr)
        return 2
    except (ConfigError, SegDataError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    final = result.get("final")
    if final is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"final mIoU {100 * final['mIoU']:.2f}, aAcc {100 * final['aAcc']:.2f}, "
              f"{result['sec_per_iter']:.3f} s/iteration; model saved to {Path(args.out_dir) / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
