"""The one way FEC weights are read and loaded, for every route (timm, Detectron2, smp, scripts).

Checkpoints come in many shapes: the official ``train.py`` saves timm ``CheckpointSaver`` files
(``state_dict``, often ``state_dict_ema``, optimizer, ``args`` as an ``argparse.Namespace``...),
official mmdet/mmseg files keep the backbone under ``backbone.``, DDP and ``torch.compile`` add
``module.``/``_orig_mod.``, Detectron2 and smp files of ours nest the FEC under other prefixes, and
``.safetensors`` files hold raw tensors. :func:`read_fec_weights` turns any of them into the state dict
of :class:`fec_backbone.FEC` (official keys mapped); :func:`fit_state_dict` checks it against a model
(possibly pruned, with or without classifier) and :func:`load_fec_weights` does both and loads.

Reading is safe: ``torch.load(weights_only=True)`` with only plain-data classes allowed
(:data:`ALLOWED_GLOBALS`), or safetensors. Every problem raises :class:`CheckpointError` naming the
file and what is wrong: not a checkpoint, a pickled class that is not allowed (named), no FEC inside,
another FEC variant (named), missing/unexpected/mis-shaped keys.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from safetensors.torch import load_file
from timm.models import adapt_input_conv

from .variants import detect_variant

__all__ = [
    "ALLOWED_GLOBALS",
    "CheckpointError",
    "LoadResult",
    "adapt_stem_weight",
    "check_keys",
    "detect_variant",
    "extract_fec_weights",
    "find_fec_prefixes",
    "fit_state_dict",
    "load_fec_weights",
    "map_official_key",
    "read_checkpoint",
    "read_fec_weights",
]

logger = logging.getLogger(__name__)

#: Classes a checkpoint may contain besides tensors and builtins: timm's and the official
#: ``train.py``'s ``CheckpointSaver`` stores the command line as an ``argparse.Namespace``.
ALLOWED_GLOBALS: Tuple[type, ...] = (argparse.Namespace,)
#: Wrapper prefixes removed from every key: DDP's and torch.compile's (in either order).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: Keys that locate an FEC inside a larger state dict (ours and the official layout).
ANCHORS = ("stem.proj.weight", "patch_embed.proj.weight")
#: Top-level modules of :class:`fec_backbone.FEC`; other modules under an FEC's prefix are not FEC weights.
FEC_MODULES = ("stem", "stages", "out_norms", "norm", "head")

Source = Union[str, os.PathLike, Mapping[str, Any]]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


@dataclass
class LoadResult:
    """What :func:`load_fec_weights` did: tensors loaded, checkpoint keys it left out on purpose (the
    classifier of a headless model, stages a pruned model lacks, other modules), and model keys kept
    at their initial values (a classifier of another size, ``allow_missing`` keys)."""

    loaded: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    kept_initial: List[str] = field(default_factory=list)


def _where(path: Optional[str]) -> str:
    return f"{path!r}: " if path else ""


def read_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The whole object stored in a ``.pth``/``.pth.tar``/``.safetensors`` file, read safely.

    Raises :class:`CheckpointError` naming the file and the problem: missing, damaged or not a
    checkpoint, or holding a pickled class outside :data:`ALLOWED_GLOBALS` (the class is named;
    such files are never unpickled).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path!r}")
    try:
        if path.endswith(".safetensors"):
            obj: Any = load_file(path, device="cpu")
        else:
            with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        classes = _unsafe_globals(path)
        if classes:
            raise CheckpointError(
                f"{path!r} holds pickled objects of {', '.join(classes)}, which are not plain data; only tensors, "
                f"builtins and {', '.join(c.__module__ + '.' + c.__qualname__ for c in ALLOWED_GLOBALS)} are read "
                "(weights_only=True). Re-save the weights alone: torch.save(model.state_dict(), path)"
            ) from err
        raise CheckpointError(_unreadable(path, err)) from err
    except Exception as err:  # torch/safetensors raise many types for damaged files
        raise CheckpointError(_unreadable(path, err)) from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path!r} holds a {type(obj).__name__}, not a state dict or checkpoint dictionary")
    return dict(obj)


def _unreadable(path: str, err: BaseException) -> str:
    first = str(err).splitlines()[0] if str(err) else ""
    return (f"cannot read checkpoint {path!r} ({type(err).__name__}: {first}): the file is damaged, truncated, "
            "or not a PyTorch/safetensors checkpoint")


def _unsafe_globals(path: str) -> List[str]:
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return []
    allowed = {c.__module__ + "." + c.__qualname__ for c in ALLOWED_GLOBALS}
    return [g for g in found if g not in allowed]


def _strip_wrappers(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):
        for p in WRAPPER_PREFIXES:
            if key.startswith(p):
                key = key[len(p):]
    return key


def _select(obj: Mapping[str, Any], use_ema: bool, path: Optional[str]) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint dictionary: EMA weights first when ``use_ema`` (as timm's loading),
    else ``state_dict``/``model``, else the dictionary itself; wrapper prefixes removed."""
    for key in (("state_dict_ema", "model_ema") if use_ema else ()) + ("state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    tensors = {_strip_wrappers(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{_where(path)}the checkpoint holds no tensors (keys: {', '.join(list(obj)[:8])})")
    return tensors


