#!/usr/bin/env python
"""Install Detectron2 into the interpreter that runs this script (stdlib only).

Usage::

    python scripts/install_detectron2.py [--skip-git] [--cache-dir DIR] [--vendor-dir DIR]
    python scripts/install_detectron2.py --v06-target DIR   # v0.6 fallback into DIR, for a second test run

Routes, tried in order:

1. Keep a working install: if ``import detectron2`` already works in this interpreter, nothing is
   changed; except our own v0.6 fallback (route 4), which routes 2 and 3 replace when they can.
2. Official route: ``pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'``
   (Detectron2 main, with its compiled ops ``detectron2._C``). GitHub is probed first with
   ``git ls-remote`` under a short timeout and ``GIT_TERMINAL_PROMPT=0``, so an offline machine fails
   over in seconds.
3. Vendored main: ``detectron2-main-*.tar.gz`` from ``$FEC_VENDOR_DIR`` or ``<repo>/../shared/vendor``
   (a ``git archive`` of the main branch, what route 2 installs). Built once with its compiled CPU ops
   into a wheel kept in the cache (keyed by the archive's sha256, the torch version and the Python
   tag), so a second environment installs it in seconds instead of compiling again.
4. Fallback: the PyPI sdist ``pb1-detectron2==0.6``, a verbatim repackaging of Detectron2 v0.6
   *without* the C++/CUDA sources. Downloaded once (sha256-pinned) into the cache, its ``setup.py``
   patched (the Python sources are left untouched) and built into a pure-Python wheel that is kept
   in the cache, then installed with pip (which installs v0.6's dependencies). The ``setup.py`` patch:

   * builds no C extension (``ext_modules=[]``);
   * names the distribution ``detectron2`` with version ``0.6+pb1.nocsrc`` so that ``pip show
     detectron2`` works and a later install of main replaces it cleanly;
   * drops the ``panopticapi @ <url>`` entry of the optional ``[all]`` extra, which current pip
     refuses for any distribution coming from PyPI;
   * ships the model-zoo YAML/py configs as package data (upstream symlinks a top-level ``configs/``
     dir that the sdist does not have);
   * does not install v0.6's stray top-level ``tools`` package.

   v0.6 needs run-time shims on a current stack (Pillow >= 10, NumPy >= 1.24, no ``detectron2._C``):
   ``d2_plugin/compat.py`` applies them on v0.6 only; this script never edits Detectron2's sources.

``--v06-target DIR`` installs the fallback wheel of route 4 without dependencies into ``DIR`` (for
``PYTHONPATH=DIR``: the Detectron2 tests run a second time on v0.6 next to main) and checks that v0.6's
requirements are met by this interpreter's packages.

If ``pkg_resources`` is missing (setuptools >= 81), ``setuptools<81`` is installed too:
``detectron2.model_zoo`` imports it at module top. Cache: ``--cache-dir``, ``$FEC_D2_CACHE`` or
``$XDG_CACHE_HOME/fec-d2`` (default ``~/.cache/fec-d2``).

Exit status: 0 when ``import detectron2`` works at the end, 1 otherwise.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

OFFICIAL_GIT_URL = "https://github.com/facebookresearch/detectron2.git"
OFFICIAL_PIP_SPEC = "git+" + OFFICIAL_GIT_URL

SDIST_PROJECT = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_FILENAME = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# Local version label of the wheel we build; bump PATCH_REV when the setup.py
# patch below changes so that a stale cached wheel is not reused.
PATCH_REV = "1"
LOCAL_VERSION_SUFFIX = "+pb1.nocsrc"
DEFAULT_INDEX_URL = "https://pypi.org/simple"

GIT_PROBE_TIMEOUT_S = 15
GIT_INSTALL_TIMEOUT_S = int(os.environ.get("FEC_D2_GIT_TIMEOUT", "3600"))
PIP_TIMEOUT_S = 1800
BUILD_TIMEOUT_S = int(os.environ.get("FEC_D2_BUILD_TIMEOUT", "3600"))
REPO_ROOT = Path(__file__).resolve().parent.parent
VENDORED_GLOB = "detectron2-main-*.tar.gz"
DOWNLOAD_TIMEOUT_S = 120

# (old, new) exact replacements applied to the sdist's setup.py. Each `old`
# must occur exactly once; the sdist is sha256-pinned so this is deterministic.
SETUP_PY_PATCHES = (
    ('name="pb1-detectron2",', 'name="detectron2",'),
    ("ext_modules=get_extensions(),", "ext_modules=[],  # fec-d2: no compiled ops"),
    (
        '            "panopticapi @ https://github.com/cocodataset/panopticapi/archive/master.zip",\n',
        "",
    ),
    (
        'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
        'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},',
    ),
    (
        'find_packages(exclude=("configs", "tests*"))',
        'find_packages(exclude=("configs", "tests*", "tools", "tools.*"))',
    ),
)

# Run in the target interpreter; prints one JSON line describing detectron2.
PROBE_CODE = r"""
import importlib.util, json, sys
info = {"ok": False}
try:
    import detectron2
    info["ok"] = True
    info["version"] = getattr(detectron2, "__version__", "?")
    info["file"] = getattr(detectron2, "__file__", "?")
    try:
        from importlib.metadata import version
        info["dist_version"] = version("detectron2")
    except Exception:
        info["dist_version"] = None
    try:
        info["has_C"] = importlib.util.find_spec("detectron2._C") is not None
    except Exception:
        info["has_C"] = False
    info["fallback"] = "+pb1.nocsrc" in (info["dist_version"] or "")
