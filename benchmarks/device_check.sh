#!/usr/bin/env bash
# The GPU checks of the performance work, as one command for a lent GPU machine (torch, timm, triton
# and pytest installed there; nothing to build): the Triton kernel tests on CUDA, the norm
# formulations, then the benchmark table (with the official model's row when FEC_OFFICIAL_FEC names a
# saved official models/fec.py; einops needed). Logs and figures as JSON go to $OUT (or /tmp/fec-device).
#
# Budget: under 6 minutes. Estimated from the H200 run of 2026-11-27 (bench with 5 + 15 iterations):
# a compiled row costs about 50 s of compile per mode (training, inference) = ~100 s; the Triton kernels
# JIT-compile in ~5-10 s per configuration (~10 distinct ones: ~60 s, tests and bench share the cache);
# every other row builds and runs in ~5-10 s at 3 + 10 iterations; detection rows ~1 s each. Sum:
# ~60 s kernel tests + ~10 s norm + ~100 s compile + ~60 s Triton + ~80 s other rows = ~5 minutes.
# Each step has its own time limit so that one stuck step cannot eat the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/fec-device}"
mkdir -p "$out"
python3 -c "import torch, timm, triton; print('torch', torch.__version__, 'timm', timm.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
timeout 150 python3 -m pytest tests/test_cluster_kernels.py -q -p no:cacheprovider 2>&1 | tee "$out/kernel_tests.log"
timeout 60 python3 benchmarks/bench_norm.py --iters 10 2>&1 | tee "$out/bench_norm.log"
official=()
[ -n "${FEC_OFFICIAL_FEC:-}" ] && official=(--official "$FEC_OFFICIAL_FEC")
timeout 330 python3 benchmarks/bench_gpu.py --iters 3 10 "${official[@]}" --json "$out/bench_gpu.json" 2>&1 | tee "$out/bench_gpu.log"
