// Round-trip error bounds of the element types and weight formats of core/dtypes.hpp and
// core/formats.hpp, and the bulk conversions (F16C / AVX512-BF16 / AVX-512 paths) against the
// scalar ones, bit for bit.
//
// Stated bounds (u = unit roundoff):
//   bf16: |to_float(to_bf16(x)) − x| ≤ 2^-8·|x|   (8-bit significand, round to nearest even)
//   f16 : |to_float(to_f16(x)) − x|  ≤ 2^-11·|x|  for 2^-14 ≤ |x| ≤ 65504 (normal range);
//         ≤ 2^-25 absolute below 2^-14 (subnormal spacing 2^-24)
//   Q8  : per block of 32, d = amax/127:  |x − x'| ≤ d/2 + 127·|d − f16(d)|   (= amax/254 + scale rounding)
//   Q4  : per block, |d| = amax/8:        |x − x'| ≤ |d|/2 + 8·|d − f16(d)| where x/d < 7.5,
//         and ≤ |d| + 8·|d − f16(d)| (= amax/8 + …) for the values clamped from 16 to 15
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "fastvlm/core/dtypes.hpp"
#include "fastvlm/core/formats.hpp"

namespace {

using namespace fastvlm;

std::uint32_t bits(float f) { return std::bit_cast<std::uint32_t>(f); }

// Floats that exercise every branch: random normals over the whole exponent range, NaN (quiet and
// signalling, with payloads), ±inf, ±0, subnormals, f16/bf16 boundaries and exact rounding ties.
std::vector<float> nasty_floats(std::size_t n_random) {
    std::vector<float> v = {0.f, -0.f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
                            std::bit_cast<float>(0x7f800001u), std::bit_cast<float>(0xff812345u),  // signalling NaNs
                            std::bit_cast<float>(0x7fc00001u), std::numeric_limits<float>::denorm_min(),
                            std::numeric_limits<float>::min(), std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                            65504.f, 65519.f, 65520.f, 65536.f, -65520.f, 6.103515625e-05f /*2^-14*/, 5.9604645e-08f /*2^-24*/,
                            2.9802322e-08f /*2^-25*/, 2.9802326e-08f, 1e-20f, -3e-41f, 1.f, -1.f,
                            1.00390625f /*1 + 2^-8: bf16 tie*/, 1.01171875f /*1 + 3·2^-8: bf16 tie, rounds up*/,
                            1.00048828125f /*1 + 2^-11: f16 tie*/, 1.00146484375f /*1 + 3·2^-11*/};
    std::mt19937 g(42);
    std::uniform_int_distribution<std::uint32_t> any;
    for (std::size_t i = 0; i < n_random; ++i) v.push_back(std::bit_cast<float>(any(g)));  // every bit pattern class
    std::normal_distribution<float> nd(0.f, 100.f);
    for (std::size_t i = 0; i < n_random; ++i) v.push_back(nd(g));
    // exact ties for both formats: a 16-bit value plus half of its ulp
    for (std::uint32_t i = 0; i < 2000; ++i) {
        const std::uint32_t hi = any(g) & 0x7f7f0000u;
        v.push_back(std::bit_cast<float>(hi | 0x8000u));  // bf16 tie
        v.push_back(std::bit_cast<float>((any(g) & 0x47ffe000u) | 0x1000u));  // f16 tie (|x| < 2^16)
    }
    return v;
}

// ---- bulk conversions = scalar conversions, bit for bit -------------------------------------------
TEST(Formats, Bf16ToFloatBulkEqualsScalarExhaustive) {
    std::vector<bf16> h(65536);
    for (std::uint32_t i = 0; i < 65536; ++i) h[i] = bf16::from_bits(std::uint16_t(i));
    std::vector<float> f(65536);
    convert(h.data(), f.data(), h.size());
    for (std::uint32_t i = 0; i < 65536; ++i) {
        ASSERT_EQ(bits(f[i]), bits(to_float(h[i]))) << "bf16 bits " << i;
        ASSERT_EQ(bits(f[i]), i << 16);  // bf16 is the upper half of a float
    }
}

TEST(Formats, F16ToFloatBulkEqualsScalarExhaustive) {
    std::vector<f16> h(65536);
    for (std::uint32_t i = 0; i < 65536; ++i) h[i] = f16::from_bits(std::uint16_t(i));
    std::vector<float> f(65536);
    convert(h.data(), f.data(), h.size());
    for (std::uint32_t i = 0; i < 65536; ++i) {
        ASSERT_EQ(bits(f[i]), bits(to_float(h[i]))) << "f16 bits " << i;
        // independent definition of binary16
        const int e = int(i >> 10) & 0x1f, m = int(i & 0x3ff);
        const double sign = (i & 0x8000) ? -1.0 : 1.0;
        if (e == 0x1f) {
            ASSERT_TRUE(m ? std::isnan(f[i]) : std::isinf(f[i])) << i;
        } else {
            const double want = sign * (e ? std::ldexp(1024.0 + m, e - 25) : std::ldexp(double(m), -24));
            ASSERT_EQ(double(f[i]), want) << "f16 bits " << i;
        }
    }
}

TEST(Formats, FloatToBf16BulkEqualsScalar) {
    const auto v = nasty_floats(100000);
    std::vector<bf16> h(v.size());
    convert(v.data(), h.data(), v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
        const bf16 s = to_bf16(v[i]);
        ASSERT_EQ(h[i].bits, s.bits) << "float bits 0x" << std::hex << bits(v[i]);
        if (std::isnan(v[i])) {
            ASSERT_TRUE(std::isnan(to_float(s))) << "NaN must stay NaN";
        }
    }
}

TEST(Formats, FloatToF16BulkEqualsScalar) {
    const auto v = nasty_floats(100000);
    std::vector<f16> h(v.size());
    convert(v.data(), h.data(), v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
        const f16 s = to_f16(v[i]);
        ASSERT_EQ(h[i].bits, s.bits) << "float bits 0x" << std::hex << bits(v[i]) << " = " << v[i];
        if (std::isnan(v[i])) {
            ASSERT_TRUE(std::isnan(to_float(s))) << "NaN must stay NaN";
        }
    }
}

// ---- round trips ----------------------------------------------------------------------------------------
TEST(Formats, Bf16RoundTrip) {
    for (std::uint32_t i = 0; i < 65536; ++i) {  // every bf16 value survives float → bf16 unchanged
        const bf16 h = bf16::from_bits(std::uint16_t(i));
        if (!std::isnan(to_float(h))) {
            ASSERT_EQ(to_bf16(to_float(h)).bits, h.bits) << i;
        }
    }
    for (float x : nasty_floats(200000)) {
        if (!std::isfinite(x) || std::fabs(x) > 3.38e38f) continue;  // near FLT_MAX rounds to inf
        const float r = to_float(to_bf16(x));
        if (std::fabs(x) >= std::numeric_limits<float>::min()) {
            ASSERT_LE(std::fabs(r - x), std::ldexp(std::fabs(x), -8)) << x;
        } else {
            ASSERT_LE(std::fabs(r - x), std::ldexp(1.f, -134)) << x;
        }  // float subnormals: half of bf16's spacing 2^-133
    }
    EXPECT_TRUE(std::isinf(to_float(to_bf16(std::numeric_limits<float>::infinity()))));
    EXPECT_TRUE(std::isnan(to_float(to_bf16(std::numeric_limits<float>::quiet_NaN()))));
    EXPECT_TRUE(std::isnan(to_float(to_bf16(std::bit_cast<float>(0x7f800001u)))));  // signalling NaN must not become inf
}

TEST(Formats, F16RoundTrip) {
    for (std::uint32_t i = 0; i < 65536; ++i) {
        const f16 h = f16::from_bits(std::uint16_t(i));
        if (!std::isnan(to_float(h))) {
            ASSERT_EQ(to_f16(to_float(h)).bits, h.bits) << i;
        }
    }
    for (float x : nasty_floats(200000)) {
        if (!std::isfinite(x)) continue;
        const float ax = std::fabs(x), r = to_float(to_f16(x));
        if (ax >= 65520.f) {
            ASSERT_TRUE(std::isinf(r)) << x;  // overflow rounds to inf
        } else if (ax >= 6.103515625e-05f) {
            ASSERT_LE(std::fabs(r - x), std::ldexp(ax, -11)) << x;
        } else {
            ASSERT_LE(std::fabs(r - x), std::ldexp(1.f, -25)) << x;
        }
    }
}

// ---- block-quantized formats ------------------------------------------------------------------------------
std::vector<float> weights_like(std::size_t n, std::mt19937& g) {
    std::vector<float> v(n);
    std::normal_distribution<float> nd(0.f, 0.05f);
    std::uniform_real_distribution<float> scale(-6.f, 2.f);
    for (std::size_t b = 0; b < n; b += 32) {  // each block its own magnitude, some with an outlier
        const float s = std::pow(10.f, scale(g));
        for (std::size_t j = b; j < b + 32; ++j) v[j] = nd(g) * s;
        if ((b / 32) % 5 == 0) v[b + (b / 32) % 32] = 3.f * s;
    }
    std::fill(v.begin() + 64, v.begin() + 96, 0.f);  // an all-zero block
    return v;
}

TEST(Formats, Q8RoundTripBound) {
    std::mt19937 g(1);
    const std::size_t n = 32 * 4096;
    const auto x = weights_like(n, g);
    std::vector<BlockQ8> q(n / 32);
    std::vector<float> y(n);
    quantize_row(x.data(), q.data(), n);
    dequantize_row(q.data(), y.data(), n);
    for (std::size_t b = 0; b < n / 32; ++b) {
        float amax = 0.f;
        for (std::size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
        const float d = amax / 127.f, dh = to_float(q[b].d);
        const double bound = amax / 254.0 + 127.0 * std::fabs(double(d) - dh) + 1e-12 * amax;
        for (std::size_t j = 0; j < 32; ++j) ASSERT_LE(std::fabs(double(y[b * 32 + j]) - x[b * 32 + j]), bound) << "block " << b;
        if (amax == 0.f) {
            for (std::size_t j = 0; j < 32; ++j) ASSERT_EQ(y[b * 32 + j], 0.f);
        }
    }
    EXPECT_THROW(quantize_row(x.data(), q.data(), 33), Error);
}

TEST(Formats, Q4RoundTripBound) {
    std::mt19937 g(2);
    const std::size_t n = 32 * 4096;
    const auto x = weights_like(n, g);
    std::vector<BlockQ4> q(n / 32);
    std::vector<float> y(n);
    quantize_row(x.data(), q.data(), n);
    dequantize_row(q.data(), y.data(), n);
    int clamped = 0;
    for (std::size_t b = 0; b < n / 32; ++b) {
        float amax = 0.f;
        for (std::size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
        const double dh = to_float(q[b].d), d = amax / 8.0;
        const double scale_err = 8.0 * std::fabs(d - std::fabs(dh)) + 1e-12 * amax;
        for (std::size_t j = 0; j < 32; ++j) {
            const double e = std::fabs(double(y[b * 32 + j]) - x[b * 32 + j]);
            ASSERT_LE(e, d + scale_err) << "block " << b;  // amax/8 overall
            if (dh != 0.0 && x[b * 32 + j] / dh < 7.5) {
                ASSERT_LE(e, d / 2 + scale_err) << "block " << b;  // amax/16
            } else if (dh != 0.0) {
                ++clamped;
            }
        }
    }
    EXPECT_GT(clamped, 0);  // the clamp branch was exercised
    EXPECT_THROW(quantize_row(x.data(), q.data(), 48), Error);
}

TEST(Formats, BitsPerWeight) {
    EXPECT_EQ(sizeof(BlockQ8), 34u);
    EXPECT_EQ(sizeof(BlockQ4), 18u);
    EXPECT_LE(fmt::Q8::bits_per_weight, 8.5);
    EXPECT_LE(fmt::Q4::bits_per_weight, 5.0);
}

}  // namespace
