// fastvlm/kernels/matmul/f32.hpp — float-compute kernels for F32, BF16 and F16 weights.
// Packed layout: [panel][k][16] elements (a panel = 16 consecutive rows of W, i.e. 16 output
// columns; one zmm = one k of a panel). BF16/F16 weights are widened to f32 in registers as the
// micro-kernel and the GEMV load them (AVX-512, AVX2 + F16C); elsewhere the GEMM widens each
// micro-panel into a buffer once per K block and row block, and the GEMV widens in chunks.
#pragma once
#include <algorithm>
#include <type_traits>

#include "fastvlm/core/diagnostics.hpp"
#include "fastvlm/core/dtypes.hpp"
#include "fastvlm/kernels/matmul/common.hpp"

FASTVLM_SIMD_WARNINGS_OFF  // core/diagnostics.hpp

namespace fastvlm::detail::mm {

template <class E>
inline E from_f32(float v) {
    if constexpr (std::is_same_v<E, float>) return v;
    else if constexpr (std::is_same_v<E, bf16>) return to_bf16(v);
    else return to_f16(v);
}

// Packed weights, [panel][k][16]; rows n..16·npanels are zero.
template <class E>
struct PackedF {
    Index n = 0, k = 0, npanels = 0;
    wvec<E> w;
    const E* panel(Index p) const { return w.data() + p * k * kPanel; }
    std::size_t bytes() const { return w.size() * sizeof(E); }
    // rows(n0, count, dst) writes rows n0 .. n0+count of W as floats, dst[count][k].
    template <class Rows>
    void pack(Index n_, Index k_, Rows&& rows) {
        n = n_, k = k_, npanels = ceil_div(n_, kPanel);
        w.assign(std::size_t(npanels * k * kPanel), E{});
        std::vector<float> t(std::size_t(kPanel * k)), tr(std::is_same_v<E, float> ? 0 : std::size_t(kPanel * k));
        for (Index p = 0; p < npanels; ++p) {
            const Index cnt = std::min(kPanel, n - p * kPanel);
            rows(p * kPanel, cnt, t.data());
            E* d = w.data() + p * k * kPanel;
            float* dst = std::is_same_v<E, float> ? reinterpret_cast<float*>(d) : tr.data();
            pack_rows_t<int(kPanel), float>([&](Index r) { return t.data() + r * k; }, cnt, k, dst);  // [k][16]
            if constexpr (!std::is_same_v<E, float>) convert(tr.data(), d, std::size_t(kPanel * k));
        }
    }
    void row(Index r, float* out) const {
        const E* s = panel(r / kPanel) + r % kPanel;
        for (Index q = 0; q < k; ++q) out[q] = to_float(s[q * kPanel]);
    }
};

// ---- 16-bit weights widened in registers (exact: bf16/f16 → f32 loses nothing) -------------------
#if defined(__AVX512F__)
#define FASTVLM_WIDEN_16BIT 16  // floats per widening load
template <class E>
inline __m512 widen16(const E* p) {  // 16 values, 32-byte aligned
    const __m256i h = _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
    if constexpr (std::is_same_v<E, bf16>) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else return _mm512_cvtph_ps(h);
}
#elif defined(__AVX2__) && defined(__F16C__)
#define FASTVLM_WIDEN_16BIT 8
template <class E>
inline __m256 widen8(const E* p) {  // 8 values, 16-byte aligned
    const __m128i h = _mm_load_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (std::is_same_v<E, bf16>) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    else return _mm256_cvtph_ps(h);
}
#endif

// Whether batch<float, Arch> loads of E can come straight from E memory: f32 always, bf16/f16 where
// the widening above matches the batch width. Otherwise the GEMM widens each weight micro-panel into a
// buffer first (pack_b), which costs a store and a reload per element and a few % of a compute-bound
// GEMM (measured on Zen 5: f16 1.7–2.5 % behind f32 with the buffer).
template <class Arch, class E>
constexpr bool widen_in_register() {
    if constexpr (std::is_same_v<E, float>) return true;  // the scalar micro-kernel reads f32 panels too
    else if constexpr (std::is_void_v<Arch>) return false;
#if defined(FASTVLM_WIDEN_16BIT)
    else return int(xsimd::batch<float, Arch>::size) == FASTVLM_WIDEN_16BIT;
#else
    else return false;
#endif
}
template <class Arch, class E>
inline xsimd::batch<float, Arch> load_widened(const E* p) {
    using B = xsimd::batch<float, Arch>;
    static_assert(!std::is_void_v<Arch> && widen_in_register<Arch, E>());
    if constexpr (std::is_same_v<E, float>) return B::load_aligned(p);
#if FASTVLM_WIDEN_16BIT == 16
    else return B(widen16(p));
#elif FASTVLM_WIDEN_16BIT == 8
    else return B(widen8(p));
#else
    else return B::load_aligned(p);  // unreachable (static_assert)
#endif
}

// ---- micro-tile per architecture ------------------------------------------------------------------
// 14 × 32 (28 accumulators) needs AVX-512's 32 registers. With 16 registers (AVX2, SSE) the same tile
// would spill every accumulator on every k (measured on AMD Zen 3: 32 % of the FMA peak, half of
// OpenBLAS): there it is 6 × 16 (AVX2: 12 ymm accumulators, 2 for the weights, 1 for x) or 3 × 16 (SSE).
template <class Arch>
struct FloatTile {
    static constexpr int kLanes = [] {
        if constexpr (std::is_void_v<Arch>) return 16;
        else return int(xsimd::batch<float, Arch>::size);
    }();
    static constexpr int MR = kLanes >= 16 ? 14 : kLanes == 8 ? 6 : 3, NV = kLanes >= 16 ? 2 : 1;
};

// ---- micro-kernel: tile[MR][NV·16] = A[kc][MR]ᵀ · B (NV panels [kc][16], panel stride bs) --------
// Arch = an xsimd architecture, or void for the scalar fallback.
// E = float, or bf16 / f16 widened in registers on load (where widen_in_register<Arch, E>()): exact,
// so the sums are those of a widened copy, without the copy.
template <class Arch, int MR, int NV, class E = float>
FASTVLM_FLATTEN inline void ukr_f32(Index kc, const float* __restrict a, const E* __restrict b, Index bs, float* __restrict tile,
                    Index ldt) {
    if constexpr (std::is_void_v<Arch>) {
        float acc[MR][NV * kPanel] = {};
        for (Index p = 0; p < kc; ++p)
            for (int r = 0; r < MR; ++r)
                for (int v = 0; v < NV; ++v)
                    for (Index c = 0; c < kPanel; ++c) acc[r][v * kPanel + c] += a[p * MR + r] * to_float(b[v * bs + p * kPanel + c]);
        for (int r = 0; r < MR; ++r) std::copy(acc[r], acc[r] + NV * kPanel, tile + r * ldt);
    } else {
        using B = xsimd::batch<float, Arch>;
        constexpr int S = int(B::size), PB = int(kPanel) / S, NB = NV * PB;
        B acc[MR][NB];
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
            for (int q = 0; q < NB; ++q) acc[r][q] = B(0.f);
        for (Index p = 0; p < kc; ++p) {
            B bv[NB];
#pragma GCC unroll 16
            for (int v = 0; v < NV; ++v)
#pragma GCC unroll 16
                for (int j = 0; j < PB; ++j) bv[v * PB + j] = load_widened<Arch>(b + v * bs + p * kPanel + j * S);
#pragma GCC unroll 16
            for (int r = 0; r < MR; ++r) {
                const B ar(a[p * MR + r]);
#pragma GCC unroll 16
                for (int q = 0; q < NB; ++q) acc[r][q] = xsimd::fma(ar, bv[q], acc[r][q]);
            }
        }
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
            for (int q = 0; q < NB; ++q) acc[r][q].store_aligned(tile + r * ldt + q * S);
    }
}

// ---- GEMV panel: out[16] (=, or += when add) Σ_q x[q] · w[q][16] ---------------------------------
template <class Arch>
FASTVLM_FLATTEN inline void gemv_panel_f32(const float* __restrict x, const float* __restrict w, Index k, float* __restrict out, bool add) {
    if constexpr (std::is_void_v<Arch>) {
        float acc[kPanel] = {};
        for (Index q = 0; q < k; ++q)
            for (Index c = 0; c < kPanel; ++c) acc[c] += x[q] * w[q * kPanel + c];
        for (Index c = 0; c < kPanel; ++c) out[c] = add ? out[c] + acc[c] : acc[c];
    } else {
        using B = xsimd::batch<float, Arch>;
        constexpr int S = int(B::size), PB = int(kPanel) / S, U = 4;  // U independent k streams
        B acc[U][PB];
        for (int u = 0; u < U; ++u)
            for (int j = 0; j < PB; ++j) acc[u][j] = B(0.f);
        Index q = 0;
        for (; q + U <= k; q += U) {
#pragma GCC unroll 8
            for (int u = 0; u < U; ++u) {
                const B xv(x[q + u]);
#pragma GCC unroll 8
                for (int j = 0; j < PB; ++j)
                    acc[u][j] = xsimd::fma(xv, B::load_aligned(w + (q + u) * kPanel + j * S), acc[u][j]);
            }
        }
        for (; q < k; ++q)
            for (int j = 0; j < PB; ++j) acc[0][j] = xsimd::fma(B(x[q]), B::load_aligned(w + q * kPanel + j * S), acc[0][j]);
        for (int j = 0; j < PB; ++j) {
            B s = (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]);
            if (add) s += B::load_unaligned(out + j * S);
            s.store_unaligned(out + j * S);
        }
    }
}

