// fastvlm/kernels/conv2d.hpp — 2-D convolutions in HWC (channels-last) layout.
// Zero "same" padding p = k/2, dilation 1, Ho = (H + 2p − k)/s + 1 (spec §1.3).
//   conv2d_ref          grouped conv, OIHW weights, double accumulation (the reference)
//   DepthwiseConv2d     k×k depthwise, channel multiplier m (output o reads input o/m, spec §10.2),
//                       weights repacked [kh][kw][Cout] so channels are the SIMD dimension
//   Conv2d              dense k×k conv as im2col + Linear (the stem's 3×3 s2, 3→C)
// Activations are fused into the output pass; every kernel is threaded over output rows.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "fastvlm/core/error.hpp"
#include "fastvlm/core/tensor.hpp"
#include "fastvlm/core/thread_pool.hpp"
#include "fastvlm/kernels/activation.hpp"
#include "fastvlm/kernels/matmul.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace fastvlm {

inline Index conv_out_size(Index n, Index k, Index stride) { return (n + 2 * (k / 2) - k) / stride + 1; }

// ---- scalar reference ---------------------------------------------------------------------------------
// in [h][w][cin], wt OIHW [cout][cin/groups][k][k], bias [cout] or null, out [ho][wo][cout].
inline void conv2d_ref(const float* in, Index h, Index w, Index cin, const float* wt, const float* bias, Index cout,
                       Index k, Index stride, Index groups, Act act, float* out) {
    FASTVLM_CHECK(groups >= 1 && cin % groups == 0 && cout % groups == 0, "conv2d_ref: groups ", groups,
                  " does not divide cin ", cin, " and cout ", cout);
    const Index ho = conv_out_size(h, k, stride), wo = conv_out_size(w, k, stride), p = k / 2;
    const Index cig = cin / groups, cog = cout / groups;
    for (Index y = 0; y < ho; ++y)
        for (Index x = 0; x < wo; ++x)
            for (Index o = 0; o < cout; ++o) {
                const Index g = o / cog;
                double s = bias ? bias[o] : 0.0;
                for (Index ky = 0; ky < k; ++ky) {
                    const Index iy = y * stride + ky - p;
                    if (iy < 0 || iy >= h) continue;
                    for (Index kx = 0; kx < k; ++kx) {
                        const Index ix = x * stride + kx - p;
                        if (ix < 0 || ix >= w) continue;
                        const float* px = in + (iy * w + ix) * cin + g * cig;
                        const float* wk = wt + ((o * cig) * k + ky) * k + kx;
                        for (Index i = 0; i < cig; ++i) s += double(px[i]) * double(wk[i * k * k]);
                    }
                }
                out[(y * wo + x) * cout + o] = act_ref(act, float(s));
            }
}

// ---- depthwise ------------------------------------------------------------------------------------------
namespace detail::dw {
using B = xsimd::batch<float>;
inline constexpr Index W = Index(B::size);

// W consecutive inputs for output channels [c, c+W): input channel (c+i)/M, p = &in[c/M].
template <int M>
inline B load_in(const float* p) {
    if constexpr (M == 1) {
        return B::load_unaligned(p);
    } else {
        static_assert(M == 2);
#if defined(__AVX512F__)
        if constexpr (W == 16 && M == 2) {  // M: a dependent condition, or clang checks the branch not taken
            const __m512i idx = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
            return B(_mm512_permutexvar_ps(idx, _mm512_castps256_ps512(_mm256_loadu_ps(p))));
        }
#endif
#if defined(__AVX2__)
        if constexpr (W == 8 && M == 2) {
            const __m256i idx = _mm256_set_epi32(3, 3, 2, 2, 1, 1, 0, 0);
            return B(_mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(p)), idx));
        }
#endif
        alignas(64) float t[W];
        for (Index i = 0; i < W; ++i) t[i] = p[i / 2];
        return B::load_aligned(t);
    }
}

