// fastvlm/kernels/matmul/q8.hpp — Q8 / Q4 weights × Q8 activations (integer dot products).
//
// Weights: blocks of 32 along k, one f16 scale per (column, block) — the BlockQ8 / BlockQ4 values
// of core/formats.hpp, repacked per panel of 16 columns into ONE stream per panel (m = 1 reads
// each panel front to back), grouped in superblocks of G blocks that fill whole cache lines:
//   panel = [superblock][ G × quants(block) | G × 16 f16 scales ]
//   Q8: G = 4, quants [8][16][4] u8 = q + 128   (one zmm = k-quad t of 16 columns)  → 2176 B = 34 lines
//   Q4: G = 2, quants [4][16][4] u8: low nibble = k-quad t, high nibble = k-quad t + 4 (the byte
//       order of BlockQ4::qs; w = d·(q − 8))                                         →  576 B =  9 lines
// k is padded with zero blocks to a whole superblock.
// Activations: each row of X quantized on the fly to blocks of 32: d = amax/127 (f32),
// q = round_to_nearest_even(x·127/amax) (int8), and corr = −c·Σq (c = 128 for Q8, 8 for Q4), so
//   Σ_j w_j x_j = d_w · d_x · (Σ_j u_j q_j + corr)        with u the stored unsigned weight byte.
// vpdpbusd multiplies unsigned (weights) by signed (activations) bytes; floats only per block. Without
// AVX-512 VNNI the same layout runs on AVX2's vpmaddubsw (see ukr_q_avx2).
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "fastvlm/core/diagnostics.hpp"
#include "fastvlm/core/dtypes.hpp"
#include "fastvlm/core/formats.hpp"
#include "fastvlm/kernels/matmul/bf16.hpp"
#include "fastvlm/kernels/matmul/common.hpp"
#include "fastvlm/kernels/matmul/driver.hpp"

FASTVLM_SIMD_WARNINGS_OFF  // core/diagnostics.hpp

namespace fastvlm::detail::mm {

inline constexpr Index kQB = Index(kQBlock);  // 32

// 127/amax for activation blocks, capped the same way (amax ≥ 0; NaN or ±inf amax: 0).
inline float act_scale(float amax) {
    if (!(amax > 0.f) || !(amax <= 3.4e38f)) return 0.f;
    return std::min(127.f / amax, 3.4e38f);
}
// Rounds y to nearest even and saturates to ±127 (NaN → 0): no out-of-range conversion.
inline int act_q(float y) {
    if (!(y == y)) return 0;
    return int(std::nearbyint(std::clamp(y, -127.f, 127.f)));
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
namespace qv {
inline __m512 round_half_away(__m512 y) {
    const __m512 t = _mm512_roundscale_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __mmask16 up = _mm512_cmp_ps_mask(_mm512_and_ps(_mm512_sub_ps(y, t), absmask), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __m512 one = _mm512_or_ps(_mm512_set1_ps(1.f), _mm512_andnot_ps(absmask, y));  // copysign(1, y)
    return _mm512_mask_add_ps(t, up, t, one);
}
inline bool finite(__m512 v0, __m512 v1) {
    const __m512 big = _mm512_set1_ps(3.4e38f), absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    return _mm512_cmp_ps_mask(_mm512_and_ps(v0, absmask), big, _CMP_LE_OQ) == 0xffff &&
           _mm512_cmp_ps_mask(_mm512_and_ps(v1, absmask), big, _CMP_LE_OQ) == 0xffff;
}
}  // namespace qv
#endif

#if !(defined(__AVX512F__) && defined(__AVX512BW__)) && defined(__AVX2__)
// The same on AVX2 (the packers of int8/int4 presets spent ~5 s of a 0.5B load in the scalar loop).
namespace qv2 {
inline __m256 absv(__m256 v) { return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
inline __m256 round_half_away(__m256 y) {
    const __m256 t = _mm256_round_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 up = _mm256_cmp_ps(absv(_mm256_sub_ps(y, t)), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_set1_ps(1.f), _mm256_andnot_ps(_mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), y));
    return _mm256_add_ps(t, _mm256_and_ps(up, one));
}
// x[32] as 4 vectors; false if any is NaN or ±inf. amax = max |x|.
inline bool load_block(const float* x, __m256 (&v)[4], __m256 (&a)[4], float& amax) {
    const __m256 big = _mm256_set1_ps(3.4e38f);
    int ok = 0xff;
    for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        a[i] = absv(v[i]);
        ok &= _mm256_movemask_ps(_mm256_cmp_ps(a[i], big, _CMP_LE_OQ));
    }
    if (ok != 0xff) return false;
    __m256 m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    amax = _mm_cvtss_f32(h);
    return true;
}
inline __m256i quant(__m256 v, __m256 vid) { return _mm256_cvttps_epi32(round_half_away(_mm256_mul_ps(v, vid))); }
}  // namespace qv2
#endif

inline bool quantize_block_q8(const float* x, f16& d16, std::uint8_t* out) {
#if !(defined(__AVX512F__) && defined(__AVX512BW__)) && defined(__AVX2__)
    __m256 v[4], a[4];
    float amax = 0.f;
    if (!qv2::load_block(x, v, a, amax)) return false;
    const float d = amax / 127.f, id = finite_inverse(d);
    d16 = to_f16(d);
    const __m256 vid = _mm256_set1_ps(id);
    const __m256i off = _mm256_set1_epi32(128);
    __m256i q[4];
    for (int i = 0; i < 4; ++i) q[i] = _mm256_add_epi32(qv2::quant(v[i], vid), off);  // 1..255
    const __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]), _mm256_packus_epi32(q[2], q[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    return true;
#elif defined(__AVX512F__) && defined(__AVX512BW__)
    const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
    if (!qv::finite(v0, v1)) return false;
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(v0, absmask), _mm512_and_ps(v1, absmask)));
    const float d = amax / 127.f, id = finite_inverse(d);
    d16 = to_f16(d);
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i off = _mm512_set1_epi32(128);
    const __m512i q0 = _mm512_add_epi32(_mm512_cvttps_epi32(qv::round_half_away(_mm512_mul_ps(v0, vid))), off);
    const __m512i q1 = _mm512_add_epi32(_mm512_cvttps_epi32(qv::round_half_away(_mm512_mul_ps(v1, vid))), off);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), _mm512_cvtepi32_epi8(q1));
    return true;
#else
    return fmt::Q8::quantize_block(x, d16, out);
#endif
}

inline bool quantize_block_q4(const float* x, f16& d16, std::uint8_t* out) {
#if !(defined(__AVX512F__) && defined(__AVX512BW__)) && defined(__AVX2__)
    __m256 v[4], a[4];
    float amax = 0.f;
    if (!qv2::load_block(x, v, a, amax)) return false;
    float vmax = 0.f;  // the first value of largest magnitude (as the scalar loop's strict >)
    if (amax > 0.f) {
        const __m256 am = _mm256_set1_ps(amax);
        std::uint32_t m = 0;
        for (int i = 0; i < 4; ++i) m |= std::uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(a[i], am, _CMP_EQ_OQ))) << (8 * i);
        vmax = x[std::countr_zero(m)];
    }
    const float d = vmax / -8.f, id = finite_inverse(d);
    d16 = to_f16(d);
    const __m256 vid = _mm256_set1_ps(id);
    const __m256i eight = _mm256_set1_epi32(8), zero = _mm256_setzero_si256(), fifteen = _mm256_set1_epi32(15);
    auto q = [&](__m256 w) { return _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(qv2::quant(w, vid), eight), zero), fifteen); };
    // byte j = q[j] | q[j + 16] << 4
    const __m256i lo = _mm256_or_si256(q(v[0]), _mm256_slli_epi32(q(v[2]), 4));  // j = 0..7
    const __m256i hi = _mm256_or_si256(q(v[1]), _mm256_slli_epi32(q(v[3]), 4));  // j = 8..15
    const __m256i w16 = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);  // 16-bit, j order
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                     _mm_packus_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1)));
    return true;