def find_fec_prefixes(state_dict: Mapping[str, Any]) -> List[str]:
    """Every key prefix under which a state dict holds an FEC (``""`` for a plain one)."""
    found = set()
    for key in state_dict:
        for anchor in ANCHORS:
            if key == anchor or key.endswith("." + anchor):
                found.add(key[: len(key) - len(anchor)])
    return sorted(found)


def map_official_key(key: str) -> str:
    """An official key (``patch_embed.proj...``, ``network.<i>...``; the dense-prediction backbone's output
    norms ``norm0/2/4/6``) in this package's module layout."""
    if key.startswith("patch_embed."):
        return "stem." + key[len("patch_embed."):]
    m = re.match(r"norm([0246])\.(.*)$", key)
    if m:
        return f"out_norms.{int(m.group(1)) // 2}.{m.group(2)}"
    if key.startswith("network."):
        index, rest = key[len("network."):].split(".", 1)
        i = int(index)
        return f"stages.{i // 2}.blocks.{rest}" if i % 2 == 0 else f"stages.{(i + 1) // 2}.downsample.{rest}"
    return key


def extract_fec_weights(
    source: Source, *, use_ema: bool = True, prefix: Optional[str] = None
) -> Tuple[Dict[str, torch.Tensor], str, List[str]]:
    """:func:`read_fec_weights` that also returns the prefix used and the keys under it that are no FEC
    layer (``(state_dict, prefix, ignored)``)."""
    path = None if isinstance(source, Mapping) else os.fspath(source)
    obj = source if isinstance(source, Mapping) else read_checkpoint(source)
    tensors = _select(obj, use_ema, path)
    found = find_fec_prefixes(tensors)
    if prefix is None:
        if not found:
            raise CheckpointError(
                f"{_where(path)}no FEC weights in this checkpoint: no key ends in {' or '.join(ANCHORS)} "
                f"(keys: {', '.join(list(tensors)[:5])}, ...)"
            )
        if len(found) > 1:
            raise CheckpointError(f"{_where(path)}the checkpoint holds several FECs, under the prefixes {found}; "
                                  "choose one with prefix=...")
        prefix = found[0]
    elif prefix not in found:
        raise CheckpointError(f"{_where(path)}no FEC weights under the prefix {prefix!r}; FECs were found under {found}")
    out, ignored = {}, []
    for key, value in tensors.items():
        if key.startswith(prefix):
            name = map_official_key(key[len(prefix):])
            if name.split(".", 1)[0] in FEC_MODULES:
                out[name] = value
            else:
                ignored.append(name)
    return out, prefix, ignored


def read_fec_weights(
    source: Source, *, use_ema: bool = True, prefix: Optional[str] = None
) -> Dict[str, torch.Tensor]:
    """The FEC weights of a checkpoint, as a state dict of :class:`fec_backbone.FEC` (our key layout).

    ``source`` is a file (see :func:`read_checkpoint`) or an already loaded dictionary. ``use_ema``
    takes ``state_dict_ema`` when the file has it (the official visualisation and timm do so), else
    the plain weights. ``prefix`` selects the FEC inside a larger model (``"backbone."`` of an official
    mmdet/mmseg checkpoint, ``"backbone.bottom_up.body."`` of our Detectron2 models, ``"encoder."`` of
    smp models); by default the only FEC found is taken. Modules under the prefix that are not FEC
    layers are dropped.
    """
    return extract_fec_weights(source, use_ema=use_ema, prefix=prefix)[0]


def check_keys(
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    what: str,
    ignore_prefixes: Iterable[str] = (),
    hint: str = "Check that the checkpoint is an FEC checkpoint of the same variant (fec_small/base/large).",
) -> None:
    """Raise :class:`CheckpointError` listing missing keys, unexpected keys and shape mismatches."""
    ignore = tuple(ignore_prefixes)
    keys = {k for k in state_dict if not k.startswith(ignore)}
    wanted = {k for k in expected if not k.startswith(ignore)}
    missing, unexpected = sorted(wanted - keys), sorted(keys - wanted)
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(keys & wanted)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return

    def show(items: list) -> str:
        return ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")

    lines = [f"the checkpoint does not fit {what}:"]
    if missing:
        lines.append(f"  missing keys: {show(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys: {show(unexpected)}")
    if shapes:
        lines.append(f"  shape mismatches: {show(shapes)}")
    lines.append("  " + hint)
    raise CheckpointError("\n".join(lines))


