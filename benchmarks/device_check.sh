#!/usr/bin/env bash
# The GPU checks of the performance work, as one command for a lent GPU machine (torch, timm, triton
# and pytest installed there; nothing to build): first the CUDA tests (GPU equals CPU; the Triton
# kernels), then the layer formulations, the benchmark table (with the official model's row when
# FEC_OFFICIAL_FEC names a saved official models/fec.py; einops needed) and profiles of a detection
# training step. FEC_BENCH_MODELS, FEC_PROFILE_BACKENDS (empty: none) and FEC_TEST_FILTER (a pytest -k
# expression) narrow a run.
# Logs and figures as JSON go to $OUT (or /tmp/fec-device).
#
# Budget: under 8 minutes. Measured on an H200 (2026-11-28): a compiled classification row costs 140-180 s
# (a compile for training and one for inference), the official row 17 s, other rows 2-25 s, detection rows
# ~2 s each, a profile ~15 s, the CUDA tests 40-75 s. The default rows are those the goals compare: ours eager
# and compiled (the trainers' compile switch; the detection table gets ours+compile too, one static
# 800x1344 graph per precision, as MODEL.FEC.COMPILE builds it, estimated 60-90 s each, not yet measured),
# poolformer_s12 and, with FEC_OFFICIAL_FEC, the official code. bench_gpu prints every figure as it is
# measured (compiled rows last), so a step stopped by its time limit still leaves the rows before it.
# Each step has its own time limit so that one stuck step cannot eat the rest: 75 + 30 + 330 + 25 s.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/fec-device}"
mkdir -p "$out"
python3 -c "import torch, timm, triton; print('torch', torch.__version__, 'timm', timm.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
filter=()
[ -n "${FEC_TEST_FILTER:-}" ] && filter=(-k "$FEC_TEST_FILTER")
timeout 75 python3 -m pytest tests/test_cuda.py tests/test_cluster_kernels.py -q -rf --tb=short -p no:cacheprovider \
  "${filter[@]}" 2>&1 | tee "$out/cuda_tests.log"
timeout 30 python3 benchmarks/bench_layers.py --iters 10 2>&1 | tee "$out/bench_layers.log"
official=()
[ -n "${FEC_OFFICIAL_FEC:-}" ] && official=(--official "$FEC_OFFICIAL_FEC")
read -ra models <<<"${FEC_BENCH_MODELS:-ours ours+compile poolformer_s12}"
timeout 330 python3 benchmarks/bench_gpu.py --iters 3 10 --models "${models[@]}" "${official[@]}" \
  --json "$out/bench_gpu.json" 2>&1 | tee "$out/bench_gpu.log"
for backend in ${FEC_PROFILE_BACKENDS-torch}; do
  timeout 25 python3 benchmarks/profile_fec.py --batch 2 --size 800 1344 --preset detection --bf16 --top 15 \
    --backend $backend 2>&1 | tee "$out/profile_detection_$backend.log"
done
