"""FEC backbone: the model, its clustering op and its timm registration (``fec_small``/``_base``/``_large``).

Importing this package registers the models with timm, so ``timm.create_model("fec_small")`` works.
"""
from . import cluster_ops
from .fec import FEC, PRESETS, checkpoint_filter_fn, count_parameters, fec_base, fec_large, fec_small
from .interpret import ClusterRecord, chain_to_input, record_clusters

__version__ = "0.1.0"

__all__ = [
    "FEC",
    "ClusterRecord",
    "chain_to_input",
    "record_clusters",
    "PRESETS",
    "checkpoint_filter_fn",
    "cluster_ops",
    "count_parameters",
    "fec_base",
    "fec_large",
    "fec_small",
]
