"""ONNX export of FEC classifiers and ``features_only`` backbones, verified with onnxruntime.

    fec export --model fec_small [--checkpoint PATH] [--features-only] [--size 224] --out fec_small.onnx
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np
import timm
import torch

from .checkpoint import read_fec_weights

__all__ = ["export_onnx", "verify_onnx"]


def _outputs(result) -> List[torch.Tensor]:
    return list(result) if isinstance(result, (list, tuple)) else [result]


def verify_onnx(path: str, model: torch.nn.Module, example: torch.Tensor) -> float:
    """Run the ONNX file with onnxruntime on the CPU and return the largest absolute difference
    from the PyTorch model's outputs on ``example``."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in _outputs(model(example))]
    if len(got) != len(want):
        raise RuntimeError(f"ONNX graph has {len(got)} outputs, the model {len(want)}")
    return max(float(np.abs(g - w).max()) for g, w in zip(got, want))


def export_onnx(
    out: str,
    model_name: str = "fec_small",
    checkpoint: Optional[str] = None,
    features_only: bool = False,
    image_size: int = 224,
    batch_size: int = 2,
    preset: str = "classification",
    num_classes: Optional[int] = None,
    tolerance: float = 1e-4,
) -> Dict[str, object]:
    """Export ``model_name`` to ``out`` (dynamic batch dimension) and check it with onnxruntime.

    ``checkpoint`` may be an official FEC checkpoint or one of ours; ``num_classes`` defaults to its
    classifier's size (another value starts a new classifier), else to 1000. Raises ``RuntimeError`` if
    onnxruntime's outputs differ from PyTorch's by more than ``tolerance``.
    """
    kwargs: Dict[str, object] = dict(preset=preset, features_only=features_only)
    if checkpoint:
        state = read_fec_weights(checkpoint)
        head = state.get("head.weight")
        overlay: Dict[str, object] = dict(state_dict=state)
        if head is not None:  # the checkpoint's classifier size, so that timm keeps (not resets) its classifier
            overlay["num_classes"] = head.shape[0]
            num_classes = head.shape[0] if num_classes is None else num_classes
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = timm.create_model(model_name, **kwargs).eval()
    example = torch.randn(batch_size, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.onnx.export(
        model,
        (example,),
        out,
        dynamo=True,
        input_names=["image"],
        dynamic_shapes=({0: batch},),
        verbose=False,
    )
    diff = verify_onnx(out, model, torch.randn(batch_size + 1, 3, image_size, image_size))
    if diff > tolerance:
        raise RuntimeError(f"onnxruntime output differs from PyTorch by {diff:.2e} (> {tolerance:g}) for {out}")
    return {"path": out, "max_abs_diff": diff, "outputs": len(_outputs(model(example)))}