#elif defined(__AVX512F__) && defined(__AVX512BW__)
    const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
    if (!qv::finite(v0, v1)) return false;
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512 a0 = _mm512_and_ps(v0, absmask), a1 = _mm512_and_ps(v1, absmask);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
    float vmax = 0.f;  // the first value of largest magnitude (as the scalar loop's strict >)
    if (amax > 0.f) {
        const std::uint32_t m = std::uint32_t(_mm512_cmp_ps_mask(a0, _mm512_set1_ps(amax), _CMP_EQ_OQ)) |
                                (std::uint32_t(_mm512_cmp_ps_mask(a1, _mm512_set1_ps(amax), _CMP_EQ_OQ)) << 16);
        vmax = x[std::countr_zero(m)];
    }
    const float d = vmax / -8.f, id = finite_inverse(d);
    d16 = to_f16(d);
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i eight = _mm512_set1_epi32(8), zero = _mm512_setzero_si512(), fifteen = _mm512_set1_epi32(15);
    auto q = [&](__m512 v) {
        const __m512i r = _mm512_add_epi32(_mm512_cvttps_epi32(qv::round_half_away(_mm512_mul_ps(v, vid))), eight);
        return _mm512_min_epi32(_mm512_max_epi32(r, zero), fifteen);
    };
    const __m512i b = _mm512_or_si512(q(v0), _mm512_slli_epi32(q(v1), 4));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtepi32_epi8(b));
    return true;
#else
    return fmt::Q4::quantize_block(x, d16, out);
#endif
}

// One block of weights as the format's stored bytes: fmt::Q8/Q4::quantize_block (core/formats.hpp), with SIMD
// where the target has it (the same bytes: tests/test_matmul.cpp WeightQuantizersMatchFormats).
template <class QF>
inline bool quantize_block(const float* x, f16& d16, std::uint8_t* stored) {
    if constexpr (QF::kNibbles)
        return quantize_block_q4(x, d16, stored);
    else
        return quantize_block_q8(x, d16, stored);
}

template <class QF>
struct PackedQ {
    static constexpr Index kBlockBytes = Index(QF::kStoredBytes) * kPanel;  // quant bytes per (panel, block)
    static constexpr Index G = QF::kNibbles ? 2 : 4;                          // blocks per superblock: whole cache lines
    static constexpr Index kSuperBytes = G * (kBlockBytes + kPanel * 2);
    static constexpr int kCorr = QF::kZero;  // zero point of the stored bytes
    static_assert(kSuperBytes % 64 == 0);
    Index n = 0, k = 0, kb = 0, nsb = 0, npanels = 0;  // kb = blocks incl. padding = nsb·G
    wvec<std::uint8_t> data;                             // [panel][nsb][kSuperBytes]
    Index panel_bytes() const { return nsb * kSuperBytes; }
    const std::uint8_t* panel(Index p) const { return data.data() + p * panel_bytes(); }
    const std::uint8_t* quants(Index p, Index b) const { return panel(p) + (b / G) * kSuperBytes + (b % G) * kBlockBytes; }
    const f16* scales(Index p, Index b) const {
        return reinterpret_cast<const f16*>(panel(p) + (b / G) * kSuperBytes + G * kBlockBytes) + (b % G) * kPanel;
    }
    std::size_t bytes() const { return data.size(); }

    template <class Rows>
    void pack(Index n_, Index k_, Rows&& rows) {
        n = n_, k = k_, nsb = ceil_div(ceil_div(k_, kQB), G), kb = nsb * G, npanels = ceil_div(n_, kPanel);
        data.assign(std::size_t(npanels * panel_bytes()), 0);
        constexpr Index RB = Index(QF::kStoredBytes);  // stored bytes per row and block
        std::vector<float> t(std::size_t(kPanel * k)), row(std::size_t(kb * kQB));
        avec<std::uint32_t> qrows(std::size_t(kPanel * kb * RB / 4)), qt(std::size_t(kPanel * kb * RB / 4));
        std::vector<f16> d(std::size_t(kPanel * kb));
        for (Index p = 0; p < npanels; ++p) {
            const Index cnt = std::min(kPanel, n - p * kPanel);
            rows(p * kPanel, cnt, t.data());
            std::fill(d.begin(), d.end(), f16{});
            for (Index c = 0; c < kPanel; ++c) {  // rows past n: zero weights (q = 0)
                auto* qr = reinterpret_cast<std::uint8_t*>(qrows.data() + c * kb * RB / 4);
                if (c >= cnt) {
                    std::fill(qr, qr + kb * RB, QF::kNibbles ? std::uint8_t(QF::kZero * 17) : std::uint8_t(QF::kZero));
                    continue;
                }
                std::fill(row.begin(), row.end(), 0.f);
                std::copy(t.begin() + c * k, t.begin() + (c + 1) * k, row.begin());
                for (Index b = 0; b < kb; ++b) {
                    const bool ok = quantize_block<QF>(row.data() + b * kQB, d[std::size_t(c * kb + b)], qr + b * RB);
                    FASTVLM_CHECK(ok, "Linear(", QF::name, "): row ", p * kPanel + c, " of the weights has a non-finite value near column ",
                                  b * kQB, "; it cannot be quantized");
                }
            }
            // [16][kb·RB/4] dwords → [kb·RB/4][16]: per block, dword t of the 16 columns side by side
            pack_rows_t<int(kPanel), std::uint32_t>([&](Index r) { return qrows.data() + r * kb * RB / 4; }, kPanel, kb * RB / 4, qt.data());
            for (Index b = 0; b < kb; ++b) {
                std::memcpy(const_cast<std::uint8_t*>(quants(p, b)), qt.data() + b * RB * kPanel / 4, std::size_t(kBlockBytes));
                f16* sd = const_cast<f16*>(scales(p, b));
                for (Index c = 0; c < kPanel; ++c) sd[c] = d[std::size_t(c * kb + b)];
            }
        }
    }
    // The stored (unsigned) byte or nibble of weight j of column c in one packed block: dword j/4 of the
    // 16 columns side by side (Q4: the nibbles of j and j + 16 share a byte).
    static int stored(const std::uint8_t* block, Index c, Index j) {
        if constexpr (QF::kNibbles) {
            const std::uint8_t byte = block[(j % 16) / 4 * 64 + c * 4 + j % 4];
            return j < 16 ? (byte & 0xf) : (byte >> 4);
        } else {
            return block[j / 4 * 64 + c * 4 + j % 4];
        }
    }
    // Element (column c of panel p, k index e) as the signed integer q.
    int value(Index p, Index c, Index e) const { return stored(quants(p, e / kQB), c, e % kQB) - QF::kZero; }
    void row(Index r, float* out) const {
        const Index p = r / kPanel, c = r % kPanel;
        for (Index e = 0; e < k; ++e) out[e] = to_float(scales(p, e / kQB)[c]) * float(value(p, c, e));
    }
};

// ---- activation quantization --------------------------------------------------------------------------
// One row: x[k] → kb blocks (zero-padded): q[kb·32], d[kb], corr[kb] = −c·Σq.
inline void quantize_act_ref(const float* x, Index k, int c, std::int8_t* q, float* d, std::int32_t* corr) {
    const Index kb = ceil_div(k, kQB);
    for (Index b = 0; b < kb; ++b) {
        float v[kQBlock];
        for (Index j = 0; j < kQB; ++j) v[j] = b * kQB + j < k ? x[b * kQB + j] : 0.f;
        float amax = 0.f;
        for (float e : v) amax = std::max(amax, std::fabs(e));
        const float id = act_scale(amax);
        int sum = 0;
        for (Index j = 0; j < kQB; ++j) {
            const int qi = act_q(v[j] * id);  // round to nearest even (default mode)
            q[b * kQB + j] = std::int8_t(qi);
            sum += qi;
        }
        d[b] = amax / 127.f;
        corr[b] = -c * sum;
    }
}

