// text/qwen2.hpp and text/projector.hpp: the decoder against the golden data of the original implementation (../shared/golden
// tiny_vlm_*: 2 layers, tied head, f32) and the committed tests/data/tiny_vlm2 (3 layers, untied
// head, bf16 weights), KV-cache decoding against full recomputation, and the measured errors of the
// bf16 / int8 policies.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "fastvlm/io/config.hpp"
#include "fastvlm/io/safetensors.hpp"
#include "fastvlm/text/chat.hpp"
#include "fastvlm/text/projector.hpp"
#include "fastvlm/text/qwen2.hpp"
#include "fastvlm/text/sampling.hpp"
#include "numeric_support.hpp"

namespace fs = std::filesystem;
using namespace fastvlm;

namespace {

using test_support::max_abs;
using test_support::max_diff;
using test_support::random_vec;

// ---- decoder vs goldens ----------------------------------------------------------------------------
struct Golden {
    std::string name;
    fs::path model, io;
};

std::vector<Golden> goldens() {
    std::vector<Golden> g;
    const fs::path shared = fs::path(FASTVLM_SHARED_DIR) / "golden";
    if (fs::exists(shared / "tiny_vlm_io.safetensors")) g.push_back({"shared tiny-vlm", shared / "tiny-vlm", shared / "tiny_vlm_io.safetensors"});
    const fs::path data = FASTVLM_TEST_DATA_DIR;
    if (fs::exists(data / "tiny_vlm2_io.safetensors")) g.push_back({"tiny_vlm2", data / "tiny_vlm2", data / "tiny_vlm2_io.safetensors"});
    return g;
}

struct DecodeRun {
    Tensor<float, 2> projected;
    std::vector<std::vector<float>> hidden;  // per layer [L*H], last = final norm
    std::vector<float> prefill_logits;        // [L*V]
    std::vector<std::int32_t> ids;
    std::vector<float> step_logits;           // [N*V]
    Index L = 0, V = 0, H = 0;
};

template <class Policy>
DecodeRun run_golden(const Golden& g, ThreadPool* pool, Index chunk = 256, text::KVType kv = text::KVType::f32) {
    const auto st = io::TensorStore::open(g.model);
    const auto cfg = io::ModelConfig::load(g.model);
    const auto io = io::TensorStore::open(g.io);
    const auto proj = text::Projector<Policy>::load(st, cfg);
    const auto dec = text::Qwen2<Policy>::load(st, cfg.text);
    const auto& fi = io.at("image_features");
    const Index N = fi.shape[1], C = fi.shape[2];
    Tensor<float, 2> f({N, C});
    io.load_f32_into("image_features", std::vector<Index>{1, N, C}, f.span());
    DecodeRun r;
    r.projected = proj.forward(f, pool);
    const auto ids64 = io.load_i64("input_ids");
    const Index H = dec.hidden_size(), V = dec.vocab_size();
    const Index L = Index(ids64.size()) - 1 + N;
    r.L = L, r.V = V, r.H = H;
    std::vector<float> x(std::size_t(L * H));
    Index row = 0;
    for (auto id : ids64) {
        if (id == text::kImageTokenIndex) {
            std::copy(r.projected.data(), r.projected.data() + N * H, x.begin() + row * H);
            row += N;
        } else {
            dec.embed(std::int32_t(id), x.data() + row * H);
            ++row;
        }
    }
    auto cache = dec.make_cache(L + 32, kv);
    auto ws = dec.make_workspace(chunk);
    const auto rope = dec.make_rope(cache.capacity());
    r.hidden.assign(std::size_t(dec.num_layers() + 1), std::vector<float>(std::size_t(L * H)));
    r.prefill_logits.resize(std::size_t(L * V));
    dec.forward(x.data(), L, cache, ws, rope, pool, text::Logits::all, r.prefill_logits.data(),
                [&](int layer, Index r0, Index rows, const float* h) {
                    std::copy(h, h + rows * H, r.hidden[std::size_t(layer)].begin() + r0 * H);
                });
    const Index steps = Index(io.load_i64("generated_ids").size());
    std::vector<float> logits(r.prefill_logits.end() - V, r.prefill_logits.end());
    std::vector<float> e(static_cast<std::size_t>(H));
    for (Index s = 0; s < steps; ++s) {
        r.step_logits.insert(r.step_logits.end(), logits.begin(), logits.end());
        const auto id = text::argmax(logits.data(), std::size_t(V));
        r.ids.push_back(id);
        dec.embed(id, e.data());
        dec.forward(e.data(), 1, cache, ws, rope, pool, text::Logits::last, logits.data());
    }
    return r;
}

struct Err {
    float abs = 0, ref_max = 0;
    float rel() const { return abs / ref_max; }
};
Err compare(const io::TensorStore& io, const std::string& name, const float* got, std::size_t n) {
    const auto ref = io.load_f32(name, io.at(name).shape);
    EXPECT_EQ(ref.size(), n) << name;
    return {max_diff(ref.data(), got, std::min(n, ref.size())), max_abs(ref.data(), ref.size())};
}

TEST(Qwen2Golden, Fp32MatchesOriginalImplementation) {
    const auto gs = goldens();
    ASSERT_FALSE(gs.empty()) << "no golden data found";
    ThreadPool pool(2);
    for (const auto& g : gs) {
        SCOPED_TRACE(g.name);
        const auto io = io::TensorStore::open(g.io);
        const DecodeRun r = run_golden<policy::fp32>(g, &pool);
        const Err ep = compare(io, "image_features_projected", r.projected.data(), std::size_t(r.projected.size()));
        for (std::size_t l = 0; l + 1 < r.hidden.size(); ++l) {
            const Err eh = compare(io, "prefill_hidden_layer" + std::to_string(l), r.hidden[l].data(), r.hidden[l].size());
            EXPECT_LT(eh.rel(), 1e-5f) << "layer " << l << " abs " << eh.abs;
        }
        const Err en = compare(io, "prefill_final_norm", r.hidden.back().data(), r.hidden.back().size());
        const Err el = compare(io, "prefill_logits", r.prefill_logits.data(), r.prefill_logits.size());
        const Err es = compare(io, "step_logits", r.step_logits.data(), r.step_logits.size());
        std::printf("[%s fp32] projected %.3g (max %.3g)  final_norm %.3g  prefill_logits %.3g (max %.3g, rel %.3g)  "
                    "step_logits %.3g (rel %.3g)\n",
                    g.name.c_str(), ep.abs, ep.ref_max, en.abs, el.abs, el.ref_max, el.rel(), es.abs, es.rel());
        // Acceptance: logits within 1e-4 x max|ref| (f32 vs the f64 reference; measured ~1e-6).
        EXPECT_LT(ep.rel(), 1e-5f);
        EXPECT_LT(el.rel(), 1e-4f);
        EXPECT_LT(es.rel(), 1e-4f);
        const auto ref_ids = io.load_i64("generated_ids");
        ASSERT_EQ(r.ids.size(), ref_ids.size());
        for (std::size_t i = 0; i < ref_ids.size(); ++i) EXPECT_EQ(r.ids[i], ref_ids[i]) << "step " << i;
    }
}

TEST(Qwen2Golden, ChunkedPrefillEqualsOnePass) {
    for (const auto& g : goldens()) {
        SCOPED_TRACE(g.name);
        const DecodeRun a = run_golden<policy::fp32>(g, nullptr, 256);
        const DecodeRun b = run_golden<policy::fp32>(g, nullptr, 5);  // 5-row chunks: prefill spans several passes
        // Same math, different row blocking inside the matmul: f32 rounding only.
        EXPECT_LT(max_diff(a.prefill_logits.data(), b.prefill_logits.data(), a.prefill_logits.size()),
                  1e-5f * max_abs(a.prefill_logits.data(), a.prefill_logits.size()));
        EXPECT_EQ(a.ids, b.ids);
    }
}

// The bf16 KV cache (the engine's default): keys/values rounded to bf16, attention in f32.
TEST(Qwen2Golden, Bf16KvCacheKeepsGreedyIds) {
    for (const auto& g : goldens()) {
        SCOPED_TRACE(g.name);
        const auto io = io::TensorStore::open(g.io);
        const DecodeRun a = run_golden<policy::fp32>(g, nullptr, 256, text::KVType::f32);
        const DecodeRun b = run_golden<policy::fp32>(g, nullptr, 256, text::KVType::bf16);
        const Err el = compare(io, "prefill_logits", b.prefill_logits.data(), b.prefill_logits.size());
        const Err es = compare(io, "step_logits", b.step_logits.data(), b.step_logits.size());
        const float d = max_diff(a.step_logits.data(), b.step_logits.data(), a.step_logits.size());
        std::printf("[%s bf16 KV] prefill_logits rel %.3g  step_logits rel %.3g (vs the original); step logits vs f32 KV %.3g "
                    "(rel %.3g)\n",
                    g.name.c_str(), el.rel(), es.rel(), d, d / es.ref_max);
        EXPECT_LT(es.rel(), 2e-2f);
        const auto ref_ids = io.load_i64("generated_ids");
        ASSERT_EQ(b.ids.size(), ref_ids.size());
        for (std::size_t i = 0; i < ref_ids.size(); ++i) EXPECT_EQ(b.ids[i], ref_ids[i]) << "step " << i;
    }
}

// One forward_batch step with decode rows of two sequences and a prefill chunk of a third gives
// each sequence the logits it gets alone (the Engine's step).
TEST(Qwen2Batch, MixedPrefillAndDecodeOfThreeSequencesEqualAlone) {
    for (const auto& g : goldens()) {
        SCOPED_TRACE(g.name);
        const auto st = io::TensorStore::open(g.model);
        const auto cfg = io::ModelConfig::load(g.model);
        const auto dec = text::Qwen2<policy::fp32>::load(st, cfg.text);
        const Index H = dec.hidden_size(), V = dec.vocab_size();
        ThreadPool pool(2);
        const std::vector<std::vector<std::int32_t>> prompts = {{5, 17, 3, 99, 42, 7, 8}, {200, 1, 0, 33, 9}, {11, 12, 13, 14, 15, 16, 2, 4, 6}};
        const std::vector<std::int32_t> next = {21, 22};  // decode tokens of sequences 0 and 1
        auto embed = [&](std::span<const std::int32_t> ids) {
            std::vector<float> x(ids.size() * std::size_t(H));
            for (std::size_t i = 0; i < ids.size(); ++i) dec.embed(ids[i], x.data() + i * std::size_t(H));
            return x;
        };
        const auto rope = dec.make_rope(64);
        auto ws = dec.make_workspace(32);
        for (auto kv : {text::KVType::f32, text::KVType::bf16}) {
            // Alone: each sequence by itself.
            std::vector<std::vector<float>> alone(3, std::vector<float>(std::size_t(V)));
            for (int s = 0; s < 3; ++s) {
                auto c = dec.make_cache(64, kv);
                auto x = embed(prompts[std::size_t(s)]);
                dec.forward(x.data(), Index(prompts[std::size_t(s)].size()), c, ws, rope, &pool, text::Logits::last,
                            alone[std::size_t(s)].data());
                if (s < 2) {
                    auto e = embed(std::span(&next[std::size_t(s)], 1));
                    dec.forward(e.data(), 1, c, ws, rope, &pool, text::Logits::last, alone[std::size_t(s)].data());
                }
            }
            // Batched: sequences 0 and 1 prefilled, then one step = their decode rows + the prompt of 2.
            auto pool_kv = std::make_shared<text::KVPool>(dec.kv_shape(), kv, std::size_t(1) << 22, 4);
            std::vector<text::KVSeq> seqs;
            for (int s = 0; s < 3; ++s) seqs.emplace_back(pool_kv, 40);
            std::vector<float> scratch(static_cast<std::size_t>(V));
            for (int s = 0; s < 2; ++s) {
                auto x = embed(prompts[std::size_t(s)]);
                dec.forward(x.data(), Index(prompts[std::size_t(s)].size()), seqs[std::size_t(s)], ws, rope, &pool,
                            text::Logits::last, scratch.data());
            }
            std::vector<float> x = embed(next);
            const auto x2 = embed(prompts[2]);
            x.insert(x.end(), x2.begin(), x2.end());
            const std::vector<text::BatchSeq> batch = {{&seqs[0], 1, true, text::Logits::last},
                                                       {&seqs[1], 1, true, text::Logits::last},
                                                       {&seqs[2], Index(prompts[2].size()), false, text::Logits::last}};
            std::vector<float> out(static_cast<std::size_t>(3 * V));
            dec.forward_batch(x.data(), batch, ws, rope, &pool, out.data());
            for (int s = 0; s < 3; ++s) {
                const float* got = out.data() + s * V;
                const float m = max_abs(alone[std::size_t(s)].data(), std::size_t(V));
                const float d = max_diff(got, alone[std::size_t(s)].data(), std::size_t(V));
                EXPECT_LE(d, 1e-5f * m) << "sequence " << s << (kv == text::KVType::bf16 ? " (bf16 KV)" : " (f32 KV)");
                EXPECT_EQ(d, 0.f) << "rows of a batch are meant to be bit-identical to running alone";
            }
            EXPECT_EQ(seqs[0].size(), Index(prompts[0].size()) + 1);
            EXPECT_EQ(seqs[2].size(), Index(prompts[2].size()));
        }
        // Pages return to the pool when the sequences end.
        auto p = std::make_shared<text::KVPool>(dec.kv_shape(), text::KVType::bf16, std::size_t(1) << 20, 4);
        {
            text::KVSeq a(p, 20);
            a.ensure(9);
            EXPECT_EQ(p->used_pages(), 3);
            EXPECT_EQ(p->reserved_pages(), 5);
        }
        EXPECT_EQ(p->used_pages(), 0);
        EXPECT_EQ(p->reserved_pages(), 0);
    }
}

TEST(Qwen2Golden, KvCacheDecodeEqualsFullRecompute) {
    for (const auto& g : goldens()) {
        SCOPED_TRACE(g.name);
        const auto st = io::TensorStore::open(g.model);
        const auto cfg = io::ModelConfig::load(g.model);
        const auto dec = text::Qwen2<policy::fp32>::load(st, cfg.text);
        const Index H = dec.hidden_size(), V = dec.vocab_size();
        std::vector<std::int32_t> ids = {5, 17, 3, 99, 42, 7, 8, 200, 1, 0, 33};
        auto embed_all = [&](Index n) {
            std::vector<float> x(std::size_t(n * H));
            for (Index i = 0; i < n; ++i) dec.embed(ids[std::size_t(i)], x.data() + i * H);
            return x;
        };
        auto ws = dec.make_workspace();
        const auto rope = dec.make_rope(64);
        // incremental: prefill 4, then one token at a time
        auto cache = dec.make_cache(64);
        auto x = embed_all(4);
        std::vector<float> inc(static_cast<std::size_t>(V)), full(static_cast<std::size_t>(V));
        dec.forward(x.data(), 4, cache, ws, rope, nullptr, text::Logits::last, inc.data());
        for (std::size_t i = 4; i < ids.size(); ++i) {
            std::vector<float> e(static_cast<std::size_t>(H));
            dec.embed(ids[i], e.data());
            dec.forward(e.data(), 1, cache, ws, rope, nullptr, text::Logits::last, inc.data());
        }
        auto cache2 = dec.make_cache(64);
        auto x2 = embed_all(Index(ids.size()));
        dec.forward(x2.data(), Index(ids.size()), cache2, ws, rope, nullptr, text::Logits::last, full.data());
        EXPECT_EQ(cache.size(), cache2.size());
        EXPECT_LT(max_diff(inc.data(), full.data(), inc.size()), 1e-5f * max_abs(full.data(), full.size()));
    }
}

TEST(Qwen2Golden, ContextOverflowNamesTheLimit) {
    const auto g = goldens().front();
    const auto st = io::TensorStore::open(g.model);
    const auto cfg = io::ModelConfig::load(g.model);
    const auto dec = text::Qwen2<policy::fp32>::load(st, cfg.text);
    auto cache = dec.make_cache(3);
    auto ws = dec.make_workspace();
    const auto rope = dec.make_rope(3);
    std::vector<float> x(std::size_t(4 * dec.hidden_size()), 0.1f), logits(std::size_t(dec.vocab_size()));
    try {
        dec.forward(x.data(), 4, cache, ws, rope, nullptr, text::Logits::last, logits.data());
        FAIL() << "expected an overflow error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("context of 3 tokens"), std::string::npos) << e.what();
    }
    EXPECT_THROW(dec.make_cache(cfg.text.max_position_embeddings + 1), Error);
    EXPECT_THROW(dec.embed(dec.vocab_size(), x.data()), Error);
    EXPECT_THROW(dec.embed(-200, x.data()), Error);
}

// Errors of the reduced-precision policies against the same goldens, measured and bounded.
template <class Policy>
void check_policy(float max_rel_logits, int min_equal_ids) {
    for (const auto& g : goldens()) {
        SCOPED_TRACE(g.name);
        const auto io = io::TensorStore::open(g.io);
        const DecodeRun r = run_golden<Policy>(g, nullptr);
        const Err el = compare(io, "prefill_logits", r.prefill_logits.data(), r.prefill_logits.size());
        const Err es = compare(io, "step_logits", r.step_logits.data(), r.step_logits.size());
        const auto ref_ids = io.load_i64("generated_ids");
        int same = 0;
        for (std::size_t i = 0; i < ref_ids.size() && ref_ids[i] == r.ids[i]; ++i) ++same;
        std::printf("[%s %s] prefill_logits max err %.4g (rel %.4g of max %.3g)  step_logits rel %.4g  greedy ids equal "
                    "for the first %d of %zu\n",
                    g.name.c_str(), Policy::name, el.abs, el.rel(), el.ref_max, es.rel(), same, ref_ids.size());
        EXPECT_LT(el.rel(), max_rel_logits);
        EXPECT_GE(same, min_equal_ids);
    }
}

TEST(Qwen2Golden, Bf16PolicyError) { check_policy<policy::bf16>(3e-2f, 6); }
// Bounds = measured errors (printed) with ~1.5x margin; the tiny random models amplify weight rounding.
TEST(Qwen2Golden, Int8PolicyError) { check_policy<policy::int8>(0.15f, 4); }
TEST(Qwen2Golden, Int4PolicyError) { check_policy<policy::int4>(1.0f, 0); }

TEST(Qwen2Load, MissingTensorAndWrongShapeNameTheTensor) {
    const auto g = goldens().front();
    const auto cfg = io::ModelConfig::load(g.model);
    const fs::path dir = fs::path(FASTVLM_BINARY_DIR) / "test_qwen2_bad";
    fs::create_directories(dir);
    const auto st = io::TensorStore::open(g.model);
    // Copy every tensor but one; then one with a wrong shape.
    auto write_variant = [&](const std::string& drop, const std::string& reshape) {
        std::vector<std::vector<float>> keep;
        std::vector<io::WriteTensor> ts;
        for (const auto& name : st.names()) {
            const auto& t = st.at(name);
            if (name == drop || !io::is_float_dtype(t.dtype)) continue;
            keep.push_back(st.load_f32(name, t.shape));
            std::vector<Index> shape = t.shape;
            if (name == reshape) shape = {1, Index(keep.back().size())};
            ts.push_back({name, io::DType::F32, shape, keep.back().data()});
        }
        io::write_safetensors(dir / "model.safetensors", ts);
    };
    const std::string victim = "model.layers.1.self_attn.k_proj.weight";
    write_variant(victim, "");
    try {
        text::Qwen2<policy::fp32>::load(io::TensorStore::open(dir), cfg.text);
        FAIL() << "expected a missing-tensor error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(victim), std::string::npos) << e.what();
    }
    write_variant("", victim);
    try {
        text::Qwen2<policy::fp32>::load(io::TensorStore::open(dir), cfg.text);
        FAIL() << "expected a shape error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(victim), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("expected shape"), std::string::npos) << e.what();
    }
    write_variant("model.mm_projector.2.bias", "");
    EXPECT_THROW(text::Projector<policy::fp32>::load(io::TensorStore::open(dir), cfg), Error);
    fs::remove_all(dir);
}

}  // namespace
