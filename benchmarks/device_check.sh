#!/usr/bin/env bash
# The GPU checks of the performance work, as one command for a lent GPU machine (torch, timm, triton
# and pytest installed there; nothing to build): the norm formulations, the benchmark table (with the
# official model's row when FEC_OFFICIAL_FEC names a saved official models/fec.py; einops needed),
# profiles of a detection and a classification training step, then the Triton kernel tests on CUDA.
# Logs and figures as JSON go to $OUT (or /tmp/fec-device).
#
# Budget: under 6 minutes. Estimated from the H200 run of 2026-11-27: a compiled row costs about 50 s
# of compile per mode (training, inference); the Triton kernels JIT-compile in ~5-10 s per configuration
# (the bench, the profiles and the tests share the cache); other rows ~5-10 s each at 3 + 10 iterations;
# detection rows ~1 s each; profiles ~15 s each. The most important figures come first, and each step
# has its own time limit so that one stuck step cannot eat the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/fec-device}"
mkdir -p "$out"
python3 -c "import torch, timm, triton; print('torch', torch.__version__, 'timm', timm.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
timeout 45 python3 benchmarks/bench_norm.py --iters 10 2>&1 | tee "$out/bench_norm.log"
official=()
[ -n "${FEC_OFFICIAL_FEC:-}" ] && official=(--official "$FEC_OFFICIAL_FEC")
timeout 270 python3 benchmarks/bench_gpu.py --iters 3 10 --models ours ours+compile ours+triton resnet18 poolformer_s12 \
  "${official[@]}" --json "$out/bench_gpu.json" 2>&1 | tee "$out/bench_gpu.log"
for backend in torch triton; do
  timeout 35 python3 benchmarks/profile_fec.py --batch 2 --size 800 1344 --preset detection --bf16 --top 15 \
    --backend $backend 2>&1 | tee "$out/profile_detection_$backend.log"
done
timeout 35 python3 benchmarks/profile_fec.py --batch 128 --bf16 --top 15 2>&1 | tee "$out/profile_classification.log"
timeout 100 python3 -m pytest tests/test_cluster_kernels.py -q -p no:cacheprovider 2>&1 | tee "$out/kernel_tests.log"
