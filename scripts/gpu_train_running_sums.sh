#!/usr/bin/env bash
# Stage 3 of running-sums-small and the autoregressive baseline's matching budget, side by side on one CUDA GPU:
#
#   scripts/gpu_train_running_sums.sh OUT_DIR     # from the repository root; needs runs/running-sums-small-stage2/final
#
# Writes OUT_DIR/running-sums-small-stage3 (the diffusion run: checkpoints, metrics, final) and OUT_DIR/ar-running-sums
# (the baseline trained through all three recipes from scratch), with their logs.
set -u
OUT=${1:?usage: scripts/gpu_train_running_sums.sh OUT_DIR}
source "$(dirname "$0")/gpu_env.sh"
LIMIT=${LIMIT:-420}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
timeout "$LIMIT" $PY -m mmdiff.cli train configs/reasoning/running-sums-small-stage3.yaml \
    --train.out_dir="$OUT/running-sums-small-stage3" >"$OUT/diffusion.log" 2>&1 &
timeout "$LIMIT" $PY benchmarks/ar_baseline.py train --device cuda --out "$OUT/ar-running-sums" --log-every 500 \
    --recipes configs/reasoning/running-sums-small.yaml configs/reasoning/running-sums-small-stage2.yaml \
    configs/reasoning/running-sums-small-stage3.yaml >"$OUT/ar.log" 2>&1
echo "ar: rc $?"
wait
echo "diffusion: done"
tail -c 1500 "$OUT/diffusion.log"
tail -n 8 "$OUT/ar.log"
