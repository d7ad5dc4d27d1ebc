// Qwen2 decoder, projector, RoPE and GQA kernels: kernels against their scalar references (odd
// sizes), the decoder against the golden data of the original implementation (../shared/golden
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
#include "fastvlm/kernels/attention_gqa.hpp"
#include "fastvlm/kernels/rope.hpp"
#include "fastvlm/text/chat.hpp"
#include "fastvlm/text/projector.hpp"
#include "fastvlm/text/qwen2.hpp"
#include "fastvlm/text/sampling.hpp"

namespace fs = std::filesystem;
using namespace fastvlm;

namespace {

std::vector<float> random_vec(std::size_t n, std::uint64_t seed, float scale = 1.f) {
    std::mt19937_64 g(seed);
    std::normal_distribution<float> d(0.f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(g);
    return v;
}

float max_abs(const float* a, std::size_t n) {
    float m = 0;
    for (std::size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i]));
    return m;
}
float max_diff(const float* a, const float* b, std::size_t n) {
    float m = 0;
    for (std::size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
    return m;
}

// ---- RoPE ------------------------------------------------------------------------------------------
TEST(Rope, TableMatchesReference) {
    for (Index d : {2, 6, 16, 34, 64, 128})
        for (Index heads : {1, 3})
            for (Index T : {1, 5})
                for (Index p0 : {0, 77, 1000}) {
                    for (double theta : {1e4, 1e6}) {
                        const Index ld = heads * d + 3;  // padded rows
                        auto x = random_vec(std::size_t(T * ld), std::uint64_t(d * 7 + T + p0));
                        auto y = x;
                        RopeTable table(d, p0 + T + 1, theta);
                        table.apply(x.data(), T, ld, heads, p0);
                        rope_ref(y.data(), T, ld, heads, d, p0, theta);
                        // float table vs double angles: |error| <= ~2 ulp of values of size ~3
                        EXPECT_LT(max_diff(x.data(), y.data(), x.size()), 2e-6f) << "d=" << d << " T=" << T << " p0=" << p0;
                    }
                }
}

TEST(Rope, PositionZeroIsIdentityAndErrorsNameTheLimit) {
    RopeTable t(8, 4, 1e6);
    auto x = random_vec(8, 1);
    auto y = x;
    t.apply(x.data(), 1, 8, 1, 0);
    EXPECT_EQ(x, y);
    try {
        t.apply(x.data(), 1, 8, 1, 4);
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("4 positions"), std::string::npos) << e.what();
    }
    EXPECT_THROW(RopeTable(7, 4, 1e6), Error);
}

// ---- GQA attention -----------------------------------------------------------------------------------
struct AttnCase {
    Index hq, hkv, d, T, p0;
};

TEST(AttentionGQA, MatchesReferenceOnOddSizes) {
    ThreadPool pool(2);
    const AttnCase cases[] = {{4, 2, 16, 1, 0},  {4, 2, 16, 27, 0}, {14, 2, 64, 1, 300}, {14, 2, 64, 40, 13},
                              {3, 1, 7, 9, 4},   {6, 3, 33, 5, 100}, {2, 2, 1, 3, 2},     {12, 2, 128, 1, 1000},
                              {5, 5, 17, 70, 0}, {6, 2, 16, 33, 31}};
    for (const auto& c : cases) {
        const AttentionDims dims{c.hq, c.hkv, c.d};
        const Index ldq = c.hq * c.d + 5, ldkv = c.hkv * c.d, ldo = c.hq * c.d + 1, n = c.p0 + c.T;
        auto q = random_vec(std::size_t(c.T * ldq), 1 + c.d);
        auto k = random_vec(std::size_t(n * ldkv), 2 + c.d);
        auto v = random_vec(std::size_t(n * ldkv), 3 + c.d);
        std::vector<float> ref(std::size_t(c.T * ldo), 0.f), out1(ref.size(), 0.f), out2(ref.size(), 0.f);
        attention_gqa_ref(q.data(), ldq, k.data(), v.data(), ldkv, ref.data(), ldo, c.T, c.p0, dims);
        attention_gqa(q.data(), ldq, k.data(), v.data(), ldkv, out1.data(), ldo, c.T, c.p0, dims, nullptr);
        attention_gqa(q.data(), ldq, k.data(), v.data(), ldkv, out2.data(), ldo, c.T, c.p0, dims, &pool);
        // f32 accumulation vs double: outputs are convex combinations of N(0,1) values.
        EXPECT_LT(max_diff(out1.data(), ref.data(), ref.size()), 2e-5f) << c.hq << "/" << c.hkv << " d=" << c.d << " T=" << c.T;
        EXPECT_EQ(out1, out2) << "threaded result must equal the serial one bit for bit";
    }
}

