"""Parameters and fvcore FLOPs match the official figures, and no operator goes uncounted."""
from __future__ import annotations

import subprocess
import sys

import pytest
import timm

from fec_backbone import count_parameters
from fec_backbone.flops import count_flops

# Official code: parameters and fvcore GFLOPs at 224 px.
OFFICIAL = {"fec_small": (5_727_528, 1.366), "fec_base": (15_086_848, 3.350), "fec_large": (29_720_344, 6.509)}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_flops_within_two_percent_of_official(name):
    params, gflops = OFFICIAL[name]
    model = timm.create_model(name)
    result = count_flops(model)
    assert result["unsupported"] == {}
    assert count_parameters(model) == params
    assert abs(result["flops"] / 1e9 - gflops) / gflops < 0.02
    assert result["by_operator"]["scatter_add"] > 0 and result["by_operator"]["conv"] > 0


def test_fec_flops_command():
    out = subprocess.run(
        [sys.executable, "-m", "fec_backbone.cli", "flops", "--models", "fec_small"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "5,727,528" in out and "1.3" in out and "none" in out