#if defined(__AVX512F__)
#define FASTVLM_GEMV_16BIT 1
// GEMV panel for 16-bit weights, widened in registers: out[16] = Σ_q x[q] · w[q][16].
template <class E>
FASTVLM_FLATTEN inline void gemv_panel_16bit(const float* __restrict x, const E* __restrict w, Index k, float* __restrict out) {
    constexpr Index kPrefetch = 4096 / sizeof(E);  // elements ahead (the stream comes from DRAM)
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    Index q = 0;
    for (; q + 4 <= k; q += 4) {  // 4 k rows = 128 bytes = 2 cache lines, both fetched ahead
        _mm_prefetch(reinterpret_cast<const char*>(w + q * kPanel + kPrefetch), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(w + q * kPanel + kPrefetch) + 64, _MM_HINT_T0);
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) acc[u] = _mm512_fmadd_ps(_mm512_set1_ps(x[q + u]), widen16(w + (q + u) * kPanel), acc[u]);
    }
    for (; q < k; ++q) acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(x[q]), widen16(w + q * kPanel), acc[0]);
    _mm512_storeu_ps(out, _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define FASTVLM_GEMV_16BIT 1
// The same with AVX2: a k row of the panel (16 columns) is two ymm halves.
template <class E>
FASTVLM_FLATTEN inline void gemv_panel_16bit(const float* __restrict x, const E* __restrict w, Index k, float* __restrict out) {
    constexpr Index kPrefetch = 4096 / sizeof(E);  // elements ahead (the stream comes from DRAM)
    __m256 acc[4][2];
    for (auto& a : acc) a[0] = a[1] = _mm256_setzero_ps();
    Index q = 0;
    for (; q + 4 <= k; q += 4) {  // 4 k rows = 128 bytes = 2 cache lines
        _mm_prefetch(reinterpret_cast<const char*>(w + q * kPanel + kPrefetch), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(w + q * kPanel + kPrefetch) + 64, _MM_HINT_T0);
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) {
            const __m256 xv = _mm256_set1_ps(x[q + u]);
            acc[u][0] = _mm256_fmadd_ps(xv, widen8(w + (q + u) * kPanel), acc[u][0]);
            acc[u][1] = _mm256_fmadd_ps(xv, widen8(w + (q + u) * kPanel + 8), acc[u][1]);
        }
    }
    for (; q < k; ++q) {
        const __m256 xv = _mm256_set1_ps(x[q]);
        acc[0][0] = _mm256_fmadd_ps(xv, widen8(w + q * kPanel), acc[0][0]);
        acc[0][1] = _mm256_fmadd_ps(xv, widen8(w + q * kPanel + 8), acc[0][1]);
    }
    for (int h = 0; h < 2; ++h)
        _mm256_storeu_ps(out + 8 * h, _mm256_add_ps(_mm256_add_ps(acc[0][h], acc[1][h]), _mm256_add_ps(acc[2][h], acc[3][h])));
}
#endif

