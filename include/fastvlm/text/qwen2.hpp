// fastvlm/text/qwen2.hpp — the Qwen2 decoder (spec §4) as a template over the precision policy,
// with its KV cache. One layer, top to bottom:
//   h  = RMSNorm(x)·w_in
//   q|k|v = h·[Wq|Wk|Wv]ᵀ + b          (one fused Linear)
//   q, k  = RoPE(q, k; positions)      (rotate-half, θ = rope_theta)
//   x += GQA(q, K_cache, V_cache)·Woᵀ  (causal, 1/√d)
//   h  = RMSNorm(x)·w_post
//   x += (silu(h·Wgᵀ) ⊙ h·Wuᵀ)·Wdᵀ     (gate|up fused)
// then the final RMSNorm and lm_head (untied when `lm_head.weight` exists, else embed_tokens).
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "fastvlm/core/error.hpp"
#include "fastvlm/core/policy.hpp"
#include "fastvlm/core/tensor.hpp"
#include "fastvlm/core/thread_pool.hpp"
#include "fastvlm/io/config.hpp"
#include "fastvlm/io/safetensors.hpp"
#include "fastvlm/kernels/activation.hpp"
#include "fastvlm/kernels/attention_gqa.hpp"
#include "fastvlm/kernels/matmul.hpp"
#include "fastvlm/kernels/norm.hpp"
#include "fastvlm/kernels/rope.hpp"
#include "fastvlm/text/kv_cache.hpp"
#include "fastvlm/text/projector.hpp"

namespace fastvlm::text {

// Per-session scratch for up to `rows` positions per forward chunk (no allocation per token).
struct DecoderWorkspace {
    Index rows = 0;
    AlignedBuffer<float> xn, qkv, att, mlp;
};

enum class Logits {
    none,  // no logits (e.g. feeding the pending tokens of a chat turn)
    last,  // logits of the last position: out holds vocab_size floats
    all,   // logits of every position: out holds T × vocab_size floats
};

// The rows of one sequence in a batched forward step: `rows` consecutive rows of the input, at
// positions kv->size() .. kv->size()+rows−1 of that sequence.
struct BatchSeq {
    KVSeq* kv = nullptr;
    Index rows = 0;
    bool decode = false;         // decode rows: every matrix product takes the GEMV path (RowKernel::gemv);
                                 // prefill rows: the blocked GEMM (RowKernel::gemm), whatever the row count
    Logits logits = Logits::none;  // logits written for this sequence (in batch order: none, 1 or rows rows)
};

// Called after every layer with the residual stream of a chunk of rows (layer = num_layers:
// after the final norm). Rows [row0, row0 + rows) of the forward's input.
using HiddenHook = std::function<void(int layer, Index row0, Index rows, const float* x)>;

template <class Policy>
class Qwen2 {
    static_assert(PrecisionPolicy<Policy>, "fastvlm::text::Qwen2<Policy>: Policy must satisfy fastvlm::PrecisionPolicy");
    using AttnL = LinearOf<typename Policy::decoder_attention>;
    using MlpL = LinearOf<typename Policy::decoder_mlp>;
    using HeadL = LinearOf<typename Policy::lm_head>;
    using EmbW = typename Policy::embeddings;
    using EmbA = std::conditional_t<QuantizedFormat<EmbW>, fmt::Q8, fmt::F32>;
    using EmbL = Linear<EmbW, EmbA>;
    static constexpr bool kHeadFormatIsEmbFormat = std::is_same_v<EmbW, typename Policy::lm_head::weight>;

    struct Block {
        std::vector<float> in_norm, post_norm;
        AttnL qkv, o;
        MlpL gate_up, down;
    };

public:
    static constexpr Index kDefaultChunk = 256;  // prefill rows per pass (bounds the workspace)

    Qwen2() = default;

    // progress(done, total) is called after each layer (in increasing order, from any thread).
    // With a pool, the layers, the head and the embeddings are converted and repacked in parallel.
    static Qwen2 load(const io::TensorStore& st, const io::TextConfig& cfg,
                      const std::function<void(int, int)>& progress = {}, ThreadPool* pool = nullptr);

    const io::TextConfig& config() const { return cfg_; }
    Index hidden_size() const { return cfg_.hidden_size; }
    Index vocab_size() const { return cfg_.vocab_size; }
    Index num_layers() const { return cfg_.num_hidden_layers; }
    bool tied_lm_head() const { return tied_; }
    std::size_t weight_bytes() const {
        std::size_t n = head_.weight_bytes() + emb_.weight_bytes();
        for (const auto& b : blocks_) n += b.qkv.weight_bytes() + b.o.weight_bytes() + b.gate_up.weight_bytes() + b.down.weight_bytes();
        return n;
    }