// The 32 codes of one block (k order) into a row group of gr rows: k-quad t at dst + t·gr·4 (gr = 1: contiguous).
inline void put_block_quads(const std::int8_t* src, std::int8_t* dst, Index gr) {
    for (Index t = 0; t < kQB / 4; ++t) std::memcpy(dst + t * gr * 4, src + t * 4, 4);
}

// quantize_act_ref's results written into a row group of gr rows (quantize_rows): block b's codes at
// q + b·gr·32 (k-quad t at + t·gr·4), its scale and correction at d[b·gr], corr[b·gr]. gr = 1 is the
// plain row: q[kb·32], d[kb], corr[kb].
FASTVLM_FLATTEN inline void quantize_act(const float* x, Index k, int c, std::int8_t* q, float* d, std::int32_t* corr,
                                         Index gr = 1) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
    const Index kb = ceil_div(k, kQB);
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (Index b = 0; b < kb; ++b) {
        const Index rem = k - b * kQB;
        const __mmask16 m0 = rem >= 16 ? __mmask16(0xffff) : __mmask16((1u << rem) - 1u);
        const __mmask16 m1 = rem >= 32 ? __mmask16(0xffff) : rem <= 16 ? __mmask16(0) : __mmask16((1u << (rem - 16)) - 1u);
        const __m512 v0 = _mm512_maskz_loadu_ps(m0, x + b * kQB), v1 = _mm512_maskz_loadu_ps(m1, x + b * kQB + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(v0, absmask), _mm512_and_ps(v1, absmask)));
        const __m512 id = _mm512_set1_ps(act_scale(amax));
        // As act_q: NaN → 0, saturate to ±127, then round (±inf or NaN inputs come from activations that
        // overflowed upstream; without this they would convert to INT_MIN).
        const __m512 lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
        auto conv = [&](__m512 v) {
            __m512 y = _mm512_mul_ps(v, id);
            y = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, y, _CMP_ORD_Q), y);
            return _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(y, lo), hi));
        };
        const __m512i q0 = conv(v0), q1 = conv(v1);
        const __m128i c0 = _mm512_cvtepi32_epi8(q0), c1 = _mm512_cvtepi32_epi8(q1);
        std::int8_t* qb = q + b * gr * kQB;
        if (gr == 1) {
            _mm_storeu_si128(reinterpret_cast<__m128i*>(qb), c0);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(qb + 16), c1);
        } else {  // one k-quad per row slot of the group
            const Index s = gr * 4;
            _mm_storeu_si32(qb, c0);
            _mm_storeu_si32(qb + s, _mm_bsrli_si128(c0, 4));
            _mm_storeu_si32(qb + 2 * s, _mm_bsrli_si128(c0, 8));
            _mm_storeu_si32(qb + 3 * s, _mm_bsrli_si128(c0, 12));
            _mm_storeu_si32(qb + 4 * s, c1);
            _mm_storeu_si32(qb + 5 * s, _mm_bsrli_si128(c1, 4));
            _mm_storeu_si32(qb + 6 * s, _mm_bsrli_si128(c1, 8));
            _mm_storeu_si32(qb + 7 * s, _mm_bsrli_si128(c1, 12));
        }
        d[b * gr] = amax / 127.f;
        corr[b * gr] = -c * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
#elif defined(__AVX2__)
    const Index kb = ceil_div(k, kQB);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
    alignas(32) float tail[kQBlock];
    for (Index b = 0; b < kb; ++b) {
        const float* xb = x + b * kQB;
        if (k - b * kQB < kQB) {  // the last, partial block: zero-padded as the reference does
            std::fill(tail, tail + kQB, 0.f);
            std::copy(xb, x + k, tail);
            xb = tail;
        }
        __m256 v[4], m = _mm256_setzero_ps();
        for (int i = 0; i < 4; ++i) m = _mm256_max_ps(_mm256_and_ps(v[i] = _mm256_loadu_ps(xb + 8 * i), absmask), m);
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);  // vmaxps(NaN, m) = m: NaN drops out as in std::max
        const __m256 id = _mm256_set1_ps(act_scale(amax));
        __m256i qi[4], sum = _mm256_setzero_si256();
        for (int i = 0; i < 4; ++i) {  // as act_q: NaN → 0, saturate to ±127, round to nearest even
            __m256 y = _mm256_mul_ps(v[i], id);
            y = _mm256_and_ps(y, _mm256_cmp_ps(y, y, _CMP_ORD_Q));
            qi[i] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(y, lo), hi));
            sum = _mm256_add_epi32(sum, qi[i]);
        }
        // int32 → int8 (values already in ±127): the packs interleave 128-bit lanes; one permute restores order
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
        const __m256i codes = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        if (gr == 1) {
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * kQB), codes);
        } else {
            alignas(32) std::int8_t tmp[kQBlock];
            _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), codes);
            put_block_quads(tmp, q + b * gr * kQB, gr);
        }
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        d[b * gr] = amax / 127.f;
        corr[b * gr] = -c * _mm_cvtsi128_si32(s4);
    }
#else
    if (gr == 1) return quantize_act_ref(x, k, c, q, d, corr);
    const Index kb = ceil_div(k, kQB);
    std::vector<std::int8_t> tq(static_cast<std::size_t>(kb * kQB));
    std::vector<float> td(static_cast<std::size_t>(kb));
    std::vector<std::int32_t> tc(static_cast<std::size_t>(kb));
    quantize_act_ref(x, k, c, tq.data(), td.data(), tc.data());
    for (Index b = 0; b < kb; ++b) {
        put_block_quads(tq.data() + b * kQB, q + b * gr * kQB, gr);
        d[b * gr] = td[b];
        corr[b * gr] = tc[b];
    }
#endif
}

// Quantized rows of X: rows [0, m) plus zero rows up to mpad; kb blocks per row (the tail
// blocks past k, up to the weights' padded block count, are zero). Rows are stored in groups of GR
// (the GEMM micro-kernel's rows; 1 for GEMV rows = plain row-major), so that a micro-kernel reads all
// its rows through one pointer with constant offsets (with row pointers and a runtime stride the
// 6-row VNNI kernel ran out of general registers and ran at 2/3 of its speed):
//   codes of row r, block b, k-quad t (4 bytes):  q + (r/GR)·GR·kb·32 + b·GR·32 + t·GR·4 + (r%GR)·4
//   scale / correction of row r, block b:         d + (r/GR)·GR·kb + b·GR + r%GR
struct QRows {
    const std::int8_t* q;
    const float* d;
    const std::int32_t* corr;
    Index kb;
};
inline QRows quantize_rows(const float* x, Index m, Index ldx, Index k, Index kb, Index mpad, int c, ThreadPool* pool,
                           Index group = 1) {
    const Index GR = std::max<Index>(group, 1);
    mpad = round_up(mpad, GR);
    std::int8_t* q = scratch<std::int8_t, Scratch::q8_codes>(std::size_t(mpad * kb * kQB + 64));
    float* d = scratch<float, Scratch::q8_scales>(std::size_t(mpad * kb + 16));
    std::int32_t* corr = scratch<std::int32_t, Scratch::q8_corr>(std::size_t(mpad * kb + 16));
    const Index kb_x = ceil_div(k, kQB);
    auto row = [&](Index r) {  // row r into its group's slot (GR = 1: row-major)
        const Index g0 = (r / GR) * GR, ri = r % GR;
        std::int8_t* rq = q + g0 * kb * kQB + ri * 4;
        float* rd = d + g0 * kb + ri;
        std::int32_t* rc = corr + g0 * kb + ri;
        Index b0 = 0;  // blocks [b0, kb) are zero: past k (the weights' padding) or the whole of a padding row
        if (r < m) {
            quantize_act(x + r * ldx, k, c, rq, rd, rc, GR);
            b0 = kb_x;
        }
        if (GR == 1) {
            std::fill(rq + b0 * kQB, rq + kb * kQB, std::int8_t(0));
            std::fill(rd + b0, rd + kb, 0.f);
            std::fill(rc + b0, rc + kb, 0);
            return;
        }
        for (Index b = b0; b < kb; ++b) {
            for (Index t = 0; t < kQB / 4; ++t) std::memset(rq + b * GR * kQB + t * GR * 4, 0, 4);
            rd[b * GR] = 0.f;
            rc[b * GR] = 0;
        }
    };
    const Index rows = GR == 1 ? m : mpad;
    parallel_for(pool, std::size_t(rows), 64, [&](std::size_t r0, std::size_t r1) {
        for (Index r = Index(r0); r < Index(r1); ++r) row(r);
    });
    for (Index r = rows; r < mpad; ++r) row(r);  // GR = 1: the zero rows past m
    return {q, d, corr, kb};
}