// ---- the kernel type for the driver ------------------------------------------------------------
template <class E, class Arch>
struct KernFloat {
    // AVX-512: 14 × 32, 28 zmm accumulators (tuned on Zen 4: L1 48 KiB, L2 1 MiB); AVX2: 6 × 16 (FloatTile)
    static constexpr int MR = FloatTile<Arch>::MR, NV = FloatTile<Arch>::NV;
    const PackedF<E>* P;
    Index n, npanels;
    const float* bias;

    Index units() const { return P->k; }
    Index kc_units() const { return 1024; }
    Index mc_max() const { return 168; }

    struct APack {
        const float* p;
    };
    // X block → micro-panels [mc/MR][uc][MR] (rows past mc are zero).
    APack pack_a(const float* x, Index ldx, Index m0, Index mc, Index u0, Index uc) const {
        const Index nmp = ceil_div(mc, MR);
        float* buf = scratch<float, Scratch::a_pack>(std::size_t(nmp * MR * uc));
        for (Index mp = 0; mp < nmp; ++mp) {
            const float* x0 = x + (m0 + mp * MR) * ldx + u0;
            pack_rows_t<MR, float>([&](Index r) { return x0 + r * ldx; }, std::min<Index>(MR, mc - mp * MR), uc, buf + mp * MR * uc);
        }
        return {buf};
    }