struct Args {
    const float* in;  // rows [in_y0, …) of the [h][w][cin] input
    Index h, w, cin;
    const float* wt;  // [k][k][cout]
    const float* bias;
    Index cout, k, s, m;
    float* out;  // rows [out_y0, …) of the [ho][wo][cout] output
    Index ho, wo;
    Index in_y0 = 0, out_y0 = 0;
    const float* in_row(Index iy) const { return in + (iy - in_y0) * w * cin; }
    float* out_px(Index y, Index x) const { return out + ((y - out_y0) * wo + x) * cout; }
};

// One pixel, all vector channel blocks, bounds-checked taps (borders).
template <int M>
inline void pixel_checked(const Args& a, Index y, Index x, Index cvec_end, Index ky0, Index ky1) {
    const Index p = a.k / 2;
    const Index kx0 = std::max<Index>(0, p - x * a.s), kx1 = std::min<Index>(a.k, a.w + p - x * a.s);
    float* o = a.out_px(y, x);
    for (Index c = 0; c < cvec_end; c += W) {
        B acc = B::load_unaligned(a.bias + c);
        for (Index ky = ky0; ky < ky1; ++ky) {
            const float* row = a.in_row(y * a.s + ky - p);
            for (Index kx = kx0; kx < kx1; ++kx) {
                const Index ix = x * a.s + kx - p;
                acc = xsimd::fma(load_in<M>(row + ix * a.cin + c / M), B::load_unaligned(a.wt + (ky * a.k + kx) * a.cout + c), acc);
            }
        }
        acc.store_unaligned(o + c);
    }
}

// T consecutive interior pixels starting at x0 (every tap in range), compile-time kernel K and stride S.
template <int K, int S, int M, int T>
inline void tile_fixed(const Args& a, Index y, Index x0, Index cvec_end, Index ky0, Index ky1) {
    constexpr int P = K / 2, NV = S * (T - 1) + K;
    const Index cin = a.cin, cout = a.cout;
    float* o = a.out_px(y, x0);
    const float* in0 = a.in_row(y * S + ky0 - P) + (x0 * S - P) * cin;
    const float* w0 = a.wt + ky0 * K * cout;
    const Index row_stride = a.w * cin;
    for (Index c = 0; c < cvec_end; c += W) {
        B acc[T];
        const B b = B::load_unaligned(a.bias + c);
        for (int t = 0; t < T; ++t) acc[t] = b;
        const float* row = in0 + c / M;
        const float* wr = w0 + c;
        for (Index ky = ky0; ky < ky1; ++ky, row += row_stride, wr += K * cout) {
            B v[NV];
            const float* p = row;
            for (int i = 0; i < NV; ++i, p += cin) v[i] = load_in<M>(p);
            const float* wk = wr;
            for (int kx = 0; kx < K; ++kx, wk += cout) {
                const B wv = B::load_unaligned(wk);
                for (int t = 0; t < T; ++t) acc[t] = xsimd::fma(v[t * S + kx], wv, acc[t]);
            }
        }
        float* oc = o + c;
        for (int t = 0; t < T; ++t, oc += cout) acc[t].store_unaligned(oc);
    }
}

