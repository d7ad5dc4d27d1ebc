// fastvlm/kernels/activation.hpp — element-wise activations: exact-erf GELU, SiLU, ReLU, sigmoid.
// Scalar reference functions plus in-place SIMD versions (xsimd, best compiled architecture).
#pragma once
#include <cmath>
#include <cstddef>

#include <xsimd/xsimd.hpp>

#include "fastvlm/core/tensor.hpp"

namespace fastvlm {

enum class Act { none, gelu, silu, relu, sigmoid };

// ---- scalar reference ---------------------------------------------------------------------------
inline float gelu_ref(float x) { return 0.5f * x * (1.f + std::erf(x * 0.70710678118654752f)); }  // exact (erf) form
inline float silu_ref(float x) { return x / (1.f + std::exp(-x)); }
inline float sigmoid_ref(float x) { return 1.f / (1.f + std::exp(-x)); }
inline float relu_ref(float x) { return x > 0.f ? x : 0.f; }
inline float act_ref(Act a, float x) {
    switch (a) {
        case Act::gelu: return gelu_ref(x);
        case Act::silu: return silu_ref(x);
        case Act::relu: return relu_ref(x);
        case Act::sigmoid: return sigmoid_ref(x);
        case Act::none: break;
    }
    return x;
}

// ---- SIMD -------------------------------------------------------------------------------------------
namespace simd {
using batch = xsimd::batch<float>;  // widest float batch of the compiled architecture
inline constexpr std::size_t width = batch::size;

template <Act A>
inline batch act(batch x) {
    if constexpr (A == Act::gelu) return 0.5f * x * (1.f + xsimd::erf(x * 0.70710678118654752f));
    else if constexpr (A == Act::silu) return x / (1.f + xsimd::exp(-x));
    else if constexpr (A == Act::sigmoid) return 1.f / (1.f + xsimd::exp(-x));
    else if constexpr (A == Act::relu) return xsimd::max(x, batch(0.f));
    else return x;
}

template <Act A>
inline void act_inplace(float* y, std::size_t n) {
    std::size_t i = 0;
    for (; i + width <= n; i += width) act<A>(batch::load_unaligned(y + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] = act_ref(A, y[i]);
}
}  // namespace simd

// y[i] = act(y[i]) for i < n.
inline void apply_act(Act a, float* y, std::size_t n) {
    switch (a) {
        case Act::gelu: simd::act_inplace<Act::gelu>(y, n); break;
        case Act::silu: simd::act_inplace<Act::silu>(y, n); break;
        case Act::relu: simd::act_inplace<Act::relu>(y, n); break;
        case Act::sigmoid: simd::act_inplace<Act::sigmoid>(y, n); break;
        case Act::none: break;
    }
}

// Decoder MLP gate: g[i] = silu(g[i]) * u[i].
inline void silu_mul(float* g, const float* u, std::size_t n) {
    std::size_t i = 0;
    for (; i + simd::width <= n; i += simd::width)
        (simd::act<Act::silu>(simd::batch::load_unaligned(g + i)) * simd::batch::load_unaligned(u + i)).store_unaligned(g + i);
    for (; i < n; ++i) g[i] = silu_ref(g[i]) * u[i];
}

}  // namespace fastvlm