TEST(AttentionGQA, CausalMaskIgnoresFutureKeys) {
    // Changing the key/value of position p must not change query rows at positions < p.
    const AttentionDims dims{4, 2, 8};
    const Index T = 6, ld = 16;
    auto q = random_vec(std::size_t(T * 32), 5);
    auto k = random_vec(std::size_t(T * ld), 6);
    auto v = random_vec(std::size_t(T * ld), 7);
    std::vector<float> a(std::size_t(T * 32)), b(a.size());
    attention_gqa(q.data(), 32, k.data(), v.data(), ld, a.data(), 32, T, 0, dims, nullptr);
    for (Index i = 4 * ld; i < 5 * ld; ++i) k[std::size_t(i)] += 1.f, v[std::size_t(i)] -= 1.f;
    attention_gqa(q.data(), 32, k.data(), v.data(), ld, b.data(), 32, T, 0, dims, nullptr);
    EXPECT_TRUE(std::equal(a.begin(), a.begin() + 4 * 32, b.begin()));
    EXPECT_FALSE(std::equal(a.begin() + 4 * 32, a.end(), b.begin() + 4 * 32));
    EXPECT_THROW(attention_gqa(q.data(), 32, k.data(), v.data(), ld, a.data(), 32, T, 0, AttentionDims{3, 2, 8}, nullptr),
                 Error);
}

TEST(AttentionGQA, PagedBf16RowsEqualContiguousAndBatchesAreIndependent) {
    // The decode path reads keys/values from bf16 pages of a few positions (text/kv_cache.hpp). With values
    // that bf16 holds exactly, any page size gives the contiguous float result bit for bit, and a
    // sequence's rows do not depend on the other sequences of the call. Head sizes cover the register
    // tiles of the value pass (1–7 heads per KV head, 1–8 vectors per head, a column tail).
    ThreadPool pool(2);
    const AttnCase cases[] = {{14, 2, 64, 1, 300}, {14, 2, 64, 9, 40}, {12, 2, 128, 1, 77}, {7, 1, 33, 3, 20},
                              {28, 4, 128, 1, 50}, {5, 5, 17, 4, 10},  {8, 1, 256, 2, 31}, {2, 1, 8, 1, 0}};
    for (const auto& c : cases) {
        const AttentionDims dims{c.hq, c.hkv, c.d};
        const Index ldq = c.hq * c.d, ldkv = c.hkv * c.d, n = c.p0 + c.T;
        auto q = random_vec(std::size_t(c.T * ldq), 11 + c.d);
        auto k = random_vec(std::size_t(n * ldkv), 12 + c.d);
        auto v = random_vec(std::size_t(n * ldkv), 13 + c.d);
        for (auto* x : {&k, &v})
            for (float& f : *x) f = to_float(to_bf16(f));
        std::vector<float> want(std::size_t(c.T * ldq)), ref(want.size());
        attention_gqa(q.data(), ldq, k.data(), v.data(), ldkv, want.data(), ldq, c.T, c.p0, dims, &pool);
        attention_gqa_ref(q.data(), ldq, k.data(), v.data(), ldkv, ref.data(), ldq, c.T, c.p0, dims);
        EXPECT_LT(max_diff(want.data(), ref.data(), ref.size()), 2e-5f);
        for (Index page : {1, 3, 16, 64}) {
            // pages of `page` positions with gaps: V as rows (ld apart), K as columns (a channel's positions
            // side by side, channels cs apart), both after `off` elements, as the pool lays them out
            const Index ld = ldkv + 3, off = 2, cs = page + 5;
            std::vector<std::vector<bf16>> store;
            std::vector<const bf16*> kp, vp;
            for (Index p0 = 0; p0 < n; p0 += page) {
                std::vector<bf16> pg(std::size_t(off + ldkv * cs), bf16{});
                std::vector<bf16> pv(std::size_t(off + page * ld), bf16{});
                for (Index r = 0; r < page && p0 + r < n; ++r)
                    for (Index i = 0; i < ldkv; ++i) {
                        pg[std::size_t(off + i * cs + r)] = to_bf16(k[std::size_t((p0 + r) * ldkv + i)]);
                        pv[std::size_t(off + r * ld + i)] = to_bf16(v[std::size_t((p0 + r) * ldkv + i)]);
                    }
                store.push_back(std::move(pg)), store.push_back(std::move(pv));
            }
            for (std::size_t i = 0; i < store.size(); i += 2) kp.push_back(store[i].data()), vp.push_back(store[i + 1].data());
            std::vector<float> out(want.size(), -1.f), other(std::size_t(3 * ldq), -1.f);
            const KVRows<bf16> kr{kp.data(), page, 1, off, cs}, vr{vp.data(), page, ld, off};
            // a second sequence in the same call: up to 3 query rows over the first min(n, 5) positions
            const Index n2 = std::min<Index>(n, 5), t2 = std::min<Index>(3, n2);
            const auto q2 = random_vec(std::size_t(t2 * ldq), 14 + c.d);
            const AttentionSeq<bf16> seqs[] = {{q.data(), ldq, out.data(), ldq, c.T, c.p0, kr, vr},
                                               {q2.data(), ldq, other.data(), ldq, t2, n2 - t2, kr, vr}};
            attention_gqa_batch<bf16>(seqs, dims, &pool);
            EXPECT_EQ(out, want) << c.hq << "/" << c.hkv << " d=" << c.d << " T=" << c.T << " p0=" << c.p0 << " page=" << page;
            std::vector<float> alone(other.size(), -1.f);
            AttentionSeq<bf16> one = seqs[1];
            one.out = alone.data();
            attention_gqa_batch<bf16>(std::span<const AttentionSeq<bf16>>(&one, 1), dims, nullptr);
            EXPECT_EQ(other, alone) << "page=" << page;
        }
    }
}