except Exception as e:
    info["error"] = "%s: %s" % (type(e).__name__, e)
try:
    import pkg_resources  # noqa: F401
    info["pkg_resources"] = True
except Exception:
    info["pkg_resources"] = False
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
    """Run a command with a hard timeout; output is captured when `quiet`."""
    log("$ " + " ".join(cmd))
    try:
        return subprocess.run(
            list(cmd), timeout=timeout, env=env, cwd=cwd, text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if quiet else None,
            stderr=subprocess.STDOUT if quiet else None,
        )
    except subprocess.TimeoutExpired as e:
        raise InstallError(f"timed out after {timeout:.0f}s: {' '.join(cmd)}") from e
    except OSError as e:
        raise InstallError(f"cannot run {cmd[0]}: {e}") from e


def probe() -> Dict[str, object]:
    """Ask the target interpreter (sys.executable) about its detectron2."""
    # Run outside the repo so a local `detectron2/` folder cannot fool the check.
    proc = subprocess.run(
        [sys.executable, "-c", PROBE_CODE], cwd=tempfile.gettempdir(), text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        timeout=300,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("FEC_D2_PROBE "):
            return json.loads(line[len("FEC_D2_PROBE "):])
    return {"ok": False, "error": (proc.stderr or "probe produced no output").strip()[-2000:]}


def pip_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "pip", *args]


# ---------------------------------------------------------------- route 2


def try_official(env: Dict[str, str]) -> None:
    if shutil.which("git") is None:
        raise InstallError("git is not installed")
    probe_proc = run(["git", "ls-remote", "--heads", OFFICIAL_GIT_URL], GIT_PROBE_TIMEOUT_S,
                     env=env, quiet=True)
    if probe_proc.returncode != 0:
        last = (probe_proc.stdout or "").strip().splitlines()[-1:] or ["(no output)"]
        raise InstallError(f"GitHub is not reachable: {last[0]}")
    proc = run(pip_cmd("install", "--no-build-isolation", OFFICIAL_PIP_SPEC),
               GIT_INSTALL_TIMEOUT_S, env=env)
    if proc.returncode != 0:
        raise InstallError(f"pip install {OFFICIAL_PIP_SPEC} exited with {proc.returncode}")


# ---------------------------------------------------------------- route 3


def vendor_dir(arg: Optional[str]) -> Path:
    """``--vendor-dir``, else ``$FEC_VENDOR_DIR``, else ``<repo>/../shared/vendor``."""
    return Path(arg or os.environ.get("FEC_VENDOR_DIR") or REPO_ROOT.parent / "shared" / "vendor").expanduser()


def find_vendored(folder: Path) -> Path:
    found = sorted(Path(p) for p in glob.glob(str(folder / VENDORED_GLOB)))
    if not found:
        raise InstallError(f"no {VENDORED_GLOB} in {folder} (set FEC_VENDOR_DIR to the folder that holds it)")
    return found[-1]