// One output row. KC/SC = 0: run-time kernel size / stride.
template <int KC, int SC, int M>
inline void row(const Args& a, Index y) {
    const Index k = a.k, s = a.s, p = k / 2;
    const Index ky0 = std::max<Index>(0, p - y * s), ky1 = std::min<Index>(k, a.h + p - y * s);
    const Index cvec_end = M <= 2 ? a.cout / W * W : 0;
    // interior columns: x·s − p ≥ 0 and x·s − p + k − 1 ≤ w − 1
    Index x_lo = std::min(a.wo, (p + s - 1) / s);
    Index x_hi = a.w - k + p >= 0 ? std::min(a.wo, (a.w - k + p) / s + 1) : 0;
    if (x_hi < x_lo) x_hi = x_lo;
    if constexpr (M <= 2) {
        for (Index x = 0; x < x_lo && cvec_end > 0; ++x) pixel_checked<M>(a, y, x, cvec_end, ky0, ky1);
        Index x = x_lo;
        if constexpr (KC > 0 && SC > 0) {
            constexpr int T = SC == 1 ? 8 : 4;
            for (; x + T <= x_hi; x += T) tile_fixed<KC, SC, M, T>(a, y, x, cvec_end, ky0, ky1);
            for (; x < x_hi; ++x) tile_fixed<KC, SC, M, 1>(a, y, x, cvec_end, ky0, ky1);
        }
        for (; x < a.wo && cvec_end > 0; ++x) pixel_checked<M>(a, y, x, cvec_end, ky0, ky1);
    }
    // tail channels (cout not a multiple of the SIMD width, or another multiplier): scalar
    for (Index x = 0; x < a.wo && cvec_end < a.cout; ++x) {
        const Index kx0 = std::max<Index>(0, p - x * s), kx1 = std::min<Index>(k, a.w + p - x * s);
        float* o = a.out_px(y, x);
        for (Index c = cvec_end; c < a.cout; ++c) {
            float acc = a.bias[c];
            const Index ci = c / a.m;
            for (Index ky = ky0; ky < ky1; ++ky) {
                const float* r = a.in_row(y * s + ky - p);
                for (Index kx = kx0; kx < kx1; ++kx)
                    acc += r[(x * s + kx - p) * a.cin + ci] * a.wt[(ky * k + kx) * a.cout + c];
            }
            o[c] = acc;
        }
    }
}

template <int M>
inline void row_dispatch(const Args& a, Index y) {
    if (a.k == 7 && a.s == 1) row<7, 1, M>(a, y);
    else if (a.k == 7 && a.s == 2) row<7, 2, M>(a, y);
    else if (a.k == 3 && a.s == 1) row<3, 1, M>(a, y);
    else if (a.k == 3 && a.s == 2) row<3, 2, M>(a, y);
    else row<0, 0, M>(a, y);
}
}  // namespace detail::dw

// Depthwise k×k conv, cout = m·cin (m ≥ 1; SIMD fast paths for m = 1 and 2), bias, optional activation.
class DepthwiseConv2d {
public:
    DepthwiseConv2d() = default;
    // w_oihw [cout][1][k][k] (PyTorch layout, groups = cin); bias [cout] or null (zeros).
    DepthwiseConv2d(const float* w_oihw, const float* bias, Index cin, Index cout, Index k, Index stride)
        : cin_(cin), cout_(cout), k_(k), s_(stride) {
        FASTVLM_CHECK(cin > 0 && cout > 0 && cout % cin == 0, "DepthwiseConv2d: out channels ", cout,
                      " must be a positive multiple of in channels ", cin);
        FASTVLM_CHECK(k >= 1 && k % 2 == 1 && stride >= 1, "DepthwiseConv2d: kernel ", k, " (must be odd) stride ", stride);
        m_ = cout / cin;
        w_ = AlignedBuffer<float>(std::size_t(k * k * cout));
        b_ = AlignedBuffer<float>(std::size_t(cout));
        for (Index o = 0; o < cout; ++o) {
            b_[std::size_t(o)] = bias ? bias[o] : 0.f;
            for (Index t = 0; t < k * k; ++t) w_[std::size_t(t * cout + o)] = w_oihw[o * k * k + t];
        }
    }

    Index in_channels() const { return cin_; }
    Index out_channels() const { return cout_; }
    Index kernel() const { return k_; }
    Index stride() const { return s_; }
    Index multiplier() const { return m_; }
    Index out_size(Index n) const { return conv_out_size(n, k_, s_); }
    std::size_t weight_bytes() const { return (w_.size() + b_.size()) * sizeof(float); }

