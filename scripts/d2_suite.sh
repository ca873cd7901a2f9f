#!/usr/bin/env bash
# Run the Detectron2 tests on the Detectron2 main installed in the environment (by
# scripts/install_detectron2.py; tested: the vendored snapshot at commit 02b5c4e).
# FEC_REQUIRE_DETECTRON2=1 turns a missing Detectron2 into a failure instead of a skip.
#
#   bash scripts/d2_suite.sh [PYTHON] [-- PYTEST ARGS]      (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
shift $(( $# > 0 ? 1 : 0 ))
[ "${1:-}" = "--" ] && shift
TESTS=(tests/test_d2_*.py)
export FEC_REQUIRE_DETECTRON2=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
start=$SECONDS
# Main still calls itself 0.6; it is told from v0.6 by its detectron2.tracking package.
if ! which=$("$PY" -c 'import importlib.util, os, detectron2
assert importlib.util.find_spec("detectron2.tracking"), "detectron2 at %s is not Detectron2 main" % os.path.dirname(detectron2.__file__)
print("Detectron2 main (version string %s) at %s" % (detectron2.__version__, os.path.dirname(detectron2.__file__)))'); then
    echo "Detectron2 main is not importable with $PY: run $PY scripts/install_detectron2.py" >&2
    exit 1
fi
printf '\n==> Detectron2 tests on %s\n' "$which"
"$PY" -m pytest "${TESTS[@]}" -p no:cacheprovider -q "$@"
printf '==> Detectron2 tests: %d s\n' $((SECONDS - start))
