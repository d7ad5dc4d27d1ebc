// fastvlm/kernels/rope.hpp — rotary position embedding, Hugging Face "rotate_half" form (spec §4):
//   inv_freq[i] = θ^(−2i/d), i < d/2;  a = pos·inv_freq[i]
//   x'[i]       = x[i]·cos a − x[i+d/2]·sin a
//   x'[i+d/2]   = x[i+d/2]·cos a + x[i]·sin a
// The cos/sin table is computed once per model in double precision and stored as float
// ([max_positions][d/2] each), so no transcendental runs per token.
#pragma once
#include <cmath>
#include <cstddef>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "fastvlm/core/error.hpp"
#include "fastvlm/core/tensor.hpp"

namespace fastvlm {

// Scalar reference, angles in double. x: T rows (row stride ld) of n_heads heads of d values,
// row t at position p0 + t. In place.
inline void rope_ref(float* x, Index T, Index ld, Index n_heads, Index d, Index p0, double theta) {
    const Index half = d / 2;
    for (Index t = 0; t < T; ++t)
        for (Index h = 0; h < n_heads; ++h) {
            float* v = x + t * ld + h * d;
            for (Index i = 0; i < half; ++i) {
                const double a = double(p0 + t) * std::pow(theta, -2.0 * double(i) / double(d));
                const double c = std::cos(a), s = std::sin(a);
                const double x1 = v[i], x2 = v[i + half];
                v[i] = float(x1 * c - x2 * s);
                v[i + half] = float(x2 * c + x1 * s);
            }
        }
}

class RopeTable {
public:
    RopeTable() = default;
    RopeTable(Index head_dim, Index max_positions, double theta) : d_(head_dim), n_(max_positions) {
        FASTVLM_CHECK(head_dim > 0 && head_dim % 2 == 0, "RoPE: head_dim must be a positive even number, got ",
                      head_dim);
        FASTVLM_CHECK(max_positions > 0, "RoPE: max_positions must be positive, got ", max_positions);
        FASTVLM_CHECK(theta > 1.0, "RoPE: rope_theta must be > 1, got ", theta);
        const Index half = d_ / 2;
        std::vector<double> inv(static_cast<std::size_t>(half));
        for (Index i = 0; i < half; ++i) inv[std::size_t(i)] = std::pow(theta, -2.0 * double(i) / double(d_));
        cos_.resize(std::size_t(n_ * half));
        sin_.resize(std::size_t(n_ * half));
        for (Index p = 0; p < n_; ++p)
            for (Index i = 0; i < half; ++i) {
                const double a = double(p) * inv[std::size_t(i)];
                cos_[std::size_t(p * half + i)] = float(std::cos(a));
                sin_[std::size_t(p * half + i)] = float(std::sin(a));
            }
    }

    Index head_dim() const { return d_; }
    Index max_positions() const { return n_; }
    const float* cos(Index pos) const { return cos_.data() + pos * (d_ / 2); }
    const float* sin(Index pos) const { return sin_.data() + pos * (d_ / 2); }

    // Rotates T rows (stride ld) of n_heads heads at positions p0..p0+T−1, in place.
    void apply(float* x, Index T, Index ld, Index n_heads, Index p0) const {
        FASTVLM_CHECK(p0 >= 0 && p0 + T <= n_, "RoPE: positions [", p0, ", ", p0 + T, ") exceed the table of ", n_,
                      " positions");
        using B = xsimd::batch<float>;
        constexpr Index W = Index(B::size);
        const Index half = d_ / 2;
        for (Index t = 0; t < T; ++t) {
            const float* c = cos(p0 + t);
            const float* s = sin(p0 + t);
            for (Index h = 0; h < n_heads; ++h) {
                float* v1 = x + t * ld + h * d_;
                float* v2 = v1 + half;
                Index i = 0;
                for (; i + W <= half; i += W) {
                    const B a = B::load_unaligned(v1 + i), b = B::load_unaligned(v2 + i);
                    const B cc = B::load_unaligned(c + i), ss = B::load_unaligned(s + i);
                    xsimd::fms(a, cc, b * ss).store_unaligned(v1 + i);
                    xsimd::fma(b, cc, a * ss).store_unaligned(v2 + i);
                }
                for (; i < half; ++i) {
                    const float a = v1[i], b = v2[i];
                    v1[i] = a * c[i] - b * s[i];
                    v2[i] = b * c[i] + a * s[i];
                }
            }
        }
    }

private:
    Index d_ = 0, n_ = 0;
    std::vector<float> cos_, sin_;
};

}  // namespace fastvlm
