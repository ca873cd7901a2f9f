"""Run-time compatibility shims for Detectron2 v0.6 on a current Python stack.

Call :func:`apply` once before importing anything from ``detectron2`` (the plugin's ``__init__`` does).
It is idempotent. On Detectron2 main (any checkout after the v0.6 release; :func:`detectron2_line`) it
changes nothing: main has its compiled ops (``detectron2._C``) and supports current NumPy and Pillow.
On v0.6 each shim is installed only when the thing it stands in for is missing, and only where v0.6
uses it, never for the whole process. Line numbers refer to the v0.6 sources.

``detectron2._C`` (compiled ops) missing, as in the pure-Python fallback install
    ``layers/deform_conv.py:11``, ``layers/rotated_boxes.py:4``, ``layers/roi_align_rotated.py:8``
    and ``evaluation/fast_eval_api.py:8`` do ``from detectron2 import _C`` at module top, and
    ``detectron2.layers`` / ``detectron2.evaluation`` import them eagerly, so nothing imports without
    it. The ops are only *called* for deformable conv, rotated boxes and
    ``COCOEvaluator(use_fast_impl=True)``. The attribute ``detectron2._C`` becomes a placeholder;
    touching any op on it raises :class:`MissingCompiledOpError` naming the op. ``sys.modules`` gets
    ``None`` for ``detectron2._C``, so ``import detectron2._C`` still fails with ImportError
    (``utils/collect_env.py:84`` relies on that to report "not built"). Use :func:`has_compiled_ops`
    to pick ``COCOEvaluator(..., use_fast_impl=has_compiled_ops())``.
``PIL.Image.LINEAR`` (removed in Pillow 10)
    ``data/transforms/transform.py:46`` uses it as a default argument, so ``detectron2.data`` fails at
    import. The alias (to ``Image.BILINEAR``, its value before removal) exists only while
    ``detectron2.data`` is imported, then is removed again; v0.6 reads it nowhere else.
``numpy.int`` / ``numpy.bool`` (removed in NumPy 1.24; ``bool`` is back in 2.0)
    ``data/build.py:171,175`` (class histogram of ``build_detection_train_loader``; the
    AttributeError is swallowed at ``build.py:268``, so the histogram would be silently skipped) and
    ``structures/masks.py:33,36,344`` (``np.bool``: polygon to bitmask, ``PolygonMasks.nonempty``).
    Each of these two modules gets its own view of NumPy with the aliases that are missing (the
    builtins, which they were); the ``numpy`` module itself is left alone. The semantic-segmentation
    and Pascal VOC evaluators and the visualizer, which the plugin does not use, are not covered.
``pkg_resources`` (gone with setuptools >= 81)
    Imported by ``model_zoo/model_zoo.py`` only, on v0.6 and main alike. Not shimmed: a warning says
    to install ``setuptools<81`` (the installer does so).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
import warnings
from typing import Dict, List, NoReturn, Optional, Tuple

__all__ = [
    "MissingCompiledOpError",
    "applied_shims",
    "apply",
    "detectron2_line",
    "detectron2_version",
    "has_compiled_ops",
]

logger = logging.getLogger(__name__)

INSTALL_SCRIPT = "python scripts/install_detectron2.py"
OFFICIAL_INSTALL = (
    "pip install --no-build-isolation "
    "'git+https://github.com/facebookresearch/detectron2.git'"
)

# The v0.6 modules that the plugin uses and that read removed NumPy aliases, with the names they read.
_NUMPY_ALIAS_USERS = {"detectron2.data.build": ("int",), "detectron2.structures.masks": ("bool",)}
_NUMPY_ALIASES = {"int": int, "bool": bool}

_applied: List[str] = []
_done = False
# None until checked; then (True, None) or (False, reason it is missing).
_compiled_ops: Optional[Tuple[bool, Optional[str]]] = None


class MissingCompiledOpError(AttributeError):
    """Raised when code reaches a compiled Detectron2 op that is not installed.

    It subclasses AttributeError because it is raised by attribute access on
    the ``detectron2._C`` placeholder, so ``hasattr``/``getattr(..., default)``
    probes see the op as absent.
    """


class _MissingCompiledOps(types.ModuleType):
    """Stand-in for ``detectron2._C``: every op lookup raises a clear error."""

    def __init__(self, reason: str) -> None:
        super().__init__("detectron2._C", "placeholder: detectron2 has no compiled ops")
        self._fec_reason = reason

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # keep introspection (pickle, inspect...) sane
        raise MissingCompiledOpError(
            f"detectron2 was installed without compiled ops (detectron2._C: "
            f"{self._fec_reason}); `{name}` is unavailable. Install Detectron2 from its "
            f"git repository ({OFFICIAL_INSTALL}) to use deformable conv / rotated "
            f"boxes / the fast COCO evaluator."
        )

    def __repr__(self) -> str:
        return f"<placeholder module 'detectron2._C' ({self._fec_reason})>"


def _import_detectron2() -> types.ModuleType:
    try:
        import detectron2
    except ImportError as e:
        raise ImportError(
            f"cannot import detectron2 ({e}); install it with `{INSTALL_SCRIPT}`"
        ) from e
    return detectron2


def _check_compiled_ops() -> Tuple[bool, Optional[str]]:
    """Try the real ``detectron2._C`` once; remember whether it loads."""
    global _compiled_ops
    if _compiled_ops is None:
        d2 = _import_detectron2()
        current = getattr(d2, "_C", None)
        if isinstance(current, _MissingCompiledOps):
            _compiled_ops = (False, current._fec_reason)
        elif importlib.util.find_spec("detectron2._C") is None:
            _compiled_ops = (False, "not installed")
        else:
            try:
                importlib.import_module("detectron2._C")
                _compiled_ops = (True, None)
            except ImportError as e:  # e.g. built against another torch
                _compiled_ops = (False, f"failed to load: {e}")
    return _compiled_ops


def _shim_pillow_during_data_import() -> None:
    """Import ``detectron2.data`` with ``Image.LINEAR`` present, then remove the alias again."""
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        importlib.import_module("detectron2.data")
        return
    Image.LINEAR = Image.BILINEAR  # type: ignore[attr-defined]
    try:
        importlib.import_module("detectron2.data")
    finally:
        del Image.LINEAR
    _applied.append("PIL.Image.LINEAR while importing detectron2.data")


class _NumpyWithAliases(types.ModuleType):
    """NumPy as one v0.6 module sees it: ``numpy`` plus the removed aliases ``int``/``bool``."""

    def __init__(self, aliases: Dict[str, type]) -> None:
        super().__init__("numpy", "numpy with the aliases Detectron2 v0.6 uses")
        for name, value in aliases.items():
            setattr(self, name, value)

    def __getattr__(self, name: str):
        import numpy

        return getattr(numpy, name)


def _shim_numpy() -> None:
    import numpy as np

    for module_name, names in _NUMPY_ALIAS_USERS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            missing = {name: _NUMPY_ALIASES[name] for name in names if not hasattr(np, name)}
        if missing:
            module = importlib.import_module(module_name)
            module.np = _NumpyWithAliases(missing)  # type: ignore[attr-defined]
            _applied.append(f"numpy.{'/'.join(missing)} in {module_name}")


def _shim_compiled_ops() -> None:
    ok, reason = _check_compiled_ops()
    if ok:
        return
    d2 = sys.modules["detectron2"]
    if isinstance(getattr(d2, "_C", None), _MissingCompiledOps):
        return
    if reason != "not installed":
        warnings.warn(f"detectron2._C is present but {reason}; compiled ops are disabled",
                      RuntimeWarning, stacklevel=3)
    # `from detectron2 import _C` finds the attribute and does not import;
    # `import detectron2._C` sees None and raises ImportError, as it should.
    d2._C = _MissingCompiledOps(reason or "unavailable")  # type: ignore[attr-defined]
    sys.modules["detectron2._C"] = None  # type: ignore[assignment]
    _applied.append("detectron2._C placeholder")


def _check_pkg_resources() -> None:
    if importlib.util.find_spec("pkg_resources") is None:
        warnings.warn(
            "pkg_resources is missing (setuptools >= 81): detectron2.model_zoo will not "
            f"import. Install 'setuptools<81' (or run `{INSTALL_SCRIPT}`).",
            RuntimeWarning, stacklevel=3,
        )


def apply() -> None:
    """Install the shims that this Detectron2 needs (none on main); safe to call repeatedly.

    Raises:
        ImportError: ``detectron2`` itself cannot be imported (the message names the install script).
    """
    global _done
    if _done:
        return
    _import_detectron2()
    if detectron2_line() == "0.6":
        _shim_compiled_ops()  # first: detectron2.data imports detectron2.layers, which needs _C
        _shim_pillow_during_data_import()
        _shim_numpy()
    _check_pkg_resources()
    _done = True
    if _applied:
        logger.info("detectron2 v0.6 compatibility shims applied: %s", ", ".join(_applied))


def detectron2_line() -> str:
    """``"main"`` for Detectron2's main branch (any checkout after the v0.6 release), ``"0.6"`` for v0.6.

    Both call themselves ``0.6`` (``detectron2.__version__``); main is told apart by its
    ``detectron2.tracking`` package, added after the release. Nothing but ``detectron2`` is imported.
    """
    _import_detectron2()
    return "main" if importlib.util.find_spec("detectron2.tracking") is not None else "0.6"


def applied_shims() -> Tuple[str, ...]:
    """Names of the shims that :func:`apply` installed in this process."""
    return tuple(_applied)


def has_compiled_ops() -> bool:
    """Whether the real compiled ops ``detectron2._C`` are available.

    Pass it as ``COCOEvaluator(..., use_fast_impl=has_compiled_ops())``: the
    fast evaluator calls into ``detectron2._C``.
    """
    return _check_compiled_ops()[0]


def detectron2_version() -> str:
    """The installed Detectron2 version.

    The distribution version when pip metadata exists (e.g. ``0.6+pb1.nocsrc``
    for the pure-Python fallback), else ``detectron2.__version__``.
    """
    d2 = _import_detectron2()
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("detectron2")
    except PackageNotFoundError:
        return str(getattr(d2, "__version__", "unknown"))
