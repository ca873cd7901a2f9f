"""Pictures of FEC's cluster assignments: which pixels went to which cluster, stage by stage.

One forward pass is recorded with :func:`~fec_backbone.interpret.record_clusters`. The pooling
assignments are chained from the stride-4 points of the stem through every clustering pool (as the
reference's ``cluster_visualize.py`` does), so each stage's output point owns a region of pixels; the
final centres (the last pool's, described by its ``conv_f`` features) are grouped into ``K`` groups by
k-means. The blocks' clusters (one head of each stage's last block) are chained to pixels the same way.

    fec visualize photo.jpg --model fec_small --checkpoint fec_small.pth --clusters 3 --out clusters.png

Checkpoints: an official FEC checkpoint, one of ours (timm/classification), a Detectron2 ``model_final.pth``,
the segmentation trainer's Lightning ``last.ckpt`` or a saved smp model folder (``config.json`` and
``model.safetensors``): the FEC weights are found under whatever key prefix precedes ``stem.proj.weight`` (or
the official ``patch_embed.proj.weight``) and loaded into a plain timm FEC with strict key checks. The variant
comes from the tensors, the clustering layout from the settings the file records, else from the prefix.
"""
from __future__ import annotations

import colorsys
import json
import os
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .checkpoint import CheckpointError, detect_variant, extract_fec_weights, load_fec_weights, read_checkpoint
from .fec import FEC, ClusterPool, to_nchw
from .interpret import chain_to_input, clustering_layers, record_clusters

__all__ = [
    "ClusterMaps",
    "load_fec_backbone",
    "kmeans",
    "cluster_maps",
    "render_cluster_maps",
    "visualize_image",
]

#: Files of a saved smp model folder (``save_pretrained``): the weights and the constructor arguments.
SMP_WEIGHTS, SMP_CONFIG = "model.safetensors", "config.json"
#: Recorded FEC settings that shape the clustering (no parameter depends on them).
_LAYOUT_KEYS = ("preset", "proposals", "folds")


@dataclass
class ClusterMaps:
    """Cluster maps of one image on the stride-4 grid of the stem (``[H/4, W/4]`` long tensors).

    ``regions[k]`` gives each point's output point of stage ``k`` (stage 0: the point itself), so
    ``regions[k + 1]`` is a function of ``regions[k]``. ``blocks`` holds ``(layer name, stage, map of
    cluster ids)`` for one head of each stage's last block. ``groups`` gives each point's k-means group
    of final centres.
    """

    regions: List[torch.Tensor]
    blocks: List[Tuple[str, int, torch.Tensor]]
    groups: torch.Tensor
    num_groups: int
    head: int = 0
    patch: int = 4
    info: Dict[str, str] = field(default_factory=dict)


def _default_preset(prefix: str) -> str:
    """``segmentation`` for weights under an ``encoder.`` (smp models, also inside the segmentation trainer's
    ``model.``), ``detection`` under ``backbone.`` (Detectron2), else ``classification``."""
    parts = prefix.split(".")
    if "encoder" in parts:
        return "segmentation"
    return "detection" if parts[0] == "backbone" else "classification"


def _layout(settings: Any) -> Dict[str, Any]:
    """The clustering settings among recorded FEC settings (JSON lists as tuples)."""

    def plain(value: Any) -> Any:
        return tuple(plain(v) for v in value) if isinstance(value, list) else value

    if not isinstance(settings, Mapping):
        return {}
    return {k: plain(settings[k]) for k in _LAYOUT_KEYS if settings.get(k) is not None}


