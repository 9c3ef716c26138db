#!/usr/bin/env bash
# Builds, on a CPU machine with a Rust toolchain (no GPU, no nvcc needed), everything that
# scripts/gpu-check.sh runs on an NVIDIA machine without Rust or network: the `dmpo` and `xtask`
# binaries and the backend-parity test binary, all with the `cuda` feature, plus the fixtures.
#
#   scripts/build-gpu-bundle.sh [OUT_DIR]      (default: gpu-bundle)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-bundle}
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
FEATURES="flex,cuda"

mkdir -p "$OUT/bin"
cargo build --release -p dmpo-train --bin dmpo --features "$FEATURES"
cargo build --release -p xtask --features "$FEATURES"
cp target/release/dmpo target/release/xtask "$OUT/bin/"

# The parity test as a standalone binary (cargo prints its path as JSON).
parity=$(cargo test --release -p dmpo-train --features "$FEATURES" --test backend_parity --no-run \
  --message-format=json 2>/dev/null | grep -o '"executable":"[^"]*backend_parity[^"]*"' | tail -n 1 | cut -d'"' -f4)
cp "$parity" "$OUT/bin/backend_parity"

# Data the binaries read, at the same relative paths as in the repository.
mkdir -p "$OUT/repo"
cp -r fixtures models recipes "$OUT/repo/"
cp scripts/gpu-check.sh "$OUT/"
echo "bundle ready in $OUT (copy it to the GPU machine and run: bash $OUT/gpu-check.sh)"
