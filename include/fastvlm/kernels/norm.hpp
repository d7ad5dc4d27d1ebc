// fastvlm/kernels/norm.hpp — row-wise normalisations over the last (contiguous) dimension:
//   LayerNorm (LayerNormChannel in HWC layout, spec §1.8): y = (x − mean)/sqrt(var + eps)·w + b, biased var
//   RMSNorm (Qwen2, spec §2):                              y = x·rsqrt(mean(x²) + eps)·w
// and BatchNorm folding into a preceding conv (spec §1.7).
#pragma once
#include <cmath>
#include <cstddef>

#include <xsimd/xsimd.hpp>

#include "fastvlm/core/tensor.hpp"
#include "fastvlm/core/thread_pool.hpp"

namespace fastvlm {

// ---- scalar references (double accumulation) ------------------------------------------------------
inline void layer_norm_ref(const float* x, float* y, Index rows, Index c, const float* w, const float* b, float eps) {
    for (Index r = 0; r < rows; ++r, x += c, y += c) {
        double mean = 0, var = 0;
        for (Index i = 0; i < c; ++i) mean += x[i];
        mean /= double(c);
        for (Index i = 0; i < c; ++i) var += (x[i] - mean) * (x[i] - mean);
        var /= double(c);
        const double inv = 1.0 / std::sqrt(var + eps);
        for (Index i = 0; i < c; ++i) y[i] = float((x[i] - mean) * inv * w[i] + b[i]);
    }
}

inline void rms_norm_ref(const float* x, float* y, Index rows, Index c, const float* w, float eps) {
    for (Index r = 0; r < rows; ++r, x += c, y += c) {
        double ss = 0;
        for (Index i = 0; i < c; ++i) ss += double(x[i]) * x[i];
        const double inv = 1.0 / std::sqrt(ss / double(c) + eps);
        for (Index i = 0; i < c; ++i) y[i] = float(x[i] * inv * w[i]);
    }
}

// ---- SIMD ---------------------------------------------------------------------------------------------
namespace detail {
using fbatch = xsimd::batch<float>;
inline constexpr Index kW = Index(fbatch::size);

inline float sum(const float* x, Index n) {
    fbatch acc(0.f);
    Index i = 0;
    for (; i + kW <= n; i += kW) acc += fbatch::load_unaligned(x + i);
    float s = xsimd::hadd(acc);
    for (; i < n; ++i) s += x[i];
    return s;
}
inline float sum_sq_dev(const float* x, Index n, float mean) {
    fbatch acc(0.f);
    const fbatch m(mean);
    Index i = 0;
    for (; i + kW <= n; i += kW) {
        const fbatch d = fbatch::load_unaligned(x + i) - m;
        acc = xsimd::fma(d, d, acc);
    }
    float s = xsimd::hadd(acc);
    for (; i < n; ++i) s += (x[i] - mean) * (x[i] - mean);
    return s;
}
}  // namespace detail

// Two-pass (mean, then centred variance) for accuracy. x and y may alias.
inline void layer_norm(const float* x, float* y, Index rows, Index c, const float* w, const float* b, float eps,
                       ThreadPool* pool = nullptr) {
    using detail::fbatch;
    using detail::kW;
    parallel_for(pool, std::size_t(rows), 16, [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
            const float* xr = x + Index(r) * c;
            float* yr = y + Index(r) * c;
            const float mean = detail::sum(xr, c) / float(c);
            const float inv = 1.f / std::sqrt(detail::sum_sq_dev(xr, c, mean) / float(c) + eps);
            const fbatch vm(mean), vi(inv);
            Index i = 0;
            for (; i + kW <= c; i += kW)
                xsimd::fma((fbatch::load_unaligned(xr + i) - vm) * vi, fbatch::load_unaligned(w + i),
                           fbatch::load_unaligned(b + i))
                    .store_unaligned(yr + i);
            for (; i < c; ++i) yr[i] = (xr[i] - mean) * inv * w[i] + b[i];
        }
    });
}

// x and y may alias.
inline void rms_norm(const float* x, float* y, Index rows, Index c, const float* w, float eps, ThreadPool* pool = nullptr) {
    using detail::fbatch;
    using detail::kW;
    parallel_for(pool, std::size_t(rows), 16, [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
            const float* xr = x + Index(r) * c;
            float* yr = y + Index(r) * c;
            const float inv = 1.f / std::sqrt(detail::sum_sq_dev(xr, c, 0.f) / float(c) + eps);
            const fbatch vi(inv);
            Index i = 0;
            for (; i + kW <= c; i += kW)
                (fbatch::load_unaligned(xr + i) * vi * fbatch::load_unaligned(w + i)).store_unaligned(yr + i);
            for (; i < c; ++i) yr[i] = xr[i] * inv * w[i];
        }
    });
}

// Folds an eval-mode BatchNorm that follows a conv into the conv (spec §1.7):
//   σ = sqrt(var + eps); W'[o] = W[o]·γ[o]/σ ; b'[o] = (b[o] − μ[o])·γ[o]/σ + β[o]
// weight holds `out` rows of `per_out` values each; bias may be null (treated as 0) and receives b'.
inline void fold_batch_norm(float* weight, float* bias_out, const float* conv_bias, Index out, Index per_out,
                            const float* gamma, const float* beta, const float* mean, const float* var, double eps) {
    for (Index o = 0; o < out; ++o) {
        const double s = double(gamma[o]) / std::sqrt(double(var[o]) + eps);
        for (Index i = 0; i < per_out; ++i) weight[o * per_out + i] = float(weight[o * per_out + i] * s);
        const double b0 = conv_bias ? conv_bias[o] : 0.0;
        bias_out[o] = float((b0 - mean[o]) * s + beta[o]);
    }
}

}  // namespace fastvlm
