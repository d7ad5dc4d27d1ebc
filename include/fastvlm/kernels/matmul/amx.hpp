// fastvlm/kernels/matmul/amx.hpp — Intel AMX tile configuration shared by the AMX GEMM paths
// (bf16.hpp: TDPBF16PS on bf16 weights; q8.hpp: the same on Q8/Q4 weights dequantized per K block). Eight tile registers of at most 16 rows × 64 bytes; a
// kernel names the shapes it uses in a TileConfig and loads it on the calling thread before its
// first tile instruction (`ldtilecfg`, a few dozen cycles: once per packed block of X).
// The process must have asked the kernel for the tile state first (cpu.hpp: amx_available(), which
// have_amx_bf16() calls). g++ 12's _tile_loadconfig declares only 8 bytes of its 64-byte operand, so at
// -O1 and above the stores that fill the config can be dropped: the config goes through inline asm
// with the whole struct as its memory operand instead.
#pragma once
#include <cstdint>
#if defined(__AMX_TILE__)
#include <immintrin.h>
#endif

#include "fastvlm/core/cpu.hpp"

namespace fastvlm::detail::mm {

inline bool have_amx_bf16() {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
    return cpu().amx_bf16 && cpu().avx512bf16 && amx_available();
#else
    return false;
#endif
}

#if defined(__AMX_TILE__)
// Palette 1: per tile register t, rows[t] rows of colsb[t] bytes.
struct alignas(64) TileConfig {
    std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
    std::uint16_t colsb[16] = {};
    std::uint8_t rows[16] = {};
};
inline void load_tile_config(const TileConfig& c) { asm volatile("ldtilecfg %0" ::"m"(c)); }
#endif

}  // namespace fastvlm::detail::mm
