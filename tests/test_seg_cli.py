"""The segmentation command lines as a new user meets them: every command the seg configs' comments show
runs as written, the documented ``model.arch`` switch of the FPN recipe trains, every ``--help`` is
complete, and the demo reports what it learned against its control and fails when it did not learn."""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seg_plugin import demo, toy_data, train_ade20k, weights
from seg_plugin.toy_data import generate
from seg_plugin.train_ade20k import ConfigError, load_config, model_plan

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "segmentation"
FPN_S = CONFIGS / "fpn_fec_s_ade20k_80k.yaml"
#: Overrides that shrink an ADE20K recipe to a few seconds on the toy data (none changes the model).
SHRINK = ["model.encoder_weights", "none", "train.iterations", "1", "train.batch_size", "2", "data.crop_size", "64",
          "data.scale", "[256, 64]", "data.eval_scale", "[128, 32]", "data.workers", "0", "train.eval_interval", "1",
          "train.checkpoint_interval", "1", "train.tensorboard", "false", "train.progress", "false",
          "train.device", "cpu", "train.cpu_threads", "1"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "toy_ade20k")


def env(**extra):
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", **extra)


def run(args, cwd=REPO, timeout=600, **extra):
    return subprocess.run([sys.executable if a == "python" else a for a in args], cwd=cwd, env=env(**extra),
                          capture_output=True, text=True, timeout=timeout)


def commented_commands(path: Path):
    """The shell commands in a config's comments (``#   python -m ...``, ``\\`` continuations joined), and the
    inline ``python -m`` commands with arguments of its other comment lines (up to a parenthesis)."""
    lines = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    commands, current = [], ""
    for line in lines:
        if current or line.startswith(("python -m", "torchrun")):
            current += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                commands.append(shlex.split(current))
                current = ""
        else:  # an inline command (one with arguments, not a mere mention of a module)
            found = re.search(r"python -m [\w.]+(?: [^\s()]+)+", line)
            if found:
                commands.append(shlex.split(found.group(0)))
    return commands


def with_option(args, option, value):
    args = list(args)
    args[args.index(option) + 1] = str(value)
    return args


def test_config_comments_show_only_real_commands(monkeypatch, capsys):
    """Each command in the configs' comments parses as written (the trainer's: its config and overrides load;
    the training itself is stubbed here), and the override they name for training without ImageNet weights
    is a real setting. (The retired ``--encoder-weights`` flag would stop argparse.)"""
    seen = []

    def fake_train(cfg, out_dir, resume=None):
        seen.append(cfg)
        return {"final": {"mIoU": 0.0, "aAcc": 0.0}, "sec_per_iter": 0.0}

    monkeypatch.setattr(train_ade20k, "train", fake_train)
    count = 0
    for path in sorted(CONFIGS.glob("*.yaml")):
        text = path.read_text()
        assert "--encoder-weights" not in text
        for args in commented_commands(path):
            assert args[:2] == ["python", "-m"], args
            module = args[2]
            if module == "seg_plugin.train_ade20k":
                assert train_ade20k.main(args[3:]) == 0, (path.name, args)
                assert seen[-1].model.encoder in ("fec_s", "fec_b", "fec_l")
            elif module == "seg_plugin.weights":
                assert args[3] == "install" and args[4] == "--checkpoint", args
                with pytest.raises(SystemExit) as done:  # parses: exits at --help
                    weights.main(args[3:] + ["--help"])
                assert done.value.code == 0
            elif module == "seg_plugin.toy_data":
                assert args[3:] == ["--out", "data/toy_ade20k"], args
            else:
                raise AssertionError(f"{path.name}: unexpected command {args}")
            count += 1
        if "model.encoder_weights none" in text:
            assert load_config(path, {"model.encoder_weights": "none"}).model.encoder_weights == "none"
            assert model_plan(load_config(path, {"model.encoder_weights": "none"})).weights is None
    capsys.readouterr()
    assert count == 8


@pytest.mark.parametrize("arch, model_class", [(None, "SemanticFPN"), ("fpn", "FPN"), ("upernet", "UPerNet")])
def test_fpn_recipe_trains_the_official_model_and_switches_on_the_command_line(toy, tmp_path, arch, model_class):
    """The FPN recipe's own command trains the official Semantic FPN and prints its decoder's parameter count
    (4,161,174 on FEC-S); ``model.arch fpn`` (smp's FPN) and ``model.arch upernet`` (the config's overrides)
    switch it, the other architectures' arguments staying behind under their names. Shrunk to one iteration."""
    (command,) = [c for c in commented_commands(FPN_S) if c[2] == "seg_plugin.train_ade20k"]
    command = with_option(with_option(command, "--data-root", toy), "--out-dir", tmp_path / "run")
    done = run(command + (["model.arch", arch] if arch else []) + SHRINK)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "final mIoU" in done.stdout
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["_model_class"] == model_class
    if arch is None:
        assert "semanticfpn-fec_s (SemanticFPN): 9,490,394 parameters" in done.stdout
        assert "decoder + segmentation_head: 4,161,174 parameters" in done.stdout
        assert (saved["decoder_pyramid_channels"], saved["decoder_segmentation_channels"]) == (256, 128)
    if arch == "upernet":
        assert "decoder_dropout" not in saved