    // Bytes of weights one decode step streams: every matrix layer and lm_head (the embedding row and the
    // norms are noise). Decode tok/s × this = the weight bandwidth a decode reaches.
    std::size_t decode_weight_bytes() const {
        std::size_t n = 0;
        for_each_linear([&](const auto& l) { n += l.weight_bytes(); });
        return n;
    }

    // Calls f(const Linear<W, A>&) for every matrix layer a forward runs (the embedding table is a lookup).
    template <class F>
    void for_each_linear(F&& f) const {
        for (const auto& b : blocks_) f(b.qkv), f(b.o), f(b.gate_up), f(b.down);
        f(head_);
    }

    // Default context: min(8192, max_position_embeddings) (spec §4, §5.3).
    Index default_context() const { return std::min<Index>(8192, cfg_.max_position_embeddings); }

    KVShape kv_shape() const { return {num_layers(), cfg_.kv_dim()}; }
    // A single-sequence cache of `capacity` positions with a pool of its own.
    KVCache make_cache(Index capacity, KVType type = KVType::f32) const {
        FASTVLM_CHECK(capacity >= 1 && capacity <= cfg_.max_position_embeddings, "context of ", capacity,
                      " tokens is outside 1..max_position_embeddings (", cfg_.max_position_embeddings, ")");
        return KVCache(kv_shape(), capacity, type);
    }
    DecoderWorkspace make_workspace(Index rows = kDefaultChunk) const {
        DecoderWorkspace w;
        w.rows = rows;
        const Index H = cfg_.hidden_size, qd = Index(cfg_.num_attention_heads) * cfg_.head_dim;
        w.xn = AlignedBuffer<float>(std::size_t(rows * H));
        w.qkv = AlignedBuffer<float>(std::size_t(rows * (qd + 2 * cfg_.kv_dim())));
        w.att = AlignedBuffer<float>(std::size_t(rows * qd));
        w.mlp = AlignedBuffer<float>(std::size_t(rows * 2 * cfg_.intermediate_size));
        return w;
    }
    // RoPE table for positions [0, capacity).
    RopeTable make_rope(Index capacity) const { return RopeTable(cfg_.head_dim, capacity, cfg_.rope_theta); }

    // Embedding row of a token id (any weight format; dequantized).
    void embed(std::int32_t id, float* out) const {
        FASTVLM_CHECK(id >= 0 && id < cfg_.vocab_size, "token id ", id, " is outside the vocabulary [0, ", cfg_.vocab_size, ")");
        if constexpr (kHeadFormatIsEmbFormat) {
            if (tied_) return head_.row(id, out);
        }
        emb_.row(id, out);
    }

    // Runs T input rows x [T, H] (the residual stream; overwritten) of one sequence at positions
    // cache.size() .. cache.size()+T−1, appends their keys/values, and writes logits as asked.
    // T = 1 runs as a decode row (GEMV), T > 1 as prefill rows in chunks of ws.rows (GEMM).
    void forward(float* x, Index T, KVSeq& cache, DecoderWorkspace& ws, const RopeTable& rope, ThreadPool* pool,
                 Logits mode, float* logits, const HiddenHook& hook = {}) const {
        FASTVLM_CHECK(ws.rows > 0, "decoder workspace is empty");
        FASTVLM_CHECK(cache.size() + T <= cache.capacity(), "context overflow: ", cache.size(), " + ", T,
                      " positions exceed the context of ", cache.capacity(), " tokens");
        const Index H = cfg_.hidden_size, V = cfg_.vocab_size;
        for (Index r0 = 0; r0 < T; r0 += ws.rows) {
            const Index n = std::min(ws.rows, T - r0);
            const bool want = mode == Logits::all || (mode == Logits::last && r0 + n == T);
            const BatchSeq s{&cache, n, T == 1, want ? mode : Logits::none};
            forward_batch(x + r0 * H, std::span<const BatchSeq>(&s, 1), ws, rope, pool,
                          mode == Logits::all ? logits + r0 * V : logits, hook, r0);
        }
    }

    // One batched step: the rows of several sequences (decode rows of any sequences first, then
    // prefill rows), x [Σ rows, H]. Norms and matrix products run once over all rows (the weights
    // stream from memory once per step), RoPE uses each row's own position and attention runs per
    // sequence against its own keys/values. Each row's result is bit-identical to running its
    // sequence alone. Logits of the sequences that ask for them go to `logits` in batch order.
    void forward_batch(float* x, std::span<const BatchSeq> seqs, DecoderWorkspace& ws, const RopeTable& rope, ThreadPool* pool,
                       float* logits, const HiddenHook& hook = {}, Index hook_row0 = 0) const;

