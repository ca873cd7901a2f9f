#!/usr/bin/env bash
# Create or update the project environment: .venv at the repository root with torch 2.14.1,
# the package in editable mode with all extras and Detectron2 main (official git route, else the
# vendored snapshot in ../shared/vendor built once and cached as a wheel).
# Re-running is cheap: pip reuses its cache and the Detectron2 installer keeps a working install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
log() { printf '\n==> %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
    log "creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
PIP="$PY -m pip install -q"

log "build tools and torch 2.14.1 / torchvision 0.29.1"
$PIP --upgrade pip "setuptools<81" wheel   # setuptools<81 keeps pkg_resources (detectron2.model_zoo imports it)
$PIP torch==2.14.1 torchvision==0.29.1

log "fec-backbone (editable) with extras d2, seg, dev"
$PIP -e ".[d2,seg,dev]"

log "Detectron2 (scripts/install_detectron2.py says which route it took)"
$PY scripts/install_detectron2.py

log "environment ready: $($PY -c 'import torch, timm; print("torch", torch.__version__, "| timm", timm.__version__)')"
