"""Train FEC on an ImageFolder dataset (ImageNet layout) with timm's training parts.

    python -m classification.train -c configs/classification/fec_small_in1k.yaml --data-dir /data/imagenet
    torchrun --nproc_per_node 8 -m classification.train -c configs/classification/fec_small_in1k.yaml ...
    python -m classification.train --resume output/fec_small/last.pth.tar     # continue where it stopped

Values come from the argument defaults, then (with ``--resume``) the settings recorded in the checkpoint,
then the yaml config (``-c``), then the command line. Data:
``<data-dir>/<train-split>/<class>/<image>`` and the same for ``<val-split>``. ``--batch-size`` is the
global batch, split across processes (and ``--grad-accum-steps``). Each epoch writes
``<output>/last.pth.tar`` atomically, keeps ``checkpoint-<epoch>.pth.tar`` (best ``--checkpoint-hist``
by validation top-1) and ``model_best.pth.tar``, and appends a row to ``summary.csv`` (and TensorBoard
with ``--log-tb``).
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch
import torch.nn as nn
import yaml
from timm.data import Mixup, create_transform, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, init_distributed_device, random_seed, trim_summary, update_summary
from torch.utils.data import DataLoader, DistributedSampler

import fec_backbone  # noqa: F401  (registers the FEC models with timm)
from fec_backbone import cluster_ops
from classification.data import (DatasetError, ImageReadError, ShardSampler, build_dataset, class_counts,
                                 posterize_to_any_bits)
from classification.engine import (
    AtomicCheckpointSaver,
    amp_autocast,
    evaluate,
    load_model_state,
    seed_epoch,
    train_one_epoch,
)
from fec_backbone.checkpoint import CheckpointError, read_checkpoint, read_fec_weights
from fec_backbone.model_zoo import resolve_config
from fec_backbone.training import ResumeConfigError, check_resume_config

_logger = logging.getLogger("train")

config_parser = argparse.ArgumentParser(description="Training config", add_help=False)
config_parser.add_argument("-c", "--config", default="", metavar="FILE", help="yaml file of argument defaults")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[config_parser],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    flag = dict(action=argparse.BooleanOptionalAction, default=False)
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, metavar="DIR", help="dataset root holding the split folders")
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default="val")
    g.add_argument("-j", "--workers", type=int, default=4, help="data-loading processes per training process")
    g.add_argument("--img-size", type=int, default=None, help="input side (None: the model's, 224)")
    g.add_argument("--crop-pct", type=float, default=None, help="validation centre crop (None: the model's, 0.9)")
    g.add_argument("--interpolation", default="", help="validation resize interpolation ('': the model's, bicubic)")
    g.add_argument("--mean", type=float, nargs=3, default=None)
    g.add_argument("--std", type=float, nargs=3, default=None)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="fec_small", help="timm model name")
    g.add_argument("--num-classes", type=int, default=None, help="classifier outputs (None: training class folders)")
    g.add_argument("--drop", type=float, default=0.0, help="dropout before the classifier")
    g.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate")
    g.add_argument("--initial-checkpoint", default="", metavar="PATH",
                   help="start from these weights (an official FEC checkpoint or one of ours; classifier dropped "
                        "if its size differs)")
    g.add_argument("--grad-checkpointing", **flag, help="trade compute for activation memory")
    g = p.add_argument_group("optimisation")
    g.add_argument("-b", "--batch-size", type=int, default=1024, help="global batch size (all processes)")
    g.add_argument("--grad-accum-steps", type=int, default=1, help="batches accumulated per optimizer step")
    g.add_argument("-vb", "--validation-batch-size", type=int, default=None, help="per process (None: as training)")
    g.add_argument("--opt", default="adamw", help="timm optimizer name")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--opt-eps", type=float, default=None)
    g.add_argument("--opt-betas", type=float, nargs="+", default=None)
    g.add_argument("--clip-grad", type=float, default=None, help="gradient clipping threshold (None: off)")
    g.add_argument("--clip-mode", default="norm", choices=["norm", "value", "agc"])
    g.add_argument("--sched", default="cosine", help="timm scheduler name")
    g.add_argument("--epochs", type=int, default=300)
    g.add_argument("--warmup-epochs", type=int, default=5)
    g.add_argument("--warmup-lr", type=float, default=1e-6)
    g.add_argument("--min-lr", type=float, default=1e-6)
    g.add_argument("--cooldown-epochs", type=int, default=0)
    g.add_argument("--sched-on-updates", **flag, help="update the lr every step instead of every epoch")
    g = p.add_argument_group("augmentation and regularisation")
    g.add_argument("--no-aug", action="store_true", help="no training augmentation (resize and centre crop)")
    g.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0], help="random-resized-crop area range")
    g.add_argument("--ratio", type=float, nargs=2, default=[3.0 / 4.0, 4.0 / 3.0])
    g.add_argument("--hflip", type=float, default=0.5)
    g.add_argument("--vflip", type=float, default=0.0)
    g.add_argument("--color-jitter", type=float, default=0.4)
    g.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="timm auto-augment policy ('' for none)")
    g.add_argument("--train-interpolation", default="random")
    g.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    g.add_argument("--remode", default="pixel")
    g.add_argument("--recount", type=int, default=1)
    g.add_argument("--mixup", type=float, default=0.8, help="mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha (0: off)")
    g.add_argument("--cutmix-minmax", type=float, nargs=2, default=None)
    g.add_argument("--mixup-prob", type=float, default=1.0)
    g.add_argument("--mixup-switch-prob", type=float, default=0.5)
    g.add_argument("--mixup-mode", default="batch", choices=["batch", "pair", "elem"])
    g.add_argument("--mixup-off-epoch", type=int, default=0, help="turn mixup/cutmix off from this epoch (0: never)")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--model-ema", **flag, help="keep (and evaluate) an EMA of the weights")
    g.add_argument("--model-ema-decay", type=float, default=0.9998)
    g.add_argument("--model-ema-warmup", **flag)
    g = p.add_argument_group("run")
    g.add_argument("--amp", **flag, help="automatic mixed precision")
    g.add_argument("--amp-dtype", default="bfloat16", choices=["bfloat16", "float16"])
    g.add_argument("--device", default=None, help="cuda or cpu (None: cuda if available)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads per process (None: torch's default)")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--output", default="", metavar="DIR",
                   help="output folder ('': output/<model>, or the folder of the resumed run)")
    g.add_argument("--resume", default="", metavar="PATH", help="continue the run of this checkpoint exactly")
    g.add_argument("--checkpoint-hist", type=int, default=3, help="epoch checkpoints kept (best by top-1)")
    g.add_argument("--log-interval", type=int, default=50, help="steps between progress lines")
    g.add_argument("--log-tb", **flag, help="also write TensorBoard scalars to <output>/tb")
    g = p.add_argument_group("speed (none changes what is learned)")
    g.add_argument("--torchcompile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the training model with this backend (timm's flag; alone: inductor)")
    g.add_argument("--torchcompile-mode", default=None, help="torch.compile mode (default, reduce-overhead, ...)")
    g.add_argument("--cluster-backend", default="auto", choices=["auto", *cluster_ops.BACKENDS],
                   help="FEC clustering backend (auto: torch on the CPU, cluster_ops.CUDA_DEFAULT_BACKEND on CUDA)")
    return p


#: settings of a run that a resumed run does not take over from its checkpoint
_NOT_RESUMED = {"resume", "output", "config", "rank", "local_rank", "world_size", "distributed", "device", "threads"}
#: settings a resumed run may change (they do not change the training trajectory); any other change is refused
RUN_ONLY = sorted(_NOT_RESUMED | {"data_dir", "workers", "log_interval", "log_tb", "checkpoint_hist",
                                  "validation_batch_size", "torchcompile", "torchcompile_mode", "cluster_backend"})


def parse_args(argv: Optional[List[str]] = None) -> Tuple[argparse.Namespace, Optional[Dict[str, Any]]]:
    """Settings from the argument defaults, then (with ``--resume``) those recorded in the checkpoint,
    then the yaml config, then the command line. Returns them with the loaded resume checkpoint."""
    parser = build_parser()
    known, remaining = config_parser.parse_known_args(argv)
    resume_parser = argparse.ArgumentParser(add_help=False)
    resume_parser.add_argument("--resume", default="")
    resume = resume_parser.parse_known_args(remaining)[0].resume
    valid = {a.dest for a in parser._actions}
    resume_state = None
    if resume:
        resume_state = read_checkpoint(resume)
        recorded = resume_state.get("args") or {}
        parser.set_defaults(**{k: v for k, v in recorded.items() if k in valid and k not in _NOT_RESUMED})
    if known.config:
        known.config = resolve_config(known.config)  # configs/... names work outside a checkout too
        with open(known.config, encoding="utf-8") as f:
            cfg = yaml.safe_load(f) or {}
        unknown = sorted(set(cfg) - valid)
        if unknown:
            parser.error(f"unknown keys in {known.config}: {', '.join(unknown)}")
        parser.set_defaults(**cfg)
    args = parser.parse_args(remaining)
    args.config = known.config
    return args, resume_state


def _check_args(args: argparse.Namespace) -> None:
    if not args.data_dir:
        raise SystemExit("error: no dataset: pass --data-dir (or set data_dir in the config)")
    per_step = args.world_size * args.grad_accum_steps
    if args.batch_size % per_step:
        raise SystemExit(
            f"error: --batch-size {args.batch_size} (global) must be divisible by processes x --grad-accum-steps "
            f"= {args.world_size} x {args.grad_accum_steps}"
        )
    mixing = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    if mixing and (args.batch_size // per_step) % 2:
        raise SystemExit(
            f"error: mixup/cutmix need an even batch per process and step, got {args.batch_size // per_step}"
        )


def _serialisable(args: argparse.Namespace) -> Dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Train; returns the metrics of the last epoch (and ``output``, the run folder). The clustering backend
    and thread count it sets are the caller's again when it returns."""
    args, resume_state = parse_args(argv)
    threads, backend = torch.get_num_threads(), cluster_ops.get_backend()
    cluster_ops.set_backend(args.cluster_backend)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _train(args, resume_state)
    finally:
        torch.set_num_threads(threads)
        cluster_ops.set_backend(backend)