def test_arch_kwargs_per_architecture_and_todays_plain_form(tmp_path):
    switched = load_config(FPN_S, {"model.arch": "upernet"})
    assert model_plan(switched).create["arch"] == "upernet" and "decoder_dropout" not in model_plan(switched).create
    official = model_plan(load_config(FPN_S)).create
    assert official["arch"] == "semanticfpn" and official["decoder_dropout"] == 0.1
    assert (official["decoder_pyramid_channels"], official["decoder_segmentation_channels"]) == (256, 128)
    changed = load_config(FPN_S, {"model.arch_kwargs.semanticfpn.decoder_dropout": 0.2})
    assert model_plan(changed).create["decoder_dropout"] == 0.2
    smp_fpn = load_config(FPN_S, {"model.arch": "fpn", "model.arch_kwargs.fpn.decoder_dropout": 0.3})
    assert model_plan(smp_fpn).create["arch"] == "fpn" and model_plan(smp_fpn).create["decoder_dropout"] == 0.3
    assert "decoder_segmentation_channels" not in model_plan(smp_fpn).create  # the Semantic FPN's stay behind
    other = load_config(FPN_S, {"model.arch": "upernet", "model.arch_kwargs": {"upernet": {"decoder_channels": 128}}})
    assert model_plan(other).create["decoder_channels"] == 128
    with pytest.raises(ConfigError, match=r"model.arch_kwargs.upernet \['decoder_dropout'\] are not arguments of "
                                          r"smp.UPerNet"):
        load_config(FPN_S, {"model.arch_kwargs": {"fpn": {"decoder_dropout": 0.1},
                                                  "upernet": {"decoder_dropout": 0.1}}})
    # today's plain form: arguments of model.arch, as before; switching then says where they belong
    plain = tmp_path / "plain.yaml"
    plain.write_text("model:\n  arch: fpn\n  arch_kwargs:\n    decoder_dropout: 0.3\n")
    assert model_plan(load_config(plain)).create["decoder_dropout"] == 0.3
    with pytest.raises(ConfigError, match=r"model.arch_kwargs \['decoder_dropout'\] are not arguments of smp.UPerNet "
                                          r".*under its name, e.g. model.arch_kwargs.fpn.decoder_dropout"):
        load_config(plain, {"model.arch": "upernet"})


def test_weights_install_command_in_the_config_comment_runs_as_written(tmp_path):
    from helpers import official_state_dict

    (install,) = [c for c in commented_commands(FPN_S) if c[2] == "seg_plugin.weights"]
    torch.save(official_state_dict("fec_small", seed=1), tmp_path / install[-1])  # fec_small.pth, in the cwd
    done = run(install, cwd=tmp_path, HF_HUB_CACHE=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr
    assert "installed fec_s ImageNet weights" in done.stdout and "RuntimeWarning" not in done.stderr


def test_toy_commands_in_the_config_comment_run_as_written(tmp_path):
    """The toy config's two commands, in a fresh folder (the trainer's shortened to 4 iterations), and the
    model it saves reloads in a new process."""
    generate_cmd, train_cmd = commented_commands(CONFIGS / "toy_linknet_fec_s.yaml")
    made = run(generate_cmd, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "480 training, 32 validation images" in made.stdout
    trained = run(train_cmd + ["train.iterations", "4", "train.progress", "false"], cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "built as smp's tu-fec_small" in trained.stdout
    reload = ("import seg_plugin, segmentation_models_pytorch as smp; "
              "print(type(smp.from_pretrained('output/toy/model')).__name__)")
    loaded = run(["python", "-c", reload], cwd=tmp_path)
    assert loaded.returncode == 0 and loaded.stdout.splitlines()[-1] == "Linknet", loaded.stderr[-2000:]


def parser_of(main, monkeypatch, argv=()):
    """The argparse parser a command-line ``main`` builds (caught at ``parse_args``)."""
    caught = {}

    def catch(self, args=None, namespace=None):
        caught["parser"] = self
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(SystemExit):
        main(list(argv))
    monkeypatch.undo()
    return caught["parser"]


MODULES = {"seg_plugin.demo": demo.main, "seg_plugin.toy_data": toy_data.main,
           "seg_plugin.train_ade20k": train_ade20k.main, "seg_plugin.weights": weights.main}


@pytest.mark.parametrize("module", list(MODULES))
def test_help_is_complete(module, monkeypatch):
    """``python -m <module> --help`` describes the command in whole sentences and every option has a help
    text (subcommands too)."""
    parser = parser_of(MODULES[module], monkeypatch)
    parsers = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers += list(action.choices.values())
            assert all(a.help for a in action._choices_actions), module
    assert parser.description and parser.description.rstrip().endswith("."), parser.description
    for p in parsers:
        for action in p._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                assert action.help and action.help != argparse.SUPPRESS, (module, p.prog, action.dest)
    done = run(["python", "-m", module, "--help"])
    assert done.returncode == 0 and not done.stderr, done.stderr
    words = " ".join(parser.description.split())
    assert words in " ".join(done.stdout.split())


def test_demo_reports_what_it_learned_against_the_untrained_model(toy, tmp_path):
    done = run(["python", "-m", "seg_plugin.demo", "--out-dir", str(tmp_path / "demo"), "--data-root", str(toy)],
               timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    untrained, trained = map(float, re.search(r"mIoU untrained ([\d.]+) -> trained ([\d.]+)", done.stdout).groups())
    assert trained >= untrained + 30 and "learned: yes" in done.stdout
    assert "FAILED" not in done.stdout
    assert (tmp_path / "demo" / "model" / "config.json").is_file() and (tmp_path / "demo" / "metrics.csv").is_file()


def test_demo_exits_non_zero_when_it_did_not_learn(toy, tmp_path):
    done = run(["python", "-m", "seg_plugin.demo", "--out-dir", str(tmp_path / "demo"), "--data-root", str(toy),
                "--iterations", "2"])
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "learned: NO" in done.stdout
