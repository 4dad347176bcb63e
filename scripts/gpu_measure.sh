#!/usr/bin/env bash
# Everything the kata READMEs need from a GPU, in one go (e.g. one call on a lent H100):
# large-shape correctness and perf tiers of every kata against reference/, then the
# benchmark tables of the kernel katas. Results land in $OUT (default ./gpu-results).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=ci
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' | tee -a "$OUT/gpu.txt"
python3 -m pytest katas -m gpu --impl reference -p no:cacheprovider -q \
    --benchmark-json="$OUT/benchmark.json" 2>&1 | tee "$OUT/gpu_tests.log"
for bench in katas/*/bench.py; do
    name=$(basename "$(dirname "$bench")")
    python3 "$bench" 2>&1 | tee "$OUT/bench_${name}.txt"
done