def _train(args: argparse.Namespace, resume_state: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = init_distributed_device(args)
    primary = args.rank == 0
    _logger.setLevel(logging.INFO if primary else logging.WARNING)
    log = _logger.info
    _check_args(args)
    if resume_state is not None and resume_state.get("arch") != args.model:
        raise CheckpointError(
            f"--resume {args.resume!r} is a checkpoint of {resume_state.get('arch')!r}, but --model is {args.model!r}"
        )
    if resume_state is not None:  # the resume policy shared by the three pipelines
        for change in check_resume_config(resume_state.get("args") or {}, _serialisable(args), RUN_ONLY):
            log(f"resumed run: run-only setting changed, {change}")
    args.output = args.output or (os.path.dirname(os.path.abspath(args.resume)) if args.resume
                                  else os.path.join("output", args.model))
    if not args.resume and os.path.exists(os.path.join(args.output, "last.pth.tar")):
        raise SystemExit(
            f"error: {args.output} already holds a run (last.pth.tar); continue it with --resume "
            f"{os.path.join(args.output, 'last.pth.tar')} or choose another --output"
        )
    if primary:
        os.makedirs(args.output, exist_ok=True)

    # data: the class folders of the training split define the classes
    train_set = build_dataset(args.data_dir, args.train_split)
    class_names = train_set.class_names
    if resume_state is not None and resume_state.get("class_names") not in (None, class_names):
        raise SystemExit(f"error: the dataset's classes differ from those of the resumed run: {class_names} "
                         f"vs {resume_state['class_names']}")
    val_set = build_dataset(args.data_dir, args.val_split, class_names)
    num_classes = args.num_classes or len(class_names)
    if num_classes != len(class_names):
        raise SystemExit(f"error: --num-classes {num_classes} but {args.train_split} has {len(class_names)} classes")
    log(f"data: {len(train_set)} training images in {len(class_names)} classes "
        f"(per class {class_counts(train_set).min().item()}..{class_counts(train_set).max().item()}), "
        f"{len(val_set)} validation images")

    # model
    random_seed(args.seed, 0)
    model_kwargs = dict(num_classes=num_classes, drop_rate=args.drop, drop_path_rate=args.drop_path)
    if args.initial_checkpoint:
        weights = read_fec_weights(args.initial_checkpoint)  # EMA weights of a training file, when it has them
        head = weights.get("head.weight")
        ckpt_classes = 0 if head is None else head.shape[0]
        overlay = dict(state_dict=weights, num_classes=ckpt_classes)  # timm keeps the head if it fits
        model = timm.create_model(args.model, pretrained=True, pretrained_cfg_overlay=overlay, **model_kwargs)
        log(f"initial weights from {args.initial_checkpoint}" + (
            "" if ckpt_classes == num_classes else
            f"; its classifier ({ckpt_classes} classes) is replaced by a new one for {num_classes} classes"))
    else:
        model = timm.create_model(args.model, **model_kwargs)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    data_config = resolve_data_config(
        dict(img_size=args.img_size, crop_pct=args.crop_pct, interpolation=args.interpolation or None,
             mean=args.mean, std=args.std), model=model)
    if data_config["input_size"][1] % 32 or data_config["input_size"][2] % 32:
        raise SystemExit(f"error: FEC needs an input size divisible by 32, got {data_config['input_size'][1:]}")
    log(f"model: {args.model}, {sum(p.numel() for p in model.parameters()):,} parameters; data config {data_config}")

    train_set.transform = posterize_to_any_bits(create_transform(
        data_config["input_size"], is_training=True, no_aug=args.no_aug, scale=tuple(args.scale),
        ratio=tuple(args.ratio), hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        auto_augment=args.aa or None, interpolation=args.train_interpolation, mean=data_config["mean"],
        std=data_config["std"], re_prob=args.reprob, re_mode=args.remode, re_count=args.recount))
    val_set.transform = create_transform(
        data_config["input_size"], is_training=False, interpolation=data_config["interpolation"],
        mean=data_config["mean"], std=data_config["std"], crop_pct=data_config["crop_pct"],
        crop_mode=data_config.get("crop_mode"))

    micro_batch = args.batch_size // (args.world_size * args.grad_accum_steps)
    loader_generator = torch.Generator()
    train_sampler = DistributedSampler(train_set, num_replicas=args.world_size, rank=args.rank, shuffle=True,
                                       seed=args.seed)
    common = dict(num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=False)
    train_loader = DataLoader(train_set, batch_size=micro_batch, sampler=train_sampler, drop_last=True,
                              generator=loader_generator, **common)
    val_loader = DataLoader(val_set, batch_size=args.validation_batch_size or micro_batch,
                            sampler=ShardSampler(len(val_set), args.rank, args.world_size), **common)
    if len(train_loader) < args.grad_accum_steps:
        raise SystemExit(
            f"error: {len(train_set)} training images give {len(train_loader)} full batches of {micro_batch} per "
            f"process, fewer than one step; lower --batch-size"
        )

    # optimisation: timm's factories; no weight decay on model.no_weight_decay(), norms and biases
    opt_kwargs = {k: v for k, v in dict(eps=args.opt_eps, betas=args.opt_betas).items() if v is not None}
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, **opt_kwargs)
    updates_per_epoch = len(train_loader) // args.grad_accum_steps
    # the epochs to train are the scheduler's: --epochs of the schedule plus --cooldown-epochs at min_lr
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
        warmup_lr=args.warmup_lr, min_lr=args.min_lr, cooldown_epochs=args.cooldown_epochs,
        step_on_epochs=not args.sched_on_updates, updates_per_epoch=updates_per_epoch)
    autocast = amp_autocast(device, args.amp, args.amp_dtype)
    loss_scaler = NativeScaler(device=device.type) if args.amp and args.amp_dtype == "float16" else None
    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)

    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=num_classes)
        train_criterion: nn.Module = SoftTargetCrossEntropy()
    elif args.smoothing:
        train_criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        train_criterion = nn.CrossEntropyLoss()

    start_epoch, num_updates = 0, 0
    if resume_state is not None:
        what = f"{args.model} with {num_classes} classes"
        load_model_state(model, resume_state["state_dict"], what)
        optimizer.load_state_dict(resume_state["optimizer"])
        if model_ema is not None:
            if "state_dict_ema" not in resume_state:
                raise SystemExit(f"error: --model-ema is on but {args.resume!r} has no EMA weights")
            load_model_state(model_ema.module, resume_state["state_dict_ema"], what + " (EMA)")
        if loss_scaler is not None and loss_scaler.state_dict_key in resume_state:
            loss_scaler.load_state_dict(resume_state[loss_scaler.state_dict_key])
        lr_scheduler.load_state_dict(resume_state["scheduler"])
        start_epoch, num_updates = resume_state["epoch"] + 1, resume_state["num_updates"]
        if args.sched_on_updates:
            lr_scheduler.step_update(num_updates)
        else:
            lr_scheduler.step(start_epoch)
        log(f"resumed {args.resume} at epoch {start_epoch} (update {num_updates})")

    train_model: nn.Module = model
    if args.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)
        log(f"distributed: {args.world_size} processes, backend {torch.distributed.get_backend()}")
    if args.torchcompile:  # after DDP, as timm's train.py; checkpoints save `model`, whose keys stay plain
        train_model = torch.compile(train_model, backend=args.torchcompile, mode=args.torchcompile_mode)
        log(f"torch.compile: backend {args.torchcompile}, mode {args.torchcompile_mode or 'default'} (the first "
            "steps compile)")

    def checkpoint_state(epoch: int) -> Dict[str, Any]:
        state = dict(arch=args.model, state_dict=model.state_dict(), optimizer=optimizer.state_dict(),
                     scheduler=lr_scheduler.state_dict(), num_updates=num_updates, args=_serialisable(args),
                     class_names=class_names, data_config=dict(data_config), model_kwargs=model_kwargs)
        if model_ema is not None:
            state["state_dict_ema"] = model_ema.module.state_dict()
        if loss_scaler is not None:
            state[loss_scaler.state_dict_key] = loss_scaler.state_dict()
        return state

    saver = summary_path = tb = None
    if primary:
        saver = AtomicCheckpointSaver(checkpoint_state, args.output, max_history=args.checkpoint_hist)
        if resume_state is not None and resume_state.get("saver"):
            saver.load_state_dict(resume_state["saver"])
        summary_path = os.path.join(args.output, "summary.csv")
        trim_summary(summary_path, start_epoch)
        with open(os.path.join(args.output, "args.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(_serialisable(args), f, sort_keys=False)
        if args.log_tb:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(os.path.join(args.output, "tb"), purge_step=start_epoch)
    del resume_state

    log(f"training epochs {start_epoch}..{num_epochs - 1} ({args.epochs} scheduled + {args.cooldown_epochs} cooldown): "
        f"global batch {args.batch_size} ({args.world_size} "
        f"process(es) x {args.grad_accum_steps} accumulation x {micro_batch}), {updates_per_epoch} steps per epoch, "
        f"output {args.output}")
    result: Dict[str, Any] = {"output": args.output}
    for epoch in range(start_epoch, num_epochs):
        seed_epoch(args.seed, epoch, args.rank, loader_generator)
        train_sampler.set_epoch(epoch)
        if mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            mixup_fn.mixup_enabled = False
        epoch_start = time.perf_counter()
        train_metrics = train_one_epoch(
            epoch, train_model, train_loader, optimizer, train_criterion, device=device, autocast=autocast,
            num_updates=num_updates, accum_steps=args.grad_accum_steps, loss_scaler=loss_scaler,
            lr_scheduler=lr_scheduler, model_ema=model_ema, mixup_fn=mixup_fn, clip_grad=args.clip_grad,
            clip_mode=args.clip_mode, world_size=args.world_size, log=log, log_interval=args.log_interval)
        num_updates = train_metrics.pop("num_updates")
        eval_metrics = evaluate(model, val_loader, device=device, autocast=autocast, log=log,
                                log_interval=args.log_interval)
        if model_ema is not None:
            ema_metrics = evaluate(model_ema.module, val_loader, device=device, autocast=autocast)
            eval_metrics.update({f"ema_{k}": v for k, v in ema_metrics.items() if k != "count"})
        lr_scheduler.step(epoch + 1, eval_metrics["top1"])
        log(f"epoch {epoch}: train loss {train_metrics['loss']:.4f} ({train_metrics['img_per_sec']:.1f} img/s), "
            f"val top-1 {eval_metrics['top1']:.2f}% top-5 {eval_metrics['top5']:.2f}% loss {eval_metrics['loss']:.4f} "
            f"({eval_metrics['count']} images, {eval_metrics['img_per_sec']:.1f} img/s)"
            + (f", EMA top-1 {eval_metrics['ema_top1']:.2f}%" if model_ema is not None else "")
            + f", {time.perf_counter() - epoch_start:.1f}s")
        if primary:  # summary first: a crash before the checkpoint only leaves rows that the resume trims
            update_summary(epoch, {k: v for k, v in train_metrics.items() if k != "lr"}, eval_metrics, summary_path,
                           lr=train_metrics["lr"])
            if tb is not None:
                for key, value in {**{f"train/{k}": v for k, v in train_metrics.items()},
                                   **{f"val/{k}": v for k, v in eval_metrics.items()}}.items():
                    tb.add_scalar(key, value, epoch)
                tb.flush()
            saver.save_checkpoint(epoch, metric=eval_metrics["top1"])
            log(f"saved {os.path.join(args.output, 'last.pth.tar')} (epoch {epoch})")
        result.update(epoch=epoch, train=train_metrics, eval=eval_metrics)
    if primary and saver is not None and saver.best_metric is not None:
        log(f"best top-1 {saver.best_metric:.2f}% at epoch {saver.best_epoch}; checkpoints in {args.output}")
    if start_epoch >= num_epochs:
        log(f"nothing to do: the run already finished its {num_epochs} epochs")
    if tb is not None:
        tb.close()
    if args.distributed:
        _check_replicas(model)
        log(f"DDP: the weights are identical in all {args.world_size} processes")
        torch.distributed.destroy_process_group()
    return result


def _check_replicas(model: nn.Module) -> None:
    """Raise if the processes of a DDP run ended with different weights."""
    flat = torch.cat([t.detach().float().flatten() for t in model.state_dict().values()])
    high, low = flat.clone(), flat.clone()
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    if not torch.equal(high, low):
        raise RuntimeError("DDP replicas diverged: the processes ended with different weights")


def cli() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("timm").setLevel(logging.WARNING)
    try:
        main()
    except (CheckpointError, DatasetError, ImageReadError, FileNotFoundError, ResumeConfigError) as err:
        raise SystemExit(f"error: {err}")


if __name__ == "__main__":
    cli()
