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

#include "fastvlm/core/diagnostics.hpp"
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


// Keys or values of one sequence, in pages of `page` positions: element c of position j is at
// pages[j / page] + off + (j % page)·ld + c·cs. Values are rows (cs = 1: a position's channels side by
// side); keys are columns (ld = 1, cs ≥ page: a channel's positions of a page side by side), so that
// the scores of a run of keys are vector FMAs without horizontal sums. E = float or bf16 (widened
// exactly to float).
template <class E>
struct KVRows {
    const E* const* pages = nullptr;
    Index page = 1, ld = 0, off = 0, cs = 1;
    const E* row(Index j) const { return pages[j / page] + off + (j % page) * ld; }
};

namespace detail {
// Walks rows j, j+1, … of a KVRows at column `col` without a division per row (rows of a page are ld
// apart; the next page starts from its own pointer). Only for rows < the sequence's length.
template <class E>
struct RowCursor {
    const KVRows<E>* kv;
    Index col, pi, r;
    const E* p;
    RowCursor(const KVRows<E>& rows, Index j, Index c) : kv(&rows), col(c), pi(j / rows.page), r(j % rows.page) {
        p = rows.pages[pi] + rows.off + col + r * rows.ld;
    }
    void next() {
        if (++r == kv->page) r = 0, p = kv->pages[++pi] + kv->off + col;
        else p += kv->ld;
    }
};
// A prefetch cursor kAheadRows ahead of the rows being read: the cache rows of decode come from DRAM
// (the weights streamed since the last step evicted them), in runs of a few KiB per page and layer.
inline constexpr Index kAheadRows = 32;
template <class E>
struct Prefetcher {
    RowCursor<E> c;
    Index at, n, bytes;
    Prefetcher(const KVRows<E>& rows, Index j, Index n_, Index col, Index elems)
        : c(rows, std::min(j + kAheadRows, std::max<Index>(n_ - 1, 0)), col), at(j + kAheadRows), n(n_), bytes(elems * Index(sizeof(E))) {}
    // Called once per row read, in order.
    void step() {
        if (at >= n) return;
        const char* q = reinterpret_cast<const char*>(c.p);
        for (Index o = 0; o < bytes; o += 64) __builtin_prefetch(q + o);
        if (++at < n) c.next();
    }
};

// W consecutive elements as floats (bf16 widened exactly).
template <class E>
inline xsimd::batch<float> load_widen(const E* p) {
    using B = xsimd::batch<float>;
    if constexpr (std::is_same_v<E, float>) {
        return B::load_unaligned(p);
    } else {
        static_assert(std::is_same_v<E, bf16>);
#if defined(__AVX512F__)
        if constexpr (B::size == 16)
            return B(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16)));
#endif
#if defined(__AVX2__)
        if constexpr (B::size == 8)
            return B(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16)));
#endif
        alignas(64) float t[B::size];
        for (std::size_t i = 0; i < B::size; ++i) t[i] = to_float(p[i]);
        return B::load_aligned(t);
    }
}

// n ≤ W consecutive elements as floats, the lanes past n zero.
template <class E>
inline xsimd::batch<float> load_widen_n(const E* p, Index n) {
    using B = xsimd::batch<float>;
    if (n == Index(B::size)) return load_widen(p);
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    if constexpr (B::size == 16) {
        const __mmask16 m = __mmask16((1u << n) - 1u);
        if constexpr (std::is_same_v<E, float>)
            return B(_mm512_maskz_loadu_ps(m, p));
        else
            return B(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16)));
    }
#endif
    alignas(64) float t[B::size] = {};
    for (Index i = 0; i < n; ++i) t[i] = to_float(p[i]);
    return B::load_aligned(t);
}