    // Logits of the last rows of several sequences at once (one GEMV pass over lm_head for all of
    // them; each row bit-identical to a lone call). xlast [n, H] are the residual rows.
    void head_rows(const float* xlast, Index n, DecoderWorkspace& ws, ThreadPool* pool, float* logits) const {
        const Index H = cfg_.hidden_size, V = cfg_.vocab_size;
        FASTVLM_CHECK(n <= ws.rows, "head_rows: ", n, " rows exceed the workspace");
        rms_norm(xlast, ws.xn.data(), n, H, final_norm_.data(), float(cfg_.rms_norm_eps), pool);
        head_.forward(ws.xn.data(), n, H, logits, V, pool, {.rows = RowKernel::gemv});
    }

private:
    // Runs a matrix product over the batch: decode rows [0, n_dec) through GEMV, the rest through GEMM.
    template <class L>
    static void linear_rows(const L& lin, const float* x, Index T, Index n_dec, Index ldx, float* y, Index ldy, ThreadPool* pool,
                            bool accumulate = false) {
        if (n_dec > 0) lin.forward(x, n_dec, ldx, y, ldy, pool, {.accumulate = accumulate, .rows = RowKernel::gemv});
        if (T > n_dec)
            lin.forward(x + n_dec * ldx, T - n_dec, ldx, y + n_dec * ldy, ldy, pool,
                        {.accumulate = accumulate, .rows = RowKernel::gemm});
    }

    template <class E>
    void store_kv(const float* qkv, Index nqkv, Index qd, Index l, std::span<const BatchSeq> seqs) const {
        const Index kvd = cfg_.kv_dim();
        Index r = 0;
        for (const auto& s : seqs) {
            const Index p0 = s.kv->size();
            for (Index t = 0; t < s.rows; ++t, ++r) {
                const float* row = qkv + r * nqkv + qd;
                E* k = s.kv->template k<E>(l, p0 + t);  // a column: channel c at k[c · stride]
                const Index ks = s.kv->k_stride();
                if constexpr (std::is_same_v<E, float>)
                    for (Index c = 0; c < kvd; ++c) k[c * ks] = row[c];
                else
                    for (Index c = 0; c < kvd; ++c) k[c * ks] = to_bf16(row[c]);
                convert(row + kvd, s.kv->template v<E>(l, p0 + t), std::size_t(kvd));
            }
        }
    }

    template <class E>
    void attend(const float* qkv, Index nqkv, float* att, Index qd, Index l, std::span<const BatchSeq> seqs,
                const AttentionDims& dims, ThreadPool* pool) const {
        std::vector<AttentionSeq<E>> as;
        as.reserve(seqs.size());
        Index r = 0;
        for (const auto& s : seqs) {
            as.push_back({qkv + r * nqkv, nqkv, att + r * qd, qd, s.rows, s.kv->size(), s.kv->template k_rows<E>(l),
                          s.kv->template v_rows<E>(l)});
            r += s.rows;
        }
        attention_gqa_batch<E>(as, dims, pool);
    }

    void run_layers(float* x, std::span<const BatchSeq> seqs, Index T, Index n_dec, DecoderWorkspace& ws, const RopeTable& rope,
                    ThreadPool* pool, const HiddenHook& hook, Index hook_row0) const;

