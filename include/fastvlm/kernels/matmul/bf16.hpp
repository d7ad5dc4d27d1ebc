// fastvlm/kernels/matmul/bf16.hpp — BF16 weights × BF16 activations (X rounded to bf16, f32 sums).
// Packed layout: [panel][k/2][16][2] bf16 — one zmm = the k-pair (2p, 2p+1) of 16 columns, the
// operand order of vdpbf16ps: acc[c] += a[2c]·b[2c] + a[2c+1]·b[2c+1]. X is packed as k-pairs
// (one dword each) and broadcast. K is padded to even with zeros.
// Paths: avx512_bf16 (vdpbf16ps); amx_bf16 (AMX tiles, GEMM only); simd/scalar (widen to f32, FMA) for CPUs without it; widen_f32 (the
// same without rounding X: BF16 weights × F32 activations), chosen where it measures faster (kernel_choice.hpp).
#pragma once
#include <algorithm>
#include <cstring>

#include "fastvlm/core/diagnostics.hpp"
#include "fastvlm/core/dtypes.hpp"
#include "fastvlm/kernels/matmul/common.hpp"
#include "fastvlm/kernels/matmul/driver.hpp"
#include "fastvlm/kernels/matmul/f32.hpp"

FASTVLM_SIMD_WARNINGS_OFF  // core/diagnostics.hpp

namespace fastvlm::detail::mm {

// Weight panels of the pair layout as a GEMM block reads them: panel v of the group at p + v·stride.
struct PairPanels {
    const bf16* p;
    Index stride;
};

struct PackedBF2 {
    Index n = 0, k = 0, k2 = 0, npanels = 0;
    wvec<bf16> w;  // [panel][k2][16][2]
    const bf16* panel(Index p) const { return w.data() + p * k2 * 2 * kPanel; }
    std::size_t bytes() const { return w.size() * sizeof(bf16); }
    template <class Rows>
    void pack(Index n_, Index k_, Rows&& rows) {
        n = n_, k = k_, k2 = ceil_div(k_, 2), npanels = ceil_div(n_, kPanel);
        w.assign(std::size_t(npanels * k2 * 2 * kPanel), bf16{});
        std::vector<float> t(std::size_t(kPanel * k));
        std::vector<std::uint32_t> pairs(std::size_t(kPanel * k2));  // rows as bf16 k-pairs, [16][k2]
        for (Index p = 0; p < npanels; ++p) {
            const Index cnt = std::min(kPanel, n - p * kPanel);
            rows(p * kPanel, cnt, t.data());
            for (Index c = 0; c < cnt; ++c) {
                bf16* r = reinterpret_cast<bf16*>(pairs.data() + c * k2);
                convert(t.data() + c * k, r, std::size_t(k));
                if (k % 2) r[k] = bf16{};
            }
            // [16][k2] dwords → [k2][16]: the pair layout
            pack_rows_t<int(kPanel), std::uint32_t>([&](Index r) { return pairs.data() + r * k2; }, cnt, k2,
                                                    reinterpret_cast<std::uint32_t*>(w.data() + p * k2 * 2 * kPanel));
        }
    }
    void row(Index r, float* out) const {
        const bf16* s = panel(r / kPanel) + 2 * (r % kPanel);
        for (Index q = 0; q < k; ++q) out[q] = to_float(s[(q / 2) * 2 * kPanel + (q & 1)]);
    }
    // Columns of panel p, k-pairs [u0, u0+uc), widened to f32 [2·uc][16]. A k-pair of a column is one
    // dword: the even k in its low half (as f32: dword << 16), the odd k in its high half (dword & ~0xFFFF).
    void widen(Index p, Index u0, Index uc, float* out) const {
        const bf16* s = panel(p) + u0 * 2 * kPanel;
#if defined(__AVX2__)
        const __m256i high = _mm256_set1_epi32(int(0xFFFF0000u));
        for (Index u = 0; u < uc; ++u, s += 2 * kPanel, out += 2 * kPanel) {
            const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s));      // columns 0..7
            const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 16)); // columns 8..15
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_slli_epi32(a, 16));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8), _mm256_slli_epi32(b, 16));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + kPanel), _mm256_and_si256(a, high));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + kPanel + 8), _mm256_and_si256(b, high));
        }
        return;