// Scores of HB query heads against n ≤ W keys stored as columns: key j, channel i at k[i·cs + j].
// sc[h·ldsc + j] = (q_h · k_j)·scale, q_h at q + h·d. Each key's lane sums its d products in the same
// order whatever n, the heads or the page layout (a lane never meets another key), so a score does not
// depend on how the keys were chunked: batched and lone sequences agree bit for bit. Two accumulators
// per head (even and odd channels) where registers allow: 8·2 + 1 of 32 zmm, 8 + 1 of 16 ymm.
template <class E, int HB>
FASTVLM_FLATTEN inline void score_cols_tile(const float* q, Index d, const E* k, Index cs, Index n, float* sc, Index ldsc, float scale) {
    using B = xsimd::batch<float>;
    constexpr int kAcc = B::size >= 16 ? 2 : 1;
    B acc[HB][kAcc];
#pragma GCC unroll 8
    for (int h = 0; h < HB; ++h)
#pragma GCC unroll 2
        for (int a = 0; a < kAcc; ++a) acc[h][a] = B(0.f);
    Index i = 0;
    for (; i + kAcc <= d; i += kAcc)
#pragma GCC unroll 2
        for (int a = 0; a < kAcc; ++a) {
            const B kv = load_widen_n(k + (i + a) * cs, n);
#pragma GCC unroll 8
            for (int h = 0; h < HB; ++h) acc[h][a] = xsimd::fma(B(q[h * d + i + a]), kv, acc[h][a]);
        }
    for (; i < d; ++i) {
        const B kv = load_widen_n(k + i * cs, n);
#pragma GCC unroll 8
        for (int h = 0; h < HB; ++h) acc[h][0] = xsimd::fma(B(q[h * d + i]), kv, acc[h][0]);
    }
#pragma GCC unroll 8
    for (int h = 0; h < HB; ++h) {
        B s = acc[h][0];
        if constexpr (kAcc == 2) s += acc[h][1];
        s *= B(scale);
        float* out = sc + h * ldsc;
        if (n == Index(B::size)) {
            s.store_unaligned(out);
        } else {
            alignas(64) float t[B::size];
            s.store_aligned(t);
            std::copy_n(t, n, out);
        }
    }
}

// score_cols_tile for any number of heads nh, 8 at a time.
template <class E>
inline void score_cols(const float* q, Index nh, Index d, const E* k, Index cs, Index n, float* sc, Index ldsc, float scale) {
    for (Index h = 0; h < nh; h += 8) {
        const float* qh = q + h * d;
        float* s = sc + h * ldsc;
        switch (std::min<Index>(8, nh - h)) {
            case 1: score_cols_tile<E, 1>(qh, d, k, cs, n, s, ldsc, scale); break;
            case 2: score_cols_tile<E, 2>(qh, d, k, cs, n, s, ldsc, scale); break;
            case 3: score_cols_tile<E, 3>(qh, d, k, cs, n, s, ldsc, scale); break;
            case 4: score_cols_tile<E, 4>(qh, d, k, cs, n, s, ldsc, scale); break;
            case 5: score_cols_tile<E, 5>(qh, d, k, cs, n, s, ldsc, scale); break;
            case 6: score_cols_tile<E, 6>(qh, d, k, cs, n, s, ldsc, scale); break;
            case 7: score_cols_tile<E, 7>(qh, d, k, cs, n, s, ldsc, scale); break;
            default: score_cols_tile<E, 8>(qh, d, k, cs, n, s, ldsc, scale); break;
        }
    }
}

// out[h·ld_out + i] = Σ_j p[h·ldp + j] · v_j[i] for HB heads and the DV vectors of columns [i0, i0 + DV·W),
// j = 0 … n−1 in order (one fused multiply-add per key, the same sums whatever the tiling): the HB × DV
// accumulators stay in registers while the value rows stream once.
template <class E, int HB, int DV>
FASTVLM_FLATTEN inline void pv_tile(const float* p, Index ldp, const KVRows<E>& v, Index col, Index n, float* out, Index ld_out,
                                    Index prefetch) {
    using B = xsimd::batch<float>;
    constexpr Index W = Index(B::size);
    B acc[HB][DV];
    for (int h = 0; h < HB; ++h)
        for (int q = 0; q < DV; ++q) acc[h][q] = B(0.f);
    if (n > 0) {
        RowCursor<E> c(v, 0, col);
        Prefetcher<E> pf(v, 0, n, col, prefetch);  // prefetch: elements of each row to fetch ahead (0: none)
        for (Index j = 0; j < n; ++j) {
            if (prefetch) pf.step();
            B x[DV];
#pragma GCC unroll 8
            for (int q = 0; q < DV; ++q) x[q] = load_widen(c.p + q * W);
#pragma GCC unroll 8
            for (int h = 0; h < HB; ++h) {
                const B ph(p[h * ldp + j]);
#pragma GCC unroll 8
                for (int q = 0; q < DV; ++q) acc[h][q] = xsimd::fma(ph, x[q], acc[h][q]);
            }
            if (j + 1 < n) c.next();
        }
    }
    for (int h = 0; h < HB; ++h)
        for (int q = 0; q < DV; ++q) acc[h][q].store_unaligned(out + h * ld_out + q * W);
}