// ---- micro-kernels: tile[MR][NV·16] over nb blocks ------------------------------------------------------
// a: one group of MR rows as quantize_rows(…, group = MR) lays it out, offset to the first block: row r's
//    k-quad t of block b at aq + b·MR·32 + t·MR·4 + r·4, its scale ad[b·MR + r], correction ac[b·MR + r]
// b: panel v's data at bp + v·ps (offset to the first superblock; nb is a multiple of G)
template <class QF>
inline const std::uint8_t* qblock(const std::uint8_t* bp, Index b) {
    using PQ = PackedQ<QF>;
    return bp + (b / PQ::G) * PQ::kSuperBytes + (b % PQ::G) * PQ::kBlockBytes;
}
template <class QF>
inline const f16* qscales(const std::uint8_t* bp, Index b) {
    using PQ = PackedQ<QF>;
    return reinterpret_cast<const f16*>(bp + (b / PQ::G) * PQ::kSuperBytes + PQ::G * PQ::kBlockBytes) + (b % PQ::G) * kPanel;
}

template <class QF, int MR, int NV>
inline void ukr_q_scalar(Index nb, const std::int8_t* aq, const float* ad, const std::int32_t* ac,
                         const std::uint8_t* bp, Index ps, float* tile, Index ldt) {
    for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v)
            for (Index c = 0; c < kPanel; ++c) {
                float acc = 0.f;
                for (Index b = 0; b < nb; ++b) {
                    const std::int8_t* xq = aq + b * MR * kQB + r * 4;
                    const std::uint8_t* w = qblock<QF>(bp + v * ps, b);
                    std::int32_t s = ac[b * MR + r];
                    for (Index j = 0; j < kQB; ++j) s += PackedQ<QF>::stored(w, c, j) * int(xq[(j / 4) * MR * 4 + j % 4]);
                    acc += to_float(qscales<QF>(bp + v * ps, b)[c]) * ad[b * MR + r] * float(s);
                }
                tile[r * ldt + v * kPanel + c] = acc;
            }
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
template <class QF, int MR, int NV>
FASTVLM_FLATTEN inline void ukr_q_vnni(Index nb, const std::int8_t* __restrict aq, const float* __restrict ad,
                       const std::int32_t* __restrict ac, const std::uint8_t* __restrict bp, Index ps,
                       float* __restrict tile, Index ldt) {
    __m512 facc[MR][NV];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) facc[r][v] = _mm512_setzero_ps();
    for (Index b = 0; b < nb; ++b) {
        __m512i ia[MR][NV];
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            const __m512i c0 = _mm512_set1_epi32(ac[b * MR + r]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) ia[r][v] = c0;
        }
        const std::uint8_t* w = qblock<QF>(bp, b);
        const std::int8_t* x = aq + b * MR * kQB;
        if constexpr (QF::kNibbles) {
            const __m512i lo4 = _mm512_set1_epi8(0x0f);
#pragma GCC unroll 4
            for (int t = 0; t < 4; ++t) {
                __m512i wl[NV], wh[NV];
#pragma GCC unroll 4
                for (int v = 0; v < NV; ++v) {
                    const __m512i raw = _mm512_load_si512(w + v * ps + t * 64);
                    wl[v] = _mm512_and_si512(raw, lo4);
                    wh[v] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), lo4);
                }
