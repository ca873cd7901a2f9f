#!/usr/bin/env bash
# Run timm's own per-model test suite (tests/test_models.py of the installed timm version) against the
# FEC models. timm's test code is fetched from its PyPI source distribution, never committed here.
# Usage: scripts/timm_suite.sh [python]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
VERSION=$("$PY" -c "import timm; print(timm.__version__)")
CACHE=${FEC_CACHE:-$HOME/.cache/fec}/timm-tests-$VERSION
if [ ! -f "$CACHE/tests/test_models.py" ]; then
    tmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --no-binary :all: "timm==$VERSION" -d "$tmp"
    mkdir -p "$CACHE"
    tar -xzf "$tmp/timm-$VERSION.tar.gz" -C "$CACHE" --strip-components=1 \
        "timm-$VERSION/tests/test_models.py" "timm-$VERSION/tests/__init__.py" "timm-$VERSION/tests/conftest.py"
    rm -rf "$tmp"
fi
echo "timm $VERSION test_models.py against fec_* (TorchScript excluded: not a goal for FEC)"
# Run from the cache folder (no sibling timm/ source tree), with our plugin registering the models first.
PYTHONPATH="$PWD/tests/timm_suite:$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest \
    -c tests/timm_suite/pytest.ini --rootdir "$CACHE" -p fec_timm_plugin -p no:cacheprovider -q \
    "$CACHE/tests/test_models.py" -k "fec_ and not torchscript and not pretrained"
