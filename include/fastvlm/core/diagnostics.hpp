// fastvlm/core/diagnostics.hpp — compiler warnings switched off around code that trips a compiler's false
// positives, in one place.
#pragma once

// g++ 12 reports its own _mm512_undefined_* in AVX-512 intrinsics as uninitialized (GCC bug 105593).
// The SIMD kernel headers open with FASTVLM_SIMD_WARNINGS_OFF and close with FASTVLM_SIMD_WARNINGS_ON.
#if defined(__GNUC__) && !defined(__clang__)
#define FASTVLM_SIMD_WARNINGS_OFF                                 \
    _Pragma("GCC diagnostic push")                                \
    _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")   \
    _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define FASTVLM_SIMD_WARNINGS_ON _Pragma("GCC diagnostic pop")
#else
#define FASTVLM_SIMD_WARNINGS_OFF
#define FASTVLM_SIMD_WARNINGS_ON
#endif

// Micro-kernels inline everything they call (xsimd wrappers, small helpers such as widen8). In a
// translation unit as large as a preset's (build/presets/preset_*.cpp), GCC's inliner stopped short
// and left ukr_f32's accumulator array on the stack: the same GEMM ran at ~40 % of the FMA peak in
// fastvlm-cli and at 82 % in bench_matmul's small TU (AVX2, 2026-12-04).
#define FASTVLM_FLATTEN [[gnu::flatten]]
