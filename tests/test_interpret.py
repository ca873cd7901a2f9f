"""Cluster assignments recorded from every clustering layer partition the points and chain across stages."""
from __future__ import annotations

import pytest
import timm
import torch

from fec_backbone import chain_to_input, record_clusters
from fec_backbone import cluster_ops
from fec_backbone.fec import ClusterMixer, ClusterPool
from helpers import brute_force_block_ids, brute_force_pool_targets, capture_inputs, randomize_scalars


@pytest.mark.parametrize("preset", ["classification", "detection"])
def test_records_cover_every_layer_and_partition_points(preset):
    model = timm.create_model("fec_small", preset=preset).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad(), record_clusters(model) as records:
        logits = model(x)
    assert [r.kind for r in records].count("block") == 14 and [r.kind for r in records].count("pool") == 3
    assert torch.equal(logits, model(x))  # recording changes nothing
    sizes = {0: 32, 1: 16, 2: 8, 3: 4}
    stage = 0
    for r in records:
        if r.kind == "pool":
            assert r.assignment.shape == (2, sizes[stage], sizes[stage])
            assert r.num_clusters == sizes[stage + 1] ** 2
            stage += 1
        else:
            heads = model.stages[stage].blocks[0].token_mixer.heads
            assert r.assignment.shape == (2, heads, sizes[stage], sizes[stage])
        # every point has exactly one cluster, with a valid id: a partition of the points
        assert r.assignment.min() >= 0 and r.assignment.max() < r.num_clusters
    assert all(layer.recorder is None for layer in model.modules() if hasattr(layer, "recorder"))


def test_block_ids_match_the_op_and_folds_separate_regions():
    model = timm.create_model("fec_small", preset="detection").eval()  # stage 0: 2x2 folds, 7x7 centres
    with torch.no_grad(), record_clusters(model) as records:
        model(torch.randn(1, 3, 128, 128))
    first = records[0].assignment[0, 0]  # [32, 32], regions of 16x16
    for r1 in range(2):
        for r2 in range(2):
            region = first[r1 * 16:(r1 + 1) * 16, r2 * 16:(r2 + 1) * 16]
            base = (r1 * 2 + r2) * 49
            assert region.min() >= base and region.max() < base + 49


def test_pool_assignment_matches_recomputed_argmax():
    model = timm.create_model("fec_small").eval()
    pool = model.stages[1].downsample
    x = torch.randn(1, 32, 16, 16)
    with torch.no_grad(), record_clusters(pool) as records:
        pool(x.permute(0, 2, 3, 1))  # stages run on channels-last maps
    feats = pool.conv_f(x)
    centres = torch.nn.functional.adaptive_avg_pool2d(feats, (8, 8)).flatten(2).transpose(1, 2)
    expected = cluster_ops.cosine_similarity(centres, feats.flatten(2).transpose(1, 2)).argmax(1).view(1, 16, 16)
    assert torch.equal(records[0].assignment, expected)  # no folds: output index == centre index


def _recorded_with_inputs(preset: str, size: int):
    """A float64 FEC (no near-ties), the records of one forward pass and every clustering layer's input."""
    model = timm.create_model("fec_small", preset=preset).double().eval()
    randomize_scalars(model)
    inputs, handles = capture_inputs(model, (ClusterMixer, ClusterPool))
    with torch.no_grad(), record_clusters(model) as records:
        model(torch.randn(1, 3, size, size, dtype=torch.float64))
    for handle in handles:
        handle.remove()
    return model, records, inputs


@pytest.mark.parametrize("preset,size", [("classification", 64), ("detection", 128)])
def test_every_record_equals_the_brute_force_assignment(preset, size):
    """Block ids and pool targets (the folded pool of the detection preset included) equal a pixel-by-pixel
    evaluation of the similarities from each layer's input, not the op's own index arithmetic."""
    model, records, inputs = _recorded_with_inputs(preset, size)
    layers = dict(model.named_modules())
    assert [r.name for r in records] == list(inputs)
    for r in records:
        if r.kind == "block":
            expected = brute_force_block_ids(layers[r.name], inputs[r.name])
        else:
            expected = brute_force_pool_targets(layers[r.name], inputs[r.name])
        assert torch.equal(r.assignment, expected), r.name
    if preset == "detection":
        assert layers[records[3].name].folds == (2, 2) and records[3].kind == "pool"


def test_chain_to_input_follows_every_pixel_through_the_pools():
    """Each stride-4 point's position on every stage's map, by following it pool by pool in plain Python
    from the brute-force pool targets, equals chain_to_input; detection preset (a folded first pool)."""
    model, records, inputs = _recorded_with_inputs("detection", 128)
    layers = dict(model.named_modules())
    pools = [r.name for r in records if r.kind == "pool"]
    targets = [brute_force_pool_targets(layers[name], inputs[name])[0] for name in pools]
    chains = chain_to_input(records)
    assert [tuple(c.shape) for c in chains] == [(1, 32, 32)] * 4
    for y in range(32):
        for x in range(32):
            position = (y, x)
            for k, target in enumerate(targets, start=1):
                flat = int(target[position])
                position = divmod(flat, target.shape[1] // 2)
                assert int(chains[k][0, y, x]) == flat, (k, y, x)


def test_recording_needs_fec_layers():
    with pytest.raises(ValueError, match="no FEC clustering layers"):
        with record_clusters(torch.nn.Linear(2, 2)):
            pass