#endif
        for (Index u = 0; u < uc; ++u)
            for (Index c = 0; c < kPanel; ++c) {
                out[(2 * u) * kPanel + c] = to_float(s[u * 2 * kPanel + 2 * c]);
                out[(2 * u + 1) * kPanel + c] = to_float(s[u * 2 * kPanel + 2 * c + 1]);
            }
    }
};

#if defined(__AVX2__) && defined(__FMA__)
#define FASTVLM_GEMV_BF16_PAIRS 1
// out[16] = Σ_q xr[q] · W[q][16] straight from the pair layout [k2][16][2] (one 64-byte line per
// k-pair; the dwords widen with a shift and a mask), xr = bf16-rounded x, 2·k2 floats. m = 1 of the
// BF16-compute path without vdpbf16ps: it widened 128 k-pairs into a buffer first (48 % of the read
// bandwidth at decode on Zen 3).
FASTVLM_FLATTEN inline void gemv_panel_bf16_pairs(const float* __restrict xr, const bf16* __restrict w, Index k2,
                                                  float* __restrict out) {
    constexpr Index kPrefetch = 4096 / sizeof(bf16);  // elements ahead (the stream comes from DRAM)
    const __m256i high = _mm256_set1_epi32(int(0xFFFF0000u));
    __m256 acc[2][4];  // [columns 0..7 | 8..15][even k, odd k; two k-pairs in flight]
    for (auto& a : acc) a[0] = a[1] = a[2] = a[3] = _mm256_setzero_ps();
    Index u = 0;
    auto step = [&](Index v, int slot) {
        const bf16* s = w + v * 2 * kPanel;
        const __m256 xe = _mm256_set1_ps(xr[2 * v]), xo = _mm256_set1_ps(xr[2 * v + 1]);
        for (int h = 0; h < 2; ++h) {
            const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 16 * h));
            acc[h][slot] = _mm256_fmadd_ps(xe, _mm256_castsi256_ps(_mm256_slli_epi32(d, 16)), acc[h][slot]);
            acc[h][slot + 1] = _mm256_fmadd_ps(xo, _mm256_castsi256_ps(_mm256_and_si256(d, high)), acc[h][slot + 1]);
        }
    };
    for (; u + 2 <= k2; u += 2) {
        _mm_prefetch(reinterpret_cast<const char*>(w + u * 2 * kPanel + kPrefetch), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(w + u * 2 * kPanel + kPrefetch) + 64, _MM_HINT_T0);
        step(u, 0);
        step(u + 1, 2);
    }
    if (u < k2) step(u, 0);
    for (int h = 0; h < 2; ++h)
        _mm256_storeu_ps(out + 8 * h, _mm256_add_ps(_mm256_add_ps(acc[h][0], acc[h][1]), _mm256_add_ps(acc[h][2], acc[h][3])));
}
#endif

// x[k] → floats (bf16-rounded when round), zero-padded to 2·k2 values.
inline void pad_pairs(const float* x, Index k, Index k2, bool round, float* out) {
    if (round) for (Index q = 0; q < k; ++q) out[q] = to_float(to_bf16(x[q]));
    else std::copy(x, x + k, out);
    for (Index q = k; q < 2 * k2; ++q) out[q] = 0.f;
}

