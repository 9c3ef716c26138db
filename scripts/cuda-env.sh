# shellcheck shell=bash
# Sets up CUDA_PATH and LD_LIBRARY_PATH for the cubecl-cuda (burn `cuda` backend) binaries on a
# GPU machine that may have no CUDA toolkit, only the NVIDIA pip wheels torch installs.
#
#   source scripts/cuda-env.sh WORK_DIR        (e.g. "$OUT/cuda-root"; bash, `set -u`-safe)
#
# Why: at run time cubecl-cuda 0.10
#   * dlopens libnvrtc and libcuda by bare file name through cudarc 0.19 (libloading -> dlopen),
#     so the directory must be on LD_LIBRARY_PATH *before* the binary starts; the names tried
#     are libnvrtc.so, ..., libnvrtc.so.13, .12, .11, .10, .9, .1 (cudarc src/lib.rs
#     get_lib_name_candidates); libnvrtc itself then dlopens libnvrtc-builtins.so.<M>.<m>,
#     also by bare name (the pip libnvrtc has no RUNPATH);
#   * compiles every kernel with NVRTC using --include-path=$CUDA_PATH/include and, if it exists,
#     --include-path=$CUDA_PATH/include/cccl, and panics if CUDA_PATH is unset and none of
#     /usr/local/cuda, /opt/cuda, /usr/bin/nvcc exist (cubecl-cuda src/lib.rs install::cuda_path).
#
# What it does:
#   1. headers: the first of $CUDA_PATH, /usr/local/cuda, /opt/cuda, /usr (if /usr/bin/nvcc),
#      the pip `nvidia` packages of the machine's Python (cu13 merged layout nvidia/cu13/include,
#      or per-component nvidia/cuda_runtime/include, nvidia/cuda_cccl/include, ...) that has
#      include/cuda_bf16.h is the primary. If it also has everything cubecl may include
#      (crt/mma.h for mma.h, CCCL cuda/barrier, cuda/pipeline, cuda/ptx, nv/target), it is used
#      as CUDA_PATH as is. Otherwise WORK_DIR/include is assembled from symlinks: every top-level
#      entry of the primary's include dir, then of the other pip include dirs, then of the
#      bundle's fallback headers ($BUNDLE/cuda-headers/include, made by
#      scripts/fetch-cuda-headers.sh), the first source of each name winning; and
#      CUDA_PATH=WORK_DIR. (torch 2.11's wheels ship the runtime headers but neither crt/ nor
#      CCCL, so on a torch-only machine crt/ and cccl/ come from the bundle.) With no headers on
#      the machine at all, the bundle's are used alone (loudly).
#   2. libnvrtc: the first libnvrtc.so* (not -builtins, not .alt) in the chosen CUDA_PATH's
#      lib64/lib/targets/x86_64-linux/lib, the pip nvidia/*/lib dirs, LD_LIBRARY_PATH, ldconfig;
#      preferring one whose major version matches the headers and that is not newer than the
#      driver (a newer NVRTC emits PTX the driver rejects). WORK_DIR/lib gets libnvrtc.so and
#      libnvrtc.so.<major> symlinks to it (plus its libnvrtc-builtins), and
#      LD_LIBRARY_PATH=WORK_DIR/lib:<its dir>:$LD_LIBRARY_PATH.
#   3. libnccl: if a libnccl.so.2 is found, WORK_DIR/lib/libnccl.so points to it (cudarc does
#      not try the .so.2 name; NCCL is only loaded by cubecl's multi-device collectives).
#   4. libcuda: only checked (it comes with the driver); a dir holding libcuda.so.1 that the
#      dynamic loader would not find is prepended too.
# Exports CUDA_PATH, LD_LIBRARY_PATH, NVRTC_LIB (the chosen libnvrtc, for scripts/nvrtc-smoke.py).
# Returns non-zero (with a message) if no cuda_bf16.h or no libnvrtc can be found.
# Inputs: $1 WORK_DIR (default ${TMPDIR:-/tmp}/cuda-env-root), $BUNDLE (optional),
#         $CUDA_ENV_FALLBACK_INCLUDE (optional, overrides $BUNDLE/cuda-headers/include),
#         $CUDA_ENV_PYTHON, $PYTHON (optional: the Pythons to ask first; then python3, python),
#         $CUDA_ENV_DRIVER_VERSION (optional, e.g. 13.0: overrides the driver's CUDA version,
#         otherwise read with cuDriverGetVersion; for testing on machines without a driver).

