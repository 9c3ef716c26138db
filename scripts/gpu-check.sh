#!/usr/bin/env bash
# Runs on a machine with an NVIDIA GPU (CUDA 13 driver; no Rust toolchain or network needed),
# from a bundle made by scripts/build-gpu-bundle.sh. Writes gpu-report/report.md. Under 8 minutes.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN="$HERE/bin"
REPORT=${REPORT_DIR:-$HERE/gpu-report}
mkdir -p "$REPORT"
cd "$HERE/repo"
{
  echo "# dmpo-rs GPU check"
  echo; echo '```'; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1; echo '```'
  echo; echo "## Backend parity (flex vs cuda: golden logits, greedy generation, one DMPO loss+gradient)"
  echo '```'
  DMPO_REPO="$HERE/repo" timeout 300 "$BIN/backend_parity" --nocapture 2>&1 | tail -n 20
  echo '```'
  echo; echo "## Bench on fixtures/bench (cuda)"
  echo '```'
  timeout 300 "$BIN/xtask" bench --backend cuda --reps 3 2>&1 | tail -n 12
  echo '```'
  echo; echo "## Bench at the 1B scale (cuda): random weights of fixtures/configs/llada-1b.json"
  echo "(1.3B parameters, d_model 2048, 16 layers, vocabulary 126464; f32 in memory)"
  echo '```'
  timeout 180 "$BIN/xtask" bench forward --backend cuda --reps 3 \
    --random-config fixtures/configs/llada-1b.json 2>&1 | tail -n 2
  timeout 180 "$BIN/xtask" bench step --backend cuda --reps 2 \
    --random-config fixtures/configs/llada-1b.json 2>&1 | tail -n 2
  echo '```'
  echo; echo "## Bench on fixtures/bench (flex, same machine)"
  echo '```'
  timeout 200 "$BIN/xtask" bench forward --backend flex --reps 3 2>&1 | tail -n 4
  echo '```'
} > "$REPORT/report.md"
cat "$REPORT/report.md"
