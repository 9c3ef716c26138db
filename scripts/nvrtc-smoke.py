#!/usr/bin/env python3
"""NVRTC smoke test for the kernels cubecl-cuda 0.10 generates (self-contained, ctypes only).

Compiles, with the NVRTC library and include directories that `scripts/cuda-env.sh` chose,
test kernels that `#include` every header cubecl-cpp 0.10's CUDA dialect may emit
(cubecl-cpp-0.10.0/src/cuda/dialect.rs `compile_includes`, src/cuda/mma/cuda_compiler.rs) and
use the CCCL / cooperative-groups / wmma / fp8-fp6-fp4 APIs its generated code calls, with
exactly the options cubecl-cuda passes (cubecl-cuda-0.10.0/src/compute/context.rs):

    --gpu-architecture=sm_XX[a]  --include-path=$CUDA_PATH/include  -lineinfo
    [--include-path=$CUDA_PATH/include/cccl   (only if that directory exists)]

NVRTC runs without a GPU. If a GPU and the driver (libcuda.so.1) are usable, the PTX of each
kernel is also loaded with cuModuleLoadData, which catches a PTX ISA newer than the driver
(CUDA_ERROR_UNSUPPORTED_PTX_VERSION), as cubecl would hit at its first kernel launch.

Environment:
  CUDA_PATH          required (as exported by cuda-env.sh); include dirs are derived from it.
  NVRTC_LIB          optional: the libnvrtc to load (cuda-env.sh exports it); default: dlopen the
                     names cudarc 0.19 tries (libnvrtc.so, libnvrtc.so.13, .12, ...) via
                     LD_LIBRARY_PATH / ld.so.cache, as cubecl would.
  NVRTC_SMOKE_ARCH   optional: e.g. sm_90a (default), sm_80, or "auto" (ask the driver;
                     falls back to sm_90a without a GPU).
  NVRTC_SMOKE_VERBOSE=1  also print the log of successful compilations.
Prints one line per kernel ("OK ..." or "FAIL ..." followed by the NVRTC log) and exits
non-zero if anything failed.
"""
import ctypes
import os
import sys

# cudarc-0.19.10/src/lib.rs get_lib_name_candidates("nvrtc") on Linux x86-64 for a CUDA 13.0
# build (CUDA_MAJOR_VERSION=13, CUDA_MINOR_VERSION=0); names that cannot exist on Linux omitted.
CUDARC_NVRTC_NAMES = [
    "libnvrtc.so", "libnvrtc64.so", "libnvrtc64_13.so", "libnvrtc64_130.so",
    "libnvrtc64_130_0.so", "libnvrtc64_10.so", "libnvrtc64_11.so", "libnvrtc64_12.so",
    "libnvrtc64_9.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11",
    "libnvrtc.so.10", "libnvrtc.so.9", "libnvrtc.so.1",
]
CUDARC_CUDA_NAMES = ["libcuda.so", "libcuda.so.13", "libcuda.so.12", "libcuda.so.1"]

HEADERS_ALL = [
    # always
    "cuda_runtime.h",
    # flags.elem_fp4 / elem_fp6 / elem_fp8 / elem_bf16 / elem_f16
    "cuda_fp4.h", "cuda_fp6.h", "cuda_fp8.h", "cuda_bf16.h", "cuda_fp16.h",
    # inst_wmma || elem_tf32 (CudaWmmaCompiler, the default; PtxWmmaCompiler only for tf32)
    "mma.h",
    # op_pipeline
    "cooperative_groups/memcpy_async.h", "cuda/pipeline",
    # op_barrier || inst_tma || cluster_pos
    "cooperative_groups.h", "cooperative_groups/memcpy_async.h", "cuda/barrier",
    # inst_ptx_wrappers
    "cuda/ptx",
]

TMA_TYPEDEF = """typedef struct CUtensorMap_st {
alignas(64) unsigned long long int opaque[16];
} CUtensorMap;
"""


def inc(headers):
    return "".join("#include <%s>\n" % h for h in headers)


