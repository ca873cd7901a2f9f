"""ONNX export of the classifier and the features_only backbone, checked with onnxruntime."""
from __future__ import annotations

import pytest

from fec_backbone.export import export_onnx

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("features_only,preset,outputs", [(False, "classification", 1), (True, "detection", 4)])
def test_onnx_export_matches_pytorch(tmp_path, features_only, preset, outputs):
    result = export_onnx(
        str(tmp_path / "fec.onnx"), "fec_small", features_only=features_only, preset=preset, image_size=64, num_classes=10
    )
    assert result["outputs"] == outputs
    assert result["max_abs_diff"] < 1e-4  # on a batch size other than the exported one (dynamic batch)
    assert (tmp_path / "fec.onnx").stat().st_size > 1_000_000
