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
#include <span>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "fastvlm/core/dtypes.hpp"
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
#if defined(__AVX__)
// Lane sums of 8 ymm rows: out[r] = Σ_i v[r][i] (a transpose-and-add with vhaddps).
inline __m256 hsum8(const __m256* v) {
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));  // [0 1 2 3 | 0 1 2 3]
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));  // [4 5 6 7 | 4 5 6 7]
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
#endif
// The R = batch-size lane sums of acc[0..R) as one batch: lane r = Σ of acc[r]'s lanes. Not xsimd::haddp:
// xsimd 8.1's AVX-512 haddp returns the sums of rows 2–5 and 10–13 in the wrong lanes.
template <class B>
inline B hsum_rows(const B* acc) {
    constexpr int R = int(B::size);
#if defined(__AVX512F__)
    if constexpr (R == 16) {
        __m256 h[16];
        for (int r = 0; r < 16; ++r) {
            const __m512 z = acc[r];
            h[r] = _mm256_add_ps(_mm512_castps512_ps256(z), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1)));
        }
        return B(_mm512_insertf32x8(_mm512_castps256_ps512(hsum8(h)), hsum8(h + 8), 1));
    }
#endif
#if defined(__AVX__)
    if constexpr (R == 8) {
        __m256 h[8];
        for (int r = 0; r < 8; ++r) h[r] = acc[r];
        return B(hsum8(h));
    }
#endif
    alignas(64) float s[R];
    for (int r = 0; r < R; ++r) s[r] = xsimd::hadd(acc[r]);
    return B::load_aligned(s);
}