    // in [h][w][cin] → out [ho][wo][cout]; in and out must not overlap.
    void forward(const float* in, Index h, Index w, float* out, ThreadPool* pool, Act act = Act::none) const {
        const detail::dw::Args a = args(in, 0, h, w, out, 0);
        parallel_for(pool, std::size_t(a.ho), 1, [&](std::size_t y0, std::size_t y1) {
            for (std::size_t y = y0; y < y1; ++y) row(a, Index(y), act);
        });
    }

    // Output rows [y0, y1) of the [h][w] image, serially, into out (row y0 first). `in` holds input
    // rows [in_y0, …): at least rows max(0, y0·s − k/2) … min(h, (y1−1)·s − k/2 + k) − 1.
    void forward_rows(const float* in, Index in_y0, Index h, Index w, float* out, Index y0, Index y1, Act act = Act::none) const {
        const detail::dw::Args a = args(in, in_y0, h, w, out, y0);
        FASTVLM_CHECK(0 <= y0 && y0 <= y1 && y1 <= a.ho && in_y0 <= std::max<Index>(0, y0 * s_ - k_ / 2),
                      "DepthwiseConv2d::forward_rows: rows [", y0, ", ", y1, ") of ", a.ho, " with input from row ", in_y0);
        for (Index y = y0; y < y1; ++y) row(a, y, act);
    }

private:
    detail::dw::Args args(const float* in, Index in_y0, Index h, Index w, float* out, Index out_y0) const {
        FASTVLM_CHECK(h > 0 && w > 0, "DepthwiseConv2d::forward: empty input ", h, "x", w);
        detail::dw::Args a{in, h, w, cin_, w_.data(), b_.data(), cout_, k_, s_, m_, out, out_size(h), out_size(w), in_y0, out_y0};
        FASTVLM_CHECK(a.ho > 0 && a.wo > 0, "DepthwiseConv2d::forward: input ", h, "x", w, " too small for kernel ", k_);
        return a;
    }
    void row(const detail::dw::Args& a, Index y, Act act) const {
        if (m_ == 1) detail::dw::row_dispatch<1>(a, y);
        else if (m_ == 2) detail::dw::row_dispatch<2>(a, y);
        else detail::dw::row<0, 0, 3>(a, y);
        apply_act(act, a.out_px(y, 0), std::size_t(a.wo * cout_));
    }

    Index cin_ = 0, cout_ = 0, k_ = 0, s_ = 1, m_ = 1;
    AlignedBuffer<float> w_;  // [k][k][cout]
    AlignedBuffer<float> b_;  // [cout]
};

// How a dense conv's input is laid out: channels-last rows [h][w][c] (every activation) or planar
// [c][h][w] (the preprocessed pixels).
enum class Conv2dInput { channels_last, planar };

// ---- dense conv (groups = 1) as im2col + Linear ------------------------------------------------------------
template <class Wf = fmt::F32, class Af = fmt::F32>
class Conv2d {
public:
    Conv2d() = default;
    // w_oihw [cout][cin][k][k]; bias [cout] or null.
    Conv2d(const float* w_oihw, const float* bias, Index cin, Index cout, Index k, Index stride)
        : cin_(cin), cout_(cout), k_(k), s_(stride) {
        FASTVLM_CHECK(cin > 0 && cout > 0 && k >= 1 && k % 2 == 1 && stride >= 1, "Conv2d: bad geometry cin ", cin,
                      " cout ", cout, " kernel ", k, " stride ", stride);
        const Index kk = k * k * cin;
        std::vector<float> wr(static_cast<std::size_t>(cout * kk));  // [cout][ky][kx][ci] = im2col column order
        for (Index o = 0; o < cout; ++o)
            for (Index ci = 0; ci < cin; ++ci)
                for (Index t = 0; t < k * k; ++t) wr[std::size_t(o * kk + t * cin + ci)] = w_oihw[(o * cin + ci) * k * k + t];
        lin_ = Linear<Wf, Af>(wr.data(), cout, kk, bias);
    }

