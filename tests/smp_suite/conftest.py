"""Set-up for smp's own tests on the FEC encoders (``scripts/smp_suite.sh``).

* ImageNet weights: smp's model tests build models with smp's default ``encoder_weights="imagenet"``
  (smp's own suite downloads published test weights). FEC has none on the Hub, so a seeded stand-in
  ``fec_small`` checkpoint is installed through ``seg_plugin.install`` into a private Hugging
  Face cache, and smp loads it by its standard route, offline; ``tu-fec_small`` (DPT) loads the same
  file through timm.
* Tests that cannot apply to FEC are deselected by name in :data:`EXCLUDED`, each with its reason,
  listed in the run's summary; an entry that matches no collected test is an error (so the list
  cannot go stale).
* No silent skips: a skipped test fails the run.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable, Dict, List, Tuple

import pytest

_HF_CACHE = tempfile.mkdtemp(prefix="fec-smp-suite-hf-")
os.environ["HF_HUB_CACHE"] = _HF_CACHE  # before huggingface_hub is imported (smp imports it)
os.environ["HF_HUB_OFFLINE"] = "1"

import segmentation_models_pytorch as smp  # noqa: E402
import torch  # noqa: E402


def _every(cls: type) -> bool:
    return True


def _named(*names: str) -> Callable[[type], bool]:
    return lambda cls: cls.__name__ in names


def _scriptable_architecture(cls: type) -> bool:
    model_type = getattr(cls, "test_model_type", None)
    return model_type is not None and smp.MODEL_ARCHITECTURES_MAPPING[model_type]._is_torch_scriptable


#: test name -> (which tester classes, why it cannot apply to FEC).
EXCLUDED: Dict[str, Tuple[Callable[[type], bool], str]] = {
    "test_preserve_forward_output": (
        _every,
        "compares a model with the outputs stored with smp's published smp-test-models/<arch>-tu-resnet18 "
        "checkpoint on the Hugging Face Hub: a property of that ResNet-18 checkpoint, not of an encoder",
    ),
    "test_load_pretrained": (
        _named("TestFecSegformer", "TestFecDpt"),
        "checks the logits of smp-hub's published MiT-B0 SegFormer / ViT-L DPT ADE20K checkpoints",
    ),
    "test_in_channels_and_depth_and_out_classes": (
        _named("TestFecFpn"),
        "runs FPN at encoder_depth=3: smp's FPN decoder takes features[-4:], which for any encoder that starts "
        "at stride 4 includes the 0-channel stride-2 placeholder below depth 5; smp rejects its own such "
        "encoders (mit_b*) for FPN at depth < 5 by name. The same test runs for every other architecture, and "
        "tests/test_seg_models.py runs FPN's variant at depth 5",
    ),
    "test_torch_script": (
        _scriptable_architecture,
        "smp's model TorchScript test follows the architecture's class flag _is_torch_scriptable (True "
        "for this one), not the encoder's; FEC is not TorchScript code (FecEncoder._is_torch_scriptable "
        "is False and smp's encoder test_torch_script, which asserts the RuntimeError, runs here); "
        "tests/test_seg_models.py checks the model's clear RuntimeError",
    ),
}

_deselected: List[Tuple[str, str]] = []
_skipped: List[str] = []


def pytest_configure(config: pytest.Config) -> None:
    from huggingface_hub import constants

    if os.path.realpath(constants.HF_HUB_CACHE) != os.path.realpath(_HF_CACHE):
        raise pytest.UsageError("huggingface_hub was imported before the smp suite's conftest set HF_HUB_CACHE")
    import timm

    import seg_plugin

    generator = torch.Generator().manual_seed(0)
    model = timm.create_model("fec_small", num_classes=1000)
    state = {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in model.state_dict().items()}
    checkpoint = os.path.join(_HF_CACHE, "fec_small_standin.pth")
    torch.save({"state_dict": state}, checkpoint)
    seg_plugin.install(checkpoint, "fec_s")
    # smp's DPT tester builds tu-fec_small with pretrained=True (timm's route): point timm's registered
    # fec_small.in1k weights at the same file, as a user does with pretrained_cfg_overlay=dict(file=...).
    from timm.models._registry import _model_pretrained_cfgs

    _model_pretrained_cfgs["fec_small.in1k"].file = checkpoint


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_HF_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    keep, drop, used = [], [], set()
    for item in items:
        rule = EXCLUDED.get(item.name)
        if rule is not None and item.cls is not None and rule[0](item.cls):
            drop.append(item)
            used.add(item.name)
            _deselected.append((item.nodeid, rule[1]))
        else:
            keep.append(item)
    stale = sorted(set(EXCLUDED) - used)
    if stale and not (config.option.keyword or config.option.markexpr):
        raise pytest.UsageError(f"EXCLUDED entries match no collected test (remove them): {stale}")
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(f"{report.nodeid}: {report.longrepr}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.section("smp tests excluded for FEC (with reasons)")
    for nodeid, reason in _deselected:
        terminalreporter.write_line(f"{nodeid}: {reason}")
    if _skipped:
        terminalreporter.section("skipped tests (a skip fails this suite: nothing may be left out silently)")
        for line in _skipped:
            terminalreporter.write_line(line)
