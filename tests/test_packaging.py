"""A built wheel ships the configs, and an installed (non-editable) copy finds them outside the checkout."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fec_backbone.model_zoo import get_config_file, list_configs, resolve_config

ROOT = Path(__file__).resolve().parent.parent


def test_lookup_in_the_checkout():
    names = list_configs()
    assert "detectron2/mask_rcnn_fec_s_fpn_1x_coco.yaml" in names and "segmentation/toy_linknet_fec_s.yaml" in names
    assert len(names) == len(list((ROOT / "configs").rglob("*.yaml")))
    assert get_config_file("configs/classification/toy.yaml") == str(ROOT / "configs" / "classification" / "toy.yaml")
    with pytest.raises(FileNotFoundError, match="available: detectron2/Base-FEC-RCNN-FPN.yaml"):
        get_config_file("detectron2/no_such.yaml")
    with pytest.raises(FileNotFoundError, match="config file not found: 'elsewhere.yaml'"):
        resolve_config("elsewhere.yaml")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a clean copy of the project's files (no stale build/ folder can leak in)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
                           check=True, capture_output=True, text=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(source)], check=True, capture_output=True)
    (path,) = out.glob("fec_backbone-*.whl")
    return path


def test_wheel_contains_every_config(wheel):
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".yaml")}
    expected = {f"fec_backbone/configs/{name}" for name in list_configs()}
    assert shipped == expected


def test_installed_copy_finds_its_configs_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    script = (
        "import fec_backbone, os, sys\n"
        "from fec_backbone.model_zoo import get_config_file, resolve_config\n"
        "assert fec_backbone.__file__.startswith(sys.argv[1]), fec_backbone.__file__\n"
        "path = get_config_file('detectron2/mask_rcnn_fec_s_fpn_1x_coco.yaml')\n"
        "assert path.startswith(sys.argv[1]) and os.path.isfile(path), path\n"
        "assert resolve_config('configs/segmentation/fpn_fec_s_ade20k_80k.yaml').startswith(sys.argv[1])\n"
        "import yaml\n"
        "base = yaml.safe_load(open(path))['_BASE_']\n"
        "assert os.path.isfile(os.path.join(os.path.dirname(path), base)), base\n"
        "print('ok', path)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    run = subprocess.run([sys.executable, "-c", script, str(site)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ok ")