// pv_tile with run-time HB ≤ kMaxHB, DV ≤ 4.
template <class E, int kMaxHB, int HB = 1>
inline void pv_tile_n(Index hb, Index dv, const float* p, Index ldp, const KVRows<E>& v, Index col, Index n, float* out, Index ld_out,
                      Index prefetch) {
    if constexpr (HB < kMaxHB)
        if (hb > HB) return pv_tile_n<E, kMaxHB, HB + 1>(hb, dv, p, ldp, v, col, n, out, ld_out, prefetch);
    switch (dv) {
        case 1: return pv_tile<E, HB, 1>(p, ldp, v, col, n, out, ld_out, prefetch);
        case 2: return pv_tile<E, HB, 2>(p, ldp, v, col, n, out, ld_out, prefetch);
        case 3: return pv_tile<E, HB, 3>(p, ldp, v, col, n, out, ld_out, prefetch);
        default: return pv_tile<E, HB, 4>(p, ldp, v, col, n, out, ld_out, prefetch);
    }
}

// out[h·d + i] = Σ_j p[h·ldp + j] · v_j[col + i] for heads h < nh, i < d (p: softmax rows).
template <class E>
inline void pv_heads(const float* p, Index ldp, Index nh, const KVRows<E>& v, Index col, Index d, Index n, float* out) {
    using B = xsimd::batch<float>;
    constexpr Index W = Index(B::size);
    constexpr int kAcc = W >= 16 ? 16 : 8;  // accumulator registers of the tile (32 zmm; 16 ymm / xmm)
    constexpr int kMaxDV = 4, kHB = kAcc / kMaxDV;
    const Index nv = d / W;
    Index prefetch = d;  // the first pass fetches the head's whole rows ahead; the others find them in cache
    for (Index h = 0; h < nh; h += kHB) {
        const Index hb = std::min<Index>(kHB, nh - h);
        for (Index q = 0; q < nv; q += kMaxDV) {
            const Index dv = std::min<Index>(kMaxDV, nv - q);
            const float* ph = p + h * ldp;
            float* oh = out + h * d + q * W;
            const Index c = col + q * W;
            pv_tile_n<E, kHB>(hb, dv, ph, ldp, v, c, n, oh, d, prefetch);
            prefetch = 0;
        }
    }
    if (nv * W < d)  // columns past the last full vector
        for (Index h = 0; h < nh; ++h)
            for (Index i = nv * W; i < d; ++i) {
                float acc = 0.f;
                for (Index j = 0; j < n; ++j) acc = std::fma(p[h * ldp + j], to_float(v.row(j)[col + i]), acc);
                out[h * d + i] = acc;
            }
}
}  // namespace detail

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
// parallel region. Scores take keys W at a time from their columns (score_cols), values are rows (pv_heads).
// Each key/value vector is loaded once per task and used for every query head of
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
    // Row blocks balance the causal triangle; head chunks add tasks when the (KV head, row block) pairs of
    // the whole batch are too few for the threads. A chunk re-reads its KV head's rows, so a batch of
    // decode rows from several sequences is not split further.
    auto rows_per_task = [](Index T) { return T <= 1 ? 1 : std::max<Index>(1, std::min<Index>(32, T / 4 + 1)); };
    Index units = 0;
    for (const auto& sq : seqs) {
        FASTVLM_CHECK(sq.T >= 0 && sq.p0 >= 0, "attention: bad query range T=", sq.T, " p0=", sq.p0);
        FASTVLM_CHECK(sq.k.ld == 1 && sq.k.cs >= sq.k.page && sq.v.cs == 1 && sq.v.ld >= a.n_kv_heads * a.head_dim,
                      "attention: keys must be stored as columns (ld 1, channel stride >= page) and values as rows");
        if (sq.T > 0) units += a.n_kv_heads * ((sq.T + rows_per_task(sq.T) - 1) / rows_per_task(sq.T));
    }
    const Index chunks = std::clamp<Index>(units == 0 ? 1 : (2 * threads + units - 1) / units, 1, group);
    std::size_t n_tasks = 0;
    for (std::size_t s = 0; s < seqs.size(); ++s) {
        const Index T = seqs[s].T, rpt = rows_per_task(T), row_blocks = (T + rpt - 1) / rpt;
        split[s] = {rpt, chunks, (group + chunks - 1) / chunks, n_tasks};
        n_tasks += std::size_t(a.n_kv_heads * chunks * row_blocks);
    }
    if (n_tasks == 0) return;

    auto task = [&](std::size_t id) {
        thread_local std::vector<float> scratch;
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
        constexpr Index W = Index(xsimd::batch<float>::size);  // keys scored together
        if (scratch.size() < std::size_t(nh * stride)) scratch.resize(std::size_t(nh * stride));
        const KVRows<E>& kr = sq.k;
        const Index P = kr.page, col = kr.off + g * d * kr.cs;  // this KV head's channel 0 in a page
        for (Index t = t0; t < t1; ++t) {
            const Index n = p0 + t + 1;
            const float* qt = sq.q + t * sq.ldq + h0 * d;
            const bool fetch = t == t0;  // later query rows of the task find the keys in cache
            for (Index j = 0; j < n;) {
                const Index pi = j / P, r = j % P, cnt = std::min({W, P - r, n - j});
                if (fetch && r == 0 && (pi + 1) * P < n) {  // the next page's channels of this head, ahead
                    const char* nx = reinterpret_cast<const char*>(kr.pages[pi + 1] + col);
                    const Index bytes = Index(((d - 1) * kr.cs + P) * Index(sizeof(E)));
                    for (Index o = 0; o < bytes; o += 64) __builtin_prefetch(nx + o);
                }
                detail::score_cols<E>(qt, nh, d, kr.pages[pi] + col + r, kr.cs, cnt, scratch.data() + j, stride, scale);
                j += cnt;
            }
            for (Index h = 0; h < nh; ++h) softmax(scratch.data() + h * stride, n);
            detail::pv_heads<E>(scratch.data(), stride, nh, sq.v, g * d, d, n, sq.out + t * sq.ldo + h0 * d);
        }
    };
    if (pool && pool->size() > 1 && n_tasks > 1)
        pool->run(n_tasks, [&](std::size_t id, unsigned) { task(id); });
    else
        for (std::size_t id = 0; id < n_tasks; ++id) task(id);
}

// One sequence with contiguous keys/values k, v [ctx][ldkv] (the keys are copied into columns first).
inline void attention_gqa(const float* q, Index ldq, const float* k, const float* v, Index ldkv, float* out, Index ldo,
                          Index T, Index p0, const AttentionDims& a, ThreadPool* pool) {
    check_attention_dims(a);
    FASTVLM_CHECK(T >= 0 && p0 >= 0, "attention: bad query range T=", T, " p0=", p0);
    const Index n = std::max<Index>(p0 + T, 1), kvd = a.n_kv_heads * a.head_dim;
    std::vector<float> kt(std::size_t(n * kvd));  // [channel][position]
    for (Index j = 0; j < p0 + T; ++j)
        for (Index c = 0; c < kvd; ++c) kt[std::size_t(c * n + j)] = k[j * ldkv + c];
    const float* kp = kt.data();
    const AttentionSeq<float> s{q, ldq, out, ldo, T, p0, KVRows<float>{&kp, n, 1, 0, n}, KVRows<float>{&v, n, ldkv, 0}};
    attention_gqa_batch<float>(std::span<const AttentionSeq<float>>(&s, 1), a, pool);
}

}  // namespace fastvlm