def read_visualize_source(checkpoint: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The contents of ``checkpoint`` and the clustering layout it records (``preset``/``proposals``/``folds``).

    A folder is a saved smp model (``model.safetensors``; its ``config.json`` holds the timm encoder's
    settings); a Lightning checkpoint of the segmentation trainer records them under
    ``config.model.encoder_params``."""
    if os.path.isdir(checkpoint):
        weights, config = os.path.join(checkpoint, SMP_WEIGHTS), os.path.join(checkpoint, SMP_CONFIG)
        if not os.path.isfile(weights):
            raise CheckpointError(f"{checkpoint!r} is a folder without {SMP_WEIGHTS}; a saved smp model folder "
                                  f"(save_pretrained) holds {SMP_CONFIG} and {SMP_WEIGHTS}; else pass a file")
        settings = {}
        if os.path.isfile(config):
            with open(config, encoding="utf-8") as f:
                settings = json.load(f)
        return read_checkpoint(weights), _layout(settings)
    obj = read_checkpoint(checkpoint)
    config = obj.get("config")
    model_cfg = config.get("model") if isinstance(config, Mapping) else None
    params = model_cfg.get("encoder_params") if isinstance(model_cfg, Mapping) else None
    return obj, _layout(params)


def load_fec_backbone(
    model_name: Optional[str] = None,
    checkpoint: Optional[str] = None,
    preset: Optional[str] = None,
    prefix: Optional[str] = None,
    use_ema: bool = True,
) -> Tuple[FEC, Dict[str, str]]:
    """A timm FEC (no classifier) with the FEC weights of ``checkpoint`` (a file or a saved smp model folder;
    random weights without one). ``model_name`` defaults to the variant the tensors have (else fec_small).

    The checkpoint decides the layers: stages or the final norm that a Detectron2/smp backbone pruned
    are pruned here too; every remaining key of the FEC (stem, stages, norm) must match in name and
    shape (else :class:`CheckpointError`); what the clusters do not use (output norms, other modules under
    the prefix) is listed in the returned info. ``use_ema`` prefers the EMA weights of a training
    checkpoint (as the reference's ``cluster_visualize.py`` loads them). ``preset`` defaults to the layout the
    checkpoint records (:func:`read_visualize_source`), else ``detection`` for weights under ``backbone.``
    (Detectron2), ``segmentation`` under ``encoder.`` (smp, and the segmentation trainer's ``model.encoder.``),
    else ``classification``.
    """
    if checkpoint is None:
        model_name, preset = model_name or "fec_small", preset or "classification"
        model = timm.create_model(model_name, num_classes=0, preset=preset)
        return model.eval(), {"model": model_name, "checkpoint": "none (random weights)", "preset": preset}
    obj, layout = read_visualize_source(checkpoint)
    try:
        state, prefix, ignored = extract_fec_weights(obj, use_ema=use_ema, prefix=prefix)
    except CheckpointError as err:
        raise CheckpointError(f"{checkpoint!r}: {err}") from None
    model_name = model_name or detect_variant(state) or "fec_small"
    if preset is not None:
        layout = {"preset": preset}
    layout.setdefault("preset", _default_preset(prefix))
    info = {"model": model_name, "checkpoint": checkpoint}
    model = timm.create_model(model_name, num_classes=0, **layout)
    preset = layout["preset"]
    stages = sorted({int(m.group(1)) for k in state for m in [re.match(r"stages\.(\d+)\.", k)] if m})
    if not stages:
        raise CheckpointError(f"{checkpoint!r}: the FEC under {prefix!r} has no stages (keys stages.<i>...)")
    has_norm = any(k.startswith("norm.") for k in state)
    if stages[-1] < len(model.stages) - 1 or not has_norm:
        model.prune_intermediate_layers([stages[-1]], prune_norm=not has_norm, prune_head=True)
    ignored += load_fec_weights(model, state).ignored  # CheckpointError on missing/unexpected/mis-shaped keys
    info.update(preset=preset, prefix=prefix or "(none)", stages=str(len(model.stages)))
    if ignored:
        modules = sorted({k.split(".", 1)[0] for k in ignored})
        info["not used here, ignored"] = f"{', '.join(modules)} ({len(ignored)} tensors)"
    return model.eval(), info


def kmeans(x: torch.Tensor, k: int, iters: int = 100, restarts: int = 8, seed: int = 0) -> torch.Tensor:
    """Euclidean k-means of ``x`` ``[N, D]`` into ``min(k, N)`` groups (k-means++ starts, best of
    ``restarts`` by inertia, deterministic for a ``seed``); returns labels ``[N]`` numbered by first occurrence."""
    x = x.double()
    n = x.shape[0]
    k = min(k, n)
    if k <= 0:
        raise ValueError(f"k-means needs k >= 1 and points, got k={k}, {n} points")
    gen = torch.Generator().manual_seed(seed)
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        centres = x[torch.randint(n, (1,), generator=gen)]
        for _ in range(1, k):
            d2 = torch.cdist(x, centres).min(dim=1).values.pow(2)
            pick = torch.multinomial(d2, 1, generator=gen) if d2.sum() > 0 else torch.randint(n, (1,), generator=gen)
            centres = torch.cat([centres, x[pick]])
        for _ in range(iters):
            labels = torch.cdist(x, centres).argmin(dim=1)
            new = torch.stack([x[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(k)])
            if torch.allclose(new, centres):
                break
            centres = new
        labels = torch.cdist(x, centres).argmin(dim=1)
        inertia = (x - centres[labels]).pow(2).sum().item()
        if inertia < best_inertia - 1e-12:
            best, best_inertia = labels, inertia
    _, first = np.unique(best.numpy(), return_index=True)
    order = {int(best[i]): rank for rank, i in enumerate(sorted(first))}
    return torch.tensor([order[int(v)] for v in best], dtype=torch.long)


@torch.no_grad()
def cluster_maps(
    model: nn.Module, run: Callable[[], object], clusters: int = 3, sample: int = 0, head: int = 0
) -> ClusterMaps:
    """Record one forward pass (``run()``, which calls ``model`` once, or anything containing its FEC
    layers, such as a Detectron2 or smp model) and chain its assignments to the stride-4 points of image
    ``sample`` of the batch."""
    layers = clustering_layers(model)
    pools = [m for _, m in layers if isinstance(m, ClusterPool)]
    if not pools:
        raise ValueError("the model has no clustering pool (a single-stage FEC): there is nothing to chain")
    captured: Dict[str, torch.Tensor] = {}

    def centre_features(module: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> None:
        feats = module.conv_f(to_nchw(inputs[0]).to(module.conv_f.weight.dtype))  # pools take [B, H, W, C]
        captured["centres"] = F.avg_pool2d(feats, 2).flatten(2)  # [B, C, h*w]: output points, row-major

    handle = pools[-1].register_forward_pre_hook(centre_features)
    try:
        with record_clusters(model) as records:
            run()
    finally:
        handle.remove()
    if not records:
        raise ValueError("the forward pass did not reach any FEC clustering layer")
    chains = [c[sample] for c in chain_to_input(records)]
    blocks: List[Tuple[str, int, torch.Tensor]] = []
    stage, last_block = 0, {}
    for r in records:
        if r.kind == "pool":
            stage += 1
        else:
            last_block[stage] = r
    for s, r in sorted(last_block.items()):
        ids = r.assignment[sample, min(head, r.assignment.shape[1] - 1)].flatten()
        blocks.append((r.name, s, ids[chains[s].flatten()].view_as(chains[0])))
    final = chains[-1]
    ids, inverse = torch.unique(final, return_inverse=True)
    feats = captured["centres"][sample][:, ids].T  # [non-empty centres, C]
    labels = kmeans(feats.cpu(), clusters)
    groups = labels[inverse.cpu()].view_as(final)
    return ClusterMaps(chains, blocks, groups, int(labels.max()) + 1, head)


def _colour(i: int) -> Tuple[int, int, int]:
    hue = (i * 0.61803398875) % 1.0
    sat, val = (0.75, 0.95) if i % 2 == 0 else (0.55, 0.8)
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val))


_GROUP_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (245, 130, 48),
                  (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40), (128, 0, 0)]


def _overlay(image: np.ndarray, labels: torch.Tensor, palette: Optional[Sequence[Tuple[int, int, int]]],
             alpha: float = 0.55) -> np.ndarray:
    """Blend a label map (nearest-upsampled to the image) over the image, with region borders darkened."""
    h, w = image.shape[:2]
    lab = F.interpolate(labels[None, None].double(), size=(h, w), mode="nearest")[0, 0].long().numpy()
    ids = np.unique(lab)
    colours = np.zeros((int(ids.max()) + 1, 3), dtype=np.float32)
    for rank, i in enumerate(ids):
        colours[i] = palette[i % len(palette)] if palette is not None else _colour(rank)
    out = (1 - alpha) * image.astype(np.float32) + alpha * colours[lab]
    border = np.zeros((h, w), dtype=bool)
    border[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    border[1:, :] |= lab[1:, :] != lab[:-1, :]
    out[border] *= 0.35
    return np.clip(out, 0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def render_cluster_maps(image: np.ndarray, maps: ClusterMaps, path: str, panel: int = 256) -> Image.Image:
    """Write a PNG: the image and the chained pooling regions of each stage, the k-means groups of
    the final centres, and the block clusters of each stage. ``image``: ``[H, W, 3]`` uint8 as fed."""
    shown = np.asarray(Image.fromarray(image).resize((panel, panel * image.shape[0] // image.shape[1]),
                                                     Image.BICUBIC))
    ph = shown.shape[0]
    top: List[Tuple[str, np.ndarray]] = [("input", shown)]
    for k, regions in enumerate(maps.regions[1:], start=1):
        top.append((f"stage {k}: {len(torch.unique(regions))} regions", _overlay(shown, regions, None)))
    top.append((f"k-means: {maps.num_groups} groups", _overlay(shown, maps.groups, _GROUP_COLOURS, 0.6)))
    bottom = [(f"stage {s} block: {len(torch.unique(ids))} clusters", _overlay(shown, ids, None))
              for _, s, ids in maps.blocks]
    cols = max(len(top), len(bottom))
    title_h, pad = 22, 6
    canvas = Image.new("RGB", (cols * (panel + pad) + pad, 2 * (ph + title_h + pad) + pad + 40), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    for row, panels in enumerate((top, bottom)):
        y = pad + row * (ph + title_h + pad)
        for col, (title, pixels) in enumerate(panels):
            x = pad + col * (panel + pad)
            draw.text((x, y), title, fill="black", font=font)
            canvas.paste(Image.fromarray(pixels), (x, y + title_h))
    caption = (f"top: pooling regions chained from pixels through each clustering pool; bottom: clusters of "
               f"head {maps.head} of each stage's last block. " + ", ".join(f"{k} {v}" for k, v in maps.info.items()))
    small = _font(12)
    lines = textwrap.wrap(caption, width=max(40, canvas.width // 7))[:2]
    for i, line in enumerate(lines):
        draw.text((pad, canvas.height - 36 + 17 * i), line, fill="black", font=small)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
    return canvas


def visualize_image(
    image_path: str,
    out: str,
    model_name: Optional[str] = None,
    checkpoint: Optional[str] = None,
    clusters: int = 3,
    size: int = 224,
    preset: Optional[str] = None,
    prefix: Optional[str] = None,
    head: int = 0,
    use_ema: bool = True,
) -> ClusterMaps:
    """Load the model, run ``image_path`` resized to ``size`` x ``size`` (as the reference does) and
    write the figure to ``out``."""
    if size % 32:
        raise ValueError(f"--size must be divisible by 32 for FEC, got {size}")
    model, info = load_fec_backbone(model_name, checkpoint, preset, prefix, use_ema)
    try:
        with Image.open(image_path) as img:
            rgb = img.convert("RGB").resize((size, size), Image.BICUBIC)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read image {image_path!r}: {err}") from None
    cfg = model.pretrained_cfg
    pixels = np.array(rgb)
    x = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255)
    x = ((x - torch.tensor(cfg["mean"]).view(3, 1, 1)) / torch.tensor(cfg["std"]).view(3, 1, 1))[None]
    maps = cluster_maps(model, lambda: model.forward_intermediates(x, intermediates_only=True), clusters, head=head)
    maps.info = dict(info, image=os.path.basename(image_path), size=f"{size}x{size}")
    render_cluster_maps(pixels, maps, out)
    return maps