#pragma GCC unroll 8
                for (int r = 0; r < MR; ++r) {
                    std::int32_t xl, xh;
                    std::memcpy(&xl, x + (t * MR + r) * 4, 4);
                    std::memcpy(&xh, x + ((t + 4) * MR + r) * 4, 4);
                    const __m512i bl = _mm512_set1_epi32(xl), bh = _mm512_set1_epi32(xh);
#pragma GCC unroll 4
                    for (int v = 0; v < NV; ++v) {
                        ia[r][v] = _mm512_dpbusd_epi32(ia[r][v], wl[v], bl);
                        ia[r][v] = _mm512_dpbusd_epi32(ia[r][v], wh[v], bh);
                    }
                }
            }
        } else {
#pragma GCC unroll 8
            for (int t = 0; t < 8; ++t) {
                __m512i wv[NV];
#pragma GCC unroll 4
                for (int v = 0; v < NV; ++v) wv[v] = _mm512_load_si512(w + v * ps + t * 64);
#pragma GCC unroll 8
                for (int r = 0; r < MR; ++r) {
                    std::int32_t xv;
                    std::memcpy(&xv, x + (t * MR + r) * 4, 4);
                    const __m512i bx = _mm512_set1_epi32(xv);
#pragma GCC unroll 4
                    for (int v = 0; v < NV; ++v) ia[r][v] = _mm512_dpbusd_epi32(ia[r][v], wv[v], bx);
                }
            }
        }
        __m512 dw[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            dw[v] = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(qscales<QF>(bp + v * ps, b))));
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            const __m512 dx = _mm512_set1_ps(ad[b * MR + r]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v)
                facc[r][v] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(ia[r][v]), dx), dw[v], facc[r][v]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) _mm512_store_ps(tile + r * ldt + v * kPanel, facc[r][v]);
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
// R rows (1 ≤ R ≤ 8) of X against one panel (16 columns) over nb blocks: out + r·ldo [16] for row r.
// Few instructions per weight byte so that the stream, not the core, is the limit: the activation
// dwords are broadcast straight from memory into vpdpbusd, every block has its own accumulators (no
// long dependency chains), and for R = 1 Q4's high nibbles are multiplied in place (byte & 0xF0 = 16·q,
// exact in int32, divided back once per block). Each weight vector is loaded (and, for R > 1, split into
// nibbles) once for all R rows. A row's result does not depend on R or on the other rows: its integer sums
// are exact and its float steps are those of R = 1, in the same order.
template <class QF, int R>
FASTVLM_FLATTEN inline void gemv_q_vnni(Index nb, const QRows* xs, const std::uint8_t* __restrict bp, float* __restrict out,
                                        Index ldo) {
    using PQ = PackedQ<QF>;
    const std::int32_t* x4[R];
    const float* xd[R];
    const std::int32_t* xc[R];
    __m512 f0[R], f1[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
        x4[r] = reinterpret_cast<const std::int32_t*>(xs[r].q), xd[r] = xs[r].d, xc[r] = xs[r].corr;
        f0[r] = f1[r] = _mm512_setzero_ps();
    }
    for (Index sb = 0; sb < nb / PQ::G; ++sb) {
        const std::uint8_t* s = bp + sb * PQ::kSuperBytes;
        for (Index o = 0; o < PQ::kSuperBytes; o += 64) _mm_prefetch(reinterpret_cast<const char*>(s + o) + kStreamPrefetch, _MM_HINT_T0);
        const __m512i* w = reinterpret_cast<const __m512i*>(s);
        const f16* sc = reinterpret_cast<const f16*>(s + PQ::G * PQ::kBlockBytes);
#pragma GCC unroll 4
        for (Index g = 0; g < PQ::G; ++g) {
            const Index b = sb * PQ::G + g;
            __m512i a0[R], a1[R];
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) a0[r] = _mm512_set1_epi32(xc[r][b]), a1[r] = _mm512_setzero_si512();
            if constexpr (QF::kNibbles && R == 1) {  // high nibbles in place (16·q): one and-not per vector instead of a shift and an and
                const __m512i lo4 = _mm512_set1_epi8(0x0f);
                const std::int32_t* xb = x4[0] + b * 8;
                __m512i h0 = _mm512_setzero_si512(), h1 = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int t = 0; t < 4; t += 2) {
                    const __m512i r0 = _mm512_load_si512(w + g * 4 + t), r1 = _mm512_load_si512(w + g * 4 + t + 1);
                    a0[0] = _mm512_dpbusd_epi32(a0[0], _mm512_and_si512(r0, lo4), _mm512_set1_epi32(xb[t]));
                    h0 = _mm512_dpbusd_epi32(h0, _mm512_andnot_si512(lo4, r0), _mm512_set1_epi32(xb[t + 4]));
                    a1[0] = _mm512_dpbusd_epi32(a1[0], _mm512_and_si512(r1, lo4), _mm512_set1_epi32(xb[t + 1]));
                    h1 = _mm512_dpbusd_epi32(h1, _mm512_andnot_si512(lo4, r1), _mm512_set1_epi32(xb[t + 5]));
                }
                a0[0] = _mm512_add_epi32(_mm512_add_epi32(a0[0], a1[0]), _mm512_srai_epi32(_mm512_add_epi32(h0, h1), 4));
            } else if constexpr (QF::kNibbles && R > 4) {  // many rows: one integer accumulator per row (the 32 registers hold 8 rows)
                const __m512i lo4 = _mm512_set1_epi8(0x0f);
#pragma GCC unroll 4
                for (int t = 0; t < 4; ++t) {
                    const __m512i raw = _mm512_load_si512(w + g * 4 + t);
                    const __m512i l = _mm512_and_si512(raw, lo4), u = _mm512_and_si512(_mm512_srli_epi16(raw, 4), lo4);
#pragma GCC unroll 8
                    for (int r = 0; r < R; ++r) {
                        const std::int32_t* xb = x4[r] + b * 8;
                        a0[r] = _mm512_dpbusd_epi32(a0[r], l, _mm512_set1_epi32(xb[t]));
                        a0[r] = _mm512_dpbusd_epi32(a0[r], u, _mm512_set1_epi32(xb[t + 4]));
                    }
                }
            } else if constexpr (QF::kNibbles) {  // several rows: the nibbles are split once per vector, the rows add plain sums
                const __m512i lo4 = _mm512_set1_epi8(0x0f);
#pragma GCC unroll 4
                for (int t = 0; t < 4; t += 2) {
                    const __m512i r0 = _mm512_load_si512(w + g * 4 + t), r1 = _mm512_load_si512(w + g * 4 + t + 1);
                    const __m512i l0 = _mm512_and_si512(r0, lo4), u0 = _mm512_and_si512(_mm512_srli_epi16(r0, 4), lo4);
                    const __m512i l1 = _mm512_and_si512(r1, lo4), u1 = _mm512_and_si512(_mm512_srli_epi16(r1, 4), lo4);
#pragma GCC unroll 8
                    for (int r = 0; r < R; ++r) {
                        const std::int32_t* xb = x4[r] + b * 8;
                        a0[r] = _mm512_dpbusd_epi32(a0[r], l0, _mm512_set1_epi32(xb[t]));
                        a1[r] = _mm512_dpbusd_epi32(a1[r], u0, _mm512_set1_epi32(xb[t + 4]));
                        a0[r] = _mm512_dpbusd_epi32(a0[r], l1, _mm512_set1_epi32(xb[t + 1]));
                        a1[r] = _mm512_dpbusd_epi32(a1[r], u1, _mm512_set1_epi32(xb[t + 5]));
                    }
                }
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r) a0[r] = _mm512_add_epi32(a0[r], a1[r]);
            } else if constexpr (R > 4) {  // as Q4 above
#pragma GCC unroll 8
                for (int t = 0; t < 8; ++t) {
                    const __m512i wv = _mm512_load_si512(w + g * 8 + t);
#pragma GCC unroll 8
                    for (int r = 0; r < R; ++r) a0[r] = _mm512_dpbusd_epi32(a0[r], wv, _mm512_set1_epi32(x4[r][b * 8 + t]));
                }
            } else {
#pragma GCC unroll 8
                for (int t = 0; t < 8; t += 2) {
                    const __m512i w0 = _mm512_load_si512(w + g * 8 + t), w1 = _mm512_load_si512(w + g * 8 + t + 1);
#pragma GCC unroll 8
                    for (int r = 0; r < R; ++r) {
                        const std::int32_t* xb = x4[r] + b * 8;
                        a0[r] = _mm512_dpbusd_epi32(a0[r], w0, _mm512_set1_epi32(xb[t]));
                        a1[r] = _mm512_dpbusd_epi32(a1[r], w1, _mm512_set1_epi32(xb[t + 1]));
                    }
                }
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r) a0[r] = _mm512_add_epi32(a0[r], a1[r]);
            }
            const __m512 ws = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(sc + g * kPanel)));
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                const __m512 dw = _mm512_mul_ps(ws, _mm512_set1_ps(xd[r][b]));
                if (g % 2 == 0) f0[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0[r]), dw, f0[r]);
                else f1[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0[r]), dw, f1[r]);
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + r * ldo, _mm512_add_ps(f0[r], f1[r]));
}
#endif

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
// AVX2 (no VNNI): vpmaddubsw multiplies unsigned by signed bytes into saturating int16 pairs, so each
// pair must stay below 2^15. Q8: the stored bytes u = q + 128 are turned back into signed q (u ^ 0x80)
// and the sign of x moves onto them: |x|·(±q) pairs ≤ 2·127·127 = 32 258 — exact, and no zero-point
// correction (corr is not used). Q4: u ≤ 15, so u·x pairs (≤ 3 810) of a whole block are summed in int16
// (≤ 30 480) before one vpmaddwd; corr is added as with VNNI. A 16-column panel is two ymm halves.
namespace qa {
inline __m256 f16x8(const f16* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
// Σ over byte quads of q(w)·x into int32 lanes: w holds stored Q8 bytes, xb four activations per dword.
inline __m256i dot_q8(__m256i w, __m256i xb, __m256i ax) {
    const __m256i sw = _mm256_sign_epi8(_mm256_xor_si256(w, _mm256_set1_epi8(char(0x80))), xb);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sw), _mm256_set1_epi16(1));
}
}  // namespace qa

