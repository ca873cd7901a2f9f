#!/usr/bin/env python
"""Install Detectron2 main into the interpreter that runs this script (stdlib only).

Usage::

    python scripts/install_detectron2.py [--skip-git] [--vendor-dir DIR] [--cache-dir DIR]

Routes, tried in order:

1. Keep a working install: ``import detectron2`` works in this interpreter, it is Detectron2 main (it
   has ``detectron2.tracking``, which v0.6 lacks) and its compiled ops ``detectron2._C`` load (they are
   built against one torch; ``detectron2.evaluation`` needs them). Nothing is changed.
2. Official route: ``pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'``.
   GitHub is probed first with ``git ls-remote`` under a short timeout and ``GIT_TERMINAL_PROMPT=0``,
   so an offline machine moves on in seconds.
3. Vendored snapshot: ``detectron2-main-*.tar.gz`` (a ``git archive`` of the main branch) from
   ``--vendor-dir``, ``$FEC_VENDOR_DIR`` or ``<repo>/../shared/vendor``. Built once with its compiled
   CPU/CUDA ops into a wheel kept in the cache, keyed by the archive's sha256, the torch version,
   CPU or CUDA and the Python tag, so another environment installs it in seconds.

``detectron2.model_zoo`` (main too) imports ``pkg_resources`` at module top, so ``setuptools<81`` is
installed as well when ``pkg_resources`` is missing. Cache: ``--cache-dir``, ``$FEC_D2_CACHE`` or
``$XDG_CACHE_HOME/fec-d2`` (default ``~/.cache/fec-d2``).

Exit status: 0 when a working Detectron2 main is installed at the end; 1 otherwise, with the two
commands that install it by hand.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

OFFICIAL_GIT_URL = "https://github.com/facebookresearch/detectron2.git"
OFFICIAL_PIP_SPEC = "git+" + OFFICIAL_GIT_URL
VENDORED_GLOB = "detectron2-main-*.tar.gz"
REPO_ROOT = Path(__file__).resolve().parent.parent

GIT_PROBE_TIMEOUT_S = 15
GIT_INSTALL_TIMEOUT_S = int(os.environ.get("FEC_D2_GIT_TIMEOUT", "3600"))
BUILD_TIMEOUT_S = int(os.environ.get("FEC_D2_BUILD_TIMEOUT", "3600"))
PIP_TIMEOUT_S = 1800

# Run in the target interpreter; prints one JSON line describing its detectron2.
PROBE_CODE = r"""
import importlib, importlib.util, json, sys
info = {"ok": False}
try:
    import detectron2
    info["version"] = getattr(detectron2, "__version__", "?")
    info["file"] = getattr(detectron2, "__file__", "?")
    info["main"] = importlib.util.find_spec("detectron2.tracking") is not None
    try:
        importlib.import_module("detectron2._C")
        info["ops"] = None
    except Exception as e:
        info["ops"] = "%s: %s" % (type(e).__name__, e)
    info["ok"] = info["main"] and info["ops"] is None
    if not info["main"]:
        info["error"] = "detectron2 %s at %s is not Detectron2 main (no detectron2.tracking)" % (info["version"], info["file"])
    elif info["ops"]:
        info["error"] = "its compiled ops detectron2._C do not load (%s)" % info["ops"]
except Exception as e:
    info["error"] = "%s: %s" % (type(e).__name__, e)
info["pkg_resources"] = importlib.util.find_spec("pkg_resources") is not None
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda"] = bool(torch.cuda.is_available())
except Exception:
    info["torch"] = None
