"""Parameter and FLOP counts with fvcore, with no operator skipped silently.

fvcore counts convolutions, matrix products, normalisations and pooling; every other operator of FEC
gets an explicit handle here: elementwise arithmetic counts one FLOP per output element, the
clustering scatter-add one per added element, and pure data movement (indexing, expansion, argmax)
zero. The tally per operator is returned, so nothing is hidden.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Tuple

import timm
import torch
import torch.nn as nn

from .fec import count_parameters

__all__ = ["FLOP_HANDLES", "count_flops", "flops_table"]


def _shape(value: Any) -> List[int]:
    kind = value.type()
    return list(kind.sizes()) if hasattr(kind, "sizes") and kind.sizes() is not None else []


def _numel(shape: List[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _per_output_element(inputs: List[Any], outputs: List[Any]) -> int:
    return _numel(_shape(outputs[0]))


def _per_input_element(inputs: List[Any], outputs: List[Any]) -> int:
    return _numel(_shape(inputs[0]))


def _scatter_add(inputs: List[Any], outputs: List[Any]) -> int:
    return _numel(_shape(inputs[3]))  # aten::scatter_add(self, dim, index, src): one add per src element


def _zero(inputs: List[Any], outputs: List[Any]) -> int:
    return 0


#: Handles for every operator of FEC that fvcore does not count by itself.
FLOP_HANDLES = {
    **{f"aten::{op}": _per_output_element for op in (
        "add", "add_", "addcmul", "sub", "mul", "mul_", "div", "clamp_min", "sigmoid", "gelu", "rsub",
    )},
    **{f"aten::{op}": _per_input_element for op in ("linalg_vector_norm", "mean", "sum", "max", "argmax")},
    "aten::scatter_add": _scatter_add,
    **{f"aten::{op}": _zero for op in (
        "expand_as", "ones_like", "zeros_like", "new_zeros", "gather", "scatter_", "meshgrid", "arange",
        "stack", "cat", "expand", "reshape", "view", "permute", "flatten", "unsqueeze", "to", "contiguous",
        "select", "slice", "detach", "zeros", "ones", "repeat", "transpose", "squeeze", "floor_divide",
        "dropout", "feature_dropout", "size", "numpy_T",
    )},
}


def count_flops(model: nn.Module, image_size: Tuple[int, int] = (224, 224), in_chans: int = 3) -> Dict[str, Any]:
    """fvcore FLOPs (one fused multiply-add = one FLOP, fvcore's convention) for one image.

    Returns ``{"flops": total, "by_operator": {...}, "unsupported": {...}}``; ``unsupported`` lists any
    operator that still has no handle (it should be empty for FEC).
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_chans, *image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fvcore imports torch.jit parts deprecated in torch 2.x
        from fvcore.nn import FlopCountAnalysis  # here, so that its import-time warnings are silenced too

        analysis = FlopCountAnalysis(model, x).set_op_handle(**FLOP_HANDLES)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        result = {
            "flops": analysis.total(),
            "by_operator": dict(analysis.by_operator()),
            "unsupported": dict(analysis.unsupported_ops()),
        }
    model.train(was_training)
    return result


def flops_table(names: List[str], image_size: int = 224) -> str:
    """A text table of parameters and fvcore GFLOPs per model at ``image_size`` px."""
    rows = [f"{'model':<12}{'params':>14}{'GFLOPs':>10}  unsupported ops"]
    for name in names:
        model = timm.create_model(name)
        result = count_flops(model, (image_size, image_size))
        unsupported = ", ".join(sorted(result["unsupported"])) or "none"
        rows.append(f"{name:<12}{count_parameters(model):>14,}{result['flops'] / 1e9:>10.3f}  {unsupported}")
    return "\n".join(rows)