template <class QF, int MR, int NV>
FASTVLM_FLATTEN inline void ukr_q_avx2(Index nb, const std::int8_t* __restrict aq, const float* __restrict ad,
                       const std::int32_t* __restrict ac, const std::uint8_t* __restrict bp, Index ps,
                       float* __restrict tile, Index ldt) {
    __m256 facc[MR][NV][2];
    for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) facc[r][v][0] = facc[r][v][1] = _mm256_setzero_ps();
    for (Index b = 0; b < nb; ++b) {
        __m256i ia[MR][NV][2];
        const std::uint8_t* w = qblock<QF>(bp, b);
        const std::int8_t* x = aq + b * MR * kQB;
        if constexpr (QF::kNibbles) {
            const __m256i lo4 = _mm256_set1_epi8(0x0f);
            __m256i s16[MR][NV][2];
            for (int r = 0; r < MR; ++r)
                for (int v = 0; v < NV; ++v) s16[r][v][0] = s16[r][v][1] = _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int t = 0; t < 4; ++t) {
                __m256i wl[NV][2], wh[NV][2];
                for (int v = 0; v < NV; ++v)
                    for (int h = 0; h < 2; ++h) {
                        const __m256i raw = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + v * ps + t * 64 + h * 32));
                        wl[v][h] = _mm256_and_si256(raw, lo4);
                        wh[v][h] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), lo4);
                    }
                for (int r = 0; r < MR; ++r) {
                    std::int32_t xl, xh;
                    std::memcpy(&xl, x + (t * MR + r) * 4, 4);
                    std::memcpy(&xh, x + ((t + 4) * MR + r) * 4, 4);
                    const __m256i bl = _mm256_set1_epi32(xl), bh = _mm256_set1_epi32(xh);
                    for (int v = 0; v < NV; ++v)
                        for (int h = 0; h < 2; ++h)
                            s16[r][v][h] = _mm256_add_epi16(s16[r][v][h], _mm256_add_epi16(_mm256_maddubs_epi16(wl[v][h], bl),
                                                                                           _mm256_maddubs_epi16(wh[v][h], bh)));
                }
            }
            for (int r = 0; r < MR; ++r) {
                const __m256i c0 = _mm256_set1_epi32(ac[b * MR + r]);
                for (int v = 0; v < NV; ++v)
                    for (int h = 0; h < 2; ++h) ia[r][v][h] = _mm256_add_epi32(c0, _mm256_madd_epi16(s16[r][v][h], _mm256_set1_epi16(1)));
            }
        } else {
            for (int r = 0; r < MR; ++r)
                for (int v = 0; v < NV; ++v) ia[r][v][0] = ia[r][v][1] = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int t = 0; t < 8; ++t) {
                __m256i wv[NV][2];
                for (int v = 0; v < NV; ++v)
                    for (int h = 0; h < 2; ++h) wv[v][h] = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + v * ps + t * 64 + h * 32));
                for (int r = 0; r < MR; ++r) {
                    std::int32_t xv;
                    std::memcpy(&xv, x + (t * MR + r) * 4, 4);
                    const __m256i bx = _mm256_set1_epi32(xv), ax = _mm256_sign_epi8(bx, bx);
                    for (int v = 0; v < NV; ++v)
                        for (int h = 0; h < 2; ++h) ia[r][v][h] = _mm256_add_epi32(ia[r][v][h], qa::dot_q8(wv[v][h], bx, ax));
                }
            }
        }
        __m256 dw[NV][2];
        for (int v = 0; v < NV; ++v)
            for (int h = 0; h < 2; ++h) dw[v][h] = (qa::f16x8(qscales<QF>(bp + v * ps, b) + h * 8));
        for (int r = 0; r < MR; ++r) {
            const __m256 dx = _mm256_set1_ps(ad[b * MR + r]);
            for (int v = 0; v < NV; ++v)
                for (int h = 0; h < 2; ++h)
                    facc[r][v][h] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(ia[r][v][h]), dx), dw[v][h], facc[r][v][h]);
        }
    }
    for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v)
            for (int h = 0; h < 2; ++h) _mm256_store_ps(tile + r * ldt + v * kPanel + h * 8, facc[r][v][h]);
}

// R rows (1 ≤ R ≤ 2) against one panel (16 columns) over nb blocks, as gemv_q_vnni with two ymm halves
// per 64 bytes.
template <class QF, int R>
FASTVLM_FLATTEN inline void gemv_q_avx2(Index nb, const QRows* xs, const std::uint8_t* __restrict bp, float* __restrict out,
                                        Index ldo) {
    using PQ = PackedQ<QF>;
    const std::int32_t* x4[R];
    const float* xd[R];
    const std::int32_t* xc[R];
    __m256 f0[R], f1[R];
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r) {
        x4[r] = reinterpret_cast<const std::int32_t*>(xs[r].q), xd[r] = xs[r].d, xc[r] = xs[r].corr;
        f0[r] = f1[r] = _mm256_setzero_ps();
    }
    for (Index sb = 0; sb < nb / PQ::G; ++sb) {
        const std::uint8_t* s = bp + sb * PQ::kSuperBytes;
        for (Index o = 0; o < PQ::kSuperBytes; o += 64) _mm_prefetch(reinterpret_cast<const char*>(s + o) + kStreamPrefetch, _MM_HINT_T0);
        const __m256i* w = reinterpret_cast<const __m256i*>(s);
        const f16* sc = reinterpret_cast<const f16*>(s + PQ::G * PQ::kBlockBytes);
#pragma GCC unroll 4
        for (Index g = 0; g < PQ::G; ++g) {
            const Index b = sb * PQ::G + g;
            __m256i a0[R], a1[R];
            if constexpr (QF::kNibbles) {
                const __m256i lo4 = _mm256_set1_epi8(0x0f);
                __m256i s0[R], s1[R];
#pragma GCC unroll 2
                for (int r = 0; r < R; ++r) s0[r] = s1[r] = _mm256_setzero_si256();
#pragma GCC unroll 4
                for (int t = 0; t < 4; ++t) {
                    const __m256i r0 = _mm256_load_si256(w + g * 8 + 2 * t), r1 = _mm256_load_si256(w + g * 8 + 2 * t + 1);
                    const __m256i l0 = _mm256_and_si256(r0, lo4), u0 = _mm256_and_si256(_mm256_srli_epi16(r0, 4), lo4);
                    const __m256i l1 = _mm256_and_si256(r1, lo4), u1 = _mm256_and_si256(_mm256_srli_epi16(r1, 4), lo4);
#pragma GCC unroll 2
                    for (int r = 0; r < R; ++r) {
                        const __m256i bl = _mm256_set1_epi32(x4[r][b * 8 + t]), bh = _mm256_set1_epi32(x4[r][b * 8 + t + 4]);
                        s0[r] = _mm256_add_epi16(s0[r], _mm256_add_epi16(_mm256_maddubs_epi16(l0, bl), _mm256_maddubs_epi16(u0, bh)));
                        s1[r] = _mm256_add_epi16(s1[r], _mm256_add_epi16(_mm256_maddubs_epi16(l1, bl), _mm256_maddubs_epi16(u1, bh)));
                    }
                }
                const __m256i one = _mm256_set1_epi16(1);
#pragma GCC unroll 2
                for (int r = 0; r < R; ++r) {
                    const __m256i c = _mm256_set1_epi32(xc[r][b]);
                    a0[r] = _mm256_add_epi32(c, _mm256_madd_epi16(s0[r], one));
                    a1[r] = _mm256_add_epi32(c, _mm256_madd_epi16(s1[r], one));
                }
            } else {
#pragma GCC unroll 2
                for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm256_setzero_si256();
#pragma GCC unroll 8
                for (int t = 0; t < 8; ++t) {
                    const __m256i w0 = _mm256_load_si256(w + g * 16 + 2 * t), w1 = _mm256_load_si256(w + g * 16 + 2 * t + 1);
#pragma GCC unroll 2
                    for (int r = 0; r < R; ++r) {
                        const __m256i bx = _mm256_set1_epi32(x4[r][b * 8 + t]), ax = _mm256_sign_epi8(bx, bx);
                        a0[r] = _mm256_add_epi32(a0[r], qa::dot_q8(w0, bx, ax));
                        a1[r] = _mm256_add_epi32(a1[r], qa::dot_q8(w1, bx, ax));
                    }
                }
            }
            const __m256 ws0 = qa::f16x8(sc + g * kPanel), ws1 = qa::f16x8(sc + g * kPanel + 8);
#pragma GCC unroll 2
            for (int r = 0; r < R; ++r) {
                const __m256 dx = _mm256_set1_ps(xd[r][b]);
                f0[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0[r]), _mm256_mul_ps(ws0, dx), f0[r]);
                f1[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1[r]), _mm256_mul_ps(ws1, dx), f1[r]);
            }
        }
    }
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r) {
        _mm256_storeu_ps(out + r * ldo, f0[r]);
        _mm256_storeu_ps(out + r * ldo + 8, f1[r]);
    }
}
#endif