_ce_log() { printf 'cuda-env: %s\n' "$*" >&2; }
_ce_loud() {
  printf 'cuda-env: ************************************************************\n' >&2
  printf 'cuda-env: *** %s\n' "$@" >&2
  printf 'cuda-env: ************************************************************\n' >&2
}

# CUDART_VERSION of an include dir (e.g. 13000), or empty.
_ce_cudart_version() {
  [ -f "$1/cuda_runtime_api.h" ] || return 0
  sed -n 's/^#define[[:space:]]*CUDART_VERSION[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$1/cuda_runtime_api.h" | head -n 1
}

# Prints, one per line, the headers cubecl-cpp 0.10 may #include that an include dir lacks
# (CCCL/nv headers may sit directly in it or under its cccl/ subdir, as cubecl passes both).
_ce_missing_headers() {
  local inc=$1 h
  for h in cuda_runtime.h cuda_fp16.h cuda_bf16.h cuda_fp8.h cuda_fp6.h cuda_fp4.h mma.h crt/mma.h \
           cooperative_groups.h cooperative_groups/memcpy_async.h; do
    [ -e "$inc/$h" ] || printf '%s\n' "$h"
  done
  for h in cuda/barrier cuda/pipeline cuda/ptx nv/target; do
    [ -e "$inc/$h" ] || [ -e "$inc/cccl/$h" ] || printf '%s\n' "$h"
  done
}

# The machine's pip `nvidia` package dirs (namespace package; all site dirs), one per line.
_ce_pip_nvidia_dirs() {
  local py seen="" d
  {
  for py in ${CUDA_ENV_PYTHON:-} ${PYTHON:-} python3 python; do
    command -v "$py" >/dev/null 2>&1 || continue
    case " $seen " in *" $(command -v "$py") "*) continue ;; esac
    seen="$seen $(command -v "$py")"
    "$py" - <<'EOF' 2>/dev/null
import os, sys, site
paths = []
try:
    import nvidia
    paths += list(getattr(nvidia, "__path__", []))
except Exception:
    pass
dirs = []
try:
    dirs += site.getsitepackages()
except Exception:
    pass
try:
    dirs.append(site.getusersitepackages())
except Exception:
    pass
dirs += [p for p in sys.path if p]
paths += [os.path.join(d, "nvidia") for d in dirs]
seen = set()
for p in paths:
    p = os.path.realpath(p)
    if p not in seen and os.path.isdir(p):
        seen.add(p)
        print(p)
EOF
  done
  # Also the usual places, in case torch lives in a Python that is not first on PATH.
  for d in /usr/local/lib/python3*/dist-packages/nvidia /usr/local/lib/python3*/site-packages/nvidia \
           /usr/lib/python3/dist-packages/nvidia /opt/conda/lib/python3*/site-packages/nvidia \
           "${HOME:-/root}"/.local/lib/python3*/site-packages/nvidia; do
    [ -d "$d" ] && readlink -f "$d"
  done
  } | awk '!seen[$0]++'
}

