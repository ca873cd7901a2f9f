"""ONNX export of the classifier and the features_only backbone, checked with onnxruntime.

onnxruntime is optional; CI installs it and sets ``FEC_REQUIRE_ONNXRUNTIME=1``, so that there a missing
onnxruntime fails these tests instead of skipping them.
"""
from __future__ import annotations

import os

import pytest
import timm
import torch

from fec_backbone.export import export_onnx

if os.environ.get("FEC_REQUIRE_ONNXRUNTIME") == "1":
    import onnxruntime  # noqa: F401  (required: an ImportError here fails the run)
else:
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install onnxruntime)")


@pytest.mark.parametrize("features_only,preset,outputs", [(False, "classification", 1), (True, "detection", 4)])
def test_onnx_export_matches_pytorch(tmp_path, features_only, preset, outputs):
    result = export_onnx(
        str(tmp_path / "fec.onnx"), "fec_small", features_only=features_only, preset=preset, image_size=64, num_classes=10
    )
    assert result["outputs"] == outputs
    assert result["max_abs_diff"] < 1e-4  # on a batch size other than the exported one (dynamic batch)
    assert (tmp_path / "fec.onnx").stat().st_size > 1_000_000


def test_fec_export_command(tmp_path, capsys):
    from fec_backbone.cli import main

    out = tmp_path / "cls.onnx"
    assert main(["export", "--model", "fec_small", "--size", "64", "--num-classes", "5", "--out", str(out)]) == 0
    assert out.exists() and "max abs difference" in capsys.readouterr().out
    assert main(["export", "--size", "48", "--out", str(tmp_path / "bad.onnx")]) == 2
    assert "divisible by 32" in capsys.readouterr().err


def test_export_takes_the_class_count_of_the_checkpoint(tmp_path, capsys):
    """``--num-classes`` defaults to the checkpoint's classifier (a 3-class training file of ours), as
    ``--help`` says."""
    from fec_backbone.cli import main

    model = timm.create_model("fec_small", num_classes=3)
    ckpt = tmp_path / "last.pth.tar"
    torch.save(dict(arch="fec_small", state_dict=model.state_dict(), class_names=["a", "b", "c"]), ckpt)
    out = tmp_path / "three.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--size", "64", "--out", str(out)]) == 0, capsys.readouterr().err
    import onnx

    graph = onnx.load(str(out), load_external_data=False).graph
    assert graph.output[0].type.tensor_type.shape.dim[1].dim_value == 3
