#!/usr/bin/env bash
# Fetches, on the CPU build machine (network to PyPI, no CUDA needed), the CUDA 13.0 headers that
# cubecl-cuda's NVRTC kernels may #include, as a fallback for GPU machines that have no CUDA
# toolkit and only torch's pip wheels (which ship the runtime headers but neither crt/ nor CCCL):
#
#   scripts/fetch-cuda-headers.sh OUT_DIR       ->  OUT_DIR/cuda-headers/include/...
#
# The wheels are the ones torch 2.11.0 pins through cuda-toolkit==13.0.2 (nvidia-cuda-runtime
# 13.0.96, nvidia-cuda-crt 13.0.88, nvidia-cuda-cccl 13.0.85); only their nvidia/cu13/include/
# trees are kept, in the CUDA 13 toolkit layout (CCCL under include/cccl/, which cubecl passes
# as its own --include-path). CCCL's thrust/ and cub/ are left out (cubecl never includes them
# and libcu++'s cuda/ does not need them); CUDA_HEADERS_WITH_THRUST_CUB=1 keeps them.
# scripts/cuda-env.sh uses the result as $BUNDLE/cuda-headers/include.
# Environment: PYTHON (default python3), CUDA_HEADER_WHEELS (override the requirement list).
set -euo pipefail
OUT=${1:?usage: scripts/fetch-cuda-headers.sh OUT_DIR}
PY=${PYTHON:-python3}
WHEELS=${CUDA_HEADER_WHEELS:-"nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85"}
DEST="$OUT/cuda-headers"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The wheels are tagged manylinux2014/manylinux_2_17 (x86-64); list the older tags explicitly,
# as pip < 24 does not expand --platform to older manylinux tags.
# shellcheck disable=SC2086
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
  -d "$tmp/wheels" $WHEELS >&2

rm -rf "$DEST"
mkdir -p "$DEST/include"
"$PY" - "$tmp/wheels" "$DEST" "${CUDA_HEADERS_WITH_THRUST_CUB:-0}" <<'EOF'
import glob, hashlib, os, sys, zipfile
wheels, dest, keep_tc = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
manifest, n, total = [], 0, 0
for whl in sorted(glob.glob(os.path.join(wheels, "*.whl"))):
    digest = hashlib.sha256(open(whl, "rb").read()).hexdigest()
    manifest.append("%s sha256=%s" % (os.path.basename(whl), digest))
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            name = info.filename
            if name.endswith("/"):
                continue
            if name.endswith(".dist-info/licenses/License.txt") or name.endswith(".dist-info/License.txt"):
                with open(os.path.join(dest, "LICENSE-" + os.path.basename(whl).split("-")[0] + ".txt"), "wb") as f:
                    f.write(z.read(info))
                continue
            # CUDA 13 wheels: nvidia/cu13/include/...; CUDA 12 wheels: nvidia/<component>/include/...
            parts = name.split("/")
            if len(parts) < 4 or parts[0] != "nvidia" or parts[2] != "include":
                continue
            rel = parts[3:]
            if not keep_tc and ((rel[0] == "cccl" and len(rel) > 1 and rel[1] in ("thrust", "cub"))
                                or rel[0] in ("thrust", "cub")):
                continue
            out = os.path.join(dest, "include", *rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as f:
                f.write(z.read(info))
            n += 1
            total += info.file_size
with open(os.path.join(dest, "SOURCES.txt"), "w") as f:
    f.write("CUDA headers extracted by scripts/fetch-cuda-headers.sh from:\n" + "\n".join(manifest) + "\n")
print("extracted %d headers, %.1f MiB" % (n, total / 2**20), file=sys.stderr)
EOF

for h in cuda_runtime.h cuda_fp16.h cuda_bf16.h cuda_fp8.h cuda_fp6.h cuda_fp4.h mma.h crt/mma.h \
         cooperative_groups.h cooperative_groups/memcpy_async.h cccl/cuda/barrier cccl/cuda/pipeline \
         cccl/cuda/ptx cccl/nv/target; do
  [ -e "$DEST/include/$h" ] || { echo "fetch-cuda-headers: MISSING $h" >&2; exit 1; }
done

size=$(du -sb --apparent-size "$DEST" | cut -f1)
gz=$(tar -C "$OUT" -czf - cuda-headers | wc -c)
files=$(find "$DEST" -type f | wc -l)
awk -v d="$DEST" -v f="$files" -v s="$size" -v g="$gz" 'BEGIN {
  printf "fetch-cuda-headers: %s: %d files, %.1f MiB (%d bytes) uncompressed, %.1f MiB as .tar.gz\n", d, f, s / 1048576, s, g / 1048576 }'
if [ "$size" -gt $((48 * 1048576)) ]; then
  echo "fetch-cuda-headers: WARNING: larger than the 48 MiB that can be carried" >&2
fi
