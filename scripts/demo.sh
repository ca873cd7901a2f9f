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
printf '\n==> Detectron2: Mask R-CNN FEC-S on generated COCO-format shapes, AP before and after training\n'
$PY -m d2_plugin.demo
printf '\n==> segmentation: smp architectures with fec_s; the toy recipe (Linknet + FEC-S) on generated ADE20K-layout data\n'
$PY -m seg_plugin.demo
