#!/usr/bin/env bash
# Set up the environment, then run the whole test suite: ours and timm's own model tests on FEC.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export FEC_REQUIRE_TORCH_SCATTER=1 FEC_REQUIRE_TRITON=1   # the backend-equivalence tests must run, not skip
printf '\n==> project tests\n'
.venv/bin/python -m pytest tests -p no:cacheprovider -q --durations=10 --ignore=tests/timm_suite
printf '\n==> timm test suite on fec_*\n'
bash scripts/timm_suite.sh .venv/bin/python
