"""ONNX export of a trained segmentation model with dynamic batch, height and width, checked with onnxruntime.

The graph is :class:`PaddedSegmenter`: the smp model with its input padded to multiples of 32 and its logits
cropped back, so it takes normalised images ``[B, 3, H, W]`` of any size (mean (123.675, 116.28, 103.53),
std (58.395, 57.12, 57.375) on the 0-255 scale, RGB) and returns logits ``[B, classes, H, W]``; the
resize to the evaluation scale stays outside. Exported with ``torch.onnx.export(dynamo=True)`` and checked
against PyTorch at the ``--check-sizes`` (one not divisible by 32 by default), as
:func:`fec_backbone.export.verify_onnx` checks the classifier export.

    python -m seg_plugin.export --checkpoint output/toy/model --out toy.onnx
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from fec_backbone import CheckpointError
from fec_backbone.export import verify_onnx

from .inference import load_model

__all__ = ["PaddedSegmenter", "export_segmentation_onnx", "main"]

#: Sizes (H, W) checked after export: square, non-square, and sides not divisible by 32.
CHECK_SIZES: Tuple[Tuple[int, int], ...] = ((64, 64), (96, 160), (75, 101))


class PaddedSegmenter(nn.Module):
    """``model`` on images of any size: ``[B, 3, H, W]`` padded right and bottom with 0 to multiples of
    ``divisor``, logits ``[B, C, H, W]`` cropped back."""

    def __init__(self, model: nn.Module, divisor: int = 32):
        super().__init__()
        self.model, self.divisor = model, divisor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2], image.shape[-1]
        pad_h = (self.divisor - height % self.divisor) % self.divisor
        pad_w = (self.divisor - width % self.divisor) % self.divisor
        logits = self.model(F.pad(image, (0, pad_w, 0, pad_h)))
        return logits[:, :, :height, :width]


def export_segmentation_onnx(model: nn.Module, out: str, example_size: Tuple[int, int] = (64, 96),
                             check_sizes: Sequence[Tuple[int, int]] = CHECK_SIZES, divisor: int = 32,
                             tolerance: float = 1e-4) -> Dict[str, object]:
    """Export ``model`` (wrapped in :class:`PaddedSegmenter`) to ``out`` with dynamic batch, height and width,
    and run it with onnxruntime at each of ``check_sizes`` (batch 2). Raises ``RuntimeError`` when the largest
    difference from PyTorch, relative to the largest PyTorch logit, exceeds ``tolerance``. Returns the
    relative error per size."""
    wrapper = PaddedSegmenter(model.eval(), divisor).eval()
    example = torch.randn(2, 3, *example_size)
    dims = ({0: torch.export.Dim("batch", min=1, max=256), 2: torch.export.Dim("height", min=1, max=4096),
             3: torch.export.Dim("width", min=1, max=4096)},)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.onnx.export(wrapper, (example,), out, dynamo=True, input_names=["image"], output_names=["logits"],
                      dynamic_shapes=dims, verbose=False)
    errors: Dict[str, float] = {}
    for height, width in check_sizes:
        x = torch.randn(2, 3, height, width)
        with torch.inference_mode():
            scale = float(wrapper(x).abs().max())
        errors[f"{height}x{width}"] = verify_onnx(out, wrapper, x) / max(scale, 1e-12)
    worst = max(errors.values())
    if worst > tolerance:
        raise RuntimeError(f"onnxruntime differs from PyTorch by {worst:.2e} of the output's scale (> {tolerance:g}) "
                           f"for {out}: {errors}")
    return {"path": out, "relative_error": errors}


def _size(text: str) -> Tuple[int, int]:
    values = [int(v) for v in text.lower().split("x")]
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give HxW, e.g. 75x101")
    return values[0], values[1]


def main(argv: Optional[List[str]] = None) -> int:
    description, _, epilog = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(prog="python -m seg_plugin.export", description=" ".join(description.split()),
                                     epilog=epilog.rpartition("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="last.ckpt (or its run folder), a saved smp model folder, or an official mmseg ADE20K file")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--check-sizes", type=_size, nargs="+", default=list(CHECK_SIZES),
                        help="HxW sizes checked with onnxruntime (default: 64x64 96x160 75x101)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest error allowed, relative to the largest logit (default: %(default)g)")
    args = parser.parse_args(argv)
    try:
        loaded = load_model(args.checkpoint)
        result = export_segmentation_onnx(loaded.model, args.out, check_sizes=args.check_sizes,
                                          divisor=loaded.augment.size_divisor, tolerance=args.tolerance)
    except (CheckpointError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{size} {err:.1e}" for size, err in result["relative_error"].items())
    print(f"{loaded.kind} {loaded.source} ({loaded.num_classes} classes) -> {args.out}: inputs image "
          f"[batch, 3, height, width] (any size), outputs logits [batch, {loaded.num_classes}, height, width]; "
          f"onnxruntime vs PyTorch, largest error relative to the largest logit: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