// ---- portable paths: f32 FMA on widened weights ---------------------------------------------------------
// RoundX: X rounded to bf16 first (Path::simd, the arithmetic of BF16 compute), or used as it is
// (Path::widen_f32: BF16 weights × F32 activations, as fast as the f32 kernel where there is no vdpbf16ps).
template <class Arch, bool RoundX = true>
struct KernBF16Wide {
    static constexpr int MR = FloatTile<Arch>::MR, NV = FloatTile<Arch>::NV;  // f32.hpp
    const PackedBF2* P;
    Index n, npanels;
    const float* bias;
    Index units() const { return P->k2; }
    Index kc_units() const { return 512; }
    Index mc_max() const { return 224; }
    struct APack {
        const float* p;
    };
    APack pack_a(const float* x, Index ldx, Index m0, Index mc, Index u0, Index uc) const {
        const Index nmp = ceil_div(mc, MR), kc = 2 * uc, k = P->k;
        float* buf = scratch<float, Scratch::a_pack>(std::size_t(nmp * MR * kc));
        if constexpr (!RoundX) {  // as KernFloat; the k-pair padding past k is zero
            const Index len = std::min(kc, k - 2 * u0);
            for (Index mp = 0; mp < nmp; ++mp) {
                float* d = buf + mp * MR * kc;
                const float* x0 = x + (m0 + mp * MR) * ldx + 2 * u0;
                pack_rows_t<MR, float>([&](Index r) { return x0 + r * ldx; }, std::min<Index>(MR, mc - mp * MR), len, d);
                std::fill(d + len * MR, d + kc * MR, 0.f);
            }
            return {buf};
        }
        for (Index mp = 0; mp < nmp; ++mp) {
            float* d = buf + mp * MR * kc;
            for (Index r = 0; r < MR; ++r) {
                const Index row = mp * MR + r;
                for (Index p = 0; p < kc; ++p) {
                    const Index q = 2 * u0 + p;
                    d[p * MR + r] = row < mc && q < k ? to_float(to_bf16(x[(m0 + row) * ldx + q])) : 0.f;
                }
            }
        }
        return {buf};
    }
    struct BPack {
        const float* p;
        Index stride;
    };
    BPack pack_b(Index g, int nv, Index u0, Index uc) const {
        float* buf = scratch<float, Scratch::b_widen>(std::size_t(NV * 2 * uc * kPanel));
        for (int v = 0; v < nv; ++v) P->widen(g * NV + v, u0, uc, buf + v * 2 * uc * kPanel);
        return {buf, 2 * uc * kPanel};
    }
    void ukr(int nv, const APack& a, Index ir, const BPack& b, Index uc, float* tile) const {
        with_width<NV>(nv, [&](auto c) {
            ukr_f32<Arch, MR, decltype(c)::value>(2 * uc, a.p + ir * MR * 2 * uc, b.p, b.stride, tile, NV * kPanel);
        });
    }
    // xr: x (bf16-rounded when RoundX) zero-padded to 2·k2 floats.
    void gemv_panels(const float* xr, Index p0, Index p1, float* out) const {
#if defined(FASTVLM_GEMV_BF16_PAIRS)
        if constexpr (!std::is_void_v<Arch>) {
            for (Index p = p0; p < p1; ++p) gemv_panel_bf16_pairs(xr, P->panel(p), P->k2, out + (p - p0) * kPanel);
            return;
        }
#endif
        constexpr Index kChunk = 128;  // k-pairs per widened chunk
        float* buf = scratch<float, Scratch::gemv_chunk>(std::size_t(2 * kChunk * kPanel));
        for (Index p = p0; p < p1; ++p) {
            float* o = out + (p - p0) * kPanel;
            if (P->k2 == 0) std::fill(o, o + kPanel, 0.f);
            for (Index u = 0; u < P->k2; u += kChunk) {
                const Index len = std::min(kChunk, P->k2 - u);
                P->widen(p, u, len, buf);
                gemv_panel_f32<Arch>(xr + 2 * u, buf, 2 * len, o, u > 0);
            }
        }
    }
};

