#!/usr/bin/env bash
# The GPU checks of the performance work, as one command for a lent GPU machine (torch, timm, triton
# and pytest installed there; nothing to build): the Triton kernel tests on CUDA, then the benchmark
# table. About 8 minutes on an H100. Logs and the figures as JSON go to $OUT (or /tmp/fec-device).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/fec-device}"
mkdir -p "$out"
python3 -c "import torch, timm, triton; print('torch', torch.__version__, 'timm', timm.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
python3 -m pytest tests/test_cluster_kernels.py -q -p no:cacheprovider 2>&1 | tee "$out/kernel_tests.log"
python3 benchmarks/bench_gpu.py --json "$out/bench_gpu.json" 2>&1 | tee "$out/bench_gpu.log"
