#!/usr/bin/env bash
# Set up the environment, then run the whole test suite: ours (the Detectron2 tests on Detectron2 main,
# by scripts/d2_suite.sh), timm's own model tests on fec_* and smp's own encoder/model tests on fec_s.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# Every optional part that the set-up installs must be tested, never skipped.
export FEC_REQUIRE_TRITON=1 FEC_REQUIRE_ONNXRUNTIME=1 FEC_REQUIRE_DETECTRON2=1
start=$SECONDS
printf '\n==> project tests (the Detectron2 tests follow)\n'
.venv/bin/python -m pytest tests -p no:cacheprovider -q --durations=10 --ignore=tests/timm_suite \
    --ignore=tests/smp_suite --ignore-glob='tests/test_d2_*.py'
printf '==> project tests: %d s\n' $((SECONDS - start))
bash scripts/d2_suite.sh .venv/bin/python
printf '\n==> timm test suite on fec_*\n'
bash scripts/timm_suite.sh .venv/bin/python
printf '\n==> smp test suite on fec_s\n'
bash scripts/smp_suite.sh .venv/bin/python
printf '\n==> all suites passed in %d s\n' $((SECONDS - start))