// ---- AVX512-BF16 path: vdpbf16ps ---------------------------------------------------------------------
#if defined(__AVX512F__) && defined(__AVX512BF16__)
inline std::uint32_t bf16_pair(float lo, float hi) {
    return std::uint32_t(to_bf16(lo).bits) | (std::uint32_t(to_bf16(hi).bits) << 16);
}

// x[k] → k-pairs (one dword each), zero-padded; vcvtne2ps2bf16 rounds like to_bf16.
inline void pack_pairs(const float* x, Index k, std::uint32_t* out) {
    Index q = 0;
    for (; q + 32 <= k; q += 32) {
        const __m512 a = _mm512_loadu_ps(x + q), b = _mm512_loadu_ps(x + q + 16);
        _mm512_storeu_si512(out + q / 2, (__m512i)_mm512_cvtne2ps_pbh(b, a));
    }
    for (; q < k; q += 2) out[q / 2] = bf16_pair(x[q], q + 1 < k ? x[q + 1] : 0.f);
}

template <int MR, int NV>
FASTVLM_FLATTEN inline void ukr_bf16_dot(Index kc2, const std::uint32_t* __restrict a, const bf16* __restrict b, Index bs,
                         float* __restrict tile, Index ldt) {
    __m512 acc[MR][NV];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
    for (Index p = 0; p < kc2; ++p) {
        __m512bh bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_load_si512(b + v * bs + p * 2 * kPanel);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
            const __m512bh ar = (__m512bh)_mm512_set1_epi32(int(a[p * MR + r]));
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], bv[v], ar);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) _mm512_store_ps(tile + r * ldt + v * kPanel, acc[r][v]);
}

// R rows of k-pairs (xs[r], one dword each) against one panel: out + r·ldo [16]. Four accumulators
// per row (k-pair u goes to u mod 4; the tail past a multiple of 4 to the first). The weight stream is
// prefetched kStreamPrefetch bytes ahead, one line per k-pair.
template <int R>
FASTVLM_FLATTEN inline void gemv_panel_bf16_dot(const std::uint32_t* const* xs, const bf16* __restrict w, Index k2,
                                                float* __restrict out, Index ldo) {
    __m512 acc[R][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm512_setzero_ps();
    Index u = 0;
    for (; u + 4 <= k2; u += 4)
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
            _mm_prefetch(reinterpret_cast<const char*>(w + (u + j) * 2 * kPanel) + kStreamPrefetch, _MM_HINT_T0);
            const __m512bh wv = (__m512bh)_mm512_load_si512(w + (u + j) * 2 * kPanel);
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], wv, (__m512bh)_mm512_set1_epi32(int(xs[r][u + j])));
        }
    for (; u < k2; ++u) {
        const __m512bh wv = (__m512bh)_mm512_load_si512(w + u * 2 * kPanel);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) acc[r][0] = _mm512_dpbf16_ps(acc[r][0], wv, (__m512bh)_mm512_set1_epi32(int(xs[r][u])));
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
        _mm512_storeu_ps(out + r * ldo, _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_add_ps(acc[r][2], acc[r][3])));
}

