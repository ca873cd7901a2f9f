"""Single-group GroupNorm for channels-last maps, fast at every batch size.

``GroupNorm(1, C)`` normalises each sample over (C, H, W) and applies a per-channel affine. On a
channels-last map ``[B, H, W, C]`` two formulations give the same numbers:

* ``"layer_norm"``: one ``F.layer_norm`` over the last three dims, then the affine. PyTorch's CUDA
  layer norm gives one thread block to each normalised row, i.e. to each *sample*: with few samples
  most of the GPU idles.
* ``"var_mean"``: the statistics as a reduction (``torch.var_mean``), then one fused multiply-add
  ``x * scale + shift`` with per-sample, per-channel ``scale = weight * rstd`` and
  ``shift = bias - mean * scale``. Every op spreads over all elements, whatever the batch.

Which is used (:func:`choose_formulation`), from one NVIDIA H200 (forward + backward, alone;
``../shared/measurements/h200-2026-11-27/groupnorm1_channels_last_microbench.log``) and the CPU:

* CUDA, eager: ``layer_norm`` when the batch is at least :data:`CUDA_LAYER_NORM_MIN_BATCH`, else
  ``var_mean``. Measured: [2, 200, 336, 32] (detection, batch 2) bf16 4.95 ms vs 0.56 ms, fp32 6.84 vs
  0.55 ms; [128, 56, 56, 32] (classification, batch 128) bf16 0.70 ms vs 0.95 ms. Layer norm fills the
  132 multiprocessors of an H200 only with tens of samples; the threshold is set between the two.
* CUDA under ``torch.compile``: ``var_mean`` (Inductor generates the kernels; measured 0.65 vs 0.66 ms
  at batch 2 and 0.64 vs 0.76 ms at batch 128).
* CPU (and any other device), eager or compiled: ``layer_norm``, the faster of the two on the CPU
  (``benchmarks/bench_layers.py``, one thread: 53 vs 57 ms at [2, 100, 168, 32], 117 vs 152 ms at
  [128, 28, 28, 32]); ONNX exports, traced on the CPU, keep it too.

Low-precision inputs (bf16/fp16) are normalised in float32 by both formulations, as autocast does for
``layer_norm`` and ``group_norm``; the result has the dtype of ``x`` promoted with the weight's (float32
under autocast, whose weights are float32).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models._features_fx import register_notrace_function

__all__ = ["FORMULATIONS", "CUDA_LAYER_NORM_MIN_BATCH", "choose_formulation", "group_norm1_nhwc", "TokenGroupNorm1"]

FORMULATIONS = ("layer_norm", "var_mean")

#: On CUDA (eager), the smallest batch for which ``layer_norm`` beats ``var_mean`` (see module doc).
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
    low = x.dtype in (torch.float16, torch.bfloat16)
    out_dtype = torch.promote_types(x.dtype, weight.dtype)  # as the affine of the layer_norm formulation
    xs = x.float() if low else x
    var, mean = torch.var_mean(xs, dim=(1, 2, 3), correction=0, keepdim=True)
    scale = torch.rsqrt(var + eps) * weight.to(xs.dtype)
    shift = bias.to(xs.dtype) - mean * scale
    return torch.addcmul(shift, xs, scale).to(out_dtype)


class TokenGroupNorm1(nn.GroupNorm):
    """``GroupNorm(1, C)`` for channels-last maps ``[B, H, W, C]`` (statistics over H, W and C, affine per
    channel); state-dict keys ``weight``/``bias`` as ``nn.GroupNorm``. ``formulation`` None picks the
    faster formulation per call (:func:`choose_formulation`); set it to force one."""

    def __init__(self, num_channels: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__(1, num_channels, eps=eps, device=device, dtype=dtype)
        self.formulation: Optional[str] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm1_nhwc(x, self.weight, self.bias, self.eps, self.formulation)
