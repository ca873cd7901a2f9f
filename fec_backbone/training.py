"""Training helpers shared by the classification, Detectron2 and segmentation pipelines.

* :func:`atomic_write` / :func:`atomic_save`: a crash leaves the old file or the new one, never a part.
* :func:`capture_rng_state` / :func:`restore_rng_state`: Python, NumPy, torch and CUDA generators as
  tensors and plain values, so a checkpoint holding them loads with ``torch.load(weights_only=True)``.
* :class:`ResumableSampler`: an endless stream of shuffled epochs split across ranks that can start at
  any position, so a resumed run reads the samples an uninterrupted run would have read.
* :func:`ensure_generated`: one manifest scheme for generated (toy) data folders.
* :func:`check_resume_config`: one resume policy, only run-only settings may change on resume.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterable, Iterator, List, Mapping, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = [
    "GeneratedDataError",
    "ResumableSampler",
    "ResumeConfigError",
    "atomic_save",
    "atomic_write",
    "capture_rng_state",
    "check_resume_config",
    "ensure_generated",
    "flatten_config",
    "restore_rng_state",
]

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; on success it is flushed to disk and
    renamed over ``path`` (with the usual permissions), on an exception removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def capture_rng_state() -> Dict[str, Any]:
    """This process's Python, NumPy (global), torch CPU and CUDA generator states, as tensors and plain
    values (``weights_only``-loadable); restore with :func:`restore_rng_state`."""
    version, words, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the generators to a :func:`capture_rng_state` result (CUDA states only where CUDA is used)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["words"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumableSampler(Sampler):
    """An endless stream of dataset indices for one rank, started ``start`` samples in.

    The global stream is epoch after epoch of permutations of ``range(size)``, epoch ``e`` drawn from
    ``seed + e`` (``shuffle=False``: in order); rank ``r`` of ``world_size`` takes global positions
    ``r, r + world_size, ...`` (Detectron2's ``TrainingSampler`` split). ``start`` counts this rank's
    samples already consumed: ``iterations done x per-rank batch``. With ``positions=True`` it yields
    ``(index, position in this rank's stream)``, for datasets whose augmentation is seeded by position.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0, start: int = 0,
                 shuffle: bool = True, positions: bool = False):
        if size < 1:
            raise ValueError(f"ResumableSampler needs a non-empty dataset, got size {size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.size, self.rank, self.world_size, self.seed = size, rank, world_size, seed
        self.start, self.shuffle, self.positions = start, shuffle, positions

    def _epoch(self, epoch: int) -> List[int]:
        if not self.shuffle:
            return list(range(self.size))
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()

    def __iter__(self) -> Iterator[Union[int, Tuple[int, int]]]:
        position = self.start
        epoch, offset = divmod(position * self.world_size + self.rank, self.size)
        order = self._epoch(epoch)
        while True:
            yield (order[offset], position) if self.positions else order[offset]
            position += 1
            offset += self.world_size
            while offset >= self.size:
                epoch, offset = epoch + 1, offset - self.size
                order = self._epoch(epoch)


class GeneratedDataError(FileExistsError):
    """A folder that :func:`ensure_generated` will not write into (it holds data we did not generate)."""


def ensure_generated(root: PathLike, settings: Mapping[str, Any], write: Callable[[Path], None],
                     manifest: str = "fec_generated.json") -> bool:
    """Make ``root`` hold the data that ``write(folder)`` generates from ``settings``.

    A folder generated with the same settings is kept (returns False); one generated by us with other
    settings is regenerated; a non-empty folder without our manifest raises :class:`GeneratedDataError`.
    ``write`` fills a temporary sibling folder that replaces ``root`` at the end, so an interrupted run
    leaves no half dataset. ``settings`` must be JSON-serialisable. Returns True when it wrote.
    """
    root = Path(root)
    wanted = json.loads(json.dumps(dict(settings)))
    marker = root / manifest
    if marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == wanted:
                return False
        except ValueError:
            pass
    elif root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise GeneratedDataError(
            f"{root} exists and holds files that were not generated here (no {manifest}); "
            "choose a new or empty folder, or remove it"
        )
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        (tmp / manifest).write_text(json.dumps(wanted, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


class ResumeConfigError(ValueError):
    """A resumed run whose settings differ from the checkpoint's in more than run-only settings."""


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested mappings as ``{"section.key": value}``; tuples become lists, so saved and loaded agree."""
    out: Dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def check_resume_config(saved: Mapping[str, Any], current: Mapping[str, Any],
                        run_only: Iterable[str]) -> List[str]:
    """The resume policy: compare a checkpoint's settings with the resumed run's.

    ``run_only`` holds dotted keys or ``fnmatch`` patterns (``"train.*_interval"``) of settings that do
    not change the training trajectory (paths, workers, logging, evaluation/checkpoint periods); they may
    change and are returned, as ``"key: old -> new"``, for the caller to log. Any other difference raises
    :class:`ResumeConfigError` naming every changed key.
    """
    before, after = flatten_config(saved), flatten_config(current)
    patterns = list(run_only)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k, "<absent>") != after.get(k, "<absent>"))
    allowed = [k for k in changed if any(fnmatch.fnmatchcase(k, p) for p in patterns)]
    refused = [k for k in changed if k not in allowed]
    if refused:
        detail = "; ".join(f"{k}: {before.get(k, '<absent>')!r} -> {after.get(k, '<absent>')!r}" for k in refused)
        raise ResumeConfigError(
            f"the configuration differs from the checkpoint's in {refused} ({detail}); resume with the same "
            f"settings (only run-only settings {patterns} may change) or start a new run"
        )
    return [f"{k}: {before.get(k, '<absent>')!r} -> {after.get(k, '<absent>')!r}" for k in allowed]
