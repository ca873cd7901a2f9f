"""python -m seg_plugin.export: a toy-trained smp model to ONNX with dynamic batch, height and width; onnxruntime
equals PyTorch (relative to the output's scale) at several sizes, one not divisible by 32, with no padding
needed outside the graph. Also the cause of the one failure dynamic sizes had: the exporter's fixed-kernel
adaptive pooling, which FEC's centres no longer go through under export."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from seg_plugin.export import PaddedSegmenter, main
from seg_plugin.inference import load_model
from seg_toy_run import toy_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return toy_run(tmp_path_factory.mktemp("seg_export"))


def test_export_has_dynamic_batch_height_width_and_matches_pytorch(run, tmp_path, capsys):
    _, out, _ = run
    path = tmp_path / "toy.onnx"
    assert main(["--checkpoint", str(out / "model"), "--out", str(path), "--check-sizes", "64x64", "75x101"]) == 0
    assert "75x101" in capsys.readouterr().out
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) and d for d in (dims[0], dims[2], dims[3])), dims
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wrapper = PaddedSegmenter(load_model(out / "model").model).eval()
    for batch, height, width in ((1, 33, 47), (3, 96, 64), (2, 130, 70)):
        x = torch.randn(batch, 3, height, width)
        (got,) = session.run(None, {"image": x.numpy()})
        with torch.inference_mode():
            want = wrapper(x).numpy()
        assert got.shape == want.shape == (batch, 3, height, width)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), (height, width)
