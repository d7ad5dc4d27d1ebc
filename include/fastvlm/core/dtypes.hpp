// fastvlm/core/dtypes.hpp — 16-bit floating types: IEEE binary16 (f16) and bfloat16 (bf16).
// Scalar conversions are exact and round to nearest even; bulk conversions use F16C /
// AVX512-BF16 / AVX-512 when the translation unit is compiled for them, else the scalar path.
#pragma once
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace fastvlm {

struct bf16 {
    std::uint16_t bits = 0;
    bf16() = default;
    static constexpr bf16 from_bits(std::uint16_t b) { bf16 r; r.bits = b; return r; }
};
struct f16 {
    std::uint16_t bits = 0;
    f16() = default;
    static constexpr f16 from_bits(std::uint16_t b) { f16 r; r.bits = b; return r; }
};
static_assert(sizeof(bf16) == 2 && sizeof(f16) == 2);

// ---- bf16 -------------------------------------------------------------------------------
inline float to_float(bf16 v) { return std::bit_cast<float>(std::uint32_t(v.bits) << 16); }

// Round to nearest even; NaN stays a (quiet) NaN.
inline bf16 to_bf16(float f) {
    std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16::from_bits(std::uint16_t((u >> 16) | 0x40));
    u += 0x7fffu + ((u >> 16) & 1u);
    return bf16::from_bits(std::uint16_t(u >> 16));
}

// ---- f16 (IEEE binary16) ------------------------------------------------------------------
inline float to_float(f16 v) {
    const std::uint32_t h = v.bits;
    const std::uint32_t sign = (h & 0x8000u) << 16;
    std::uint32_t exp = (h >> 10) & 0x1fu;
    std::uint32_t man = h & 0x3ffu;
    std::uint32_t out;
    if (exp == 0x1f) {
        out = sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0u);  // inf / nan (quieted, as vcvtph2ps does)
    } else if (exp != 0) {
        out = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        out = sign;
    } else {  // subnormal: normalise
        int e = -1;
        do { ++e; man <<= 1; } while ((man & 0x400u) == 0);
        out = sign | (std::uint32_t(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    return std::bit_cast<float>(out);
}

// Round to nearest even, overflow to inf, gradual underflow to subnormals.
inline f16 to_f16(float f) {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    const std::uint32_t sign = (u >> 16) & 0x8000u;
    const std::uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return f16::from_bits(std::uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu)));
    if (a >= 0x477ff000u) return f16::from_bits(std::uint16_t(sign | 0x7c00u));  // rounds to >= 65520 -> inf
    if (a < 0x38800000u) {  // below the smallest normal (2^-14): subnormal or zero
        if (a < 0x33000000u) return f16::from_bits(std::uint16_t(sign));  // < 2^-25 rounds to 0
        const std::uint32_t e = a >> 23;
        const std::uint32_t m = (a & 0x7fffffu) | 0x800000u;
        const std::uint32_t shift = 126u - e;  // 14 + (113 - e) - 1 ... yields m >> (126-e)
        std::uint32_t r = m >> shift;
        const std::uint32_t rem = m & ((1u << shift) - 1u);
        const std::uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u))) ++r;
        return f16::from_bits(std::uint16_t(sign | r));
    }
    std::uint32_t r = a - 0x38000000u;  // rebias exponent 127 -> 15
    r += 0xfffu + ((r >> 13) & 1u);
    return f16::from_bits(std::uint16_t(sign | (r >> 13)));
}

inline float to_float(float v) { return v; }

// ---- bulk conversions ---------------------------------------------------------------------
inline void convert(const bf16* src, float* dst, std::size_t n) {
    std::size_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16) {
        __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
        __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
        _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(w));
    }
#elif defined(__AVX2__)
    for (; i + 8 <= n; i += 8) {  // the bf16 KV cache rows of decode attention (Zen 3: a scalar loop before)
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
    }
#endif
    for (; i < n; ++i) dst[i] = to_float(src[i]);
}

inline void convert(const float* src, bf16* dst, std::size_t n) {
    std::size_t i = 0;
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    for (; i + 16 <= n; i += 16) {  // vcvtneps2bf16: round to nearest even, like to_bf16...
        const __m512 v = _mm512_loadu_ps(src + i);
        const __m512i a = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff));
        if (_mm512_cmplt_epu32_mask(_mm512_sub_epi32(a, _mm512_set1_epi32(1)), _mm512_set1_epi32(0x7fffff))) {
            // ...but it flushes float subnormals (0 < |x| < 2^-126) to 0: those chunks go the scalar way
            for (std::size_t j = i; j < i + 16; ++j) dst[j] = to_bf16(src[j]);
            continue;
        }
        __m256bh h = _mm512_cvtneps_pbh(v);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), std::bit_cast<__m256i>(h));
    }
#elif defined(__AVX2__)
    for (; i + 8 <= n; i += 8) {  // to_bf16 on 8 lanes: u + 0x7fff + lsb, NaN → (u | quiet bit)
        const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
        const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        const __m256i rnd = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
        const __m256i r = _mm256_srli_epi32(_mm256_blendv_epi8(rnd, _mm256_or_si256(u, _mm256_set1_epi32(0x400000)), nan), 16);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
    }
#endif
    for (; i < n; ++i) dst[i] = to_bf16(src[i]);
}

inline void convert(const f16* src, float* dst, std::size_t n) {
    std::size_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16) {
        __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(h));
    }
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
#endif
    for (; i < n; ++i) dst[i] = to_float(src[i]);
}

inline void convert(const float* src, f16* dst, std::size_t n) {
    std::size_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16) {
        __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), h);
    }
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
    }
#endif
    for (; i < n; ++i) dst[i] = to_f16(src[i]);
}

inline void convert(const float* src, float* dst, std::size_t n) {
    if (n) std::memcpy(dst, src, n * sizeof(float));
}

}  // namespace fastvlm
