"""docs/segmentation.md works as written: its ``bash`` and ``python`` blocks run in order in a fresh folder
(as a newcomer runs them from the repository root), and the commands of its ``text`` blocks, which need
ADE20K or the official checkpoint, parse and load their configs (the training itself stubbed)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from seg_plugin import train_ade20k, weights

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "segmentation.md"

pytestmark = pytest.mark.usefixtures("one_thread")


def blocks(path: Path = DOC):
    """``[(language, code)]`` of the fenced blocks, in order."""
    return re.findall(r"^```(\w+)\n(.*?)^```$", path.read_text(), flags=re.S | re.M)


def test_the_doc_has_runnable_blocks_and_describes_smp_fpn_honestly():
    langs = [lang for lang, _ in blocks()]
    assert set(langs) == {"bash", "python", "text"} and langs.count("bash") >= 2 and langs.count("python") >= 2
    text = " ".join(DOC.read_text().split())
    assert "smp's FPN is not the paper's Semantic FPN head" in text
    assert "the paper's Semantic FPN" not in text.replace("not the paper's Semantic FPN", "")


def test_text_block_commands_parse_and_load_their_configs(monkeypatch, capsys):
    seen = []

    def fake_train(cfg, out_dir, resume=None):
        seen.append((cfg, resume))
        return {"final": {"mIoU": 0.0, "aAcc": 0.0}, "sec_per_iter": 0.0}

    monkeypatch.setattr(train_ade20k, "train", fake_train)
    commands = [shlex.split(line) for lang, code in blocks() if lang == "text" for line in code.splitlines() if line]
    assert len(commands) == 6
    for args in commands:
        if args[0] == "torchrun":
            module = args.index("-m")
            args = ["python", "-m"] + args[module + 1:]
        assert args[:2] == ["python", "-m"], args
        if args[2] == "seg_plugin.train_ade20k":
            assert train_ade20k.main(args[3:]) == 0, args
        elif args[2] == "seg_plugin.weights":
            with pytest.raises(SystemExit) as done:
                weights.main(args[3:] + ["--help"])
            assert done.value.code == 0
        else:
            raise AssertionError(f"unexpected command {args}")
    capsys.readouterr()
    archs = [cfg.model.arch for cfg, _ in seen]
    assert archs == ["fpn", "fpn", "fpn", "upernet", "fpn"]
    assert seen[2][1] is not None and seen[-1][0].model.encoder == "fec_b"  # --resume; FEC-B without weights


def test_bash_and_python_blocks_run_as_written(tmp_path):
    """In document order, in a fresh folder, with the environment's python and torchrun first on PATH."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               OMP_NUM_THREADS="1", HF_HUB_CACHE=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    ran = 0
    for lang, code in blocks():
        if lang == "bash":
            done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=1200)
        elif lang == "python":
            done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=600)
        else:
            continue
        assert done.returncode == 0, f"{lang} block failed:\n{code}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        ran += 1
    assert ran == 4
    assert (tmp_path / "output" / "toy" / "model" / "config.json").is_file()
    assert (tmp_path / "output" / "toy_ddp" / "last.ckpt").is_file()
