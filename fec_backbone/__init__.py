"""FEC backbone: the model, its clustering op and its timm registration (``fec_small``/``_base``/``_large``).

Importing this package registers the models with timm, so ``timm.create_model("fec_small")`` works.
The public surface used by the adapters: :class:`FEC`, :data:`VARIANTS` (architecture per model name),
:data:`PRESETS` (clustering layouts per task), and the weight loader (:func:`load_fec_weights`,
:func:`read_fec_weights`, :func:`fit_state_dict`, :class:`CheckpointError`).
"""
from . import cluster_ops

try:
    from . import cluster_kernels  # the "triton" clustering backend; registers itself with cluster_ops
except ImportError:  # Triton is optional
    cluster_kernels = None
from .checkpoint import CheckpointError, LoadResult, detect_variant, fit_state_dict, load_fec_weights, read_fec_weights
from .fec import FEC, PRESETS, VARIANTS, checkpoint_filter_fn, count_parameters, fec_base, fec_large, fec_small
from .interpret import ClusterRecord, chain_to_input, record_clusters

__version__ = "0.1.0"

__all__ = [
    "FEC",
    "CheckpointError",
    "ClusterRecord",
    "LoadResult",
    "PRESETS",
    "VARIANTS",
    "chain_to_input",
    "checkpoint_filter_fn",
    "cluster_ops",
    "count_parameters",
    "detect_variant",
    "fec_base",
    "fec_large",
    "fec_small",
    "fit_state_dict",
    "load_fec_weights",
    "read_fec_weights",
    "record_clusters",
]
