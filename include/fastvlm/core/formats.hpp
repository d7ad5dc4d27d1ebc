// fastvlm/core/formats.hpp — weight formats: tag types plus the block-quantized layouts.
//   F32, BF16, F16 : one value per element.
//   Q8             : blocks of 32 weights, fp16 scale + 32 × int8         = 34 bytes (8.5 bits/weight)
//   Q4             : blocks of 32 weights, fp16 scale + 16 bytes of nibbles = 18 bytes (4.5 bits/weight)
// The quantized layouts follow ggml's Q8_0 / Q4_0 (symmetric, one scale per block).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "fastvlm/core/dtypes.hpp"
#include "fastvlm/core/error.hpp"

namespace fastvlm {

inline constexpr std::size_t kQBlock = 32;  // weights per quantization block

struct BlockQ8 {
    f16 d;                  // scale: x ≈ d · q
    std::int8_t qs[kQBlock];
};
static_assert(sizeof(BlockQ8) == 34, "BlockQ8 must be 34 bytes (8.5 bits per weight)");

struct BlockQ4 {
    f16 d;                      // scale: x ≈ d · (q − 8)
    std::uint8_t qs[kQBlock / 2];  // qs[j] low nibble = element j, high nibble = element j + 16
};
static_assert(sizeof(BlockQ4) == 18, "BlockQ4 must be 18 bytes (4.5 bits per weight)");

// 1/d, or 0 for d = 0; capped at FLT_MAX where 1/d overflows (subnormal d), so x·(1/d) stays within
// ±128 for |x| ≤ 128·|d| and the float → int conversions below never leave the int range.
inline float finite_inverse(float d) {
    if (d == 0.f) return 0.f;
    const float id = 1.f / d;
    return std::fabs(id) <= 3.4e38f ? id : std::copysign(3.4e38f, id);
}
// std::lround for |v| < 2^22 (round half away from zero), exact, without the libm call.
inline float round_half_away(float v) {
    const float t = std::trunc(v);  // v − t is exact
    return t + (std::fabs(v - t) >= 0.5f ? std::copysign(1.f, v) : 0.f);
}

// ---- format tags ----------------------------------------------------------------------------------
namespace fmt {
struct F32 {
    using element = float;
    static constexpr const char* name = "f32";
    static constexpr double bits_per_weight = 32;
};
struct BF16 {
    using element = bf16;
    static constexpr const char* name = "bf16";
    static constexpr double bits_per_weight = 16;
};
struct F16 {
    using element = f16;
    static constexpr const char* name = "f16";
    static constexpr double bits_per_weight = 16;
};
// The block formats carry their traits: everything about the format that packing, the kernels
// (kernels/matmul/q8.hpp) and the tests read, written once. A block holds 32 weights w_j = d·q_j; its
// stored bytes are what the kernels multiply (unsigned, u = q + kZero).
struct Q8 {
    using block = BlockQ8;
    static constexpr const char* name = "q8";
    static constexpr double bits_per_weight = 8.0 * sizeof(BlockQ8) / kQBlock;
    static constexpr bool kNibbles = false;               // one stored byte per weight
    static constexpr int kZero = 128;                     // u = q + 128, q in −127..127
    static constexpr std::size_t kStoredBytes = kQBlock;  // per block
    // d = amax/127, q_j = round_half_away(x_j/d); stored byte j = q_j + 128. False for a non-finite input.
    static bool quantize_block(const float* x, f16& d16, std::uint8_t* stored) {
        float amax = 0.f;
        bool finite = true;
        for (std::size_t j = 0; j < kQBlock; ++j) {
            amax = std::max(amax, std::fabs(x[j]));
            finite &= std::fabs(x[j]) <= 3.4e38f;  // false for NaN and ±inf
        }
        if (!finite) return false;
        const float d = amax / 127.f, id = finite_inverse(d);
        d16 = to_f16(d);
        for (std::size_t j = 0; j < kQBlock; ++j) stored[j] = std::uint8_t(int(round_half_away(x[j] * id)) + kZero);
        return true;
    }
    // q_j of a block from its stored bytes.
    static int value(const std::uint8_t* stored, std::size_t j) { return int(stored[j]) - kZero; }
};
struct Q4 {
    using block = BlockQ4;
    static constexpr const char* name = "q4";
    static constexpr double bits_per_weight = 8.0 * sizeof(BlockQ4) / kQBlock;
    static constexpr bool kNibbles = true;                    // two weights per stored byte
    static constexpr int kZero = 8;                           // u = q + 8, q in −8..7
    static constexpr std::size_t kStoredBytes = kQBlock / 2;  // per block
    // d = v/−8 for the first value v of largest magnitude (so v maps to −8 exactly), q_j = clamp(round(x_j/d));
    // stored byte j = u_j | u_{j+16} << 4. False for a non-finite input.
    static bool quantize_block(const float* x, f16& d16, std::uint8_t* stored) {
        float amax = 0.f, vmax = 0.f;
        bool finite = true;
        for (std::size_t j = 0; j < kQBlock; ++j) {
            if (std::fabs(x[j]) > amax) amax = std::fabs(x[j]), vmax = x[j];
            finite &= std::fabs(x[j]) <= 3.4e38f;  // false for NaN and ±inf
        }
        if (!finite) return false;
        const float d = vmax / -8.f, id = finite_inverse(d);
        d16 = to_f16(d);
        for (std::size_t j = 0; j < kQBlock / 2; ++j) {
            const int q0 = std::clamp(int(round_half_away(x[j] * id)) + kZero, 0, 15);
            const int q1 = std::clamp(int(round_half_away(x[j + kQBlock / 2] * id)) + kZero, 0, 15);
            stored[j] = std::uint8_t(q0 | (q1 << 4));
        }
        return true;
    }
    static int value(const std::uint8_t* stored, std::size_t j) {
        return int(j < kQBlock / 2 ? stored[j] & 0xf : stored[j - kQBlock / 2] >> 4) - kZero;
    }
};
}  // namespace fmt

// ---- quantize / dequantize whole rows (k a multiple of kQBlock), through the traits ----------------------
inline void quantize_row(const float* x, BlockQ8* y, std::size_t k) {
    FASTVLM_CHECK(k % kQBlock == 0, "quantize_row(Q8): length ", k, " is not a multiple of ", kQBlock);
    for (std::size_t b = 0; b < k / kQBlock; ++b, x += kQBlock) {
        std::uint8_t u[kQBlock];
        FASTVLM_CHECK(fmt::Q8::quantize_block(x, y[b].d, u), "quantize_row(Q8): non-finite value in block ", b);
        for (std::size_t j = 0; j < kQBlock; ++j) y[b].qs[j] = std::int8_t(fmt::Q8::value(u, j));
    }
}
inline void dequantize_row(const BlockQ8* x, float* y, std::size_t k) {
    for (std::size_t b = 0; b < k / kQBlock; ++b) {
        const float d = to_float(x[b].d);
        for (std::size_t j = 0; j < kQBlock; ++j) *y++ = d * float(x[b].qs[j]);
    }
}
inline void quantize_row(const float* x, BlockQ4* y, std::size_t k) {
    FASTVLM_CHECK(k % kQBlock == 0, "quantize_row(Q4): length ", k, " is not a multiple of ", kQBlock);
    for (std::size_t b = 0; b < k / kQBlock; ++b, x += kQBlock)
        FASTVLM_CHECK(fmt::Q4::quantize_block(x, y[b].d, y[b].qs), "quantize_row(Q4): non-finite value in block ", b);
}
inline void dequantize_row(const BlockQ4* x, float* y, std::size_t k) {
    for (std::size_t b = 0; b < k / kQBlock; ++b) {
        const float d = to_float(x[b].d);
        for (std::size_t j = 0; j < kQBlock; ++j) *y++ = d * float(fmt::Q4::value(x[b].qs, j));
    }
}

static_assert(fmt::Q8::bits_per_weight <= 8.5 && fmt::Q4::bits_per_weight <= 5.0);

template <class F>
concept WeightFormat = std::is_same_v<F, fmt::F32> || std::is_same_v<F, fmt::BF16> ||
                       std::is_same_v<F, fmt::F16> || std::is_same_v<F, fmt::Q8> || std::is_same_v<F, fmt::Q4>;

template <class F>
concept QuantizedFormat = std::is_same_v<F, fmt::Q8> || std::is_same_v<F, fmt::Q4>;

}  // namespace fastvlm