    // The weights as the micro-kernel reads them: the packed panels themselves where it can widen them
    // in registers (f32 always), else a micro-panel widened into a buffer.
    static constexpr bool kDirect = widen_in_register<Arch, E>();
    struct BPack {
        const std::conditional_t<kDirect, E, float>* p;
        Index stride;
    };
    BPack pack_b(Index g, int nv, Index u0, Index uc) const {
        const Index k = P->k;
        if constexpr (kDirect) {
            return {P->panel(g * NV) + u0 * kPanel, k * kPanel};
        } else {
            float* buf = scratch<float, Scratch::b_widen>(std::size_t(NV * uc * kPanel));
            for (int v = 0; v < nv; ++v)
                convert(P->panel(g * NV + v) + u0 * kPanel, buf + v * uc * kPanel, std::size_t(uc * kPanel));
            return {buf, uc * kPanel};
        }
    }

    void ukr(int nv, const APack& a, Index ir, const BPack& b, Index uc, float* tile) const {
        with_width<NV>(nv, [&](auto c) { ukr_f32<Arch, MR, decltype(c)::value>(uc, a.p + ir * MR * uc, b.p, b.stride, tile, NV * kPanel); });
    }

    // GEMV: out[16·(p − p0) + c] = Σ_q x[q] W[16p + c][q]
    void gemv_panels(const float* x, Index p0, Index p1, float* out) const {
        const Index k = P->k;
        for (Index p = p0; p < p1; ++p) {
            float* o = out + (p - p0) * kPanel;
            if constexpr (std::is_same_v<E, float>) {
                gemv_panel_f32<Arch>(x, P->panel(p), k, o, false);
#if defined(FASTVLM_GEMV_16BIT)
            } else if constexpr (!std::is_void_v<Arch>) {
                gemv_panel_16bit(x, P->panel(p), k, o);
#endif
            } else {
                constexpr Index kChunk = 256;
                float* buf = scratch<float, Scratch::gemv_chunk>(std::size_t(kChunk * kPanel));
                if (k == 0) std::fill(o, o + kPanel, 0.f);
                for (Index q = 0; q < k; q += kChunk) {
                    const Index len = std::min(kChunk, k - q);
                    convert(P->panel(p) + q * kPanel, buf, std::size_t(len * kPanel));
                    gemv_panel_f32<Arch>(x + q, buf, len, o, q > 0);
                }
            }
        }
    }
};

}  // namespace fastvlm::detail::mm

FASTVLM_SIMD_WARNINGS_ON