def ensure_main_wheel(cache: Path, archive: Path, info: Dict[str, object]) -> Path:
    """Return the cached wheel of the vendored main archive for this torch, building it if needed.

    The wheel holds ``detectron2._C`` compiled against this torch, so the key names the archive's
    sha256, the torch version, CUDA or CPU, and the Python tag.
    """
    if not info.get("torch"):
        raise InstallError("torch is not importable in this interpreter; install torch first")
    key = f"{archive.name[:-len('.tar.gz')]}-{sha256_of(archive)[:12]}"
    flavour = f"torch{info['torch']}-{'cuda' if info.get('cuda') else 'cpu'}-{info['python_tag']}"
    wheel_dir = cache / "main-wheels" / key / flavour
    found = sorted(wheel_dir.glob("detectron2-*.whl"))
    if found:
        log(f"using cached wheel {found[-1]}")
        return found[-1]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fec-d2-main-") as tmp:
        out = Path(tmp) / "wheel"
        log(f"building {archive.name} with its compiled ops (a few minutes, once per torch version)")
        # No build isolation: the ops are compiled against the environment's own torch.
        return _build_wheel(archive, out, wheel_dir, BUILD_TIMEOUT_S, f"building {archive.name}", cwd=tmp)


def _build_wheel(source: Path, out: Path, wheel_dir: Path, timeout: float, what: str, **kwargs: Any) -> Path:
    """``pip wheel`` ``source`` into ``out`` (no dependencies, no build isolation) and copy the wheel into
    the cache ``wheel_dir`` atomically; returns the cached wheel. ``kwargs`` go to :func:`run`."""
    proc = run(pip_cmd("wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(out)), timeout, **kwargs)
    built = sorted(out.glob("detectron2-*.whl"))
    if proc.returncode != 0 or not built:
        raise InstallError(f"{what} failed (pip exit {proc.returncode})")
    final = wheel_dir / built[0].name
    shutil.copy2(built[0], str(final) + ".part")
    os.replace(str(final) + ".part", final)
    return final


def install_vendored(cache: Path, folder: Path, info: Dict[str, object], need_setuptools_pin: bool) -> None:
    wheel = ensure_main_wheel(cache, find_vendored(folder), info)
    reqs = [str(wheel)] + (["setuptools<81"] if need_setuptools_pin else [])
    proc = run(pip_cmd("install", *reqs), PIP_TIMEOUT_S)  # with its dependencies
    if proc.returncode == 0:  # and surely these files, even over an install that calls itself 0.6 too
        proc = run(pip_cmd("install", "--force-reinstall", "--no-deps", str(wheel)), PIP_TIMEOUT_S)
    if proc.returncode != 0:
        raise InstallError(f"pip install {wheel.name} exited with {proc.returncode}")


# ---------------------------------------------------------------- route 4


def cache_root(arg: Optional[str]) -> Path:
    if arg:
        return Path(arg).expanduser()
    if os.environ.get("FEC_D2_CACHE"):
        return Path(os.environ["FEC_D2_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "fec-d2"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ssl_context() -> ssl.SSLContext:
    cafile = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if cafile and os.path.isfile(cafile):
        return ssl.create_default_context(cafile=cafile)
    return ssl.create_default_context()


def find_sdist_url(index_url: str) -> str:
    """Look the sdist up on a PEP 691 (JSON) or PEP 503 (HTML) simple index."""
    page = index_url.rstrip("/") + f"/{SDIST_PROJECT}/"
    req = urllib.request.Request(page, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    with urllib.request.urlopen(req, timeout=DOWNLOAD_TIMEOUT_S, context=ssl_context()) as r:
        ctype = r.headers.get("Content-Type", "")
        body = r.read().decode("utf-8", "replace")
    if "json" in ctype:
        for f in json.loads(body).get("files", []):
            if f.get("filename") == SDIST_FILENAME:
                return urllib.parse.urljoin(page, f["url"])
    else:
        for href in re.findall(r'href="([^"]+)"', body):
            if urllib.parse.urlsplit(href).path.endswith("/" + SDIST_FILENAME):
                return urllib.parse.urljoin(page, href.split("#", 1)[0])
    raise InstallError(f"{SDIST_FILENAME} is not listed on {page}")


def ensure_sdist(cache: Path) -> Path:
    """Return the cached, hash-checked sdist, downloading it if needed.

    pip cannot do this step: `pip download` prepares the sdist's metadata and
    then rejects it because its `[all]` extra has a direct URL dependency.
    """
    target = cache / "sdist" / SDIST_FILENAME
    if target.is_file() and sha256_of(target) == SDIST_SHA256:
        log(f"using cached sdist {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    index_url = os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX_URL).split()[0]
    try:
        url = find_sdist_url(index_url)
        log(f"downloading {url}")
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
                url, timeout=DOWNLOAD_TIMEOUT_S, context=ssl_context()) as r:
            shutil.copyfileobj(r, out)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise InstallError(f"cannot download {SDIST_FILENAME} from {index_url}: {e}") from e
    digest = sha256_of(Path(tmp))
    if digest != SDIST_SHA256:
        os.unlink(tmp)
        raise InstallError(f"{SDIST_FILENAME}: sha256 {digest} != expected {SDIST_SHA256}")
    os.replace(tmp, target)
    return target


def patch_setup_py(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for old, new in SETUP_PY_PATCHES:
        if text.count(old) != 1:
            raise InstallError(f"unexpected setup.py in {SDIST_FILENAME}: cannot patch {old!r}")
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")


def ensure_wheel(cache: Path, sdist: Path) -> Path:
    """Return the cached pure-Python wheel, building it from the sdist if needed."""
    wheel_dir = cache / f"wheels-r{PATCH_REV}"
    found = sorted(wheel_dir.glob(f"detectron2-{SDIST_VERSION}+*-py3-none-any.whl"))
    if found:
        log(f"using cached wheel {found[-1]}")
        return found[-1]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fec-d2-build-") as tmp:
        with tarfile.open(sdist) as tf:
            members = [m for m in tf.getmembers() if m.isfile() or m.isdir()]
            for m in members:  # refuse absolute paths / parent references
                if m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise InstallError(f"unsafe path in {sdist}: {m.name}")
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(tmp, members=members, **extra)
        src = Path(tmp) / f"{SDIST_PROJECT}-{SDIST_VERSION}"
        patch_setup_py(src / "setup.py")
        shutil.rmtree(src / "pb1_detectron2.egg-info", ignore_errors=True)
        out = Path(tmp) / "wheel"
        env = dict(os.environ, D2_VERSION_SUFFIX=LOCAL_VERSION_SUFFIX)
        env.pop("BUILD_NIGHTLY", None)  # would rewrite detectron2/__init__.py
        # No build isolation: setup.py imports torch, which must be the
        # environment's own (and no extension is built anyway).
        return _build_wheel(src, out, wheel_dir, PIP_TIMEOUT_S, "building the pure-Python wheel", env=env, cwd=tmp)


def install_fallback(cache: Path, need_setuptools_pin: bool) -> None:
    wheel = ensure_wheel(cache, ensure_sdist(cache))
    reqs = [str(wheel)] + (["setuptools<81"] if need_setuptools_pin else [])
    proc = run(pip_cmd("install", *reqs), PIP_TIMEOUT_S)
    if proc.returncode != 0:
        raise InstallError(f"pip install {wheel.name} exited with {proc.returncode}")


# Run in the target interpreter with the v0.6 folder first on sys.path: v0.6's requirements that this
# interpreter does not meet, as one JSON line.
REQUIREMENTS_CODE = r"""
import json, importlib.metadata as md
from packaging.requirements import Requirement
out = {"dist_version": md.version("detectron2"), "missing": [], "other_version": []}
for line in md.requires("detectron2") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        out["missing"].append(str(req))
        continue
    if req.specifier and not req.specifier.contains(have, prereleases=True):
        out["other_version"].append("%s (installed %s)" % (req, have))
print("FEC_D2_REQS " + json.dumps(out))
"""


def install_v06_target(cache: Path, target: Path) -> int:
    """Install the v0.6 fallback wheel, without dependencies, into ``target``; check its requirements."""
    wheel = ensure_wheel(cache, ensure_sdist(cache))
    stamp = target / ".fec-d2-wheel"
    if stamp.is_file() and stamp.read_text() == wheel.name:
        log(f"{target} already holds {wheel.name}")
    else:
        shutil.rmtree(target, ignore_errors=True)
        proc = run(pip_cmd("install", "--no-deps", "--no-compile", "--target", str(target), str(wheel)), PIP_TIMEOUT_S)
        if proc.returncode != 0:
            raise InstallError(f"pip install --target {target} exited with {proc.returncode}")
        stamp.write_text(wheel.name)
    reqs = _v06_requirements(target)
    if reqs["missing"]:  # v0.6-only requirements (future, pydot): into the folder too, not the environment
        log(f"installing v0.6's requirements missing from this interpreter into {target}: {reqs['missing']}")
        proc = run(pip_cmd("install", "--no-deps", "--no-compile", "--target", str(target), *reqs["missing"]),
                   PIP_TIMEOUT_S)
        reqs = _v06_requirements(target)
        if proc.returncode != 0 or reqs["missing"]:
            raise InstallError(f"v0.6 requirements still missing: {', '.join(reqs['missing'])}")
    log(f"detectron2 {reqs['dist_version']} in {target} (use PYTHONPATH={target.resolve()})")
    for line in reqs["other_version"]:
        log(f"note: v0.6 asks for {line}")
    return 0


def _v06_requirements(target: Path) -> Dict[str, List[str]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target.resolve()), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", REQUIREMENTS_CODE], cwd=tempfile.gettempdir(), env=env, text=True,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("FEC_D2_REQS ")]
    if not lines:
        raise InstallError(f"cannot check v0.6's requirements: {proc.stderr.strip()[-2000:]}")
    return json.loads(lines[0][len("FEC_D2_REQS "):])


# ---------------------------------------------------------------- main


def report(info: Dict[str, object]) -> None:
    ops = "present" if info.get("has_C") else "ABSENT (pure-Python v0.6 install; see d2_plugin/compat.py)"
    log(f"detectron2 {info.get('version')} (distribution version {info.get('dist_version')}) "
        f"at {info.get('file')}")
    log(f"compiled ops detectron2._C: {ops}")
    if not info.get("pkg_resources"):
        log("warning: pkg_resources is missing; detectron2.model_zoo needs setuptools<81")


ROUTE_DESCRIPTIONS = {
    "official git route": f"Detectron2 main from {OFFICIAL_GIT_URL}",
    "vendored main": "Detectron2 main from the vendored snapshot, with compiled ops (cached wheel)",
    "PyPI fallback": f"fallback {SDIST_PROJECT}=={SDIST_VERSION} sdist as pure Python (no compiled ops)",
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--skip-git", action="store_true", help="do not try the official git route")
    ap.add_argument("--cache-dir", help="cache for the built wheels and the sdist (default ~/.cache/fec-d2)")
    ap.add_argument("--vendor-dir", help="folder with detectron2-main-*.tar.gz (default $FEC_VENDOR_DIR, "
                                         "else <repo>/../shared/vendor)")
    ap.add_argument("--v06-target", metavar="DIR", help="install the v0.6 fallback without dependencies into DIR "
                                                         "(for PYTHONPATH) instead of into this interpreter")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    log(f"interpreter: {sys.executable}")
    cache = cache_root(args.cache_dir)
    if args.v06_target:
        try:
            install_v06_target(cache, Path(args.v06_target))
        except InstallError as e:
            print(f"ERROR: {e}", file=sys.stderr)
            return 1
        log(f"done in {time.monotonic() - t0:.1f}s")
        return 0

    info = probe()
    if info.get("ok") and not info.get("fallback"):
        log("detectron2 is already importable; keeping it")
        report(info)
        log(f"done in {time.monotonic() - t0:.1f}s")
        return 0
    if info.get("ok"):
        log("detectron2 is our v0.6 fallback; trying to replace it with main (kept if that fails)")
    else:
        log(f"detectron2 is not importable yet ({info.get('error', 'unknown error')})")

    failures: List[str] = []
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true")
    need_pin = not info.get("pkg_resources")
    skip_git = args.skip_git or os.environ.get("FEC_D2_SKIP_GIT") == "1"
    routes: List[Tuple[str, Optional[Callable[[], None]]]] = [
        ("official git route", None if skip_git else lambda: try_official(env)),
        ("vendored main", lambda: install_vendored(cache, vendor_dir(args.vendor_dir), info, need_pin)),
        ("PyPI fallback", None if info.get("ok") else lambda: install_fallback(cache, need_setuptools_pin=need_pin)),
    ]
    for number, (route, install) in enumerate(routes, start=2):
        if install is None:
            failures.append(f"{route}: skipped")
            continue
        log(f"route {number}: {ROUTE_DESCRIPTIONS[route]}")
        try:
            install()
        except InstallError as e:
            failures.append(f"{route}: {e}")
            log(f"{route} failed: {e}")
            continue
        new = probe()
        if new.get("ok"):
            report(new)
            log(f"done in {time.monotonic() - t0:.1f}s")
            return 0
        failures.append(f"{route}: installed but import fails: {new.get('error')}")

    if info.get("ok") and probe().get("ok"):
        log("keeping the v0.6 fallback: " + "; ".join(failures))
        report(info)
        return 0
    print("ERROR: could not install Detectron2. Routes tried:", file=sys.stderr)
    for f in failures:
        print(f"  - {f}", file=sys.stderr)
    print("Install it by hand (see https://detectron2.readthedocs.io/en/latest/tutorials/"
          "install.html), then re-run this script to check.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
