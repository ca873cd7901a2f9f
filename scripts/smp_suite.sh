#!/usr/bin/env bash
# Run smp's own encoder and model tests (tests/encoders/base.py, tests/models/) against the FEC encoders.
# smp's PyPI sdist ships no tests: they come from the vendored snapshot <repo>/../shared/vendor/
# smp-tests-5006616.tar.gz (or $FEC_VENDOR_DIR), unpacked into a cache folder, never committed here.
# Usage: scripts/smp_suite.sh [python] [extra pytest args]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
shift $(( $# > 0 ? 1 : 0 ))
SNAPSHOT=smp-tests-5006616
VENDOR=${FEC_VENDOR_DIR:-$PWD/../shared/vendor}
TARBALL=$VENDOR/$SNAPSHOT.tar.gz
if [ ! -f "$TARBALL" ]; then
    echo "error: smp's test snapshot $TARBALL not found; put the vendored $SNAPSHOT.tar.gz in ../shared/vendor" \
         "beside the checkout or point FEC_VENDOR_DIR at the folder that holds it" >&2
    exit 2
fi
CACHE=${FEC_CACHE:-$HOME/.cache/fec}/$SNAPSHOT
if [ ! -f "$CACHE/tests/models/base.py" ]; then
    tmp=$(mktemp -d)
    tar -xzf "$TARBALL" -C "$tmp"
    mkdir -p "$(dirname "$CACHE")"
    rm -rf "$CACHE"
    mv "$tmp/$SNAPSHOT" "$CACHE"
    rm -rf "$tmp"
fi
echo "smp tests ($SNAPSHOT) against fec_s (exclusions and their reasons: tests/smp_suite/conftest.py)"
# smp's `tests` package from the snapshot; RUN_ALL=1 runs the tests smp otherwise keeps to its own CI diffs.
RUN_ALL=1 PYTHONPATH="$CACHE:$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest \
    -c tests/smp_suite/pytest.ini --rootdir tests/smp_suite -p no:cacheprovider -q "$@" \
    tests/smp_suite/test_fec_smp.py
