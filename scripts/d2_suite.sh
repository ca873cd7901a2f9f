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
TESTS=(tests/test_d2_backbone.py tests/test_d2_data.py tests/test_d2_train.py)
export FEC_REQUIRE_DETECTRON2=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
start=$SECONDS
printf '\n==> Detectron2 tests on %s\n' \
    "$("$PY" -c 'import os, detectron2; print("Detectron2", detectron2.__version__, "at", os.path.dirname(detectron2.__file__))')"
"$PY" -m pytest "${TESTS[@]}" -p no:cacheprovider -q "$@"
printf '==> Detectron2 tests: %d s\n' $((SECONDS - start))
