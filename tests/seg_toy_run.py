"""A toy segmentation run for the evaluation, prediction and export tests: the toy recipe trained for a few
iterations on the generated data (a checkpoint, a saved model folder and the run's class names)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

from seg_plugin.toy_data import generate
from seg_plugin.train_ade20k import load_config, train

REPO = Path(__file__).resolve().parent.parent
TOY_CONFIG = REPO / "configs" / "segmentation" / "toy_linknet_fec_s.yaml"


def toy_run(folder: Path, iterations: int = 4) -> Tuple[Path, Path, Dict[str, Any]]:
    """(dataset root, run folder, the trainer's result) of the toy recipe trained ``iterations`` steps."""
    root = generate(folder / "toy_ade20k")
    cfg = load_config(TOY_CONFIG, {"data.root": str(root), "train.progress": False, "train.iterations": iterations,
                                   "train.eval_interval": iterations, "train.checkpoint_interval": iterations,
                                   "train.eval_at_start": False})
    result = train(cfg, folder / "run")
    return root, folder / "run", result
