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
#include "fastvlm/text/projector.hpp"

namespace fastvlm::text {

// Keys and values of every layer for positions [0, size): [layers][capacity][kv_dim] each,
// allocated once. K is stored rotated.
class KVCache {
public:
    KVCache() = default;
    KVCache(Index layers, Index capacity, Index kv_dim)
        : layers_(layers), cap_(capacity), kvd_(kv_dim),
          k_(std::size_t(layers * capacity * kv_dim)), v_(std::size_t(layers * capacity * kv_dim)) {}

    Index capacity() const { return cap_; }
    Index size() const { return size_; }
    Index layers() const { return layers_; }
    Index kv_dim() const { return kvd_; }
    std::size_t bytes() const { return 2 * k_.size() * sizeof(float); }
    void clear() { size_ = 0; }
    // Drops positions >= n (e.g. to rewind a conversation).
    void truncate(Index n) {
        FASTVLM_CHECK(n >= 0 && n <= size_, "KV cache: cannot truncate to ", n, " (holds ", size_, ")");
        size_ = n;
    }

    float* k(Index layer, Index pos) { return k_.data() + (layer * cap_ + pos) * kvd_; }
    float* v(Index layer, Index pos) { return v_.data() + (layer * cap_ + pos) * kvd_; }
    const float* k(Index layer, Index pos) const { return k_.data() + (layer * cap_ + pos) * kvd_; }
    const float* v(Index layer, Index pos) const { return v_.data() + (layer * cap_ + pos) * kvd_; }
    void advance(Index n) { size_ += n; }

private:
    Index layers_ = 0, cap_ = 0, kvd_ = 0, size_ = 0;
    AlignedBuffer<float> k_, v_;
};

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
                      const std::function<void(int, int)>& progress = {}, ThreadPool* pool = nullptr) {
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
                if (need_emb && !untied) m.emb_ = load_linear_keep<EmbW, EmbA>(st, {{emb, "", V}}, H);
                m.head_ = load_layer<typename Policy::lm_head>(st, {{untied ? "lm_head.weight" : emb, "", V}}, H);
                step_done();
            } else if (t == 1) {
                if (need_emb && untied) m.emb_ = load_linear<EmbW, EmbA>(st, {{emb, "", V}}, H);
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

    // Default context: min(8192, max_position_embeddings) (spec §4, §5.3).
    Index default_context() const { return std::min<Index>(8192, cfg_.max_position_embeddings); }

    KVCache make_cache(Index capacity) const {
        FASTVLM_CHECK(capacity >= 1 && capacity <= cfg_.max_position_embeddings, "context of ", capacity,
                      " tokens is outside 1..max_position_embeddings (", cfg_.max_position_embeddings, ")");
        return KVCache(num_layers(), capacity, cfg_.kv_dim());
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

    // Runs T input rows x [T, H] (the residual stream; overwritten) at positions
    // cache.size() .. cache.size()+T−1, appends their keys/values, and writes logits as asked.
    void forward(float* x, Index T, KVCache& cache, DecoderWorkspace& ws, const RopeTable& rope, ThreadPool* pool,
                 Logits mode, float* logits, const HiddenHook& hook = {}) const {
        FASTVLM_CHECK(cache.layers() == num_layers() && cache.kv_dim() == cfg_.kv_dim(), "KV cache does not belong to this model");
        FASTVLM_CHECK(cache.size() + T <= cache.capacity(), "context overflow: ", cache.size(), " + ", T,
                      " positions exceed the context of ", cache.capacity(), " tokens");
        FASTVLM_CHECK(rope.max_positions() >= cache.capacity() && rope.head_dim() == cfg_.head_dim,
                      "RoPE table does not cover the KV cache");
        FASTVLM_CHECK(ws.rows > 0, "decoder workspace is empty");
        const Index H = cfg_.hidden_size, V = cfg_.vocab_size;
        for (Index r0 = 0; r0 < T; r0 += ws.rows) {
            const Index n = std::min(ws.rows, T - r0);
            run_chunk(x + r0 * H, r0, n, cache, ws, rope, pool, hook);
            const bool want = mode == Logits::all || (mode == Logits::last && r0 + n == T);
            if (!want) continue;
            float* xn = ws.xn.data();
            if (mode == Logits::all) {
                rms_norm(x + r0 * H, xn, n, H, final_norm_.data(), float(cfg_.rms_norm_eps), pool);
                if (hook) hook(int(num_layers()), r0, n, xn);
                head_.forward(xn, n, H, logits + r0 * V, V, pool);
            } else {
                rms_norm(x + (T - 1) * H, xn, 1, H, final_norm_.data(), float(cfg_.rms_norm_eps), pool);
                if (hook) hook(int(num_layers()), T - 1, 1, xn);
                head_.forward(xn, 1, H, logits, V, pool);
            }
        }
    }

private:
    void run_chunk(float* x, Index row0, Index T, KVCache& cache, DecoderWorkspace& ws, const RopeTable& rope,
                   ThreadPool* pool, const HiddenHook& hook) const {
        const Index H = cfg_.hidden_size, I = cfg_.intermediate_size, kvd = cfg_.kv_dim();
        const Index Hq = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads, d = cfg_.head_dim;
        const Index qd = Hq * d, nqkv = qd + 2 * kvd;
        const Index p0 = cache.size();
        const float eps = float(cfg_.rms_norm_eps);
        const AttentionDims dims{Hq, Hkv, d};
        float *xn = ws.xn.data(), *qkv = ws.qkv.data(), *att = ws.att.data(), *mlp = ws.mlp.data();
        for (Index l = 0; l < num_layers(); ++l) {
            const Block& b = blocks_[std::size_t(l)];
            // attention
            rms_norm(x, xn, T, H, b.in_norm.data(), eps, pool);
            b.qkv.forward(xn, T, H, qkv, nqkv, pool);
            rope.apply(qkv, T, nqkv, Hq, p0);
            rope.apply(qkv + qd, T, nqkv, Hkv, p0);
            for (Index t = 0; t < T; ++t) {
                std::copy_n(qkv + t * nqkv + qd, kvd, cache.k(l, p0 + t));
                std::copy_n(qkv + t * nqkv + qd + kvd, kvd, cache.v(l, p0 + t));
            }
            attention_gqa(qkv, nqkv, cache.k(l, 0), cache.v(l, 0), kvd, att, qd, T, p0, dims, pool);
            b.o.forward(att, T, qd, x, H, pool, {.accumulate = true});
            // MLP
            rms_norm(x, xn, T, H, b.post_norm.data(), eps, pool);
            b.gate_up.forward(xn, T, H, mlp, 2 * I, pool);
            parallel_for(pool, std::size_t(T), 1, [&](std::size_t t0, std::size_t t1) {
                for (std::size_t t = t0; t < t1; ++t) silu_mul(mlp + Index(t) * 2 * I, mlp + Index(t) * 2 * I + I, std::size_t(I));
            });
            b.down.forward(mlp, T, 2 * I, x, H, pool, {.accumulate = true});
            if (hook) hook(int(l), row0, T, x);
        }
        cache.advance(T);
    }

    io::TextConfig cfg_;
    bool tied_ = false;
    EmbL emb_;
    std::vector<Block> blocks_;
    std::vector<float> final_norm_;
    HeadL head_;
};

}  // namespace fastvlm::text