// out[r] = a · rows[r] for the R = batch-size rows of one block (decode attention scores: one query head
// against R cached keys). The R lane sums are reduced together (hsum_rows), not one horizontal add per row.
inline void dot_rows_f32(const float* a, const float* const* rows, Index n, float* out) {
    using B = xsimd::batch<float>;
    constexpr int R = int(B::size);
    constexpr Index W = Index(B::size);
    B acc[R];
    for (int r = 0; r < R; ++r) acc[r] = B(0.f);
    Index i = 0;
    for (; i + W <= n; i += W) {
        const B av = B::load_unaligned(a + i);
        for (int r = 0; r < R; ++r) acc[r] = xsimd::fma(av, B::load_unaligned(rows[r] + i), acc[r]);
    }
    B s = hsum_rows(acc);
    if (i < n) {
        alignas(64) float tail[R];
        for (int r = 0; r < R; ++r) {
            float t = 0.f;
            for (Index q = i; q < n; ++q) t += a[q] * rows[r][q];
            tail[r] = t;
        }
        s += B::load_aligned(tail);
    }
    s.store_unaligned(out);
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

// Keys (or values) of one sequence, contiguous or paged: row j is at
// pages[j / page] + off + (j % page)·ld elements. E = float or bf16 (widened exactly to float).
template <class E>
struct KVRows {
    const E* const* pages = nullptr;
    Index page = 1, ld = 0, off = 0;
    const E* row(Index j) const { return pages[j / page] + off + (j % page) * ld; }
};

// One sequence of a batched attention call: T query rows at positions p0 .. p0+T−1.
template <class E>
struct AttentionSeq {
    const float* q = nullptr;
    Index ldq = 0;
    float* out = nullptr;
    Index ldo = 0;
    Index T = 0, p0 = 0;
    KVRows<E> k, v;
};

// Tasks = (sequence, KV head, chunk of its query heads, block of query rows), all sequences in one
// parallel region. Each key/value row is loaded once per task and used for every query head of
// the chunk (GQA sharing); the chunking keeps at least ~2 tasks per thread. Each output element is
// written by exactly one task with the same arithmetic whatever the chunking, so the result does
// not depend on the thread count nor on the other sequences of the batch. Scratch: one score row
// per head of a chunk, per thread (thread_local, grows to the longest context seen).
template <class E>
void attention_gqa_batch(std::span<const AttentionSeq<E>> seqs, const AttentionDims& a, ThreadPool* pool) {
    check_attention_dims(a);
    const Index d = a.head_dim, group = a.n_heads / a.n_kv_heads;
    const float scale = float(1.0 / std::sqrt(double(d)));
    const Index threads = Index(pool_size(pool));
    struct Split {
        Index rows_per_task, chunks, heads_per_chunk;
        std::size_t first_task;
    };
    std::vector<Split> split(seqs.size());
    std::size_t n_tasks = 0;
    for (std::size_t s = 0; s < seqs.size(); ++s) {
        const Index T = seqs[s].T;
        FASTVLM_CHECK(T >= 0 && seqs[s].p0 >= 0, "attention: bad query range T=", T, " p0=", seqs[s].p0);
        // Row blocks balance the causal triangle; head chunks add tasks when rows alone are too few.
        const Index rows_per_task = T <= 1 ? 1 : std::max<Index>(1, std::min<Index>(32, T / 4 + 1));
        const Index row_blocks = (T + rows_per_task - 1) / rows_per_task;
        const Index want = T == 0 ? 1 : (2 * threads + a.n_kv_heads * row_blocks - 1) / (a.n_kv_heads * row_blocks);
        const Index chunks = std::clamp<Index>(want, 1, group);
        split[s] = {rows_per_task, chunks, (group + chunks - 1) / chunks, n_tasks};
        n_tasks += std::size_t(a.n_kv_heads * chunks * row_blocks);
    }
    if (n_tasks == 0) return;

    auto task = [&](std::size_t id) {
        thread_local std::vector<float> scratch, rowbuf;
        const std::size_t s = std::size_t(std::upper_bound(split.begin(), split.end(), id,
                                                           [](std::size_t v, const Split& x) { return v < x.first_task; }) -
                                          split.begin()) - 1;
        const AttentionSeq<E>& sq = seqs[s];
        const Split& sp = split[s];
        const Index T = sq.T, p0 = sq.p0;
        if (T == 0) return;
        const Index local = Index(id - sp.first_task);
        const Index g = local % a.n_kv_heads;
        const Index c = (local / a.n_kv_heads) % sp.chunks;
        const Index rb = local / (a.n_kv_heads * sp.chunks);
        const Index h0 = g * group + c * sp.heads_per_chunk, h1 = std::min(g * group + group, h0 + sp.heads_per_chunk);
        if (h0 >= h1) return;
        const Index nh = h1 - h0;
        const Index t0 = rb * sp.rows_per_task, t1 = std::min(T, t0 + sp.rows_per_task);
        const Index stride = p0 + t1;  // score row length of this task's longest query
        constexpr Index RB = Index(xsimd::batch<float>::size);  // key rows scored together
        if (scratch.size() < std::size_t(nh * stride)) scratch.resize(std::size_t(nh * stride));
        if constexpr (!std::is_same_v<E, float>)
            if (rowbuf.size() < std::size_t(RB * d)) rowbuf.resize(std::size_t(RB * d));
        // Row j of KV head g as floats (bf16 widened into slot `slot` of rowbuf: exact).
        auto get = [&](const KVRows<E>& kv, Index j, Index slot = 0) -> const float* {
            const E* r = kv.row(j) + g * d;
            if constexpr (std::is_same_v<E, float>) {
                return r;
            } else {
                convert(r, rowbuf.data() + slot * d, std::size_t(d));
                return rowbuf.data() + slot * d;
            }
        };
        auto prefetch = [&](const KVRows<E>& kv, Index j, Index n) {
            if (j + 8 >= n) return;
            const char* p = reinterpret_cast<const char*>(kv.row(j + 8) + g * d);
            for (Index o = 0; o < d * Index(sizeof(E)); o += 64) __builtin_prefetch(p + o);  // the cache rows come from DRAM
        };
        for (Index t = t0; t < t1; ++t) {
            const Index n = p0 + t + 1;
            const float* qt = sq.q + t * sq.ldq;
            Index j = 0;
            for (; j + RB <= n; j += RB) {  // blocks of RB keys, each widened once for every head of the chunk
                const float* kr[RB];
                for (Index r = 0; r < RB; ++r) {
                    prefetch(sq.k, j + r, n);
                    kr[r] = get(sq.k, j + r, r);
                }
                for (Index h = h0; h < h1; ++h) {
                    float* sc = scratch.data() + (h - h0) * stride + j;
                    detail::dot_rows_f32(qt + h * d, kr, d, sc);
                    for (Index r = 0; r < RB; ++r) sc[r] *= scale;
                }
            }
            for (; j < n; ++j) {
                const float* kj = get(sq.k, j);
                for (Index h = h0; h < h1; ++h) scratch[std::size_t((h - h0) * stride + j)] = detail::dot_f32(qt + h * d, kj, d) * scale;
            }
            for (Index h = 0; h < nh; ++h) softmax(scratch.data() + h * stride, n);
            float* ot = sq.out + t * sq.ldo;
            for (Index h = h0; h < h1; ++h) std::fill(ot + h * d, ot + h * d + d, 0.f);
            for (Index j = 0; j < n; ++j) {
                prefetch(sq.v, j, n);
                const float* vj = get(sq.v, j);
                for (Index h = h0; h < h1; ++h) detail::axpy_f32(scratch[std::size_t((h - h0) * stride + j)], vj, ot + h * d, d);
            }
        }
    };
    if (pool && pool->size() > 1 && n_tasks > 1)
        pool->run(n_tasks, [&](std::size_t id, unsigned) { task(id); });
    else
        for (std::size_t id = 0; id < n_tasks; ++id) task(id);
}

// One sequence with contiguous keys/values k, v [ctx][ldkv].
inline void attention_gqa(const float* q, Index ldq, const float* k, const float* v, Index ldkv, float* out, Index ldo,
                          Index T, Index p0, const AttentionDims& a, ThreadPool* pool) {
    check_attention_dims(a);
    FASTVLM_CHECK(T >= 0 && p0 >= 0, "attention: bad query range T=", T, " p0=", p0);
    const Index big = std::numeric_limits<Index>::max() / 2;
    const AttentionSeq<float> s{q, ldq, out, ldo, T, p0, KVRows<float>{&k, big, ldkv, 0}, KVRows<float>{&v, big, ldkv, 0}};
    attention_gqa_batch<float>(std::span<const AttentionSeq<float>>(&s, 1), a, pool);
}

}  // namespace fastvlm