# (name, source). Each is compiled as its own program, so a failure names the feature.
KERNELS = [
    # The common case for a bf16 model: runtime + bf16 + f16 only (no CCCL needed).
    ("basic_bf16_f16", inc(["cuda_runtime.h", "cuda_bf16.h", "cuda_fp16.h"]) + r"""
extern "C" __global__ void basic_bf16_f16(const __nv_bfloat16* a, const __half* b, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    __nv_bfloat16 x = a[i];
    __nv_bfloat162 x2 = __halves2bfloat162(x, x);
    __half h = b[i];
    float f = __bfloat162float(x * x) + __half2float(h + h) + __low2float(x2);
    f += __shfl_xor_sync(0xffffffff, f, 1);
    out[i] = f + __expf(f) + rsqrtf(fabsf(f) + 1.0f);
}
"""),
    ("fp8_fp6_fp4", inc(["cuda_runtime.h", "cuda_fp4.h", "cuda_fp6.h", "cuda_fp8.h", "cuda_bf16.h", "cuda_fp16.h"]) + r"""
extern "C" __global__ void fp8_fp6_fp4(const float* in, unsigned char* q, __nv_fp8_e4m3* e4, __nv_fp8x2_storage_t* p2) {
    int i = threadIdx.x;
    float f = in[i];
    __nv_fp8_storage_t s8 = __nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3);
    __nv_fp6_storage_t s6 = __nv_cvt_float_to_fp6(f, __NV_E2M3, cudaRoundZero);
    __nv_fp4_storage_t s4 = __nv_cvt_float_to_fp4(f, __NV_E2M1, cudaRoundZero);
    __nv_fp6x2_storage_t s62 = __nv_cvt_float2_to_fp6x2(make_float2(f, f), __NV_E3M2, cudaRoundZero);
    __nv_fp4x2_storage_t s42 = __nv_cvt_float2_to_fp4x2(make_float2(f, f), __NV_E2M1, cudaRoundZero);
    e4[i] = __nv_fp8_e4m3(f);
    p2[i] = __nv_cvt_float2_to_fp8x2(make_float2(f, f), __NV_SATFINITE, __NV_E5M2);
    __half_raw hr = __nv_cvt_fp8_to_halfraw(s8, __NV_E4M3);
    q[i] = (unsigned char)(s8 ^ s6 ^ s4 ^ (unsigned char)s62 ^ s42 ^ (unsigned char)hr.x);
}
"""),
    ("wmma_tf32", inc(["cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h", "mma.h"]) + r"""
extern "C" __global__ void wmma_tf32(const half* a, const half* b, float* c, const __nv_bfloat16* ba, float* t) {
    nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, half, nvcuda::wmma::row_major> fa;
    nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, half, nvcuda::wmma::col_major> fb;
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> fc;
    nvcuda::wmma::fill_fragment(fc, 0.0f);
    nvcuda::wmma::load_matrix_sync(fa, a, 16);
    nvcuda::wmma::load_matrix_sync(fb, b, 16);
    nvcuda::wmma::mma_sync(fc, fa, fb, fc);
    nvcuda::wmma::store_matrix_sync(c, fc, 16, nvcuda::wmma::mem_row_major);
    nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major> bfa;
    nvcuda::wmma::load_matrix_sync(bfa, ba, 16);
    t[threadIdx.x] = nvcuda::wmma::__float_to_tf32(t[threadIdx.x]) + (float)bfa.x[0];
}
"""),
    ("pipeline", inc(["cuda_runtime.h", "cooperative_groups/memcpy_async.h", "cuda/pipeline"]) + r"""
extern "C" __global__ void pipeline(const float* in, float* out) {
    __shared__ float smem[256];
    auto pipeline_0_block = cooperative_groups::this_thread();
    cooperative_groups::memcpy_async(pipeline_0_block, smem + threadIdx.x, in + threadIdx.x, sizeof(float));
    cooperative_groups::wait(pipeline_0_block);
    out[threadIdx.x] = smem[threadIdx.x];
}
"""),
    ("barrier_tma_cluster", inc(["cuda_runtime.h", "cooperative_groups.h", "cooperative_groups/memcpy_async.h", "cuda/barrier"])
     + TMA_TYPEDEF + r"""
extern "C" __global__ void barrier_tma_cluster(const float* in, float* out, const __grid_constant__ CUtensorMap tensor_map) {
    __shared__ alignas(128) float smem[1024];
    __shared__ cuda::barrier<cuda::thread_scope_block> barrier_0;
    cooperative_groups::thread_block block_barrier_0 = cooperative_groups::this_thread_block();
    cuda::barrier<cuda::thread_scope_block>::arrival_token barrier_0_token;
    if (threadIdx.x == 0) {
       init(&barrier_0, blockDim.x);
    }
    __syncthreads();
    cuda::memcpy_async(block_barrier_0, smem, in, 256 * sizeof(float), barrier_0);
    barrier_0_token = barrier_0.arrive();
    barrier_0.wait(cuda::std::move(barrier_0_token));
    cuda::memcpy_async(smem + threadIdx.x, in + threadIdx.x, sizeof(float), barrier_0);
    if (threadIdx.x == 0) {
        cuda::device::experimental::fence_proxy_async_shared_cta();
        cuda::device::experimental::cp_async_bulk_tensor_2d_global_to_shared(smem, &tensor_map, 0, 0, barrier_0);
        barrier_0_token = cuda::device::barrier_arrive_tx(barrier_0, 1, 1024 * sizeof(float));
        cuda::device::experimental::cp_async_bulk_tensor_2d_shared_to_global(&tensor_map, 0, 0, smem);
        cuda::device::experimental::cp_async_bulk_commit_group();
        cuda::device::experimental::cp_async_bulk_wait_group_read<0>();
    } else {
        barrier_0_token = barrier_0.arrive();
    }
    barrier_0.wait(cuda::std::move(barrier_0_token));
    unsigned long long* handle = cuda::device::barrier_native_handle(barrier_0);
    cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    out[threadIdx.x] = smem[threadIdx.x] + (float)cluster.block_rank() + (float)(handle != 0);
}
"""),
    ("ptx_wrappers", inc(["cuda_runtime.h", "cuda/ptx"]) + r"""
extern "C" __global__ void ptx_wrappers(unsigned int* out) {
    cuda::ptx::fence_proxy_async(cuda::ptx::space_shared);
    out[threadIdx.x] = cuda::ptx::get_sreg_laneid();
}
"""),
    # Every header at once, in the order cubecl writes them (incl. the duplicate include).
    ("all_headers", inc(HEADERS_ALL) + TMA_TYPEDEF + r"""
extern "C" __global__ void all_headers(float* out) {
    out[threadIdx.x] = __bfloat162float(__float2bfloat16(1.0f)) + __half2float(__float2half(1.0f));
}
"""),
]