// ---- the kernel type for the driver (K unit = one superblock of G blocks) -------------------------------
template <class QF, Path Pth>
struct KernQ {
    using PQ = PackedQ<QF>;
    static constexpr bool kAvx2 = Pth == Path::avx2_int8;  // 16 ymm registers: a 4 × 16 tile
        static constexpr int MR = kAvx2 ? 4 : 6, NV = kAvx2 ? 1 : 2;
    const PQ* P;
    Index n, npanels;
    const float* bias;
    QRows xq;  // X quantized (all rows, padded)

    Index units() const { return P->nsb; }
    Index kc_units() const { return 32 / PQ::G; }  // 32 blocks = 1024 k
    Index mc_max() const { return 192; }
    struct APack {
        const std::int8_t* q;
        const float* d;
        const std::int32_t* corr;
    };
    APack pack_a(const float*, Index, Index m0, Index, Index u0, Index) const {
        const Index kb = xq.kb, b0 = u0 * PQ::G;  // m0 is a multiple of MR: the start of a row group
        return {xq.q + m0 * kb * kQB + b0 * MR * kQB, xq.d + m0 * kb + b0 * MR, xq.corr + m0 * kb + b0 * MR};
    }
    struct BPack {
        const std::uint8_t* p;
        Index nb;  // blocks holding data: the zero blocks that pad K to whole superblocks are skipped (K = 96: 3 of 4)
    };
    BPack pack_b(Index g, int, Index u0, Index uc) const {
        return {P->panel(g * NV) + u0 * PQ::kSuperBytes, std::min(uc * PQ::G, ceil_div(P->k, kQB) - u0 * PQ::G)};
    }
    template <int R, int V>
    void call(Index nb, const APack& a, const BPack& b, float* tile, Index ldt) const {
        const Index ps = P->panel_bytes();
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
        if constexpr (Pth == Path::avx512_vnni) {
            ukr_q_vnni<QF, R, V>(nb, a.q, a.d, a.corr, b.p, ps, tile, ldt);
            return;
        }
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
        if constexpr (kAvx2) {
            ukr_q_avx2<QF, R, V>(nb, a.q, a.d, a.corr, b.p, ps, tile, ldt);
            return;
        }
#endif
        ukr_q_scalar<QF, R, V>(nb, a.q, a.d, a.corr, b.p, ps, tile, ldt);
    }
    void ukr(int nv, const APack& a, Index ir, const BPack& b, Index, float* tile) const {
        const Index kb = xq.kb;
        const APack ai{a.q + ir * MR * kb * kQB, a.d + ir * MR * kb, a.corr + ir * MR * kb};
        with_width<NV>(nv, [&](auto c) { call<MR, decltype(c)::value>(b.nb, ai, b, tile, NV * kPanel); });
    }
    // GEMV rows (driver.hpp): rows ≤ kGemvRows rows of X at once, row i's 16·(p1 − p0) outputs at out + i·ldo.
    static constexpr int kGemvRows = Pth == Path::avx512_vnni ? 8 : kAvx2 ? 2 : 1;
    void gemv_panels_rows(const QRows* xs, int rows, Index p0, Index p1, float* out, Index ldo) const {
        with_width<kGemvRows>(rows, [&](auto rc) {
            constexpr int R = decltype(rc)::value;
            for (Index p = p0; p < p1; ++p) {  // one panel = one sequential stream at a time
                float* o = out + (p - p0) * kPanel;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
                if constexpr (Pth == Path::avx512_vnni) {
                    gemv_q_vnni<QF, R>(P->kb, xs, P->panel(p), o, ldo);
                    continue;
                }
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
                if constexpr (kAvx2) {
                    gemv_q_avx2<QF, R>(P->kb, xs, P->panel(p), o, ldo);
                    continue;
                }
#endif
                for (int r = 0; r < R; ++r)
                    ukr_q_scalar<QF, 1, 1>(P->kb, xs[r].q, xs[r].d, xs[r].corr, P->panel(p), P->panel_bytes(), o + r * ldo, kPanel);
            }
        });
    }
};

// ---- AMX path: weights dequantized to bf16, TDPBF16PS (GEMM only) -------------------------------------------
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
// Block b of a panel (16 columns × 32 k) → bf16 k-pairs [16 pairs][16 columns][2]: w = bf16(d·q). d·q is
// exact in f32 (an f16 scale times an integer of at most 8 bits), so each weight is rounded once, to nearest even.
template <class QF>
FASTVLM_FLATTEN inline void dequant_block_bf16(const std::uint8_t* __restrict quants, const f16* __restrict scales,
                                               bf16* __restrict out) {
    const __m512 d = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(scales)));
    const __m512 off = _mm512_mul_ps(d, _mm512_set1_ps(-float(PackedQ<QF>::kCorr)));  // d·(u − c) = u·d − c·d
    // vcvtne2ps2bf16 leaves [even k of the 16 columns | odd k]; the pair layout interleaves them.
    alignas(64) static constexpr std::uint16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                                  8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i idx = _mm512_load_si512(kInterleave);
    const __m512i byte = _mm512_set1_epi32(0xff);
    auto quad = [&](__m512i u, bf16* o) {  // u: per column, the unsigned values of 4 consecutive k (one per byte)
        __m512 f[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j)
            f[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(u, 8 * j), byte)), d, off);
        _mm512_store_si512(o, _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(f[1], f[0])));
        _mm512_store_si512(o + 2 * kPanel, _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(f[3], f[2])));
    };
    if constexpr (QF::kNibbles) {  // row t: low nibbles are k 4t..4t+3, high nibbles k 16+4t..
        const __m512i lo4 = _mm512_set1_epi8(0x0f);
#pragma GCC unroll 4
        for (int t = 0; t < 4; ++t) {
            const __m512i raw = _mm512_load_si512(quants + t * 64);
            quad(_mm512_and_si512(raw, lo4), out + t * 4 * kPanel);
            quad(_mm512_and_si512(_mm512_srli_epi16(raw, 4), lo4), out + (t + 4) * 4 * kPanel);
        }
    } else {
#pragma GCC unroll 8
        for (int t = 0; t < 8; ++t) quad(_mm512_load_si512(quants + t * 64), out + t * 4 * kPanel);
    }
}

// The BF16 AMX micro-kernel (bf16.hpp) on weights dequantized per K block: X is rounded to bf16 instead
// of quantized to int8, so this path is closer to f32 than the integer ones. Per K block of 32 blocks,
// each panel group's weights are dequantized once (1 KiB per panel and block) and reused by every
// 32-row block of the M block. The exact alternative (TDPBSUD per block of 32 with the VNNI float steps)
// was measured slower than vpdpbusd: each block's int32 tiles must be stored and rescaled.
template <class QF>
struct KernQBf16Amx {
    using PQ = PackedQ<QF>;
    static constexpr int MR = 32, NV = 2;
    const PQ* P;
    Index n, npanels;
    const float* bias;

