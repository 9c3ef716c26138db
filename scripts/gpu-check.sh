#!/usr/bin/env bash
# The one-command GPU check (docs/gpu.md): parity of the backend against flex (f32, bf16), then
# LLaDA-8B-geometry forward, rollouts and LoRA DMPO updates timed beside PyTorch on the same card.
#
#   scripts/gpu-check.sh OUT_DIR [--backend cuda|flex] [--scale tiny|8b]
#
# Runs from a bundle made by scripts/build-gpu-bundle.sh (bin/xtask beside scripts/) or from a
# checkout (target/release/xtask, or $XTASK). Each step runs under its own `timeout`, all of them
# within $GPU_CHECK_BUDGET_S seconds (default 480), and OUT_DIR/report.md and report.json are
# rewritten after every step, so a run cut short still reports what finished. PyTorch is
# $PYTHON (default python3). Exits 0 when every step ran and every check passed.
#
# Dry run on a CPU: scripts/gpu-check.sh out --backend flex --scale tiny
set -uo pipefail

usage() { echo "usage: $0 OUT_DIR [--backend cuda|flex] [--scale tiny|8b]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1; shift
BACKEND=cuda; SCALE=8b
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) BACKEND=${2:-}; shift 2 || usage ;;
    --scale) SCALE=${2:-}; shift 2 || usage ;;
    *) usage ;;
  esac
done
case "$BACKEND" in cuda|flex) ;; *) echo "--backend must be cuda or flex" >&2; exit 2 ;; esac
case "$SCALE" in tiny|8b) ;; *) echo "--scale must be tiny or 8b" >&2; exit 2 ;; esac

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 2

# A bundle carries the binary compressed: unpacked once, beside it.
if [ -z "${XTASK:-}" ] && [ ! -x "$ROOT/bin/xtask" ] && [ -f "$ROOT/bin/xtask.xz" ]; then
  { xz -dc "$ROOT/bin/xtask.xz" 2>/dev/null \
      || "${PYTHON:-python3}" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$ROOT/bin/xtask.xz"
  } > "$ROOT/bin/xtask.part" && mv "$ROOT/bin/xtask.part" "$ROOT/bin/xtask" && chmod +x "$ROOT/bin/xtask"
fi
if [ -z "${XTASK:-}" ]; then
  for candidate in "$ROOT/bin/xtask" "$ROOT/target/release/xtask"; do
    [ -x "$candidate" ] && { XTASK=$candidate; break; }
  done
fi
[ -n "${XTASK:-}" ] && [ -x "$XTASK" ] || {
  echo "no xtask binary: build the bundle (scripts/build-gpu-bundle.sh) or set XTASK" >&2; exit 2; }
PYTHON=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
START=$(date +%s)

rm -f "$OUT"/{steps.tsv,env.txt,log.txt,geometry.json,parity-f32.json,parity-bf16.json,ours.json,ours_tiny.json,pytorch.json,report.json,report.md}
touch "$OUT/steps.tsv"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  if [ -f "$ROOT/COMMIT" ]; then echo "commit: $(cat "$ROOT/COMMIT")"
  else echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"; fi
  echo "command: scripts/gpu-check.sh OUT --backend $BACKEND --scale $SCALE (budget ${BUDGET} s)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | head -n 1)"
  else
    echo "nvidia-smi: not found"
  fi
  echo "python: $("$PYTHON" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -n 1)"
} > "$OUT/env.txt"

if [ "$BACKEND" = cuda ]; then
  # NVRTC and the CUDA headers burn's kernels compile against (docs/gpu.md).
  # shellcheck source=scripts/cuda-env.sh
  if source "$HERE/cuda-env.sh" "$OUT/cuda-root" 2>>"$OUT/log.txt"; then
    { echo "CUDA_PATH: $CUDA_PATH"; echo "LD_LIBRARY_PATH: ${LD_LIBRARY_PATH:-}"; } >> "$OUT/env.txt"
  else
    echo "cuda-env: no usable NVRTC or CUDA headers (see log.txt)" >> "$OUT/env.txt"
  fi
fi
cat "$OUT/env.txt"

# The binary needs glibc 2.34 or later (built on Debian 12): say so in the report if it cannot run.
if ! preflight=$("$XTASK" gpu-check --help 2>&1); then
  { echo "# dmpo-rs GPU check: the xtask binary does not run on this machine"; echo
    echo '```'; cat "$OUT/env.txt"; echo "$preflight" | tail -n 5; echo '```'; } > "$OUT/report.md"
  cat "$OUT/report.md"; exit 1
fi

report() { "$XTASK" gpu-check report "$OUT" >>"$OUT/log.txt" 2>&1; }

# step NAME LIMIT_S COMMAND...: runs COMMAND under `timeout`, within what is left of the budget.
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 10 ]; then
    printf '%s\t124\t0\n' "$name (not started: budget spent)" >> "$OUT/steps.tsv"
    echo "== $name: not started, budget spent"; report; return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit} s)"
  echo "== $name: $*" >> "$OUT/log.txt"
  local t0; t0=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" >>"$OUT/log.txt" 2>&1
  local rc=$?
  local secs; secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  printf '%s\t%s\t%s\n' "$name" "$rc" "$secs" >> "$OUT/steps.tsv"
  echo "   exit $rc after $secs s"
  report
}

if [ "$BACKEND" = cuda ]; then
  # NVRTC compiles kernels with every header burn's CUDA kernels include, and the driver loads them.
  step "nvrtc smoke" 60 env NVRTC_SMOKE_ARCH=auto "$PYTHON" "$HERE/nvrtc-smoke.py"
fi
step "parity f32" 150 "$XTASK" gpu-check parity --backend "$BACKEND" --dtype f32 \
  --out "$OUT/parity-f32.json" --ours-tiny "$OUT/ours_tiny.json"
step "parity bf16" 150 "$XTASK" gpu-check parity --backend "$BACKEND" --dtype bf16 \
  --out "$OUT/parity-bf16.json"
# The card's memory from nvidia-smi, so PyTorch gets its geometry even when our CUDA cannot start.
DEVICE_ARGS=()
if [ "$BACKEND" = cuda ] && command -v nvidia-smi >/dev/null 2>&1; then
  mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -n 1 | tr -dc 0-9)
  name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
  [ -n "$mib" ] && [ -n "$name" ] && DEVICE_ARGS=(--device-memory-mib "$mib" --device-name "$name")
fi
step "geometry" 30 "$XTASK" gpu-check geometry --scale "$SCALE" --backend "$BACKEND" \
  --out "$OUT/geometry.json" "${DEVICE_ARGS[@]}"
DEVICE=cpu; [ "$BACKEND" = cuda ] && DEVICE=cuda
step "pytorch" 240 "$PYTHON" "$HERE/reference_gpu.py" --geometry "$OUT/geometry.json" \
  --golden fixtures/llada-tiny --ours "$OUT/ours_tiny.json" --out "$OUT/pytorch.json" --device "$DEVICE"
# Cheapest first, LLaDA's exact sampler (128 full forward passes) last.
for op in forward update-checkpointing rollout-dual rollout-prefix update-plain rollout-exact; do
  limit=90; [ "$op" = rollout-exact ] && limit=180
  step "ours: $op" "$limit" "$XTASK" gpu-check measure --geometry "$OUT/geometry.json" \
    --backend "$BACKEND" --op "$op" --out "$OUT/ours.json"
done

report
echo
cat "$OUT/report.md" 2>/dev/null || { echo "no report: see $OUT/log.txt"; exit 1; }
grep -q '"complete": true' "$OUT/report.json"