def fail(msg):
    print("FAIL " + msg, flush=True)
    sys.exit(1)


def load_nvrtc():
    explicit = os.environ.get("NVRTC_LIB")
    names = [explicit] if explicit else CUDARC_NVRTC_NAMES
    errors = []
    for name in names:
        try:
            return ctypes.CDLL(name, mode=ctypes.RTLD_LOCAL), name
        except OSError as e:
            errors.append("%s: %s" % (name, e))
    fail("cannot load libnvrtc:\n  " + "\n  ".join(errors))


def try_driver():
    """Returns (cuda lib, context) when a GPU is usable, else (None, reason)."""
    lib = None
    for name in CUDARC_CUDA_NAMES:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return None, "no libcuda (driver) loadable"
    ver = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(ver)) == 0:
        print("driver: libcuda %s, CUDA driver API version %d.%d"
              % (name, ver.value // 1000, (ver.value % 1000) // 10), flush=True)
    rc = lib.cuInit(0)
    if rc != 0:
        return None, "cuInit failed (%d)" % rc
    n = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(n)) != 0 or n.value == 0:
        return None, "no CUDA device"
    dev = ctypes.c_int(0)
    lib.cuDeviceGet(ctypes.byref(dev), 0)
    ctx = ctypes.c_void_p()
    lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev)
    if lib.cuCtxSetCurrent(ctx) != 0:
        return None, "cannot make a context current"
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # COMPUTE_CAPABILITY_MAJOR
    lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # COMPUTE_CAPABILITY_MINOR
    lib._smoke_cc = major.value * 10 + minor.value
    return lib, ctx