    Index units() const { return P->nsb; }
    Index kc_units() const { return 32 / PQ::G; }  // 32 blocks = 1024 k
    Index mc_max() const { return 512; }            // the dequantization is shared by more rows
    using APack = AmxXTiles;
    APack pack_a(const float* x, Index ldx, Index m0, Index mc, Index u0, Index uc) const {
        return pack_x_amx(x, ldx, m0, mc, u0 * PQ::G * kQB / 2, uc * PQ::G * kQB / 2, P->k);
    }
    using BPack = PairPanels;  // bf16.hpp
    BPack pack_b(Index g, int nv, Index u0, Index uc) const {
        const Index nb = uc * PQ::G, pairs = nb * kQB / 2;
        bf16* buf = scratch<bf16, Scratch::b_widen>(std::size_t(NV * pairs * 2 * kPanel));
        for (int v = 0; v < nv; ++v) {
            const Index p = g * NV + v;
            for (Index b = 0; b < nb; ++b)
                dequant_block_bf16<QF>(P->quants(p, u0 * PQ::G + b), P->scales(p, u0 * PQ::G + b), buf + (v * nb + b) * kQB * kPanel);
        }
        return {buf, pairs * 2 * kPanel};
    }
    void ukr(int nv, const APack& a, Index ir, const BPack& b, Index uc, float* tile) const {
        const Index pairs = uc * PQ::G * kQB / 2;
        if (nv == 2) ukr_bf16_amx<2>(pairs, a.block(ir), b.p, b.stride, tile);
        else ukr_bf16_amx<1>(pairs, a.block(ir), b.p, b.stride, tile);
    }
};
#endif

// ---- hand-off: a GEMM's output quantized as the input of the next Q8 layer ---------------------------------
// A tile of the GEMM micro-kernel (6 rows × 32 columns) is, row by row, exactly one Q8 block of the next
// layer's input. QSink takes each finished tile in place of store_tile: the same float epilogue (bias,
// activation, scale) into a small buffer, then quantize_act per row straight into the next layer's row
// groups (quantize_rows' layout, group = MR). The codes, scales and corrections are bit for bit those
// that quantize_rows makes from the float output: the float map is neither written nor read back.
struct QSink {
    std::int8_t* q;       // the layout of quantize_rows(…, group = gr), kb blocks per row
    float* d;
    std::int32_t* corr;
    Index kb;
    Index gr = 6;    // the micro-kernel's rows (of producer and consumer alike)
    int corr_c = 0;  // the next layer's zero point (PackedQ::kCorr)
    void operator()(const float* tile, Index ldt, Index mr, Index nr, Index row0, Index c0, const TileOps& o) const {
        alignas(64) float buf[8 * kQBlock];
        FASTVLM_CHECK(nr == kQB && c0 % kQB == 0 && mr <= gr && gr <= 8, "QSink: a tile must be one Q8 block wide");
        store_tile(tile, ldt, mr, nr, buf, kQB, o);
        const Index b = c0 / kQB, at = row0 * kb + b * gr;
        for (Index r = 0; r < mr; ++r)
            quantize_act(buf + r * kQB, kQB, corr_c, q + at * kQB + r * 4, d + at + r, corr + at + r, gr);
    }
};

template <class QF>
struct ImplQ : PackedImpl<PackedQ<QF>> {
    using PackedImpl<PackedQ<QF>>::P;
    static Path best() { return have_avx512_vnni() ? Path::avx512_vnni : have_avx2_int8() ? Path::avx2_int8 : Path::scalar; }
    static Path best_gemm() { return have_amx_bf16() ? Path::amx_bf16 : best(); }
    static bool supports(Path p) {
        return p == Path::scalar || (p == Path::avx512_vnni && have_avx512_vnni()) || (p == Path::avx2_int8 && have_avx2_int8()) ||
               (p == Path::amx_bf16 && have_amx_bf16() && have_avx512_vnni());
    }

    template <Path Pth>
    void run(const float* x, Index m, Index ldx, float* y, Index ldy, ThreadPool* pool, const Epilogue& ep,
             const float* bias) const {
        using K = KernQ<QF, Pth>;
        const bool gemv = use_gemv(m, ep);  // GEMV rows read row-major rows; the GEMM, groups of its MR rows
        const QRows xq = quantize_rows(x, m, ldx, P.k, P.kb, round_up(m, K::MR), PackedQ<QF>::kCorr, m > 1 ? pool : nullptr,
                                       gemv ? 1 : K::MR);
        run_rows<Pth>(xq, m, y, ldy, pool, ep, bias, gemv);
    }
    // The GEMM's micro-kernel rows on the paths where a hand-off can be made (QSink: 6 × 32 tiles), else 0.
    static int handoff_rows(Path p) {
        return p == Path::avx512_vnni || p == Path::scalar ? KernQ<QF, Path::avx512_vnni>::MR : 0;
    }
    // Y quantized for a next layer (QSink, out laid out for path's GEMM): one K block, columns in whole Q8 blocks.
    bool can_hand_off(Path p, Index m, const Epilogue& ep) const {
        return handoff_rows(p) > 0 && !use_gemv(m, ep) && !ep.accumulate && P.n % kQB == 0 && P.kb <= 32;
    }
    // f.template operator()<Pth>() for the hand-off path (VNNI where compiled, else the scalar kernels).
    template <class F>
    static void on_handoff_path(Path path, F&& f) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
        if (path == Path::avx512_vnni) return f.template operator()<Path::avx512_vnni>();
#endif
        (void)path;
        f.template operator()<Path::scalar>();
    }
    void forward_to(Path path, const float* x, Index m, Index ldx, const QSink& sink, ThreadPool* pool, const Epilogue& ep,
                    const float* bias) const {
        on_handoff_path(path, [&]<Path Pth>() {
            using K = KernQ<QF, Pth>;
            const QRows xq = quantize_rows(x, m, ldx, P.k, P.kb, round_up(m, K::MR), PackedQ<QF>::kCorr, pool, K::MR);
            gemm_blocked(K{&P, P.n, P.npanels, bias, xq}, x, m, ldx, nullptr, 0, pool, ep, sink);
        });
    }
    // From rows a previous layer handed off (QSink, laid out for this path's GEMM).
    void forward_rows(Path path, const QRows& xq, Index m, float* y, Index ldy, ThreadPool* pool, const Epilogue& ep,
                      const float* bias) const {
        on_handoff_path(path, [&]<Path Pth>() { run_rows<Pth>(xq, m, y, ldy, pool, ep, bias, false); });
    }
    template <Path Pth>
    void run_rows(const QRows& xq, Index m, float* y, Index ldy, ThreadPool* pool, const Epilogue& ep, const float* bias,
                  bool gemv) const {
        using K = KernQ<QF, Pth>;
        K kern{&P, P.n, P.npanels, bias, xq};
        if (gemv) {
            const Index kb = xq.kb;
            gemv_rows(kern, [&](Index r) { return QRows{xq.q + r * kb * kQB, xq.d + r * kb, xq.corr + r * kb, kb}; }, m, y, ldy,
                      pool, ep, P.k);
        } else {
            gemm_blocked(kern, nullptr, m, 0, y, ldy, pool, ep);
        }
    }
    void forward(Path path, const float* x, Index m, Index ldx, float* y, Index ldy, ThreadPool* pool,
                 const Epilogue& ep, const float* bias) const {
        switch (path) {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__) && \
    defined(__AVX512VNNI__)
            case Path::amx_bf16:  // GEMM only (common.hpp: gemm_only); the GEMV class runs VNNI
                if (use_gemv(m, ep)) return run<Path::avx512_vnni>(x, m, ldx, y, ldy, pool, ep, bias);
                return gemm_blocked(KernQBf16Amx<QF>{&P, P.n, P.npanels, bias}, x, m, ldx, y, ldy, pool, ep);
#endif
            case Path::avx512_vnni: return run<Path::avx512_vnni>(x, m, ldx, y, ldy, pool, ep, bias);
            case Path::avx2_int8: return run<Path::avx2_int8>(x, m, ldx, y, ldy, pool, ep, bias);
            default: return run<Path::scalar>(x, m, ldx, y, ldy, pool, ep, bias);
        }
    }
};

}  // namespace fastvlm::detail::mm

FASTVLM_SIMD_WARNINGS_ON
