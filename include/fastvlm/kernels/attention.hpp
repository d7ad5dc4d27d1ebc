// fastvlm/kernels/attention.hpp — non-causal multi-head self-attention (vision MHSA, spec §1.8).
//   qkv [n][3c], column s·c + h·hd + d (s = 0 q, 1 k, 2 v); out [n][c], column h·hd + d.
//   out_h = softmax((q_h·hd^−½)·k_hᵀ) · v_h, softmax over keys, no mask.
// Fast path: per head, kᵀ is packed once ([hd][n_pad]); tasks = (head, block of queries); scores
// and P·V use register-blocked SIMD tiles. The decoder's causal GQA attention lives elsewhere.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "fastvlm/core/error.hpp"
#include "fastvlm/core/tensor.hpp"
#include "fastvlm/core/thread_pool.hpp"
#include "fastvlm/kernels/softmax.hpp"

namespace fastvlm {

// ---- scalar reference (double accumulation) ---------------------------------------------------------
inline void mhsa_ref(const float* qkv, Index n, Index c, Index hd, float* out) {
    FASTVLM_CHECK(hd > 0 && c % hd == 0, "mhsa_ref: channels ", c, " not a multiple of head_dim ", hd);
    const double scale = 1.0 / std::sqrt(double(hd));
    std::vector<double> sc(static_cast<std::size_t>(n));
    for (Index h = 0; h < c / hd; ++h)
        for (Index i = 0; i < n; ++i) {
            const float* q = qkv + i * 3 * c + h * hd;
            double m = -INFINITY;
            for (Index j = 0; j < n; ++j) {
                const float* k = qkv + j * 3 * c + c + h * hd;
                double s = 0;
                for (Index d = 0; d < hd; ++d) s += double(float(q[d] * scale)) * k[d];
                sc[std::size_t(j)] = s;
                m = std::max(m, s);
            }
            double sum = 0;
            for (auto& s : sc) sum += (s = std::exp(s - m));
            for (Index d = 0; d < hd; ++d) {
                double o = 0;
                for (Index j = 0; j < n; ++j) o += sc[std::size_t(j)] * qkv[j * 3 * c + 2 * c + h * hd + d];
                out[i * c + h * hd + d] = float(o / sum);
            }
        }
}

namespace detail::attn {
using B = xsimd::batch<float>;
inline constexpr Index W = Index(B::size);
inline constexpr Index kQueryBlock = 64;  // queries per task
inline constexpr int kRows = 8;           // register tile rows

struct Ctx {
    const float* qkv;
    Index n, c, hd, npad;
    const float* kt;  // [heads][hd][npad], zero beyond n
    float* out;
};

// s[r][j] = Σ_d q[r][d]·kt[d][j] for R rows, all j < npad (npad a multiple of 2W).
template <int R>
inline void scores(const Ctx& x, const float* q, Index ldq, const float* kt, float* s) {
    for (Index j = 0; j < x.npad; j += 2 * W) {
        B acc[R][2];
        for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = B(0.f);
        for (Index d = 0; d < x.hd; ++d) {
            const B k0 = B::load_aligned(kt + d * x.npad + j), k1 = B::load_aligned(kt + d * x.npad + j + W);
            for (int r = 0; r < R; ++r) {
                const B qv(q[r * ldq + d]);
                acc[r][0] = xsimd::fma(qv, k0, acc[r][0]);
                acc[r][1] = xsimd::fma(qv, k1, acc[r][1]);
            }
        }
        for (int r = 0; r < R; ++r) {
            acc[r][0].store_aligned(s + r * x.npad + j);
            acc[r][1].store_aligned(s + r * x.npad + j + W);
        }
    }
}

// o[r][:] = Σ_j p[r][j]·v[j][:] for R rows, head dim NV·W.
template <int R, int NV>
inline void pv(const Ctx& x, const float* p, const float* v, float* o) {
    B acc[R][NV];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < NV; ++t) acc[r][t] = B(0.f);
    for (Index j = 0; j < x.n; ++j) {
        B vv[NV];
        for (int t = 0; t < NV; ++t) vv[t] = B::load_unaligned(v + j * 3 * x.c + t * W);
        for (int r = 0; r < R; ++r) {
            const B pr(p[r * x.npad + j]);
            for (int t = 0; t < NV; ++t) acc[r][t] = xsimd::fma(pr, vv[t], acc[r][t]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < NV; ++t) acc[r][t].store_unaligned(o + r * x.c + t * W);
}

template <int NV>
inline void block(const Ctx& x, Index h, Index i0, Index i1, float* s, float* q) {
    const float scale = 1.f / std::sqrt(float(x.hd));
    const float* kt = x.kt + h * x.hd * x.npad;
    const float* v = x.qkv + 2 * x.c + h * x.hd;
    for (Index i = i0; i < i1; ++i)
        for (Index d = 0; d < x.hd; ++d) q[(i - i0) * x.hd + d] = x.qkv[i * 3 * x.c + h * x.hd + d] * scale;
    const Index rows = i1 - i0;
    Index r = 0;
    for (; r + kRows <= rows; r += kRows) scores<kRows>(x, q + r * x.hd, x.hd, kt, s + r * x.npad);
    for (; r < rows; ++r) scores<1>(x, q + r * x.hd, x.hd, kt, s + r * x.npad);
    for (r = 0; r < rows; ++r) softmax(s + r * x.npad, x.n);
    float* o = x.out + i0 * x.c + h * x.hd;
    if constexpr (NV > 0) {
        for (r = 0; r + kRows <= rows; r += kRows) pv<kRows, NV>(x, s + r * x.npad, v, o + r * x.c);
        for (; r < rows; ++r) pv<1, NV>(x, s + r * x.npad, v, o + r * x.c);
    } else {  // head_dim not a small multiple of the SIMD width
        for (r = 0; r < rows; ++r)
            for (Index d = 0; d < x.hd; ++d) {
                float acc = 0.f;
                for (Index j = 0; j < x.n; ++j) acc += s[r * x.npad + j] * v[j * 3 * x.c + d];
                o[r * x.c + d] = acc;
            }
    }
}
}  // namespace detail::attn

// qkv [n][3c] → out [n][c]; heads = c / hd. out must not overlap qkv.
inline void mhsa(const float* qkv, Index n, Index c, Index hd, float* out, ThreadPool* pool) {
    using namespace detail::attn;
    FASTVLM_CHECK(n > 0 && hd > 0 && c > 0 && c % hd == 0, "mhsa: channels ", c, " not a positive multiple of head_dim ",
                  hd, " (tokens ", n, ")");
    const Index heads = c / hd, npad = (n + 2 * W - 1) / (2 * W) * (2 * W);
    AlignedBuffer<float> kt(std::size_t(heads * hd * npad));
    parallel_for(pool, std::size_t(heads), 1, [&](std::size_t h0, std::size_t h1) {
        for (Index h = Index(h0); h < Index(h1); ++h) {
            float* k = kt.data() + h * hd * npad;
            for (Index d = 0; d < hd; ++d) std::fill(k + d * npad + n, k + (d + 1) * npad, 0.f);
            for (Index j = 0; j < n; ++j) {
                const float* src = qkv + j * 3 * c + c + h * hd;
                for (Index d = 0; d < hd; ++d) k[d * npad + j] = src[d];
            }
        }
    });
    const Ctx x{qkv, n, c, hd, npad, kt.data(), out};
    const Index qblocks = (n + kQueryBlock - 1) / kQueryBlock;
    const unsigned threads = pool_size(pool);
    AlignedBuffer<float> scratch(std::size_t(threads) * std::size_t(kQueryBlock * (npad + hd)));
    auto task = [&](std::size_t t, unsigned thread) {
        const Index h = Index(t) / qblocks, i0 = (Index(t) % qblocks) * kQueryBlock, i1 = std::min(n, i0 + kQueryBlock);
        float* s = scratch.data() + std::size_t(thread) * std::size_t(kQueryBlock * (npad + hd));
        float* q = s + kQueryBlock * npad;
        if (hd == W) block<1>(x, h, i0, i1, s, q);
        else if (hd == 2 * W) block<2>(x, h, i0, i1, s, q);
        else if (hd == 4 * W) block<4>(x, h, i0, i1, s, q);
        else block<0>(x, h, i0, i1, s, q);
    };
    const std::size_t tasks = std::size_t(heads * qblocks);
    if (pool) pool->run(tasks, task);
    else
        for (std::size_t t = 0; t < tasks; ++t) task(t, 0);
}

}  // namespace fastvlm
