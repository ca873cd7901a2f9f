#!/usr/bin/env bash
# Set up the environment, then run the three demos on the project's own small generated data. Each prints
# what it learned against its control (the untrained model) and exits non-zero when it did not learn;
# outputs go to output/<ecosystem>_demo. On 2 CPU cores: classification a few minutes, Detectron2 about
# 5 minutes (more on a busy machine), segmentation about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
printf '\n==> FEC-S in timm: the model sizes\n'
.venv/bin/fec flops
printf '\n==> classification: toy ImageNet-style training, validation, DDP, cluster picture\n'
$PY -m classification.demo --out-dir output/cls_demo
printf '\n==> Detectron2: Mask R-CNN FEC-S on generated COCO-format shapes, AP before and after training\n'
$PY -m d2_plugin.demo --out-dir output/d2_demo
printf '\n==> segmentation: smp architectures with fec_s; the toy recipe (Linknet + FEC-S) on generated ADE20K-layout data\n'
$PY -m seg_plugin.demo --out-dir output/seg_demo
printf '\n==> all demos learned\n'