# Sub-directories of the pip nvidia dirs, the CUDA 13 merged layout first, then CUDA 12's
# per-component layout (cuda_runtime, cuda_nvrtc, cuda_cccl, cuda_nvcc, ...).
_ce_pip_subdirs() {
  local n s
  for n in "$@"; do
    for s in cu13 cu12 cuda_runtime cuda_nvrtc cuda_cccl cuda_crt cuda_nvcc; do
      [ -d "$n/$s" ] && printf '%s\n' "$n/$s"
    done
    for s in "$n"/*/; do
      [ -d "$s" ] && printf '%s\n' "${s%/}"
    done
  done | awk '!seen[$0]++'
}

# "major.minor" of a libnvrtc file (via python ctypes), or empty.
_ce_nvrtc_version() {
  local py
  for py in ${CUDA_ENV_PYTHON:-} ${PYTHON:-} python3 python; do
    command -v "$py" >/dev/null 2>&1 || continue
    LD_LIBRARY_PATH="$(dirname "$1"):${LD_LIBRARY_PATH:-}" "$py" -c '
import ctypes, sys
l = ctypes.CDLL(sys.argv[1]); a = ctypes.c_int(); b = ctypes.c_int()
if l.nvrtcVersion(ctypes.byref(a), ctypes.byref(b)) == 0: print("%d.%d" % (a.value, b.value))
' "$1" 2>/dev/null && return 0
  done
  return 0
}

# "major.minor" of the CUDA driver API (cuDriverGetVersion needs no GPU context), or empty.
_ce_driver_version() {
  local py
  for py in ${CUDA_ENV_PYTHON:-} ${PYTHON:-} python3 python; do
    command -v "$py" >/dev/null 2>&1 || continue
    "$py" -c '
import ctypes
for n in ("libcuda.so.1", "libcuda.so"):
    try:
        l = ctypes.CDLL(n)
    except OSError:
        continue
    v = ctypes.c_int()
    if l.cuDriverGetVersion(ctypes.byref(v)) == 0:
        print("%d.%d" % (v.value // 1000, (v.value % 1000) // 10))
    break
' 2>/dev/null && return 0
  done
  return 0
}

# 0 if version $1 <= $2 ("13.0" style).
_ce_version_le() {
  [ "$(printf '%s\n%s\n' "$1" "$2" | sort -t. -k1,1n -k2,2n | head -n 1)" = "$1" ]
}

_ce_main() {
  local work=${1:-${TMPDIR:-/tmp}/cuda-env-root}
  local fallback="${CUDA_ENV_FALLBACK_INCLUDE:-}"
  local here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" 2>/dev/null && pwd) || here=.
  if [ -z "$fallback" ]; then
    local c
    for c in "${BUNDLE:+$BUNDLE/cuda-headers/include}" "$here/cuda-headers/include" "$here/../cuda-headers/include"; do
      if [ -n "$c" ] && [ -f "$c/cuda_bf16.h" ]; then fallback=$(cd "$c" && pwd); break; fi
    done
  fi
  [ -n "${1:-}" ] || _ce_log "no WORK_DIR argument; using $work"
  case "$work" in /*) ;; *) work="$(pwd)/$work" ;; esac
  # Only ever write into (and delete inside) a dir this script made.
  if [ -d "$work" ] && [ -n "$(ls -A "$work" 2>/dev/null)" ] && [ ! -e "$work/.cuda-env-root" ]; then
    _ce_log "ERROR: $work exists, is not empty and was not made by cuda-env.sh; give another WORK_DIR"
    return 2
  fi
  if ! { mkdir -p "$work" && : > "$work/.cuda-env-root"; }; then
    _ce_log "ERROR: cannot create $work"
    return 2
  fi

  # ---- pip NVIDIA packages ------------------------------------------------------------------
  local -a nvdirs=() subdirs=() pip_inc=() pip_lib=()
  local line
  while IFS= read -r line; do [ -n "$line" ] && nvdirs+=("$line"); done < <(_ce_pip_nvidia_dirs)
  if [ ${#nvdirs[@]} -gt 0 ]; then
    while IFS= read -r line; do [ -n "$line" ] && subdirs+=("$line"); done < <(_ce_pip_subdirs "${nvdirs[@]}")
    for line in "${subdirs[@]+"${subdirs[@]}"}"; do
      [ -d "$line/include" ] && pip_inc+=("$line/include")
      [ -d "$line/lib" ] && pip_lib+=("$line/lib")
    done
    _ce_log "pip nvidia packages: ${nvdirs[*]}"
  else
    _ce_log "no pip nvidia packages found (pythons tried: ${CUDA_ENV_PYTHON:-} ${PYTHON:-} python3 python)"
  fi

  # ---- headers --------------------------------------------------------------------------------
  local primary="" primary_kind="" cand
  local -a tk=()
  # A CUDA_PATH left by an earlier run of this script into the same WORK_DIR is rebuilt.
  if [ -n "${CUDA_PATH:-}" ] && [ "$(readlink -f "$CUDA_PATH")" != "$(readlink -f "$work")" ]; then
    tk+=("$CUDA_PATH")
  fi
  tk+=(/usr/local/cuda /opt/cuda)
  [ -x /usr/bin/nvcc ] && tk+=(/usr)
  for cand in "${tk[@]}"; do
    if [ -f "$cand/include/cuda_bf16.h" ]; then
      primary="$cand/include"
      if [ "$cand" = "${CUDA_PATH:-}" ]; then primary_kind="toolkit CUDA_PATH=$cand"; else primary_kind="toolkit $cand"; fi
      break
    fi
    [ "$cand" = "${CUDA_PATH:-}" ] && _ce_log "CUDA_PATH=$cand has no include/cuda_bf16.h; not using it"
  done
  if [ -z "$primary" ]; then
    for cand in "${pip_inc[@]+"${pip_inc[@]}"}"; do
      if [ -f "$cand/cuda_bf16.h" ]; then primary="$cand"; primary_kind="pip"; break; fi
    done
  fi

  local cuda_path missing ver_primary
  if [ -n "$primary" ]; then
    ver_primary=$(_ce_cudart_version "$primary")
    missing=$(_ce_missing_headers "$primary")
  else
    ver_primary=""
    missing="all"
  fi

  if [ -n "$primary" ] && [ -z "$missing" ] && [ "$primary_kind" != "pip" ]; then
    cuda_path=${primary%/include}
    _ce_log "headers: complete in $primary_kind (CUDART_VERSION ${ver_primary:-?}); CUDA_PATH=$cuda_path"
  elif [ -n "$primary" ] && [ -z "$missing" ] && [ "$(basename "$(dirname "$primary")")" = cu13 ]; then
    # The CUDA 13 pip layout nvidia/cu13/{include,lib} is a complete CUDA_PATH by itself.
    cuda_path=$(dirname "$primary")
    _ce_log "headers: complete in pip $primary (CUDART_VERSION ${ver_primary:-?}); CUDA_PATH=$cuda_path"
  else
    # Assemble WORK_DIR/include from symlinks.
    rm -rf "$work/include"
    mkdir -p "$work/include"
    local -a sources=()
    [ -n "$primary" ] && sources+=("$primary")
    for cand in "${pip_inc[@]+"${pip_inc[@]}"}"; do
      [ "$cand" = "$primary" ] && continue
      local v
      v=$(_ce_cudart_version "$cand")
      if [ -n "$ver_primary" ] && [ -n "$v" ] && [ "${v:0:2}" != "${ver_primary:0:2}" ]; then
        _ce_log "skipping $cand (CUDART_VERSION $v, headers are $ver_primary)"
        continue
      fi
      # Per-component pip dirs without runtime headers (cuda_cccl, cuda_nvcc...) have no
      # CUDART_VERSION; take them (same pip environment as the primary).
      sources+=("$cand")
    done
    if [ -n "$fallback" ]; then
      sources+=("$fallback")
    fi
    if [ ${#sources[@]} -eq 0 ]; then
      _ce_loud "ERROR: no CUDA headers (include/cuda_bf16.h) on this machine: no CUDA_PATH," \
        "no /usr/local/cuda or /opt/cuda, no pip nvidia/*/include, and no bundled fallback" \
        "(\$BUNDLE/cuda-headers/include; BUNDLE=${BUNDLE:-<unset>})."
      return 1
    fi
    local src entry name
    local -a from_bundle=()
    for src in "${sources[@]}"; do
      for entry in "$src"/* "$src"/.[!.]*; do
        [ -e "$entry" ] || continue
        name=$(basename "$entry")
        [ -e "$work/include/$name" ] || [ -L "$work/include/$name" ] && continue
        ln -s "$entry" "$work/include/$name"
        [ "$src" = "$fallback" ] && from_bundle+=("$name")
      done
    done
    cuda_path=$work
    if [ -z "$primary" ]; then
      _ce_loud "NO CUDA HEADERS ON THIS MACHINE: using the bundled fallback headers" \
        "$fallback (CUDART_VERSION $(_ce_cudart_version "$fallback"))"
    elif [ ${#from_bundle[@]} -gt 0 ]; then
      local vf
      vf=$(_ce_cudart_version "$fallback")
      _ce_loud "headers: $primary (CUDART_VERSION ${ver_primary:-?}) lacks: $(printf '%s ' $missing);" \
        "taken from the BUNDLED fallback $fallback (CUDART_VERSION ${vf:-?}): ${from_bundle[*]}"
      if [ -n "$vf" ] && [ -n "$ver_primary" ] && [ "${vf:0:2}" != "${ver_primary:0:2}" ]; then
        _ce_loud "WARNING: mixing CUDA ${ver_primary} headers with bundled CUDA ${vf} headers"
      fi
    fi
    _ce_log "headers: assembled $work/include from: ${sources[*]}"
    _ce_log "CUDA_PATH=$cuda_path"
  fi

  local still
  still=$(_ce_missing_headers "$cuda_path/include")
  if [ ! -f "$cuda_path/include/cuda_bf16.h" ]; then
    _ce_loud "ERROR: no cuda_bf16.h under $cuda_path/include"
    return 1
  fi
  if [ -n "$still" ]; then
    _ce_loud "WARNING: $cuda_path/include still lacks: $(printf '%s ' $still)" \
      "(kernels that include these will fail to compile; add fallback headers: scripts/fetch-cuda-headers.sh)"
  fi
  if [ -d "$cuda_path/include/cccl" ]; then
    _ce_log "cccl: $cuda_path/include/cccl exists, cubecl will add it as an include path"
  fi

  # ---- libnvrtc -------------------------------------------------------------------------------
  local -a libdirs=()
  local d
  case "$primary_kind" in
    toolkit*) local tkroot=${primary%/include}
              libdirs+=("$tkroot/lib64" "$tkroot/lib" "$tkroot/targets/x86_64-linux/lib") ;;
  esac
  libdirs+=("${pip_lib[@]+"${pip_lib[@]}"}")
  local IFS_save=$IFS
  IFS=:
  for d in ${LD_LIBRARY_PATH:-}; do [ -n "$d" ] && libdirs+=("$d"); done
  IFS=$IFS_save
  if command -v ldconfig >/dev/null 2>&1; then
    while IFS= read -r d; do [ -n "$d" ] && libdirs+=("$d"); done < <(
      ldconfig -p 2>/dev/null | sed -n 's/^[[:space:]]*libnvrtc\.so[^ ]* .*=> \(.*\)$/\1/p' | xargs -r -n1 dirname | awk '!s[$0]++')
  fi
  libdirs+=(/usr/lib/x86_64-linux-gnu /usr/lib64)

  local drv
  drv=${CUDA_ENV_DRIVER_VERSION:-$(_ce_driver_version)}
  local -a nvrtc_cands=()
  local f
  for d in "${libdirs[@]}"; do
    [ -d "$d" ] || continue
    for f in "$d"/libnvrtc.so*; do
      [ -e "$f" ] || continue
      case "$(basename "$f")" in *builtins*|*.alt.*) continue ;; esac
      nvrtc_cands+=("$(readlink -f "$f")")
    done
  done
  local chosen="" chosen_ver="" fallback_choice="" fallback_ver="" seen_c="" v
  for f in "${nvrtc_cands[@]+"${nvrtc_cands[@]}"}"; do
    case " $seen_c " in *" $f "*) continue ;; esac
    seen_c="$seen_c $f"
    v=$(_ce_nvrtc_version "$f")
    _ce_log "libnvrtc candidate: $f (NVRTC ${v:-?})"
    [ -z "$fallback_choice" ] && { fallback_choice=$f; fallback_ver=$v; }
    if [ -n "$ver_primary" ] && [ -n "$v" ] && [ "${v%%.*}" != "$((ver_primary / 1000))" ]; then continue; fi
    if [ -n "$drv" ] && [ -n "$v" ] && ! _ce_version_le "$v" "$drv"; then continue; fi
    chosen=$f; chosen_ver=$v; break
  done
  if [ -z "$chosen" ] && [ -n "$fallback_choice" ]; then
    chosen=$fallback_choice; chosen_ver=$fallback_ver
    _ce_loud "WARNING: no libnvrtc matches the headers (CUDART ${ver_primary:-?}) and driver (${drv:-?}); using $chosen (NVRTC ${chosen_ver:-?})"
  fi
  if [ -z "$chosen" ]; then
    _ce_loud "ERROR: no libnvrtc.so* found (searched: ${libdirs[*]})." \
      "Install the nvidia-cuda-nvrtc wheel (torch's dependency) or a CUDA toolkit."
    return 1
  fi
  if [ -n "$drv" ] && [ -n "$chosen_ver" ] && ! _ce_version_le "$chosen_ver" "$drv"; then
    _ce_loud "WARNING: NVRTC $chosen_ver is newer than the driver's CUDA $drv: its PTX will likely be" \
      "rejected at module load (CUDA_ERROR_UNSUPPORTED_PTX_VERSION)"
  fi
  local libdir major
  libdir=$(dirname "$chosen")
  major=${chosen_ver%%.*}
  mkdir -p "$work/lib"
  rm -f "$work"/lib/libnvrtc*
  ln -s "$chosen" "$work/lib/libnvrtc.so"
  [ -n "$major" ] && [ "$(basename "$chosen")" != "libnvrtc.so.$major" ] && ln -s "$chosen" "$work/lib/libnvrtc.so.$major"
  local nbuiltins=0
  for f in "$libdir"/libnvrtc-builtins.so*; do
    [ -e "$f" ] || continue
    ln -s "$f" "$work/lib/$(basename "$f")" && nbuiltins=$((nbuiltins + 1))
  done
  if [ "$nbuiltins" -eq 0 ]; then
    _ce_loud "WARNING: no libnvrtc-builtins.so* next to $chosen: NVRTC will fail to compile" \
      "(NVRTC_ERROR_BUILTIN_OPERATION_FAILURE) unless the dynamic loader finds it elsewhere"
  fi
  # Prepend (dropping earlier copies of the same entries, e.g. when sourced twice).
  local rest="" e
  IFS=:
  for e in ${LD_LIBRARY_PATH:-}; do
    [ -z "$e" ] || [ "$e" = "$work/lib" ] || [ "$e" = "$libdir" ] && continue
    rest="${rest:+$rest:}$e"
  done
  IFS=$IFS_save
  export LD_LIBRARY_PATH="$work/lib:$libdir${rest:+:$rest}"
  export NVRTC_LIB="$work/lib/libnvrtc.so"
  _ce_log "libnvrtc: $chosen (NVRTC ${chosen_ver:-?}); $work/lib/libnvrtc.so -> it"

  # ---- libnccl (only used by cubecl's collective ops) ----------------------------------------
  # cudarc tries libnccl.so, libnccl.so.13/.12/.../.1 but not the real soname libnccl.so.2
  # that the nvidia-nccl-cu1x wheels (and the NCCL runtime packages) ship.
  local nccl=""
  for d in "${pip_lib[@]+"${pip_lib[@]}"}" "${libdirs[@]}"; do
    if [ -e "$d/libnccl.so.2" ]; then nccl=$(readlink -f "$d/libnccl.so.2"); break; fi
  done
  rm -f "$work/lib/libnccl.so"
  if [ -n "$nccl" ]; then
    ln -s "$nccl" "$work/lib/libnccl.so"
    _ce_log "libnccl: $work/lib/libnccl.so -> $nccl"
  fi

  # ---- libcuda (driver) -----------------------------------------------------------------------
  if [ -n "$drv" ]; then
    _ce_log "libcuda: loadable, driver supports CUDA $drv"
  else
    local cudadir=""
    for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/wsl/lib; do
      if [ -e "$d/libcuda.so.1" ]; then cudadir=$d; break; fi
    done
    if [ -n "$cudadir" ]; then
      export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$cudadir"
      _ce_log "libcuda: found $cudadir/libcuda.so.1 (not loadable by python here, or no python); appended $cudadir to LD_LIBRARY_PATH"
    else
      _ce_log "WARNING: libcuda.so.1 (NVIDIA driver) not found: fine for compiling, but no GPU can be used"
    fi
  fi

  export CUDA_PATH="$cuda_path"
  _ce_log "export CUDA_PATH=$CUDA_PATH"
  _ce_log "export LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "cuda-env.sh must be sourced: source ${BASH_SOURCE[0]} WORK_DIR" >&2
  exit 2
fi
# Called in an && / || list so that a caller's `set -e` neither aborts it half-way nor exits
# the caller's shell on failure (the return code is returned instead).
_ce_rc=0
_ce_main "$@" || _ce_rc=$?
unset -f _ce_log _ce_loud _ce_cudart_version _ce_missing_headers _ce_pip_nvidia_dirs \
  _ce_pip_subdirs _ce_nvrtc_version _ce_driver_version _ce_version_le _ce_main
eval "unset _ce_rc; return $_ce_rc"
