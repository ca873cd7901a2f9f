#!/usr/bin/env bash
# Run the Detectron2 tests once per Detectron2 version: main (installed in the environment by
# scripts/install_detectron2.py) and v0.6 (the pure-Python fallback wheel, installed without
# dependencies into .d2-v0.6 and put first on PYTHONPATH). Each run asserts inside the tests that the
# expected version was imported (FEC_EXPECT_DETECTRON2), and FEC_REQUIRE_DETECTRON2=1 turns a missing
# Detectron2 into a failure instead of a skip.
#
#   bash scripts/d2_suite.sh [PYTHON] [-- PYTEST ARGS]      (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
shift $(( $# > 0 ? 1 : 0 ))
[ "${1:-}" = "--" ] && shift
TESTS=(tests/test_d2_compat.py tests/test_d2_backbone.py tests/test_d2_data.py tests/test_d2_train.py)
export FEC_REQUIRE_DETECTRON2=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

run_suite() {  # run_suite EXPECTED [PYTHONPATH]
    local expected=$1 path=$2 start=$SECONDS
    shift 2
    local version
    version=$(PYTHONPATH=$path "$PY" -c 'import d2_plugin.compat as c; print(c.detectron2_version(), c.detectron2_line())')
    printf '\n==> Detectron2 tests on Detectron2 %s (expected: %s)\n' "$version" "$expected"
    PYTHONPATH=$path FEC_EXPECT_DETECTRON2=$expected "$PY" -m pytest "${TESTS[@]}" -p no:cacheprovider -q "$@"
    printf '==> Detectron2 %s: %d s\n' "$expected" $((SECONDS - start))
}

run_suite main "" "$@"

V06="$PWD/.d2-v0.6"
start=$SECONDS
"$PY" scripts/install_detectron2.py --v06-target "$V06"
printf '==> v0.6 side folder ready in %d s\n' $((SECONDS - start))
run_suite 0.6 "$V06" "$@"