struct KernBF16Dot {
    static constexpr int MR = 14, NV = 2;
    const PackedBF2* P;
    Index n, npanels;
    const float* bias;
    Index units() const { return P->k2; }
    Index kc_units() const { return 512; }
    Index mc_max() const { return 168; }
    struct APack {
        const std::uint32_t* p;
    };
    // X block → [mc/MR][uc][MR] k-pairs.
    APack pack_a(const float* x, Index ldx, Index m0, Index mc, Index u0, Index uc) const {
        const Index nmp = ceil_div(mc, MR), k = P->k;
        std::uint32_t* buf = scratch<std::uint32_t, Scratch::a_pairs>(std::size_t(nmp * MR * uc));
        std::uint32_t* row = scratch<std::uint32_t, Scratch::a_pairs_row>(std::size_t(uc + 16));
        for (Index mp = 0; mp < nmp; ++mp) {
            std::uint32_t* d = buf + mp * MR * uc;
            const Index rc = std::min<Index>(MR, mc - mp * MR);
            for (Index r = 0; r < rc; ++r) {
                pack_pairs(x + (m0 + mp * MR + r) * ldx + 2 * u0, std::min(2 * uc, k - 2 * u0), row);
                for (Index p = 0; p < uc; ++p) d[p * MR + r] = row[p];
            }
            for (Index r = rc; r < MR; ++r)
                for (Index p = 0; p < uc; ++p) d[p * MR + r] = 0;
        }
        return {buf};
    }
    using BPack = PairPanels;
    BPack pack_b(Index g, int, Index u0, Index) const {
        return {P->panel(g * NV) + u0 * 2 * kPanel, P->k2 * 2 * kPanel};
    }
    void ukr(int nv, const APack& a, Index ir, const BPack& b, Index uc, float* tile) const {
        with_width<NV>(nv, [&](auto c) {
            ukr_bf16_dot<MR, decltype(c)::value>(uc, a.p + ir * MR * uc, b.p, b.stride, tile, NV * kPanel);
        });
    }
    // GEMV rows (driver.hpp): rows ≤ 4 rows of k-pairs at once, each weight vector loaded once for all.
    // A row's sums are those of rows = 1, in the same order.
    static constexpr int kGemvRows = 4;
    void gemv_panels_rows(const std::uint32_t* const* xs, int rows, Index p0, Index p1, float* out, Index ldo) const {
        with_width<kGemvRows>(rows, [&](auto rc) {
            constexpr int R = decltype(rc)::value;
            for (Index p = p0; p < p1; ++p) gemv_panel_bf16_dot<R>(xs, P->panel(p), P->k2, out + (p - p0) * kPanel, ldo);
        });
    }
};
#endif

// ---- AMX path: TDPBF16PS (GEMM only) -------------------------------------------------------------------
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512F__) && defined(__AVX512BF16__)
// A 32 × 32 tile of C per micro-kernel call: C in tiles 0..3 (rows 0–15 / 16–31 × panels 0 / 1), X in
// tiles 4, 5 (16 rows × 16 k-pairs each), the weights in 6, 7 (16 k-pairs × 16 columns of one panel). The
// panel layout [k2][16][2] is already TDPBF16PS's B operand: 16 consecutive k-pairs of a panel are one
// 1 KiB tile, loaded in place. X is packed tile by tile ([32-row block][16-pair step][32 rows][16 pairs]),
// rounded to bf16 as on the vdpbf16ps path, so each tile load reads 1 KiB of consecutive memory.
inline const TileConfig& bf16_tile_config() {
    static const TileConfig c = [] {
        TileConfig t;
        for (int i = 0; i < 8; ++i) t.rows[i] = 16, t.colsb[i] = 64;
        return t;
    }();
    return c;
}

