"""The README and the guides in ``docs/`` work as written, so that they cannot go stale.

Convention of the documents: a ``bash`` or ``python`` block runs as written, in document order, in a fresh
folder (``configs/...`` names resolve to the packaged configs there), on the project's generated data; a
``text`` block holds commands that need what CI does not have (ImageNet, COCO, ADE20K, a GPU cluster, an
official checkpoint, the whole suite): each of its commands is parsed by the tool it names, with its
config files loaded and its overrides applied, and the work itself is not started. A command no checker
knows fails the test, as does a document without blocks.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

pytestmark = pytest.mark.usefixtures("one_thread")


def blocks(path: Path) -> List[Tuple[str, str]]:
    """``[(language, code)]`` of a Markdown file's fenced blocks, in order (a block without a language is
    output shown, not a command)."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def text_commands(path: Path) -> List[List[str]]:
    """The commands of the ``text`` blocks, a list of arguments per line (``# ...`` comments dropped)."""
    return [shlex.split(line, comments=True) for lang, code in blocks(path) if lang == "text"
            for line in code.splitlines() if shlex.split(line, comments=True)]


def _classification_train(args: List[str]) -> None:
    from classification import train

    if "--resume" in args:  # the checkpoint is the user's: its settings cannot be read here
        train.build_parser().parse_args(args)
    else:
        train.parse_args(args)


def _classification_validate(args: List[str]) -> None:
    from classification import validate

    validate.build_parser().parse_args(args)


def _classification_predict(args: List[str]) -> None:
    from classification import predict

    predict.build_parser().parse_args(args)


def _d2_config(parsed) -> None:
    """A Detectron2 command's ``--config-file`` loaded with its overrides applied."""
    import d2_plugin  # noqa: F401  (registers the backbones)
    from detectron2.config import get_cfg

    from fec_backbone.model_zoo import resolve_config

    cfg = get_cfg()
    d2_plugin.add_fec_config(cfg)
    cfg.merge_from_file(resolve_config(parsed.config_file))
    cfg.merge_from_list(parsed.opts)


def _d2_train_net(args: List[str]) -> None:
    from detectron2.engine import default_argument_parser

    _d2_config(default_argument_parser().parse_args(args))


