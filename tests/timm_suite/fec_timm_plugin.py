"""pytest plugin that puts the FEC models into timm's own model test suite.

Loaded with ``-p fec_timm_plugin`` so that the models are registered before timm's
``tests/test_models.py`` is collected (its parametrisation lists models at import time).
timm selects its forward_intermediates / prune tests by model *module* from a fixed list of timm's
own modules; the FEC models are added to the ``convnext`` entry (an architecture with the same
4-stage NCHW contract) so that those tests run for them too.
"""
import timm
from timm.models._registry import _module_to_models

import fec_backbone  # noqa: F401  (registers fec_small/fec_base/fec_large)

_module_to_models["convnext"].update(timm.list_models("fec_*"))