TEST(KVPool, PagesComeFromOneHugePageRangeAndAreReused) {
    // A budget of at least 2 MiB is one address range with transparent huge pages (Linux); a smaller one
    // allocates page by page. Either way: distinct, aligned, writable pages, reused after they return.
    for (std::size_t budget : {std::size_t(8) << 20, std::size_t(1) << 20}) {
        const text::KVShape shape{24, 128};
        text::KVPool pool(shape, text::KVType::bf16, budget, 16);
        const Index total = pool.total_pages();
        ASSERT_GE(total, 5);
        std::vector<void*> pages;
        for (Index i = 0; i < total; ++i) {
            pages.push_back(pool.take_page());
            ASSERT_EQ(reinterpret_cast<std::uintptr_t>(pages.back()) % kAlignment, 0u);
            std::memset(pages.back(), int(i & 0x7f), pool.page_bytes());
        }
        EXPECT_THROW(pool.take_page(), Error);
        for (Index i = 0; i < total; ++i) {
            const auto* b = static_cast<const unsigned char*>(pages[std::size_t(i)]);
            ASSERT_EQ(b[0], i & 0x7f);
            ASSERT_EQ(b[pool.page_bytes() - 1], i & 0x7f) << "pages overlap";
        }
        EXPECT_EQ(pool.allocated_bytes(), std::size_t(total) * pool.page_bytes());
#if defined(__linux__)
        EXPECT_EQ(pool.huge_page_arena(), budget >= (std::size_t(2) << 20));
#endif
        pool.put_page(pages[2]);
        EXPECT_EQ(pool.take_page(), pages[2]);
        EXPECT_EQ(pool.allocated_bytes(), std::size_t(total) * pool.page_bytes());
        for (void* p : pages) pool.put_page(p);
        EXPECT_EQ(pool.used_pages(), 0);
    }
}

