"""Export an FEC detector for deployment: Detectron2's ``tools/deploy/export_model.py`` with FEC registered.

    python -m d2_plugin.export_model --config-file configs/detectron2/mask_rcnn_fec_s_fpn_1x_coco.yaml \
        --export-method tracing --format torchscript --sample-image photo.jpg --output exported/ \
        MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu

The same options as Detectron2's tool (which cannot read an FEC config: it knows no ``MODEL.FEC`` and loads
with ``DetectionCheckpointer``); the config gets :func:`~d2_plugin.add_fec_config` and the weights
:class:`~d2_plugin.FECCheckpointer`. What works (``docs/detectron2.md``):

* ``--export-method tracing --format torchscript``: ``model.ts``, Detectron2's ``TracingAdapter`` over
  ``model.inference(do_postprocess=False)`` (boxes in the resized input's pixels, masks per box as 28x28
  probabilities; ``outputs_schema`` and ``detector_postprocess`` give the original image's). The trace
  follows the input's size: other sizes and orientations give the eager model's outputs too.
* ``--format onnx``: refused with the reason (:data:`ONNX_REFUSED`); nothing is written.
* ``--export-method scripting``: refused; FEC's clustering ops are not TorchScript code.
* ``--export-method caffe2_tracing``: refused; it needs Caffe2, which PyTorch 2 does not ship.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import detectron2.data.transforms as T
from detectron2.config import CfgNode, get_cfg
from detectron2.data import build_detection_test_loader, detection_utils
from detectron2.evaluation import COCOEvaluator, inference_on_dataset, print_csv_format
from detectron2.export import STABLE_ONNX_OPSET_VERSION, TracingAdapter, dump_torchscript_IR
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.utils.logger import setup_logger

from fec_backbone.model_zoo import resolve_config

from .checkpoint import FECCheckpointer
from .config import add_fec_config

__all__ = ["ExportError", "export_tracing", "get_parser", "main", "sample_inputs", "setup_cfg"]

logger = logging.getLogger("d2_plugin.export_model")

SCRIPTING_REFUSED = (
    "--export-method scripting does not work with FEC: torch.jit.script compiles the whole model, and FEC's "
    "clustering ops are not TorchScript code (fec_backbone.FEC refuses torch.jit.script). Use --export-method "
    "tracing --format torchscript"
)
CAFFE2_REFUSED = (
    "--export-method caffe2_tracing needs Caffe2 (caffe2.python), which PyTorch {torch} does not ship (Caffe2 left "
    "PyTorch in 2.0), so detectron2.export has no Caffe2Tracer. Use --export-method tracing --format torchscript"
)

ONNX_REFUSED = (
    "--format onnx does not work with the FEC detector: the TorchScript-based ONNX exporter cannot export FEC's "
    "norm (fec_backbone/norm.py, group_norm1_nhwc: F.layer_norm over the map's own shape, which is not a constant "
    "in the ONNX graph), and the torch.export-based exporter (dynamo=True) stops earlier, in Detectron2's "
    "ImageList padding (a data-dependent padded size). Use --format torchscript; the FEC backbone alone exports "
    "to ONNX with `fec export --features-only`. The exporter said: {err}"
)


class ExportError(RuntimeError):
    """An export this model or this PyTorch cannot do; the message says what does not work and why."""


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """The config of ``--config-file`` with the ``MODEL.FEC`` options and the overrides; no loader workers."""
    cfg = get_cfg()
    cfg.DATALOADER.NUM_WORKERS = 0
    add_fec_config(cfg)
    cfg.merge_from_file(resolve_config(args.config_file))
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def sample_inputs(cfg: CfgNode, sample_image: Optional[str]) -> List[Dict[str, Any]]:
    """One input as ``DefaultPredictor`` prepares it (shortest edge ``INPUT.MIN_SIZE_TEST``), from
    ``sample_image``, or else the first batch of ``DATASETS.TEST[0]``."""
    if sample_image is None:
        return next(iter(build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])))
    original = detection_utils.read_image(sample_image, format=cfg.INPUT.FORMAT)
    height, width = original.shape[:2]
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
    image = aug.get_transform(original).apply_image(original)
    return [{"image": torch.as_tensor(image.astype("float32").transpose(2, 0, 1)), "height": height, "width": width}]


def _inference(model: torch.nn.Module) -> Optional[Callable]:
    if isinstance(model, GeneralizedRCNN):
        def inference(model, inputs):
            return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]  # masks stay per box
        return inference
    return None


def export_tracing(model: torch.nn.Module, inputs: List[Dict[str, Any]], fmt: str,
                   output: str) -> Tuple[TracingAdapter, Optional[torch.jit.ScriptModule]]:
    """Trace ``model`` (eval mode) on ``inputs[0]["image"]`` into ``output/model.ts`` or ``output/model.onnx``;
    returns the adapter (its ``outputs_schema`` rebuilds Instances from the flat outputs) and the TorchScript
    module (None for ONNX)."""
    image = inputs[0]["image"]
    adapter = TracingAdapter(model, [{"image": image}], _inference(model))
    os.makedirs(output, exist_ok=True)
    ts_model = None
    if fmt == "torchscript":
        ts_model = torch.jit.trace(adapter, (image,))
        torch.jit.save(ts_model, os.path.join(output, "model.ts"))
        dump_torchscript_IR(ts_model, output)
    elif fmt == "onnx":
        path = os.path.join(output, "model.onnx")
        try:
            with open(path, "wb") as f:
                torch.onnx.export(adapter, (image,), f, opset_version=STABLE_ONNX_OPSET_VERSION, dynamo=False)
        except torch.onnx.errors.SymbolicValueError as err:
            os.remove(path)
            raise ExportError(ONNX_REFUSED.format(err=str(err).splitlines()[0][:300])) from err
    else:
        raise ExportError(f"--export-method tracing writes torchscript or onnx, not {fmt!r}")
    logger.info("Inputs schema: %s", adapter.inputs_schema)
    logger.info("Outputs schema: %s", adapter.outputs_schema)
    return adapter, ts_model


def _eval_wrapper(adapter: TracingAdapter, ts_model: torch.jit.ScriptModule) -> Callable:
    def run(inputs):
        item = inputs[0]
        instances = adapter.outputs_schema(ts_model(item["image"]))[0]["instances"]
        return [{"instances": detector_postprocess(instances, item["height"], item["width"])}]
    return run


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m d2_plugin.export_model",
                                     description="Export an FEC detector (Detectron2's tools/deploy/export_model.py).")
    parser.add_argument("--format", choices=["caffe2", "onnx", "torchscript"], default="torchscript",
                        help="output format")
    parser.add_argument("--export-method", choices=["caffe2_tracing", "tracing", "scripting"], default="tracing",
                        help="method to export the model (FEC: tracing)")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path or packaged name of the config")
    parser.add_argument("--sample-image", default=None, help="image to trace with (default: DATASETS.TEST[0]'s first)")
    parser.add_argument("--run-eval", action="store_true", help="evaluate the exported TorchScript model on DATASETS.TEST[0]")
    parser.add_argument("--output", required=True, help="output folder for the exported model")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="detectron2", abbrev_name="d2")
    setup_logger(name="d2_plugin", abbrev_name="fec")
    logger.info("Command line arguments: %s", args)
    try:
        if args.export_method == "scripting":
            raise ExportError(SCRIPTING_REFUSED)
        if args.export_method == "caffe2_tracing":
            raise ExportError(CAFFE2_REFUSED.format(torch=torch.__version__))
        cfg = setup_cfg(args)
        model = build_model(cfg)
        FECCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS)
        model.eval()
        adapter, ts_model = export_tracing(model, sample_inputs(cfg, args.sample_image), args.format, args.output)
        if args.run_eval:
            if ts_model is None:
                raise ExportError(f"--run-eval runs the exported TorchScript model; not implemented for {args.format}")
            dataset = cfg.DATASETS.TEST[0]
            evaluator = COCOEvaluator(dataset, output_dir=args.output)
            metrics = inference_on_dataset(_eval_wrapper(adapter, ts_model),
                                           build_detection_test_loader(cfg, dataset), evaluator)
            print_csv_format(metrics)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    logger.info("Success.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