template <int NV>
FASTVLM_FLATTEN inline void ukr_bf16_amx(Index uc, const bf16* __restrict a, const bf16* __restrict b, Index bs,
                                         float* __restrict tile) {
    constexpr Index kStep = 16;  // k-pairs per tile
    _tile_zero(0);
    _tile_zero(2);
    if constexpr (NV == 2) {
        _tile_zero(1);
        _tile_zero(3);
    }
    const Index full = uc / kStep;
    auto step = [&](const bf16* as, const bf16* b0, const bf16* b1) {
        _tile_loadd(4, as, 64);
        _tile_loadd(6, b0, 64);
        _tile_loadd(5, as + kStep * 32, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(2, 5, 6);
        if constexpr (NV == 2) {
            _tile_loadd(7, b1, 64);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(3, 5, 7);
        }
    };
    for (Index s = 0; s < full; ++s) step(a + s * 32 * 32, b + s * kStep * 32, b + bs + s * kStep * 32);
    if (const Index rem = uc - full * kStep; rem > 0) {  // the last k-pairs: a zero-padded copy (A is padded)
        alignas(64) bf16 tb[NV][kStep * 32];
        for (int v = 0; v < NV; ++v) {
            std::memcpy(static_cast<void*>(tb[v]), b + v * bs + full * kStep * 32, std::size_t(rem * 32) * sizeof(bf16));
            std::memset(static_cast<void*>(tb[v] + rem * 32), 0, std::size_t((kStep - rem) * 32) * sizeof(bf16));
        }
        step(a + full * 32 * 32, tb[0], tb[NV - 1]);
    }
    constexpr Index ldt = 2 * kPanel * Index(sizeof(float));  // the driver's tile: 32 rows × 32 floats
    _tile_stored(0, tile, ldt);
    _tile_stored(2, tile + 16 * 2 * kPanel, ldt);
    if constexpr (NV == 2) {
        _tile_stored(1, tile + kPanel, ldt);
        _tile_stored(3, tile + 16 * 2 * kPanel + kPanel, ldt);
    }
}

// X[m0 .. m0+mc) × k-pairs [p0, p0+pc) → bf16 tiles [32-row block][16-pair step][32 rows][16 pairs],
// zero-padded to whole blocks and steps; rounded to bf16 as on the vdpbf16ps path. Also loads this
// thread's tile configuration: the micro-kernels that use the packed block run on the same thread.
struct AmxXTiles {
    const bf16* p;
    Index steps;  // 16-pair steps per row block
    const bf16* block(Index ir) const { return p + ir * steps * 32 * 32; }
};
inline AmxXTiles pack_x_amx(const float* x, Index ldx, Index m0, Index mc, Index p0, Index pc, Index k) {
    constexpr Index MR = 32;
    load_tile_config(bf16_tile_config());
    const Index steps = ceil_div(pc, 16), nmp = ceil_div(mc, MR);
    bf16* buf = scratch<bf16, Scratch::a_tiles>(std::size_t(nmp * steps * MR * 32));
    const Index len = 2 * p0 < k ? std::min(2 * pc, k - 2 * p0) : 0;  // floats of each row in range
    // One pass: 32 floats of a row → one 64-byte tile row (vcvtne2ps2bf16 rounds like to_bf16); the
    // floats past `len` and the rows past mc are zeros.
    for (Index mp = 0; mp < nmp; ++mp) {
        bf16* d = buf + mp * steps * MR * 32;
        for (Index r = 0; r < MR; ++r) {
            const Index i = mp * MR + r;
            const float* xr = i < mc ? x + (m0 + i) * ldx + 2 * p0 : x;
            for (Index s = 0; s < steps; ++s) {
                const Index left = i < mc ? std::clamp<Index>(len - 32 * s, 0, 32) : 0;
                __m512 a, b;
                if (left == 32) {
                    a = _mm512_loadu_ps(xr + 32 * s), b = _mm512_loadu_ps(xr + 32 * s + 16);
                } else {
                    const auto lo = __mmask16((1u << std::min<Index>(left, 16)) - 1u);
                    const auto hi = __mmask16((1u << std::max<Index>(left - 16, 0)) - 1u);
                    a = _mm512_maskz_loadu_ps(lo, xr + 32 * s), b = _mm512_maskz_loadu_ps(hi, xr + 32 * s + 16);
                }
                _mm512_store_si512(d + (s * MR + r) * 32, (__m512i)_mm512_cvtne2ps_pbh(b, a));
            }
        }
    }
    return {buf, steps};
}

struct KernBF16Amx {
    static constexpr int MR = 32, NV = 2;
    const PackedBF2* P;
    Index n, npanels;
    const float* bias;
    Index units() const { return P->k2; }
    Index kc_units() const { return 256; }
    Index mc_max() const { return 256; }
    using APack = AmxXTiles;
    APack pack_a(const float* x, Index ldx, Index m0, Index mc, Index u0, Index uc) const {
        return pack_x_amx(x, ldx, m0, mc, u0, uc, P->k);
    }
    using BPack = PairPanels;
    BPack pack_b(Index g, int, Index u0, Index) const { return {P->panel(g * NV) + u0 * 2 * kPanel, P->k2 * 2 * kPanel}; }
    void ukr(int nv, const APack& a, Index ir, const BPack& b, Index uc, float* tile) const {
        if (nv == 2) ukr_bf16_amx<2>(uc, a.block(ir), b.p, b.stride, tile);
        else ukr_bf16_amx<1>(uc, a.block(ir), b.p, b.stride, tile);
    }
};
#endif

struct ImplBF16 : PackedImpl<PackedBF2> {
    // Without vdpbf16ps, rounding X to bf16 only costs time: the default is then widen_f32.
    static Path best() { return have_avx512_bf16() ? Path::avx512_bf16 : Path::widen_f32; }
    static Path best_gemm() { return have_amx_bf16() ? Path::amx_bf16 : best(); }
    static bool supports(Path p) {
        return p == Path::scalar || p == Path::simd || p == Path::widen_f32 || (p == Path::avx512_bf16 && have_avx512_bf16()) ||
               (p == Path::amx_bf16 && have_amx_bf16());
    }

    template <class Arch, bool RoundX>
    void run_wide(const float* x, Index m, Index ldx, float* y, Index ldy, ThreadPool* pool, const Epilogue& ep,
                  const float* bias) const {
        KernBF16Wide<Arch, RoundX> kern{&P, P.n, P.npanels, bias};
        if (use_gemv(m, ep)) {
            const Index ld = 2 * P.k2;
            std::vector<float> xr(std::size_t(m * ld));
            for (Index r = 0; r < m; ++r) pad_pairs(x + r * ldx, P.k, P.k2, RoundX, xr.data() + r * ld);
            gemv_rows(kern, [&](Index r) { return xr.data() + r * ld; }, m, y, ldy, pool, ep, P.k);
        } else {
            gemm_blocked(kern, x, m, ldx, y, ldy, pool, ep);
        }
    }
    void forward(Path path, const float* x, Index m, Index ldx, float* y, Index ldy, ThreadPool* pool,
                 const Epilogue& ep, const float* bias) const {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512F__) && defined(__AVX512BF16__)
        if (path == Path::amx_bf16) {
            if (!use_gemv(m, ep)) return gemm_blocked(KernBF16Amx{&P, P.n, P.npanels, bias}, x, m, ldx, y, ldy, pool, ep);
            path = Path::avx512_bf16;  // GEMM only (common.hpp: gemm_only)
        }
#endif
#if defined(__AVX512F__) && defined(__AVX512BF16__)
        if (path == Path::avx512_bf16) {
            KernBF16Dot kern{&P, P.n, P.npanels, bias};
            if (use_gemv(m, ep)) {
                const Index ld = P.k2;
                std::vector<std::uint32_t> xp(std::size_t(m * ld));
                for (Index r = 0; r < m; ++r) pack_pairs(x + r * ldx, P.k, xp.data() + r * ld);
                gemv_rows(kern, [&](Index r) { return xp.data() + r * ld; }, m, y, ldy, pool, ep, P.k);
            } else {
                gemm_blocked(kern, x, m, ldx, y, ldy, pool, ep);
            }
            return;
        }
#endif
        if (path == Path::widen_f32) run_wide<xsimd::default_arch, false>(x, m, ldx, y, ldy, pool, ep, bias);
        else if (path == Path::simd) run_wide<xsimd::default_arch, true>(x, m, ldx, y, ldy, pool, ep, bias);
        else run_wide<void, true>(x, m, ldx, y, ldy, pool, ep, bias);
    }
};

}  // namespace fastvlm::detail::mm

FASTVLM_SIMD_WARNINGS_ON