    Index out_size(Index n) const { return conv_out_size(n, k_, s_); }
    std::size_t weight_bytes() const { return lin_.weight_bytes(); }

    // in [h][w][cin] → out [ho][wo][cout].
    void forward(const float* in, Index h, Index w, float* out, ThreadPool* pool, Act act = Act::none) const {
        const Index ho = out_size(h), wo = out_size(w);
        FASTVLM_CHECK(ho > 0 && wo > 0, "Conv2d::forward: input ", h, "x", w, " too small for kernel ", k_);
        const Index rows_per_chunk = chunk_rows(wo);
        const Index chunks = (ho + rows_per_chunk - 1) / rows_per_chunk;
        parallel_for(pool, std::size_t(chunks), 1, [&](std::size_t c0, std::size_t c1) {
            std::vector<float> col(static_cast<std::size_t>(rows_per_chunk * wo * k_ * k_ * cin_));
            for (std::size_t c = c0; c < c1; ++c) {
                const Index y0 = Index(c) * rows_per_chunk, y1 = std::min(ho, y0 + rows_per_chunk);
                rows_im2col(in, h, w, out + y0 * wo * cout_, y0, y1, act, col.data());
            }
        });
    }

    // Output rows [y0, y1), serially, into out (row y0 first); `in` is the whole input, channels-last
    // [h][w][cin] or planar [cin][h][w] (the preprocessed pixels: no transposed copy is needed).
    void forward_rows(const float* in, Index h, Index w, float* out, Index y0, Index y1, Act act = Act::none,
                      Conv2dInput layout = Conv2dInput::channels_last) const {
        const Index ho = out_size(h), wo = out_size(w), rpc = chunk_rows(wo);
        FASTVLM_CHECK(0 <= y0 && y0 <= y1 && y1 <= ho, "Conv2d::forward_rows: rows [", y0, ", ", y1, ") of ", ho);
        std::vector<float> col(static_cast<std::size_t>(std::min(rpc, y1 - y0) * wo * k_ * k_ * cin_));
        for (Index y = y0; y < y1; y += rpc)
            rows_im2col(in, h, w, out + (y - y0) * wo * cout_, y, std::min(y1, y + rpc), act, col.data(), layout);
    }

private:
    // ≈256 KB of im2col rows per chunk.
    Index chunk_rows(Index wo) const { return std::max<Index>(1, (Index(1) << 16) / std::max<Index>(1, wo * k_ * k_ * cin_)); }

    void rows_im2col(const float* in, Index h, Index w, float* out, Index y0, Index y1, Act act, float* col,
                     Conv2dInput layout = Conv2dInput::channels_last) const {
        const Index wo = out_size(w), kk = k_ * k_ * cin_, p = k_ / 2, plane = h * w;
        float* dst = col;
        for (Index y = y0; y < y1; ++y)
            for (Index x = 0; x < wo; ++x)
                for (Index ky = 0; ky < k_; ++ky) {
                    const Index iy = y * s_ + ky - p;
                    for (Index kx = 0; kx < k_; ++kx, dst += cin_) {
                        const Index ix = x * s_ + kx - p;
                        if (iy < 0 || iy >= h || ix < 0 || ix >= w) std::fill(dst, dst + cin_, 0.f);
                        else if (layout == Conv2dInput::channels_last)
                            std::memcpy(dst, in + (iy * w + ix) * cin_, std::size_t(cin_) * sizeof(float));
                        else
                            for (Index ci = 0; ci < cin_; ++ci) dst[ci] = in[ci * plane + iy * w + ix];
                    }
                }
        lin_.forward(col, (y1 - y0) * wo, kk, out, cout_, nullptr, Epilogue{act});
    }

    Index cin_ = 0, cout_ = 0, k_ = 0, s_ = 1;
    Linear<Wf, Af> lin_;
};

}  // namespace fastvlm
