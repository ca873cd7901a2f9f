"""The project's yaml configs, found from a source checkout or an installed (non-editable) package.

In a checkout the configs live in the top-level ``configs/`` folder; a built wheel ships the same files
as package data under ``fec_backbone/configs/``. :func:`get_config_file` finds them either way, in the
style of ``detectron2.model_zoo.get_config_file``::

    from fec_backbone.model_zoo import get_config_file

    cfg.merge_from_file(get_config_file("detectron2/mask_rcnn_fec_s_fpn_1x_coco.yaml"))
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

__all__ = ["config_root", "get_config_file", "list_configs", "resolve_config"]

_GROUPS = ("classification", "detectron2", "segmentation")


def config_root() -> Path:
    """The folder holding ``classification/``, ``detectron2/`` and ``segmentation/`` configs."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):  # installed package, then source checkout
        if all((candidate / group).is_dir() for group in _GROUPS):
            return candidate
    raise FileNotFoundError(
        f"the FEC configs are missing: neither {here / 'configs'} (installed package) nor {here.parent / 'configs'} "
        "(source checkout) holds them; reinstall the package (pip install fec-backbone) or use a checkout"
    )


def list_configs() -> List[str]:
    """Every config's name relative to :func:`config_root`, e.g. ``detectron2/toy_mask_rcnn_fec_s.yaml``."""
    root = config_root()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))


def get_config_file(name: str) -> str:
    """The path of config ``name`` (``"<group>/<file>.yaml"``, a leading ``configs/`` is accepted);
    raises ``FileNotFoundError`` listing the configs of that group when there is no such config."""
    name = name.replace(os.sep, "/")
    name = name[len("configs/"):] if name.startswith("configs/") else name
    path = config_root() / name
    if not path.is_file():
        group = name.split("/", 1)[0]
        known = [c for c in list_configs() if c.startswith(group + "/")] or list_configs()
        raise FileNotFoundError(f"no FEC config {name!r}; available: {', '.join(known)}")
    return str(path)


def resolve_config(path: str) -> str:
    """``path`` itself when it is a file, else the packaged config of that name (so ``configs/...``
    paths of the documentation work outside a checkout too)."""
    if os.path.isfile(path):
        return path
    try:
        return get_config_file(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"config file not found: {path!r} (not a file, and {err})") from None