    io::TextConfig cfg_;
    bool tied_ = false;
    EmbL emb_;
    std::vector<Block> blocks_;
    std::vector<float> final_norm_;
    HeadL head_;
};

// ---- the heavy members, defined out of the class (not inline), so that a program can compile them
// once per preset (core/compiled.hpp) ----

template <class Policy>
Qwen2<Policy> Qwen2<Policy>::load(const io::TensorStore& st, const io::TextConfig& cfg, const std::function<void(int, int)>& progress,
                                  ThreadPool* pool) {
    cfg.validate();
    Qwen2 m;
    m.cfg_ = cfg;
    const Index H = cfg.hidden_size, I = cfg.intermediate_size, V = cfg.vocab_size;
    const Index qd = Index(cfg.num_attention_heads) * cfg.head_dim, kvd = cfg.kv_dim();
    const int L = cfg.num_hidden_layers;
    auto norm = [&](const std::string& name) { return st.load_f32(name, {H}); };
    const std::string emb = "model.embed_tokens.weight";
    const bool untied = st.contains("lm_head.weight");
    m.tied_ = !untied;
    // Embeddings: shared with a tied head when the formats agree (one copy in memory).
    bool need_emb = true;
    if constexpr (kHeadFormatIsEmbFormat) need_emb = untied;
    m.blocks_.resize(std::size_t(L));
    std::mutex progress_mu;
    int done = 0;
    auto step_done = [&] {
        std::lock_guard lk(progress_mu);
        ++done;
        if (progress) progress(done, L + 1);
    };
    auto load_block = [&](int l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        Block& b = m.blocks_[std::size_t(l)];
        b.in_norm = norm(p + "input_layernorm.weight");
        b.post_norm = norm(p + "post_attention_layernorm.weight");
        b.qkv = load_layer<typename Policy::decoder_attention>(
            st,
            {{p + "self_attn.q_proj.weight", p + "self_attn.q_proj.bias", qd},
             {p + "self_attn.k_proj.weight", p + "self_attn.k_proj.bias", kvd},
             {p + "self_attn.v_proj.weight", p + "self_attn.v_proj.bias", kvd}},
            H);
        b.o = load_layer<typename Policy::decoder_attention>(st, {{p + "self_attn.o_proj.weight", "", H}}, qd);
        b.gate_up = load_layer<typename Policy::decoder_mlp>(
            st, {{p + "mlp.gate_proj.weight", "", I}, {p + "mlp.up_proj.weight", "", I}}, H);
        b.down = load_layer<typename Policy::decoder_mlp>(st, {{p + "mlp.down_proj.weight", "", H}}, I);
        step_done();
    };
    // Task 0 = the head (the largest matrix: first, so the others fill in around it),
    // task 1 = the embeddings, then the layers. A tied head and separate embeddings read the
    // same tensor: they run in one task so that the release of its pages comes last.
    auto task = [&](std::size_t t, unsigned) {
        if (t == 0) {
            if (need_emb && !untied) m.emb_ = io::load_linear_keep<Linear<EmbW, EmbA>>(st, io::LinearPart{emb, "", V}, H);
            m.head_ = load_layer<typename Policy::lm_head>(st, {{untied ? "lm_head.weight" : emb, "", V}}, H);
            step_done();
        } else if (t == 1) {
            if (need_emb && untied) m.emb_ = io::load_linear<Linear<EmbW, EmbA>>(st, io::LinearPart{emb, "", V}, H);
        } else {
            load_block(int(t) - 2);
        }
    };
    const std::size_t n_tasks = std::size_t(L) + 2;
    if (pool) pool->run(n_tasks, task);
    else for (std::size_t t = 0; t < n_tasks; ++t) task(t, 0);
    m.final_norm_ = norm("model.norm.weight");
    return m;
}

template <class Policy>
void Qwen2<Policy>::forward_batch(float* x, std::span<const BatchSeq> seqs, DecoderWorkspace& ws, const RopeTable& rope,
                                  ThreadPool* pool, float* logits, const HiddenHook& hook, Index hook_row0) const {
    const Index H = cfg_.hidden_size, V = cfg_.vocab_size;
    Index T = 0, n_dec = 0, n_logit_rows = 0;
    bool seen_prefill = false;
    for (const auto& s : seqs) {
        FASTVLM_CHECK(s.kv && s.kv->valid() && s.kv->pool().shape().layers == num_layers() &&
                          s.kv->pool().shape().kv_dim == cfg_.kv_dim(),
                      "KV cache does not belong to this model");
        FASTVLM_CHECK(s.rows >= 0, "forward_batch: negative row count");
        FASTVLM_CHECK(s.logits != Logits::all || seqs.size() == 1, "forward_batch: Logits::all needs a batch of one sequence");
        FASTVLM_CHECK(!(s.decode && seen_prefill), "forward_batch: decode rows must come before prefill rows");
        FASTVLM_CHECK(s.kv->size() + s.rows <= s.kv->capacity(), "context overflow: ", s.kv->size(), " + ", s.rows,
                      " positions exceed the context of ", s.kv->capacity(), " tokens");
        FASTVLM_CHECK(rope.max_positions() >= s.kv->size() + s.rows && rope.head_dim() == cfg_.head_dim,
                      "RoPE table does not cover position ", s.kv->size() + s.rows - 1);
        seen_prefill |= !s.decode;
        if (s.decode) n_dec += s.rows;
        T += s.rows;
        n_logit_rows += s.logits == Logits::all ? s.rows : s.logits == Logits::last && s.rows > 0 ? 1 : 0;
    }
    FASTVLM_CHECK(T <= ws.rows, "forward_batch: ", T, " rows exceed the workspace of ", ws.rows, " rows");
    if (T == 0) return;
    for (const auto& s : seqs) s.kv->ensure(s.kv->size() + s.rows);
    run_layers(x, seqs, T, n_dec, ws, rope, pool, hook, hook_row0);
    if (n_logit_rows == 0) return;
    // Final norm + head. `last` rows of every sequence gathered and run as GEMV rows in one pass
    // (lm_head streams once per step); an `all` sequence (alone in its batch) through the GEMM.
    const float eps = float(cfg_.rms_norm_eps);
    float* xn = ws.xn.data();
    if (seqs.size() == 1 && seqs[0].logits == Logits::all) {
        rms_norm(x, xn, T, H, final_norm_.data(), eps, pool);
        if (hook) hook(int(num_layers()), hook_row0, T, xn);
        head_.forward(xn, T, H, logits, V, pool);
        return;
    }
    Index r = 0, out = 0;
    for (const auto& s : seqs) {
        if (s.logits == Logits::last && s.rows > 0) {
            rms_norm(x + (r + s.rows - 1) * H, xn + out * H, 1, H, final_norm_.data(), eps, pool);
            if (hook) hook(int(num_layers()), hook_row0 + r + s.rows - 1, 1, xn + out * H);
            ++out;
        }
        r += s.rows;
    }
    head_.forward(xn, out, H, logits, V, pool, {.rows = RowKernel::gemv});
}

template <class Policy>
void Qwen2<Policy>::run_layers(float* x, std::span<const BatchSeq> seqs, Index T, Index n_dec, DecoderWorkspace& ws,
                               const RopeTable& rope, ThreadPool* pool, const HiddenHook& hook, Index hook_row0) const {
    const Index H = cfg_.hidden_size, I = cfg_.intermediate_size, kvd = cfg_.kv_dim();
    const Index Hq = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads, d = cfg_.head_dim;
    const Index qd = Hq * d, nqkv = qd + 2 * kvd;
    const float eps = float(cfg_.rms_norm_eps);
    const AttentionDims dims{Hq, Hkv, d};
    const bool bf16_kv = seqs.front().kv->pool().type() == KVType::bf16;
    for (const auto& s : seqs)
        FASTVLM_CHECK((s.kv->pool().type() == KVType::bf16) == bf16_kv, "forward_batch: KV caches of one batch must share a type");
    float *xn = ws.xn.data(), *qkv = ws.qkv.data(), *att = ws.att.data(), *mlp = ws.mlp.data();
    for (Index l = 0; l < num_layers(); ++l) {
        const Block& b = blocks_[std::size_t(l)];
        // attention
        rms_norm(x, xn, T, H, b.in_norm.data(), eps, pool);
        linear_rows(b.qkv, xn, T, n_dec, H, qkv, nqkv, pool);
        Index r = 0;
        for (const auto& s : seqs) {
            rope.apply(qkv + r * nqkv, s.rows, nqkv, Hq, s.kv->size());
            rope.apply(qkv + r * nqkv + qd, s.rows, nqkv, Hkv, s.kv->size());
            r += s.rows;
        }
        if (bf16_kv) {
            store_kv<bf16>(qkv, nqkv, qd, l, seqs);
            attend<bf16>(qkv, nqkv, att, qd, l, seqs, dims, pool);
        } else {
            store_kv<float>(qkv, nqkv, qd, l, seqs);
            attend<float>(qkv, nqkv, att, qd, l, seqs, dims, pool);
        }
        linear_rows(b.o, att, T, n_dec, qd, x, H, pool, true);
        // MLP
        rms_norm(x, xn, T, H, b.post_norm.data(), eps, pool);
        linear_rows(b.gate_up, xn, T, n_dec, H, mlp, 2 * I, pool);
        parallel_for(pool, std::size_t(T), 1, [&](std::size_t t0, std::size_t t1) {
            for (std::size_t t = t0; t < t1; ++t) silu_mul(mlp + Index(t) * 2 * I, mlp + Index(t) * 2 * I + I, std::size_t(I));
        });
        linear_rows(b.down, mlp, T, n_dec, 2 * I, x, H, pool, true);
        if (hook) hook(int(l), hook_row0, T, x);
    }
    for (const auto& s : seqs) s.kv->advance(s.rows);
}

#if defined(FASTVLM_COMPILED_LIB)
// Compiled once per preset in libfastvlm_presets (any_model.hpp: FASTVLM_INSTANTIATE_PRESET).
#define FASTVLM_EXTERN_(name) extern template class Qwen2<policy::name>;
FASTVLM_PRESETS(FASTVLM_EXTERN_)
#undef FASTVLM_EXTERN_
#endif

}  // namespace fastvlm::text
