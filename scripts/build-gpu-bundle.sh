#!/usr/bin/env bash
# Builds, on a CPU machine with a Rust toolchain (no GPU or nvcc needed), everything
# scripts/gpu-check.sh needs on an NVIDIA machine without Rust or network (docs/gpu.md):
#
#   OUT/bin/xtask.xz     one stripped release binary with `cuda` + `flex`: every step of the check
#   OUT/scripts/         gpu-check.sh, reference_gpu.py (PyTorch side), cuda-env.sh, nvrtc-smoke.py
#   OUT/fixtures/, OUT/recipes/   the files the steps read, at their repository paths
#   OUT/cuda-headers/    CUDA 13 runtime and CCCL headers, for a machine without a toolkit
#   OUT/COMMIT           the commit it was built from
#
#   scripts/build-gpu-bundle.sh OUT      (OUT inside the repository and git-ignored, e.g. gpu-bundle)
#
# Fails when the bundle exceeds 48 MiB (the device tool carries at most 64 MiB of working tree).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
OUT=$1
LIMIT_MIB=48
mkdir -p "$OUT"
case "$(cd "$OUT" && pwd)/" in
  "$(pwd)/"?*) ;;
  *) echo "$OUT: must be inside the repository (the device tool carries the working tree)" >&2; exit 2 ;;
esac
git check-ignore -q "$OUT" || { echo "$OUT: not ignored by git; use gpu-bundle or add it to .gitignore" >&2; exit 2; }

# CUDA 13 (driver 580); cudarc loads the driver and NVRTC at run time.
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
cargo build --release -p xtask --features flex,cuda

rm -rf "${OUT:?}"/*
mkdir -p "$OUT/bin" "$OUT/scripts" "$OUT/fixtures/llada-tiny" "$OUT/fixtures/configs" "$OUT/recipes"
# Stripped, the binary is about 60 MB; xz brings it to about 10 (gpu-check.sh unpacks it).
strip -o "$OUT/bin/xtask" target/release/xtask
xz -T0 -6 "$OUT/bin/xtask"
cp scripts/gpu-check.sh scripts/reference_gpu.py scripts/cuda-env.sh scripts/nvrtc-smoke.py "$OUT/scripts/"
cp fixtures/llada-tiny/{config.json,model.safetensors,golden.safetensors,golden_meta.json} "$OUT/fixtures/llada-tiny/"
cp fixtures/configs/llada-8b-instruct.json "$OUT/fixtures/configs/"
cp recipes/llada8b-countdown.toml "$OUT/recipes/"
scripts/fetch-cuda-headers.sh "$OUT"
commit=$(git rev-parse HEAD)
git diff --quiet HEAD -- . ':!'"$OUT" || commit="$commit (with uncommitted changes)"
echo "$commit" > "$OUT/COMMIT"

bytes=$(du -sb "$OUT" | cut -f1)
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "bundle $OUT: $mib MiB (limit $LIMIT_MIB MiB)"
du -sh "$OUT"/* | sed 's/^/  /'
if [ "$bytes" -gt $(( LIMIT_MIB * 1048576 )) ]; then
  echo "the bundle is larger than $LIMIT_MIB MiB" >&2; exit 1
fi
echo "run it with: bash $OUT/scripts/gpu-check.sh OUT_DIR --backend cuda --scale 8b"
