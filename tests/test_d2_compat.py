"""Which Detectron2 runs, and the v0.6 compatibility shims of ``d2_plugin/compat.py``: each shim is
needed on v0.6 (a fresh process without it fails where the shim says), works, stays out of the rest of
the process, and none is applied on Detectron2 main.

``FEC_EXPECT_DETECTRON2=main|0.6`` (set by ``scripts/d2_suite.sh``) makes the run fail unless that
Detectron2 is the one imported, so a silent fallback to another install cannot pass."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict

import pytest

if os.environ.get("FEC_REQUIRE_DETECTRON2") != "1":
    pytest.importorskip("detectron2")
import detectron2  # noqa: E402

from d2_plugin import compat  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = compat.detectron2_line()
V06 = pytest.mark.skipif(LINE != "0.6", reason="a v0.6 shim (the main run checks that no shim is applied)")

# Run in a fresh interpreter: loads compat.py on its own (``import d2_plugin`` would apply every shim),
# installs the shims named on the command line, then tries what each shim is for and prints the outcomes.
PROBE = r"""
import importlib.util, inspect, json, logging, os, sys
spec = importlib.util.spec_from_file_location("fec_compat", os.path.join("d2_plugin", "compat.py"))
compat = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compat)
shims = {"C": compat._shim_compiled_ops, "pillow": compat._shim_pillow_during_data_import, "numpy": compat._shim_numpy}
for name in sys.argv[1].split(",") if sys.argv[1] else []:
    if name == "all":
        compat.apply()
    else:
        shims[name]()
out = {"applied": list(compat.applied_shims())}

def attempt(key, fn):
    try:
        out[key] = {"ok": True, "value": fn()}
    except Exception as e:
        out[key] = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}

def layers():
    import detectron2.layers
    return True

def data():
    from PIL import Image
    from detectron2.data.transforms import ExtentTransform
    return inspect.signature(ExtentTransform.__init__).parameters["interp"].default == Image.BILINEAR

def histogram():
    from detectron2.data.build import print_instances_class_histogram
    dicts = [{"annotations": [{"category_id": 0}, {"category_id": 1}, {"category_id": 1}]}]
    print_instances_class_histogram(dicts, ["circle", "square"])
    return True

def missing_op():
    import detectron2
    return repr(detectron2._C.deform_conv_forward)

def import_c():
    import detectron2._C
    return repr(detectron2._C)

attempt("layers", layers)
attempt("data", data)
attempt("histogram", histogram)
attempt("missing_op", missing_op)
attempt("import_c", import_c)
import numpy
from PIL import Image
out["numpy_int"] = hasattr(numpy, "int")
out["pil_linear"] = hasattr(Image, "LINEAR")
print("FEC_PROBE " + json.dumps(out))
"""

_runs: Dict[str, Dict] = {}


def probe(shims: str) -> Dict:
    """Outcomes in a fresh process with the comma-separated shims (``C``, ``pillow``, ``numpy``, ``all``)."""
    if shims not in _runs:
        proc = subprocess.run([sys.executable, "-c", PROBE, shims], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=300)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("FEC_PROBE ")]
        assert proc.returncode == 0 and lines, proc.stdout[-3000:]
        _runs[shims] = json.loads(lines[0][len("FEC_PROBE "):])
    return _runs[shims]


def test_expected_detectron2_is_imported():
    expected = os.environ.get("FEC_EXPECT_DETECTRON2")
    if not expected:
        pytest.skip("FEC_EXPECT_DETECTRON2 (main or 0.6) is not set; scripts/d2_suite.sh sets it")
    assert expected in ("main", "0.6"), f"FEC_EXPECT_DETECTRON2 must be 'main' or '0.6', not {expected!r}"
    where = f"Detectron2 {compat.detectron2_version()} from {detectron2.__file__}"
    assert LINE == expected, f"expected Detectron2 {expected}, imported {LINE}: {where}"
    if expected == "main":
        assert compat.has_compiled_ops(), f"Detectron2 main without its compiled ops: {where}"


@pytest.mark.skipif(LINE != "main", reason="checks Detectron2 main")
def test_main_needs_and_gets_no_shim():
    """On main: nothing is applied, and everything the shims are for works without them."""
    raw, shimmed = probe(""), probe("all")
    assert shimmed["applied"] == []
    for run in (raw, shimmed):
        assert all(run[k]["ok"] for k in ("layers", "data", "histogram", "import_c")), run
        assert run["missing_op"]["ok"]  # the real compiled op
        assert run["numpy_int"] is False and run["pil_linear"] is False
    assert compat.has_compiled_ops() and compat.applied_shims() == ()


@V06
def test_compiled_ops_placeholder():
    """v0.6 without ``_C``: ``detectron2.layers`` does not import; with the placeholder it does, an op
    says clearly that it is missing, and ``import detectron2._C`` still fails."""
    if compat.has_compiled_ops():
        pytest.skip("this v0.6 install has its compiled ops: the placeholder is not needed")
    raw, shimmed = probe(""), probe("C")
    assert not raw["layers"]["ok"] and "_C" in raw["layers"]["error"], raw["layers"]
    assert shimmed["layers"]["ok"] and shimmed["applied"] == ["detectron2._C placeholder"]
    error = shimmed["missing_op"]["error"]
    assert error.startswith("MissingCompiledOpError") and "`deform_conv_forward` is unavailable" in error
    assert "git+https://github.com/facebookresearch/detectron2.git" in error
    assert shimmed["import_c"]["error"].startswith(("ImportError", "ModuleNotFoundError"))


@V06
def test_pillow_alias_only_while_importing():
    """v0.6 on Pillow >= 10: ``detectron2.data`` fails at import on ``Image.LINEAR`` without the shim;
    with it, the default is BILINEAR (LINEAR's value) and ``Image.LINEAR`` is gone again afterwards."""
    without = probe("C")
    if without["pil_linear"]:
        pytest.skip("this Pillow still has Image.LINEAR")
    assert not without["data"]["ok"] and "LINEAR" in without["data"]["error"], without["data"]
    shimmed = probe("C,pillow")
    assert shimmed["data"] == {"ok": True, "value": True}
    assert shimmed["pil_linear"] is False


@V06
def test_numpy_aliases_only_in_the_modules_that_use_them():
    """v0.6 on NumPy >= 1.24: the class histogram of the training loader fails on ``np.int`` without
    the shim; with it, it runs, and ``numpy.int`` stays undefined for everyone else."""
    without = probe("C,pillow")
    if without["numpy_int"]:
        pytest.skip("this NumPy still has numpy.int")
    assert not without["histogram"]["ok"] and "int" in without["histogram"]["error"], without["histogram"]
    shimmed = probe("C,pillow,numpy")
    assert shimmed["histogram"]["ok"] and "numpy.int in detectron2.data.build" in shimmed["applied"]
    assert shimmed["numpy_int"] is False
    assert list(compat.applied_shims()) == shimmed["applied"]  # `import d2_plugin` applied exactly these