def _seg_train(args: List[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from seg_plugin import train_ade20k

    monkeypatch.setattr(train_ade20k, "train", lambda cfg, out, resume=None, **kw: {
        "final": {"mIoU": 0.0, "aAcc": 0.0}, "sec_per_iter": 0.0})
    assert train_ade20k.main(args) == 0


def _seg_evaluate(args: List[str]) -> None:
    from seg_plugin import evaluate

    evaluate.build_parser().parse_args(args)


def _help(module: str) -> Callable[[List[str]], None]:
    """A command whose arguments need the user's files: its parser must accept the subcommand (``--help``)."""
    def check(args: List[str]) -> None:
        words = [a for a in args if not a.startswith("-")][:1]
        done = subprocess.run([sys.executable, "-m", module, *words, "--help"], capture_output=True, text=True,
                              cwd=REPO, env=_env(REPO))
        assert done.returncode == 0, done.stderr[-2000:]
    return check


def _fec(args: List[str]) -> None:
    from fec_backbone.cli import build_parser

    build_parser().parse_args(args)


def _d2_predict(args: List[str]) -> None:
    from d2_plugin.predict import get_parser, setup_cfg

    setup_cfg(get_parser().parse_args(args))


def _d2_export(args: List[str]) -> None:
    from d2_plugin.export_model import get_parser, setup_cfg

    setup_cfg(get_parser().parse_args(args))


def _d2_demo(args: List[str]) -> None:
    from d2_plugin.demo import get_parser

    _d2_config(get_parser().parse_args(args))


MODULES: Dict[str, Callable] = {
    "d2_plugin.demo": _d2_demo,
    "d2_plugin.export_model": _d2_export,
    "d2_plugin.predict": _d2_predict,
    "classification.train": _classification_train,
    "classification.validate": _classification_validate,
    "classification.predict": _classification_predict,
    "d2_plugin.train_net": _d2_train_net,
    "seg_plugin.train_ade20k": _seg_train,
    "seg_plugin.weights": _help("seg_plugin.weights"),
    "seg_plugin.evaluate": _seg_evaluate,
    "seg_plugin.export": _help("seg_plugin.export"),
}


def check_command(args: List[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Parse one ``text`` command with the checker of the tool it runs; returns the tool's name."""
    if args[0] == "torchrun":
        args = ["python", "-m"] + args[args.index("-m") + 1:]
    if args[:1] == ["bash"]:
        assert (REPO / args[1]).is_file(), args
        return args[1]
    if args[:1] == ["fec"]:
        _fec(args[1:])
        return "fec"
    if args[:2] == ["python", "-m"] and args[2] in MODULES:
        checker, rest = MODULES[args[2]], args[3:]
    elif args[:1] == ["python"] and args[1].endswith(".py"):
        script = args[1]
        module = script[:-3].replace("/", ".")
        if module in MODULES:
            checker, rest = MODULES[module], args[2:]
        else:  # a benchmark or other script: it exists and its parser runs
            done = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True,
                                  cwd=REPO, env=_env(REPO))
            assert done.returncode == 0, done.stderr[-2000:]
            return script
    else:
        raise AssertionError(f"no checker for the documented command {args}")
    if checker is _seg_train:
        checker(rest, monkeypatch)
    else:
        checker(rest)
    return args[2] if args[1] == "-m" else args[1]


def _env(cwd: Path) -> Dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                OMP_NUM_THREADS="1", HF_HUB_CACHE=str(cwd / "hf"), HF_HUB_OFFLINE="1",
                DETECTRON2_DATASETS=str(cwd / "datasets"))


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.name)
def test_text_commands_parse_with_their_configs(doc, monkeypatch, capsys):
    commands = text_commands(doc)
    for args in commands:
        check_command(args, monkeypatch)
    capsys.readouterr()


def official_stand_ins(folder: Path) -> None:
    """The official files the documents name, where a reader has the downloads: random weights in the
    official layouts and shapes (an ImageNet ``CheckpointSaver`` file, an mmseg ADE20K Semantic FPN)."""
    import argparse

    import torch
    from helpers import official_state_dict
    from reference_downstream import official_semantic_fpn_state_dict
    from reference_fec import reference_model

    weights = official_state_dict("fec_small")
    torch.save({"epoch": 309, "arch": "fec_small", "state_dict": weights, "state_dict_ema": weights,
                "args": argparse.Namespace(model="fec_small")}, folder / "fec_small.pth.tar")
    backbone = reference_model("fec_small", fork_feat=True, proposals=(10, 10, 5, 5))
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update(official_semantic_fpn_state_dict((32, 64, 196, 320), 150, seed=0))
    meta = {"mmseg_version": "0.24.0", "CLASSES": tuple(f"class_{i}" for i in range(150))}
    torch.save({"meta": meta, "state_dict": state}, folder / "fpn_fec_small_ade20k.pth")


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.name)
def test_bash_and_python_blocks_run_as_written(doc, tmp_path):
    found = blocks(doc)
    official_stand_ins(tmp_path)
    assert found, f"{doc.name} has no code blocks"
    assert {lang for lang, _ in found} <= {"bash", "python", "text", ""}, {lang for lang, _ in found}
    for lang, code in found:
        if lang == "bash":
            command = ["bash", "-e", "-o", "pipefail", "-c", code]
        elif lang == "python":
            command = [sys.executable, "-c", code]
        else:
            continue
        done = subprocess.run(command, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, f"{doc.name}: {lang} block failed:\n{code}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_the_checks_refuse_what_is_wrong(monkeypatch):
    """The checkers themselves: an unknown flag, a config that does not exist, an unknown tool."""
    with pytest.raises(SystemExit):
        check_command(["python", "-m", "classification.validate", "data", "--checkpoint", "x", "--encoder-weights", "n"],
                      monkeypatch)
    with pytest.raises(Exception, match="no_such"):
        check_command(["python", "d2_plugin/train_net.py", "--config-file", "configs/detectron2/no_such.yaml"], monkeypatch)
    with pytest.raises(AssertionError, match="no checker"):
        check_command(["python", "-m", "some.tool"], monkeypatch)
    assert blocks(REPO / "README.md")[0][0] == "text"
