"""The ``MODEL.FEC`` config node, added to a Detectron2 config by :func:`add_fec_config`."""
from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["WEIGHTS_REMOVED", "add_fec_config"]

WEIGHTS_REMOVED = (
    "MODEL.FEC.WEIGHTS is gone: set MODEL.WEIGHTS /path/to/fec_small.pth instead. FEC ImageNet checkpoints "
    "(official or ours) load through MODEL.WEIGHTS into the backbone (d2_plugin.FECCheckpointer)"
)


def add_fec_config(cfg: CN) -> None:
    """Add the FEC backbone options to ``cfg`` (in place), with the reference detection defaults.
    ImageNet initialisation is ``MODEL.WEIGHTS`` (an FEC ImageNet checkpoint; see :mod:`d2_plugin.checkpoint`).

    ``MODEL.FEC``:

    * ``NAME``: timm model name (``fec_small``, ``fec_base``, ``fec_large``).
    * ``PRESET``: the clustering layout, a name in :data:`fec_backbone.PRESETS` (``detection``, the
      reference detection models' layout, is the only place its numbers are written).
    * ``PROPOSALS``: cluster centres per side, one per stage; empty (default): the preset's.
    * ``FOLDS``: clustering regions per side, one per stage; empty (default): the preset's.
    * ``DROP_PATH_RATE``: stochastic depth of the deepest block.
    * ``OUT_FEATURES``: stage maps to return, among ``res2`` .. ``res5`` (strides 4 .. 32).
    * ``FREEZE_AT``: 0 trains everything; 1 freezes the stem; ``k`` >= 2 also freezes stages
      ``res2`` .. ``res<k>`` (as ``MODEL.BACKBONE.FREEZE_AT`` for ResNets, which FEC ignores).
    * ``GRAD_CHECKPOINT``: recompute the stages in the backward pass to save memory.
    * ``CLUSTER_BACKEND``: the clustering backend (``auto``, ``torch``, ``matmul``, ``triton``;
      :mod:`fec_backbone.cluster_ops`).
    * ``COMPILE``: ``torch.compile`` the backbone, with static shapes on padded sizes (off by default: the
      speed-up is not measured on a GPU yet; see ``docs/detectron2.md``). ``COMPILE_SIZE_DIVISIBILITY``: what
      Detectron2 pads each batch to then (128: a few sizes, one graph each). ``COMPILE_MODE``: torch.compile's
      mode (``""``: default; ``reduce-overhead`` for CUDA graphs). ``COMPILE_BACKEND``: its backend.

    ``SOLVER.WEIGHT_DECAY_FEC_SCALARS``: the weight decay of FEC's clustering alpha/beta and layer scales;
    None (default) follows ``SOLVER.WEIGHT_DECAY``, as the official recipe decays every parameter. 0.0 (with
    ``SOLVER.WEIGHT_DECAY_NORM 0.0``) exempts them, which is not the official recipe (see
    :mod:`d2_plugin.solver`).
    """
    cfg.MODEL.FEC = CN()
    cfg.MODEL.FEC.NAME = "fec_small"
    cfg.MODEL.FEC.PRESET = "detection"
    cfg.MODEL.FEC.PROPOSALS = []
    cfg.MODEL.FEC.FOLDS = []
    cfg.MODEL.FEC.DROP_PATH_RATE = 0.0
    cfg.MODEL.FEC.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FEC.FREEZE_AT = 0
    cfg.MODEL.FEC.GRAD_CHECKPOINT = False
    cfg.MODEL.FEC.CLUSTER_BACKEND = "auto"
    cfg.MODEL.FEC.COMPILE = False
    cfg.MODEL.FEC.COMPILE_SIZE_DIVISIBILITY = 128
    cfg.MODEL.FEC.COMPILE_MODE = ""
    cfg.MODEL.FEC.COMPILE_BACKEND = "inductor"
    cfg.SOLVER.WEIGHT_DECAY_FEC_SCALARS = None
    # ImageNet weights are MODEL.WEIGHTS now: the old key fails on merge (file or command line), saying so
    if not cfg.key_is_renamed("MODEL.FEC.WEIGHTS"):
        cfg.register_renamed_key("MODEL.FEC.WEIGHTS", "MODEL.WEIGHTS", WEIGHTS_REMOVED)