def main():
    cuda_path = os.environ.get("CUDA_PATH")
    if not cuda_path:
        fail("CUDA_PATH is not set (source scripts/cuda-env.sh first)")
    include = os.path.join(cuda_path, "include")
    cccl = os.path.join(include, "cccl")
    if not os.path.isfile(os.path.join(include, "cuda_bf16.h")):
        fail("%s has no cuda_bf16.h" % include)

    nvrtc, libname = load_nvrtc()
    major, minor = ctypes.c_int(), ctypes.c_int()
    nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
    print("nvrtc: %s (version %d.%d)" % (libname, major.value, minor.value), flush=True)

    cu, ctx = try_driver()
    if cu is None:
        print("driver: not used (%s); PTX will not be loaded" % ctx, flush=True)

    arch = os.environ.get("NVRTC_SMOKE_ARCH", "sm_90a")
    if arch == "auto":
        if cu is not None:
            cc = cu._smoke_cc
            arch = "sm_%d%s" % (cc, "a" if cc >= 90 else "")  # as cubecl-cuda context.rs does
        else:
            arch = "sm_90a"

    # The exact option list cubecl-cuda 0.10 builds (compute/context.rs).
    options = ["--gpu-architecture=" + arch, "--include-path=" + include, "-lineinfo"]
    if os.path.exists(cccl):
        options.append("--include-path=" + cccl)
    print("options: " + " ".join(options), flush=True)
    copts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])

    failures = 0
    for name, src in KERNELS:
        prog = ctypes.c_void_p()
        rc = nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), None, 0, None, None)
        if rc != 0:
            print("FAIL %s: nvrtcCreateProgram: %s" % (name, nvrtc.nvrtcGetErrorString(rc).decode()))
            failures += 1
            continue
        rc = nvrtc.nvrtcCompileProgram(prog, len(options), copts)
        logsize = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(logsize))
        log = ctypes.create_string_buffer(logsize.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        log = log.value.decode(errors="replace").strip()
        if rc != 0:
            failures += 1
            print("FAIL %s: %s\n%s" % (name, nvrtc.nvrtcGetErrorString(rc).decode(), log), flush=True)
            nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
            continue
        ptxsize = ctypes.c_size_t()
        nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(ptxsize))
        ptx = ctypes.create_string_buffer(ptxsize.value)
        nvrtc.nvrtcGetPTX(prog, ptx)
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
        ptx_version = next((l.split()[1] for l in ptx.value.decode(errors="replace").splitlines()
                            if l.startswith(".version")), "?")
        status = "OK %s: %d bytes of PTX (ISA %s)" % (name, ptxsize.value, ptx_version)
        if cu is not None:
            module = ctypes.c_void_p()
            rc = cu.cuModuleLoadData(ctypes.byref(module), ptx)
            if rc != 0:
                s = ctypes.c_char_p()
                cu.cuGetErrorName(rc, ctypes.byref(s))
                failures += 1
                print("FAIL %s: compiled, but cuModuleLoadData failed: %d %s (PTX ISA %s)"
                      % (name, rc, s.value.decode() if s.value else "?", ptx_version), flush=True)
                continue
            cu.cuModuleUnload(module)
            status += ", loaded on the GPU"
        print(status, flush=True)
        if log and os.environ.get("NVRTC_SMOKE_VERBOSE") == "1":
            print(log)

    if failures:
        print("nvrtc-smoke: %d of %d kernels FAILED" % (failures, len(KERNELS)), flush=True)
        sys.exit(1)
    print("nvrtc-smoke: OK (%d kernels)" % len(KERNELS), flush=True)


if __name__ == "__main__":
    main()
