"""Single-group GroupNorm for channels-last maps, fast at every batch size.

``GroupNorm(1, C)`` normalises each sample over (C, H, W) and applies a per-channel affine. On a
channels-last map ``[B, H, W, C]`` two formulations give the same numbers:

* ``"layer_norm"``: one ``F.layer_norm`` over the last three dims, then the affine. PyTorch's CUDA
  layer norm gives one thread block to each normalised row, i.e. to each *sample*: with few samples
  most of the GPU idles.
* ``"var_mean"``: the statistics as a reduction (``torch.var_mean``), then one fused multiply-add
  ``x * scale + shift`` with per-sample, per-channel ``scale = weight * rstd`` and
  ``shift = bias - mean * scale``. Every op spreads over all elements, whatever the batch.

Which is used (:func:`choose_formulation`; the measurements behind the rule are in
``benchmarks/results/README.md``):

* CUDA, eager: ``var_mean`` below :data:`CUDA_LAYER_NORM_MIN_BATCH` samples, ``layer_norm`` from there on
  (layer norm fills a GPU only with tens of samples).
* CUDA under ``torch.compile``: ``var_mean`` (Inductor generates the kernels).
* CPU (and any other device), eager or compiled: ``layer_norm``, the faster of the two there; ONNX
  exports, traced on the CPU, keep it too.

Low-precision inputs (bf16/fp16) are normalised in float32 by both formulations, as autocast does for
``layer_norm`` and ``group_norm``; the result has the dtype of ``x`` promoted with the weight's (float32
under autocast, whose weights are float32).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from timm.layers import register_notrace_function

from .tracing import records_autograd

__all__ = ["FORMULATIONS", "CUDA_LAYER_NORM_MIN_BATCH", "choose_formulation", "group_norm1_nhwc", "TokenGroupNorm1"]

FORMULATIONS = ("layer_norm", "var_mean")

#: On CUDA (eager), the smallest batch for which ``layer_norm`` beats ``var_mean`` (measured).
CUDA_LAYER_NORM_MIN_BATCH = 64


def choose_formulation(device_type: str, batch: int, compiling: bool = False) -> str:
    """The faster formulation for a ``[batch, H, W, C]`` map on ``device_type`` (eager, or under
    ``torch.compile`` when ``compiling``), by the measured rule in the module doc."""
    if device_type == "cuda" and (compiling or batch < CUDA_LAYER_NORM_MIN_BATCH):
        return "var_mean"
    return "layer_norm"


@register_notrace_function  # FX keeps it one call: the formulation is chosen from the input's shape and device
def group_norm1_nhwc(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
    formulation: Optional[str] = None,
) -> torch.Tensor:
    """``GroupNorm(1, C)`` of a channels-last map: x ``[B, H, W, C]``, weight and bias ``[C]`` -> ``[B, H, W, C]``.

    ``formulation`` is ``"layer_norm"``, ``"var_mean"`` or None (chosen by :func:`choose_formulation`).
    """
    if x.ndim != 4 or x.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"group_norm1_nhwc expects a channels-last map [B, H, W, C] with C={weight.shape[0]}, got shape "
            f"{tuple(x.shape)}; for an NCHW tensor use nn.GroupNorm(1, C) or permute it to [B, H, W, C]"
        )
    formulation = formulation or choose_formulation(x.device.type, x.shape[0], torch.compiler.is_compiling())
    if formulation == "layer_norm":
        return torch.addcmul(bias, F.layer_norm(x, x.shape[1:], eps=eps), weight)
    if formulation != "var_mean":
        raise ValueError(f"unknown norm formulation {formulation!r}; choose one of {FORMULATIONS}")
    if records_autograd(x, weight, bias):
        return _VarMeanGroupNorm1.apply(x, weight, bias, eps)
    xs, mean, rstd = _statistics(x, eps)
    return _affine(x, xs, mean, rstd, weight, bias)


def _statistics(x: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x`` in its compute dtype (float32 for bf16/fp16) and its per-sample mean and ``1/std``, ``[B, 1, 1, 1]``."""
    xs = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    var, mean = torch.var_mean(xs, dim=(1, 2, 3), correction=0, keepdim=True)
    return xs, mean, torch.rsqrt(var + eps)


def _affine(x: torch.Tensor, xs: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor,
            bias: torch.Tensor) -> torch.Tensor:
    """``(xs - mean) * rstd * weight + bias`` as one fused multiply-add per element, in the dtype of ``x``
    promoted with the weight's (as the affine of the layer_norm formulation)."""
    scale = rstd * weight.to(xs.dtype)  # [B, 1, 1, C]
    shift = torch.addcmul(bias.to(xs.dtype), mean, scale, value=-1.0)
    return torch.addcmul(shift, xs, scale).to(torch.promote_types(x.dtype, weight.dtype))


class _VarMeanGroupNorm1(torch.autograd.Function):
    """The ``var_mean`` formulation with a written-out backward, which runs fewer kernels than autograd's
    derivation of the same formula (at a small batch on a GPU each kernel costs the host more time than the
    device; counted by ``benchmarks/count_ops.py``).

    With ``y = (x - mean) * rstd`` over each sample's ``N = H*W*C`` values and ``gw = grad * weight``:
    ``dx = rstd * (gw - mean_N(gw) - y * mean_N(gw * y))``, ``dweight = sum(grad * y)``, ``dbias = sum(grad)``;
    the ``N``-means are taken per channel first (``[B, C]``) and weighted by ``weight`` after."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        xs, mean, rstd = _statistics(x, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.bias_dtype = bias.dtype
        return _affine(x, xs, mean, rstd, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x, weight, mean, rstd = ctx.saved_tensors
        dtype = mean.dtype
        centred = x - mean  # [B, H, W, C] in the compute dtype
        grad = grad.to(dtype)
        per_channel = torch.stack((grad.sum((1, 2)), (grad * centred).sum((1, 2))))  # [2, B, C]
        b, r = x.shape[0], rstd.view(-1)
        d_weight, d_bias = per_channel[1].t() @ r, per_channel[0].sum(0)
        # -mean_N(grad * weight) and -mean_N(grad * weight * centred), [B] each
        w = weight.to(dtype)
        neg_m1, neg_m2 = (per_channel @ w).mul_(-1.0 / x[0].numel())
        # dx = rstd*weight*grad - rstd*m1 - rstd^3 * m2 * centred
        const, slope = (r * neg_m1).view(b, 1, 1, 1), (r.pow(3) * neg_m2).view(b, 1, 1, 1)
        dx = torch.addcmul(const, centred, slope).addcmul_(grad, rstd * w)
        return dx.to(x.dtype), d_weight.to(weight.dtype), d_bias.to(ctx.bias_dtype), None


class TokenGroupNorm1(nn.GroupNorm):
    """``GroupNorm(1, C)`` for channels-last maps ``[B, H, W, C]`` (statistics over H, W and C, affine per
    channel); state-dict keys ``weight``/``bias`` as ``nn.GroupNorm``. ``formulation`` None picks the
    faster formulation per call (:func:`choose_formulation`); set it to force one."""

    def __init__(self, num_channels: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__(1, num_channels, eps=eps, device=device, dtype=dtype)
        self.formulation: Optional[str] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm1_nhwc(x, self.weight, self.bias, self.eps, self.formulation)
