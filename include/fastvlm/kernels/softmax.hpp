// fastvlm/kernels/softmax.hpp — numerically stable softmax over a contiguous row (max-subtracted).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include <xsimd/xsimd.hpp>

#include "fastvlm/core/tensor.hpp"

namespace fastvlm {

inline void softmax_ref(float* x, Index n) {
    if (n <= 0) return;
    double m = x[0];
    for (Index i = 1; i < n; ++i) m = std::max<double>(m, x[i]);
    double s = 0;
    for (Index i = 0; i < n; ++i) s += std::exp(double(x[i]) - m);
    for (Index i = 0; i < n; ++i) x[i] = float(std::exp(double(x[i]) - m) / s);
}

// In place. A row of only −inf yields NaN, as in PyTorch; callers never produce one.
inline void softmax(float* x, Index n) {
    using B = xsimd::batch<float>;
    constexpr Index W = Index(B::size);
    if (n <= 0) return;
    Index i = 0;
    float m = -std::numeric_limits<float>::infinity();
    if (n >= W) {
        B vm = B::load_unaligned(x);
        for (i = W; i + W <= n; i += W) vm = xsimd::max(vm, B::load_unaligned(x + i));
        alignas(64) float lanes[W];
        vm.store_aligned(lanes);
        for (Index j = 0; j < W; ++j) m = std::max(m, lanes[j]);
    }
    for (; i < n; ++i) m = std::max(m, x[i]);
    B acc(0.f);
    const B bm(m);
    for (i = 0; i + W <= n; i += W) {
        const B e = xsimd::exp(B::load_unaligned(x + i) - bm);
        e.store_unaligned(x + i);
        acc += e;
    }
    if (i < n) {  // the tail as one vector too (a scalar exp per element cost as much as the rest of a short row)
        alignas(64) float t[W];
        std::fill(t, t + W, -std::numeric_limits<float>::infinity());  // exp(−inf) = 0
        std::copy(x + i, x + n, t);
        const B e = xsimd::exp(B::load_aligned(t) - bm);
        e.store_aligned(t);
        std::copy(t, t + (n - i), x + i);
        acc += e;
    }
    const float s = xsimd::hadd(acc);
    const float inv = 1.f / s;
    const B bi(inv);
    for (i = 0; i + W <= n; i += W) (B::load_unaligned(x + i) * bi).store_unaligned(x + i);
    for (; i < n; ++i) x[i] *= inv;
}

}  // namespace fastvlm
