"""smp's own encoder and model tests (``tests/encoders/base.py``, ``tests/models/base.py`` and the
per-architecture testers of smp's ``tests/models/``), run for the FEC encoders.

smp's ``tests`` package comes from the vendored snapshot that ``scripts/smp_suite.sh`` unpacks; each
class here is one of smp's testers with the FEC encoder put in, as smp itself adds an encoder to its
suite. Tests that cannot apply to FEC are deselected in ``conftest.py``, each with its reason.
"""
from __future__ import annotations

from tests.encoders import base as encoder_base
from tests.models import (
    test_deeplab,
    test_dpt,
    test_fpn,
    test_linknet,
    test_manet,
    test_pan,
    test_psp,
    test_segformer,
    test_unet,
    test_unetplusplus,
    test_upernet,
)
from tests.utils import RUN_ALL_ENCODERS

import seg_plugin  # noqa: F401  (registers fec_s / fec_b / fec_l in smp's encoder registry)

FILES = [r"seg_plugin/", r"fec_backbone/"]


class TestFecEncoder(encoder_base.BaseEncoderTester):
    encoder_names = ["fec_s", "fec_b", "fec_l"] if RUN_ALL_ENCODERS else ["fec_s"]
    files_for_diff = FILES


class _Fec:
    """Mix-in: smp's model tester with the FEC encoder (ImageNet weights: the stand-in installed by
    conftest.py through ``seg_plugin.weights``, as smp's own tests load published test weights)."""

    test_encoder_name = "fec_s"
    files_for_diff = FILES


class TestFecUnet(_Fec, test_unet.TestUnetModel):
    pass


class TestFecUnetPlusPlus(_Fec, test_unetplusplus.TestUnetPlusPlusModel):
    pass


class TestFecMAnet(_Fec, test_manet.TestManetModel):
    pass


class TestFecLinknet(_Fec, test_linknet.TestLinknetModel):
    pass


class TestFecFpn(_Fec, test_fpn.TestFpnModel):
    pass


class TestFecPsp(_Fec, test_psp.TestPspModel):
    pass


class TestFecDeeplabV3(_Fec, test_deeplab.TestDeeplabV3Model):
    pass


class TestFecDeeplabV3Plus(_Fec, test_deeplab.TestDeeplabV3PlusModel):
    pass


class TestFecPan(_Fec, test_pan.TestPanModel):
    pass


class TestFecUpernet(_Fec, test_upernet.TestUnetModel):
    pass


class TestFecSegformer(_Fec, test_segformer.TestSegformerModel):
    pass


class TestFecDpt(_Fec, test_dpt.TestDPTModel):
    """smp's DPT takes only timm (``tu-``) encoders: FEC through timm, at smp's DPT test size (224)."""

    test_encoder_name = "tu-fec_small"