def adapt_stem_weight(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A stem weight ``[C, c + 2, k, k]`` (``c`` image channels, then the two coordinate channels) for
    ``in_chans`` image channels: the image part adapted as timm adapts a first conv (1 channel: summed;
    more than ``c``: repeated and rescaled), the coordinate part kept."""
    image = adapt_input_conv(in_chans, weight[:, :-2], base_chans=weight.shape[1] - 2)
    return torch.cat((image, weight[:, -2:]), dim=1)


def fit_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model: nn.Module,
    *,
    allow_missing: Sequence[str] = (),
    staged: Sequence[str] = (),
    result: Optional[LoadResult] = None,
) -> Dict[str, torch.Tensor]:
    """``state_dict`` (FEC layout, e.g. from :func:`read_fec_weights`) reduced to what ``model`` holds,
    checked key by key.

    ``model`` is a :class:`fec_backbone.FEC` or a subclass (an smp encoder), possibly pruned (its ``stem``
    and ``stages`` are what is looked at). Dropped on purpose: the classifier when the model has none or one
    of another size, the final norm and the output norms when the model has none, stages (and their output
    norms, and the stage-indexed adapter modules named in ``staged``) that the model does not have. Kept at
    their initial values: the output norms when the checkpoint has none (an ImageNet checkpoint: they start
    fresh, as in the official dense-prediction training), and the final norm and classifier when the
    checkpoint is a dense-prediction backbone (it has output norms and no final norm). The stem of a model
    with another ``in_chans`` is adapted as timm adapts a first conv (the two coordinate channels are kept).
    Model keys starting with ``allow_missing`` may be absent too. Anything else that differs raises
    :class:`CheckpointError`, naming the checkpoint's variant when it is another one.
    """
    if not (hasattr(model, "stages") and hasattr(model, "stem")):
        raise TypeError(f"fit_state_dict needs an fec_backbone.FEC, got {type(model).__name__}")
    result = result if result is not None else LoadResult()
    expected = model.state_dict()
    kept_stages = len(model.stages)
    per_stage = ("stages", "out_norms", *staged)
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        top, _, rest = key.partition(".")
        drop = (
            (top in ("head", "norm", "out_norms") and key not in expected)
            or (top == "head" and tuple(value.shape) != tuple(expected[key].shape))
            or (top in per_stage and rest.split(".", 1)[0].isdigit() and int(rest.split(".", 1)[0]) >= kept_stages)
        )
        if drop:
            result.ignored.append(key)
            if top == "head" and key in expected:
                result.kept_initial.append(key)
        else:
            out[key] = value
    stem = "stem.proj.weight"
    if stem in out and stem in expected and out[stem].shape[1] != expected[stem].shape[1]:
        weight, model_chans = out[stem], expected[stem].shape[1] - 2
        if weight.shape[1] > 2 and model_chans > 0 and weight.shape[0] == expected[stem].shape[0]:
            out[stem] = adapt_stem_weight(weight, model_chans)
    dense = any(k.startswith("out_norms.") for k in state_dict) and not any(k.startswith("norm.") for k in state_dict)
    fresh = (("out_norms.",) if not any(k.startswith("out_norms.") for k in state_dict) else ()) + (
        ("norm.",) if dense else ())
    ignore = tuple(allow_missing) + fresh
    result.kept_initial += [k for k in expected if k.startswith(ignore) and k not in out]
    what = f"{type(model).__name__} ({model.describe()})" if hasattr(model, "describe") else type(model).__name__
    try:
        check_keys(out, expected, what, ignore_prefixes=("head.",) + ignore)
    except CheckpointError as err:  # only a checkpoint that does not fit pays for naming its variant
        variant = detect_variant(state_dict)
        if variant is None:
            raise
        lines = str(err).splitlines()[:-1]  # the generic hint gives way to the variant's name
        raise CheckpointError("\n".join(lines + [f"  The checkpoint is an {variant} checkpoint; create the model as "
                                                  f"{variant}."])) from None
    missing_head = [k for k in expected if k.startswith("head.") and k not in out and k not in result.kept_initial]
    result.kept_initial += missing_head
    return out


def load_fec_weights(
    model: nn.Module,
    source: Source,
    *,
    use_ema: bool = True,
    prefix: Optional[str] = None,
    allow_missing: Sequence[str] = (),
) -> LoadResult:
    """Read FEC weights (:func:`read_fec_weights`), fit them to ``model`` (:func:`fit_state_dict`) and
    load them. ``model`` is an FEC or timm's ``features_only`` wrapper of one (``timm.create_model(...,
    features_only=True)``). Returns what was loaded, ignored and kept at initial values (also logged)."""
    path = None if isinstance(source, Mapping) else os.fspath(source)
    result = LoadResult()
    inner = getattr(model, "model", None)
    if not hasattr(model, "stages") and hasattr(inner, "stages"):  # timm's FeatureGetterNet holds the FEC
        model = inner
    try:
        weights = fit_state_dict(read_fec_weights(source, use_ema=use_ema, prefix=prefix), model,
                                 allow_missing=allow_missing, result=result)
    except CheckpointError as err:
        if path and path not in str(err):
            raise CheckpointError(f"{path!r}: {err}") from err
        raise
    model.load_state_dict(weights, strict=False)
    result.loaded = sorted(weights)
    logger.info("FEC weights from %s: %d tensors loaded%s", path or "a state dict", len(weights),
                f"; kept initial: {', '.join(result.kept_initial)}" if result.kept_initial else "")
    return result
