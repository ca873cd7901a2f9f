#!/usr/bin/env bash
# Set up the environment, then run the demos on the project's own small generated data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
printf '\n==> FEC core: timm model, parameters and FLOPs\n'
$PY -m fec_backbone.demo
printf '\n==> classification: toy ImageNet-style training, validation, DDP, cluster picture\n'
$PY -m classification.demo
