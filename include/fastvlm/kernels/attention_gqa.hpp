// fastvlm/kernels/attention_gqa.hpp — causal grouped-query attention over a KV cache (spec §4).
//   q    [T][ldq]   : Hq heads of d values, row t is the query at position p0 + t (already rotated)
//   k, v [ctx][ldkv]: Hkv heads of d values per cached position; rows 0..p0+T−1 must be filled
//   out  [T][ldo]   : Hq heads of d values
// Query head h reads KV head h / (Hq/Hkv). Query row t sees keys 0..p0+t (causal).
//   out_h = softmax(q_h·K_gᵀ / √d) · V_g
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "fastvlm/core/error.hpp"
#include "fastvlm/core/tensor.hpp"
#include "fastvlm/core/thread_pool.hpp"
#include "fastvlm/kernels/softmax.hpp"

namespace fastvlm {

struct AttentionDims {
    Index n_heads = 0;     // Hq
    Index n_kv_heads = 0;  // Hkv, divides Hq
    Index head_dim = 0;    // d
};

inline void check_attention_dims(const AttentionDims& a) {
    FASTVLM_CHECK(a.n_heads > 0 && a.n_kv_heads > 0 && a.head_dim > 0 && a.n_heads % a.n_kv_heads == 0,
                  "attention: num_attention_heads (", a.n_heads, ") must be a positive multiple of num_key_value_heads (",
                  a.n_kv_heads, "), head_dim ", a.head_dim);
}

// Scalar reference, double accumulation.
inline void attention_gqa_ref(const float* q, Index ldq, const float* k, const float* v, Index ldkv, float* out, Index ldo,
                              Index T, Index p0, const AttentionDims& a) {
    check_attention_dims(a);
    const Index d = a.head_dim, group = a.n_heads / a.n_kv_heads;
    const double scale = 1.0 / std::sqrt(double(d));
    std::vector<double> s;
    for (Index t = 0; t < T; ++t)
        for (Index h = 0; h < a.n_heads; ++h) {
            const Index g = h / group, n = p0 + t + 1;
            const float* qh = q + t * ldq + h * d;
            s.assign(std::size_t(n), 0.0);
            double m = -std::numeric_limits<double>::infinity();
            for (Index j = 0; j < n; ++j) {
                double acc = 0;
                for (Index i = 0; i < d; ++i) acc += double(qh[i]) * double(k[j * ldkv + g * d + i]);
                s[std::size_t(j)] = acc * scale;
                m = std::max(m, s[std::size_t(j)]);
            }
            double sum = 0;
            for (auto& x : s) sum += (x = std::exp(x - m));
            for (Index i = 0; i < d; ++i) {
                double acc = 0;
                for (Index j = 0; j < n; ++j) acc += s[std::size_t(j)] * double(v[j * ldkv + g * d + i]);
                out[t * ldo + h * d + i] = float(acc / sum);
            }
        }
}

namespace detail {
inline float dot_f32(const float* a, const float* b, Index n) {
    using B = xsimd::batch<float>;
    constexpr Index W = Index(B::size);
    B acc(0.f);
    Index i = 0;
    for (; i + W <= n; i += W) acc = xsimd::fma(B::load_unaligned(a + i), B::load_unaligned(b + i), acc);
    float s = xsimd::hadd(acc);
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}
// y[0:n] += a·x[0:n]
inline void axpy_f32(float a, const float* x, float* y, Index n) {
    using B = xsimd::batch<float>;
    constexpr Index W = Index(B::size);
    const B va(a);
    Index i = 0;
    for (; i + W <= n; i += W) xsimd::fma(va, B::load_unaligned(x + i), B::load_unaligned(y + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] += a * x[i];
}
}  // namespace detail

// Tasks = (KV head, chunk of its query heads, block of query rows). Each key/value row is loaded
// once per task and used for every query head of the chunk (GQA sharing); the chunking keeps at
// least ~2 tasks per thread. Each output element is written by exactly one task, so the result does
// not depend on the thread count. Scratch: one score row per head of a chunk, per thread
// (thread_local, grows to the longest context seen; no allocation per call after that).
inline void attention_gqa(const float* q, Index ldq, const float* k, const float* v, Index ldkv, float* out, Index ldo,
                          Index T, Index p0, const AttentionDims& a, ThreadPool* pool) {
    check_attention_dims(a);
    FASTVLM_CHECK(T >= 0 && p0 >= 0, "attention: bad query range T=", T, " p0=", p0);
    if (T == 0) return;
    const Index d = a.head_dim, group = a.n_heads / a.n_kv_heads;
    const float scale = float(1.0 / std::sqrt(double(d)));
    const Index threads = Index(pool_size(pool));
    // Row blocks balance the causal triangle; head chunks add tasks when rows alone are too few.
    const Index rows_per_task = T == 1 ? 1 : std::max<Index>(1, std::min<Index>(32, T / 4 + 1));
    const Index row_blocks = (T + rows_per_task - 1) / rows_per_task;
    const Index want_chunks = (2 * threads + a.n_kv_heads * row_blocks - 1) / (a.n_kv_heads * row_blocks);
    const Index chunks = std::clamp<Index>(want_chunks, 1, group);
    const Index heads_per_chunk = (group + chunks - 1) / chunks;
    const std::size_t n_tasks = std::size_t(a.n_kv_heads * chunks * row_blocks);

    auto task = [&](std::size_t id) {
        thread_local std::vector<float> scratch;
        const Index g = Index(id) % a.n_kv_heads;
        const Index c = (Index(id) / a.n_kv_heads) % chunks;
        const Index rb = Index(id) / (a.n_kv_heads * chunks);
        const Index h0 = g * group + c * heads_per_chunk, h1 = std::min(g * group + group, h0 + heads_per_chunk);
        if (h0 >= h1) return;
        const Index nh = h1 - h0;
        const Index t0 = rb * rows_per_task, t1 = std::min(T, t0 + rows_per_task);
        const Index stride = p0 + t1;  // score row length of this task's longest query
        if (scratch.size() < std::size_t(nh * stride)) scratch.resize(std::size_t(nh * stride));
        const float* kg = k + g * d;
        const float* vg = v + g * d;
        for (Index t = t0; t < t1; ++t) {
            const Index n = p0 + t + 1;
            const float* qt = q + t * ldq;
            for (Index j = 0; j < n; ++j) {
                const float* kj = kg + j * ldkv;
                for (Index o = 0; o < d; o += 16) __builtin_prefetch(kj + 8 * ldkv + o);  // the cache rows come from DRAM
                for (Index h = h0; h < h1; ++h) scratch[std::size_t((h - h0) * stride + j)] = detail::dot_f32(qt + h * d, kj, d) * scale;
            }
            for (Index h = 0; h < nh; ++h) softmax(scratch.data() + h * stride, n);
            float* ot = out + t * ldo;
            for (Index h = h0; h < h1; ++h) std::fill(ot + h * d, ot + h * d + d, 0.f);
            for (Index j = 0; j < n; ++j) {
                const float* vj = vg + j * ldkv;
                for (Index o = 0; o < d; o += 16) __builtin_prefetch(vj + 8 * ldkv + o);
                for (Index h = h0; h < h1; ++h) detail::axpy_f32(scratch[std::size_t((h - h0) * stride + j)], vj, ot + h * d, d);
            }
        }
    };
    if (pool && pool->size() > 1 && n_tasks > 1)
        pool->run(n_tasks, [&](std::size_t id, unsigned) { task(id); });
    else
        for (std::size_t id = 0; id < n_tasks; ++id) task(id);
}

}  // namespace fastvlm