info["python_tag"] = "cp%d%d" % sys.version_info[:2]
print("FEC_D2_PROBE " + json.dumps(info))
"""


def log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


class InstallError(RuntimeError):
    """A route failed; the message says why."""


def run(cmd: Sequence[str], timeout: float, env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None, quiet: bool = False) -> subprocess.CompletedProcess:
    """Run a command with a hard timeout; output is captured when ``quiet``."""
    log("$ " + " ".join(cmd))
    try:
        return subprocess.run(
            list(cmd), timeout=timeout, env=env, cwd=cwd, text=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT if quiet else None,
        )
    except subprocess.TimeoutExpired as e:
        raise InstallError(f"timed out after {timeout:.0f}s: {' '.join(cmd)}") from e
    except OSError as e:
        raise InstallError(f"cannot run {cmd[0]}: {e}") from e


def probe() -> Dict[str, object]:
    """Ask the target interpreter (``sys.executable``) about its detectron2."""
    # Outside the repository, so that a local `detectron2/` folder cannot fool the check.
    proc = subprocess.run([sys.executable, "-c", PROBE_CODE], cwd=tempfile.gettempdir(), text=True,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    for line in proc.stdout.splitlines():
        if line.startswith("FEC_D2_PROBE "):
            return json.loads(line[len("FEC_D2_PROBE "):])
    return {"ok": False, "error": (proc.stderr or "the probe printed nothing").strip()[-2000:]}


def pip_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "pip", *args]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_root(arg: Optional[str]) -> Path:
    if arg:
        return Path(arg).expanduser()
    if os.environ.get("FEC_D2_CACHE"):
        return Path(os.environ["FEC_D2_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fec-d2"


def vendor_dir(arg: Optional[str]) -> Path:
    """``--vendor-dir``, else ``$FEC_VENDOR_DIR``, else ``<repo>/../shared/vendor``."""
    return Path(arg or os.environ.get("FEC_VENDOR_DIR") or REPO_ROOT.parent / "shared" / "vendor").expanduser()


# ---------------------------------------------------------------- route 2: official git


def install_official(env: Dict[str, str], extra: List[str]) -> None:
    if shutil.which("git") is None:
        raise InstallError("git is not installed")
    reach = run(["git", "ls-remote", "--heads", OFFICIAL_GIT_URL], GIT_PROBE_TIMEOUT_S, env=env, quiet=True)
    if reach.returncode != 0:
        last = (reach.stdout or "").strip().splitlines()[-1:] or ["(no output)"]
        raise InstallError(f"GitHub is not reachable: {last[0]}")
    proc = run(pip_cmd("install", "--no-build-isolation", OFFICIAL_PIP_SPEC, *extra), GIT_INSTALL_TIMEOUT_S, env=env)
    if proc.returncode != 0:
        raise InstallError(f"pip install {OFFICIAL_PIP_SPEC} exited with {proc.returncode}")


# ---------------------------------------------------------------- route 3: vendored snapshot


def find_vendored(folder: Path) -> Path:
    found = sorted(Path(p) for p in glob.glob(str(folder / VENDORED_GLOB)))
    if not found:
        raise InstallError(f"no {VENDORED_GLOB} in {folder}")
    return found[-1]


def cached_wheel(cache: Path, archive: Path, info: Dict[str, object]) -> Path:
    """The cached wheel of ``archive`` for this torch, built (with the compiled ops) if needed."""
    if not info.get("torch"):
        raise InstallError("torch is not importable in this interpreter; install torch first")
    key = f"{archive.name[:-len('.tar.gz')]}-{sha256_of(archive)[:12]}"
    flavour = f"torch{info['torch']}-{'cuda' if info.get('cuda') else 'cpu'}-{info['python_tag']}"
    wheel_dir = cache / "main-wheels" / key / flavour
    found = sorted(wheel_dir.glob("detectron2-*.whl"))
    if found:
        log(f"using the cached wheel {found[-1]}")
        return found[-1]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fec-d2-main-") as tmp:
        out = Path(tmp) / "wheel"
        log(f"building {archive.name} with its compiled ops (a few minutes, once per torch version)")
        # No build isolation: the ops are compiled against the environment's own torch.
        proc = run(pip_cmd("wheel", "--no-deps", "--no-build-isolation", str(archive), "-w", str(out)),
                   BUILD_TIMEOUT_S, cwd=tmp)
        built = sorted(out.glob("detectron2-*.whl"))
        if proc.returncode != 0 or not built:
            raise InstallError(f"building {archive.name} failed (pip exit {proc.returncode})")
        final = wheel_dir / built[0].name
        shutil.copy2(built[0], str(final) + ".part")
        os.replace(str(final) + ".part", final)
    return final


def install_vendored(cache: Path, folder: Path, info: Dict[str, object], extra: List[str]) -> None:
    wheel = cached_wheel(cache, find_vendored(folder), info)
    proc = run(pip_cmd("install", str(wheel), *extra), PIP_TIMEOUT_S)  # with its dependencies
    if proc.returncode == 0:  # and surely these files, even over another install that calls itself 0.6
        proc = run(pip_cmd("install", "--force-reinstall", "--no-deps", str(wheel)), PIP_TIMEOUT_S)
    if proc.returncode != 0:
        raise InstallError(f"pip install {wheel.name} exited with {proc.returncode}")


# ---------------------------------------------------------------- main


def report(info: Dict[str, object]) -> None:
    log(f"detectron2 {info.get('version')} (main, compiled ops load) at {info.get('file')}")
    if not info.get("pkg_resources"):
        log("warning: pkg_resources is missing; detectron2.model_zoo needs setuptools<81")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Install Detectron2 main: keep a working install, else the "
                                             "official git route, else the vendored snapshot (cached wheel).")
    ap.add_argument("--skip-git", action="store_true", help="do not try the official git route "
                                                            "(also FEC_D2_SKIP_GIT=1)")
    ap.add_argument("--vendor-dir", help=f"folder holding {VENDORED_GLOB} (default $FEC_VENDOR_DIR, "
                                         "else <repo>/../shared/vendor)")
    ap.add_argument("--cache-dir", help="cache of built wheels (default $FEC_D2_CACHE, else ~/.cache/fec-d2)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    log(f"interpreter: {sys.executable}")
    info = probe()
    if info.get("ok"):
        log("a working Detectron2 main is installed; keeping it")
        report(info)
        return 0
    log(f"no working Detectron2 main yet: {info.get('error', 'unknown error')}")

    extra = [] if info.get("pkg_resources") else ["setuptools<81"]
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true")
    skip_git = args.skip_git or os.environ.get("FEC_D2_SKIP_GIT") == "1"
    folder = vendor_dir(args.vendor_dir)
    routes: List[Tuple[str, Optional[Callable[[], None]]]] = [
        (f"official git route ({OFFICIAL_GIT_URL})", None if skip_git else lambda: install_official(env, extra)),
        (f"vendored snapshot ({folder / VENDORED_GLOB})",
         lambda: install_vendored(cache_root(args.cache_dir), folder, info, extra)),
    ]
    failures: List[str] = []
    for route, install in routes:
        if install is None:
            failures.append(f"{route}: skipped")
            continue
        log(f"trying the {route}")
        try:
            install()
        except InstallError as e:
            failures.append(f"{route}: {e}")
            log(f"failed: {e}")
            continue
        new = probe()
        if new.get("ok"):
            report(new)
            log(f"done in {time.monotonic() - t0:.1f}s")
            return 0
        failures.append(f"{route}: installed, but {new.get('error')}")

    print("ERROR: could not install Detectron2 main. Routes tried:", file=sys.stderr)
    for failure in failures:
        print(f"  - {failure}", file=sys.stderr)
    print(
        "Install it with one of these two commands, then re-run this script to check:\n"
        f"  {sys.executable} -m pip install --no-build-isolation '{OFFICIAL_PIP_SPEC}'   # needs GitHub\n"
        f"  {sys.executable} {Path(__file__).resolve()} --vendor-dir DIR   # DIR holds a {VENDORED_GLOB}, "
        "e.g. made elsewhere by `git archive --prefix=detectron2-main-<commit>/ -o "
        "detectron2-main-<commit>.tar.gz HEAD` in a Detectron2 clone",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
