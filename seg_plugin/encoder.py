"""FEC as a segmentation-models-pytorch encoder (``fec_s``, ``fec_b``, ``fec_l``) and its smp registry entries.

:class:`FecEncoder` is :class:`fec_backbone.FEC` with smp's :class:`EncoderMixin`: it keeps the core's
modules and state-dict keys and only adapts the output to smp's encoder contract, the way smp's own
``mix_transformer.py`` adapts SegFormer's MiT. ``forward`` returns ``depth + 1`` maps
``[x, <0-channel stride-2 placeholder>, /4, /8, /16, /32]`` (FEC starts at stride 4, like MiT), every stage
output through its own GroupNorm (``out_norms``, created fresh as in the reference's dense-prediction
backbone, ``fork_feat=True``). Stages beyond ``depth`` are dropped, so (for depth >= 2) every parameter
takes part in the forward pass (DDP needs no ``find_unused_parameters``).

Any input size: an image whose sides the encoder's stride (32 at depth 5) does not divide is zero-padded
at the bottom and right, its pixels keep the coordinate channels they have unpadded
(:class:`fec_backbone.fec.Stem` ``size``), and every stride-``s`` map is cropped to ``ceil(H/s) x ceil(W/s)``
(the cells that touch real pixels; a stride-``s`` CNN gives the same sizes) before its output norm.
Divisible inputs run exactly as before (no padding, no crop).

Registry entries: :data:`fec_encoders`, in smp's format (``{"encoder", "pretrained_settings", "params"}``,
as smp's own ``mix_transformer_encoders``), which ``import seg_plugin`` adds to ``smp.encoders.encoders``.
An entry's FEC settings (``preset``, ``proposals``, ``folds``, ``drop_path_rate``, ...) are its ``params``,
the encoder's constructor arguments; smp records only the encoder's *name* in a saved model's config.

Other FEC settings per model: smp passes a model's extra keyword arguments only to ``tu-`` encoders, and
records them in the saved model's ``config.json``, so ``smp.Unet("tu-fec_small", feature_norms=True,
preset="segmentation", proposals=...)`` is ``fec_s`` with those settings (the same modules, under
``encoder.model.model.``; sides divisible by 32) and reloads anywhere after ``import seg_plugin``.
:func:`register_encoder` adds a named registry entry instead; smp's registry lives in the process, so a
model saved with such a name reloads only where the same name is registered again first.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders._base import EncoderMixin

from fec_backbone import FEC, VARIANTS, fit_state_dict
from fec_backbone.checkpoint import adapt_stem_weight
from fec_backbone.fec import Stem, check_input

from .pretrained import ENCODER_VARIANTS, pretrained_settings

__all__ = ["FecEncoder", "encoder_params", "fec_encoders", "register_encoder", "register_encoders"]

#: Set by smp (``encoder_depth``, ``encoder_output_stride``, ``in_channels``) or fixed by the encoder.
_RESERVED = ("out_channels", "depth", "output_stride", "in_chans", "num_classes", "global_pool")


class FecEncoder(FEC, EncoderMixin):
    """FEC backbone following smp 0.6's encoder contract.

    Args:
        out_channels: ``[in_channels, 0, C1, C2, C3, C4]`` as smp expects for a stride-4-first encoder.
        depth: number of smp feature levels, 1 to 5 (level ``k`` has stride ``2**k``; level 1 is the
            0-channel placeholder).
        output_stride: 32, or 8/16 through :meth:`make_dilated` (smp calls it after construction).
        preset, proposals, folds: FEC's clustering layout (:data:`fec_backbone.PRESETS`); the
            segmentation preset (proposals 10, 10, 5, 5) is the registry default.
        **kwargs: further :class:`fec_backbone.FEC` arguments (``layers``, ``embed_dims``, ...,
            ``drop_path_rate``).
    """

    _is_torch_scriptable = False  # FEC's clustering op and the core model are not TorchScript code
    _is_torch_exportable = True
    _is_torch_compilable = True

    def __init__(
        self,
        out_channels: Sequence[int],
        depth: int = 5,
        output_stride: int = 32,
        preset: str = "segmentation",
        **kwargs: Any,
    ):
        if depth > 5 or depth < 1:
            raise ValueError(f"{self.__class__.__name__} depth should be in range [1, 5], got {depth}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"{self.__class__.__name__} output_stride should be 8, 16 or 32, got {output_stride}")
        for key in ("num_classes", "global_pool", "in_chans", "output_stride"):
            if key in kwargs:
                raise ValueError(f"{self.__class__.__name__} sets `{key}` itself; do not pass it in the encoder params")
        super().__init__(preset=preset, num_classes=0, global_pool="", in_chans=3, feature_norms=True, **kwargs)
        widths = [3, 0] + list(self.embed_dims)
        if list(out_channels) != widths:
            raise ValueError(f"out_channels {list(out_channels)} do not match the FEC widths: expected {widths}")
        stages = max(depth - 1, 1)
        self.prune_intermediate_layers(list(range(stages)), prune_norm=True, prune_head=True)
        self.reduction = 2 ** max(depth, 2)
        self._depth, self._in_channels, self._out_channels, self._output_stride = depth, 3, list(out_channels), 32

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """Rebuild the stem for ``in_channels`` image channels (plus the two coordinate channels): with
        ``pretrained`` its weights adapted by :func:`fec_backbone.checkpoint.adapt_stem_weight` (as timm
        adapts a first conv; the coordinate part kept), otherwise freshly initialised."""
        if in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, got {in_channels}")
        if in_channels == self._in_channels:
            return
        old = self.stem.proj
        dd = dict(device=old.weight.device, dtype=old.weight.dtype)
        self.stem = Stem(in_channels, old.out_channels, old.kernel_size[0], **dd)
        if pretrained:
            with torch.no_grad():
                self.stem.proj.weight.copy_(adapt_stem_weight(old.weight, in_channels))
                self.stem.proj.bias.copy_(old.bias)
        self.in_chans = self._in_channels = in_channels
        self._out_channels = [in_channels] + self._out_channels[1:]

    def make_dilated(self, output_stride: int) -> None:
        """Keep the stages deeper than ``output_stride`` (8 or 16) at that stride by dilating their
        clustering pools: the core model's :meth:`fec_backbone.FEC.set_output_stride`."""
        if output_stride not in (8, 16):
            raise ValueError(f"Output stride should be 16 or 8, got {output_stride}.")
        if self._output_stride != 32:
            raise ValueError(f"the encoder is already dilated to output stride {self._output_stride}")
        self.set_output_stride(output_stride)
        self._output_stride = output_stride

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load encoder weights through the core's loader (:func:`fec_backbone.fit_state_dict`): what an
        encoder does not hold (classifier, classification norm, stages and output norms beyond ``depth``)
        is left out, everything else is checked key by key."""
        if strict:
            state_dict = fit_state_dict(state_dict, self, staged=("out_norms",))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """``[B, in_channels, H, W]`` (any ``H, W >= 2``) -> ``depth + 1`` maps; level ``k`` is
        ``ceil(H/s_k) x ceil(W/s_k)`` with ``s_k = min(2**k, output_stride)``."""
        check_input(x, self.in_chans, 1)
        b, _, h, w = x.shape
        features = [x, torch.empty([b, 0, -(-h // 2), -(-w // 2)], dtype=x.dtype, device=x.device)]
        if self._depth < 2:
            return features
        if h < 2 or w < 2:
            raise ValueError(f"FEC needs images of at least 2x2 pixels (its coordinate channels span them), got {h}x{w}")
        pad_h, pad_w = -h % self.reduction, -w % self.reduction
        padded = bool(pad_h or pad_w)
        x = self.stem(F.pad(x, (0, pad_w, 0, pad_h)) if padded else x, (h, w))
        for i, (stage, info) in enumerate(zip(self.stages, self.feature_info)):
            x = stage(x)  # [B, C, H, W] views of channels-last maps
            s = info["reduction"]
            features.append(self.feature_map(i, x[:, :, : -(-h // s), : -(-w // s)] if padded else x))
        return features


def encoder_params(base: str, **overrides: Any) -> Dict[str, Any]:
    """Constructor params of the registry encoder ``base`` (``fec_s``/``fec_b``/``fec_l``) with
    ``overrides`` applied: the segmentation preset (proposals 10, 10, 5, 5) unless overridden."""
    if base not in ENCODER_VARIANTS:
        raise KeyError(f"unknown FEC encoder {base!r}; choose one of {sorted(ENCODER_VARIANTS)}")
    reserved = sorted(set(overrides) & set(_RESERVED))
    if reserved:
        raise ValueError(
            f"{reserved} cannot be encoder params: smp sets depth, output stride and input channels "
            "(encoder_depth, encoder_output_stride, in_channels)"
        )
    args = dict(VARIANTS[ENCODER_VARIANTS[base]])
    return {"out_channels": [3, 0, *args["embed_dims"]], "preset": "segmentation", **args, **overrides}


#: smp registry entries of the three FEC variants (smp's format; the segmentation preset by default).
fec_encoders: Dict[str, Dict[str, Any]] = {
    name: {"encoder": FecEncoder, "pretrained_settings": pretrained_settings(name), "params": encoder_params(name)}
    for name in ENCODER_VARIANTS
}


def _add(name: str, entry: Dict[str, Any]) -> None:
    existing = smp.encoders.encoders.get(name)
    if existing is not None and existing["encoder"] is not FecEncoder:
        raise ValueError(f"{name!r} is already an smp encoder ({existing['encoder'].__name__}); choose another name")
    smp.encoders.encoders[name] = entry


def register_encoder(name: str, base: str = "fec_s", **params: Any) -> str:
    """Register ``name`` as ``base`` with other FEC settings, e.g.
    ``register_encoder("fec_s_det", "fec_s", preset="detection")`` or ``proposals=(7, 7, 7, 7)``.

    ``proposals``/``folds`` change no weights, so the entry shares ``base``'s ImageNet weights. A name
    already registered for another encoder raises ``ValueError``. Returns ``name``.

    smp's registry is per process and a saved model's config records only the encoder's name: a model
    built with ``name`` reloads (``smp.from_pretrained``) only in a process that registers ``name`` the
    same way first. To have the settings saved with the model instead, pass them to smp's timm route:
    ``smp.Unet("tu-fec_small", feature_norms=True, preset="segmentation", **params)``.
    """
    _add(name, {"encoder": FecEncoder, "pretrained_settings": pretrained_settings(name, base),
                "params": encoder_params(base, **params)})
    return name


def register_encoders() -> None:
    """Add :data:`fec_encoders` (``fec_s``, ``fec_b``, ``fec_l``) to ``smp.encoders.encoders`` (idempotent)."""
    for name, entry in fec_encoders.items():
        _add(name, entry)