// ---- sampling and chat ----------------------------------------------------------------------------
TEST(Sampling, GreedyMaskAndSeededDeterminism) {
    std::vector<float> logits = {0.f, 3.f, 1.f, 3.f, 9.f};
    text::Sampler greedy;
    EXPECT_EQ(greedy.sample(logits, 5), 4);
    EXPECT_EQ(greedy.sample(logits, 4), 1);  // id 4 >= valid: masked; ties -> lowest id
    auto draw = [&](std::uint64_t seed, int k, float p) {
        text::Sampler s({.temperature = 1.5f, .top_k = k, .top_p = p, .seed = seed});
        std::vector<int> ids;
        for (int i = 0; i < 64; ++i) ids.push_back(s.sample(logits, 4));
        return ids;
    };
    EXPECT_EQ(draw(7, 0, 1.f), draw(7, 0, 1.f));
    EXPECT_NE(draw(7, 0, 1.f), draw(8, 0, 1.f));
    for (int id : draw(3, 0, 1.f)) EXPECT_LT(id, 4);
    for (int id : draw(3, 2, 1.f)) EXPECT_TRUE(id == 1 || id == 3);  // top-2 of the 4 valid ids
    for (int id : draw(3, 0, 0.3f)) EXPECT_TRUE(id == 1 || id == 3);  // nucleus: 1 and 3 hold 0.44 each
    EXPECT_THROW(text::Sampler({.temperature = -1.f}), Error);
    EXPECT_THROW(text::Sampler({.temperature = 1.f, .top_p = 0.f}), Error);
}

// The blocked argmax equals the plain first-largest loop on every length, with ties, NaN, ±inf and the
// maximum anywhere (block starts, block ends, the tail).
TEST(Sampling, ArgmaxEqualsPlainLoop) {
    auto plain = [](const std::vector<float>& v, std::size_t n) {
        std::size_t best = 0;
        for (std::size_t i = 1; i < n; ++i)
            if (v[i] > v[best]) best = i;
        return std::int32_t(best);
    };
    std::mt19937 g(5);
    std::uniform_real_distribution<float> u(-4.f, 4.f);
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    for (std::size_t n : {1, 2, 15, 16, 17, 31, 33, 64, 100, 1000, 151936}) {
        for (int trial = 0; trial < 12; ++trial) {
            std::vector<float> v(n);
            for (auto& x : v) x = trial % 3 == 0 ? float(int(u(g))) : u(g);  // integers: many ties
            if (trial == 1) v[n - 1] = 9.f;                                   // the last position
            if (trial == 2) v[n / 2] = 9.f, v[n - 1] = 9.f;                   // a tie: the first wins
            if (trial == 4) std::fill(v.begin(), v.end(), -inf);
            if (trial == 5) v[0] = nan;                                       // NaN first: nothing is larger
            if (trial == 6) for (std::size_t i = 0; i < n; i += 3) v[i] = nan;
            if (trial == 7) v[n - 1] = inf;
            if (trial == 8) for (std::size_t i = 0; i < n; ++i) v[i] = float(i);  // a new maximum every step
            SCOPED_TRACE(::testing::Message() << "n=" << n << " trial " << trial);
            EXPECT_EQ(text::argmax(v.data(), n), plain(v, n));
        }
    }
}

TEST(Chat, PromptAndImageSplit) {
    EXPECT_EQ(text::image_prompt("Describe the image."),
              "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nDescribe the "
              "image.<|im_end|>\n<|im_start|>assistant\n");
    std::vector<std::string> chunks;
    auto enc = [&](const std::string& s) {
        chunks.push_back(s);
        return std::vector<std::int32_t>{std::int32_t(s.size())};
    };
    EXPECT_EQ(text::tokenize_with_image("ab<image>\ncd", enc), (std::vector<std::int32_t>{2, -200, 3}));
    EXPECT_EQ(chunks, (std::vector<std::string>{"ab", "\ncd"}));
    EXPECT_EQ(text::tokenize_with_image("<image>", enc), (std::vector<std::int32_t>{-200}));
    EXPECT_EQ(text::parse_id_list("1, 2,-200,3"), (std::vector<std::int32_t>{1, 2, -200, 3}));
    EXPECT_THROW(text::parse_id_list("1,x"), Error);
    EXPECT_THROW(text::parse_id_list("99999999999"), Error);
}

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
