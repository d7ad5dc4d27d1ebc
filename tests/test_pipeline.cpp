// The pipeline (fastvlm.hpp): pixels → vision → projector → decoder on the golden tiny model of the
// original implementation, the full text path (tokenizer, ChatML, multi-turn KV cache) on the same
// model with the small test tokenizer, bad model folders, context limits, sampling determinism,
// cancellation, and several threads sharing one model.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "fastvlm/fastvlm.hpp"
#include "support.hpp"

namespace fs = std::filesystem;
using namespace fastvlm;
using namespace test_support;

namespace {

const fs::path kGolden = fs::path(FASTVLM_SHARED_DIR) / "golden";
const fs::path kTiny = kGolden / "tiny-vlm";
const fs::path kTinyIo = kGolden / "tiny_vlm_io.safetensors";

float max_abs(std::span<const float> a) {
    float m = 0;
    for (float v : a) m = std::max(m, std::fabs(v));
    return m;
}
float max_diff(std::span<const float> a, std::span<const float> b) {
    EXPECT_EQ(a.size(), b.size());
    float m = 0;
    for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
    return m;
}

std::vector<std::int32_t> golden_ids(const io::TensorStore& io) {
    std::vector<std::int32_t> ids;
    for (auto v : io.load_i64("input_ids")) ids.push_back(std::int32_t(v));
    return ids;
}

// ---- golden, pixels to logits ---------------------------------------------------------------------------
TEST(PipelineGolden, PixelsToLogitsAndGreedyIds) {
    const auto io = io::TensorStore::open(kTinyIo);
    const auto model = Model<policy::fp32>::load(kTiny, {.threads = 2, .kv_type = text::KVType::f32});
    const auto& pv = io.at("pixel_values");
    Tensor<float, 3> px({pv.shape[1], pv.shape[2], pv.shape[3]});
    io.load_f32_into("pixel_values", pv.shape, px.span());

    const auto feats = model.encode_image(px);
    const auto ref_f = io.load_f32("image_features", io.at("image_features").shape);
    const float ef = max_diff(feats.span(), ref_f);
    const auto tokens = model.project(feats);
    const auto ref_p = io.load_f32("image_features_projected", io.at("image_features_projected").shape);
    const float ep = max_diff(tokens.span(), ref_p);

    Session s(model);
    const auto ids = golden_ids(io);
    const auto logits = s.prefill(ids, tokens.view(), true);
    const auto ref_l = io.load_f32("prefill_logits", io.at("prefill_logits").shape);
    const float el = max_diff(logits.span(), ref_l);

    const auto ref_ids = io.load_i64("generated_ids");
    const auto ref_steps = io.load_f32("step_logits", io.at("step_logits").shape);
    const Index V = logits.dim(1);
    std::vector<float> steps;
    std::vector<float> cur(logits.data() + (logits.dim(0) - 1) * V, logits.data() + logits.dim(0) * V);
    std::vector<std::int64_t> got;
    for (std::size_t i = 0; i < ref_ids.size(); ++i) {
        steps.insert(steps.end(), cur.begin(), cur.end());
        got.push_back(text::argmax(cur.data(), cur.size()));
        const auto next = s.step(std::int32_t(got.back()));
        cur.assign(next.begin(), next.end());
    }
    const float es = max_diff(steps, ref_steps);
    std::printf("[pixels->logits fp32] image_features %.3g (max %.3g)  projected %.3g  prefill_logits %.3g (rel %.3g)  "
                "step_logits %.3g (rel %.3g)\n",
                ef, max_abs(ref_f), ep, el, el / max_abs(ref_l), es, es / max_abs(ref_steps));
    EXPECT_LT(ef, 1e-4f * max_abs(ref_f));    // vision f32 vs f64 reference
    EXPECT_LT(el, 1e-4f * max_abs(ref_l));    // acceptance: 1e-4 x max|ref|
    EXPECT_LT(es, 1e-4f * max_abs(ref_steps));
    EXPECT_EQ(got, ref_ids);

    // generate() with greedy options reaches the same ids (no tokenizer: no stop ids, vocab unmasked).
    Session s2(model);
    const auto r = s2.generate(ids, tokens.view(), {.max_new_tokens = int(ref_ids.size())});
    EXPECT_EQ(std::vector<std::int64_t>(r.ids.begin(), r.ids.end()), ref_ids);
    EXPECT_EQ(r.stop, StopReason::max_tokens);
    EXPECT_EQ(r.timings.prefill_tokens, Index(ids.size()) - 1 + 16);
    EXPECT_EQ(r.timings.decode_tokens, Index(ref_ids.size()) - 1);
}

TEST(PipelineGolden, AnyModelPicksThePolicyAtRunTime) {
    const auto io = io::TensorStore::open(kTinyIo);
    const auto& pv = io.at("pixel_values");
    Tensor<float, 3> px({pv.shape[1], pv.shape[2], pv.shape[3]});
    io.load_f32_into("pixel_values", pv.shape, px.span());
    const auto ref_ids = io.load_i64("generated_ids");
    for (const char* prec : {"fp32", "bf16"}) {
        auto m = load_model(kTiny, prec, {.threads = 1, .kv_type = text::KVType::f32});
        EXPECT_STREQ(m->precision(), prec);
        EXPECT_EQ(m->tokenizer(), nullptr);
        auto s = m->new_session();
        const auto r = s->generate(golden_ids(io), m->project(m->encode_image(px)).view(), {.max_new_tokens = 8});
        // bf16 keeps the greedy ids on this model (measured: equal, test_qwen2 states the logit error)
        EXPECT_EQ(std::vector<std::int64_t>(r.ids.begin(), r.ids.end()), ref_ids) << prec;
    }
    EXPECT_THROW(load_model(kTiny, "fp8"), Error);
}

// decode_weight_bytes() is what one decode step streams: the decoder's matrices and lm_head, counted here
// from config.json (f32: 4 bytes per weight, rows padded to panels of 16), not the vision tower.
TEST(Pipeline, DecodeWeightBytesCountsTheDecoderMatrices) {
    const auto m = Model<policy::fp32>::load(kTiny, {.threads = 1});
    const auto& c = m.config().text;
    auto mat = [](std::size_t n, std::size_t k) { return (n + 15) / 16 * 16 * k * 4; };
    const std::size_t H = std::size_t(c.hidden_size), I = std::size_t(c.intermediate_size),
                      q = std::size_t(c.num_attention_heads * c.head_dim), kv = std::size_t(c.kv_dim());
    std::size_t want = mat(std::size_t(c.vocab_size), H);
    for (int l = 0; l < c.num_hidden_layers; ++l) want += mat(q + 2 * kv, H) + mat(H, q) + mat(2 * I, H) + mat(H, I);
    EXPECT_EQ(m.decode_weight_bytes(), want);
    EXPECT_LT(m.decode_weight_bytes(), m.weight_bytes());
    const auto any = load_model(kTiny, "int8", {.threads = 1});
    EXPECT_LT(any->decode_weight_bytes(), want) << "int8 (k padded to 128 per superblock) streams fewer bytes than f32";
}

// The weights' memory is estimated from the tensor shapes before anything is read: the estimate is
// close to what the loaded model holds, and a load that would not fit is refused naming the limit.
template <class P>
void check_weight_estimate() {
    const auto store = io::TensorStore::open(kTiny);
    const double est = detail::estimated_weight_bytes<P>(store, true);
    const auto m = Model<P>::load(kTiny, {.threads = 1});
    const double held = double(m.weight_bytes());
    EXPECT_NEAR(est / held, 1.0, 0.25) << P::name << ": estimated " << est << " B, loaded " << held << " B";
    const auto need = static_cast<std::uint64_t>(est);
    io::LoadLimits lim;
    lim.max_weight_bytes = need / 2;
    const auto e = error_of([&] { Model<P>::load(kTiny, {.threads = 1, .limits = lim}); });
    for (const char* part : {"with precision", "weights need about", "max_weight_bytes", P::name})
        EXPECT_NE(e.find(part), std::string::npos) << "'" << part << "' not in: " << e;
    lim.max_weight_bytes = need * 2;
    EXPECT_NO_THROW(Model<P>::load(kTiny, {.threads = 1, .limits = lim}));
}
TEST(PipelineErrors, WeightMemoryIsCheckedBeforeLoading) {
    check_weight_estimate<policy::fp32>();
    check_weight_estimate<policy::bf16>();
    check_weight_estimate<policy::int8>();
    check_weight_estimate<policy::int4>();
    // The default (0) compares with the memory available now: the tiny model fits on any machine.
    EXPECT_GT(detail::available_memory_bytes(), 0.0);
    EXPECT_NO_THROW(Model<policy::fp32>::load(kTiny, {.threads = 1}));
}

// ---- bad model folders ---------------------------------------------------------------------------------
TEST(PipelineErrors, BadModelFoldersNameTheProblem) {
    {
        TempDir d("test_pipeline_", "noconfig");
        fs::create_symlink(fs::absolute(kTiny / "model.safetensors"), d.path / "model.safetensors");
        const auto e = error_of([&] { Model<>::load(d.path); });
        EXPECT_NE(e.find("config.json"), std::string::npos) << e;
    }
    {
        TempDir d("test_pipeline_", "badjson");
        std::ofstream(d.path / "config.json") << "{\"hidden_size\": 64,, }";
        fs::create_symlink(fs::absolute(kTiny / "model.safetensors"), d.path / "model.safetensors");
        const auto e = error_of([&] { Model<>::load(d.path); });
        EXPECT_NE(e.find("config.json"), std::string::npos) << e;
    }
    {
        TempDir d("test_pipeline_", "noweights");
        fs::copy_file(kTiny / "config.json", d.path / "config.json");
        const auto e = error_of([&] { Model<>::load(d.path); });
        EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;
    }
    const auto st = io::TensorStore::open(kTiny);
    auto write_variant = [&](const fs::path& dir, const std::string& drop, const std::string& reshape) {
        fs::copy_file(kTiny / "config.json", dir / "config.json", fs::copy_options::overwrite_existing);
        std::vector<std::vector<float>> keep;
        std::vector<io::WriteTensor> ts;
        keep.reserve(st.size());
        for (const auto& name : st.names()) {
            const auto& t = st.at(name);
            if (name == drop) continue;
            if (!io::is_float_dtype(t.dtype)) continue;  // num_batches_tracked: unused
            keep.push_back(st.load_f32(name, t.shape));
            std::vector<Index> shape = t.shape;
            if (name == reshape) shape = {1, Index(keep.back().size())};
            ts.push_back({name, io::DType::F32, shape, keep.back().data()});
        }
        io::write_safetensors(dir / "model.safetensors", ts);
    };
    for (const std::string victim : {"model.layers.0.mlp.up_proj.weight", "model.mm_projector.0.weight", "model.norm.weight",
                                     "model.vision_tower.vision_tower.model.conv_exp.se.reduce.weight"}) {
        TempDir d("test_pipeline_", "missing");
        write_variant(d.path, victim, "");
        const auto e = error_of([&] { Model<>::load(d.path); });
        EXPECT_NE(e.find(victim), std::string::npos) << e;
        write_variant(d.path, "", victim);
        const auto e2 = error_of([&] { Model<>::load(d.path); });
        EXPECT_NE(e2.find(victim), std::string::npos) << e2;
        EXPECT_NE(e2.find("shape"), std::string::npos) << e2;
    }
}

// ---- context limit ---------------------------------------------------------------------------------------
// LoadOptions::image_size: another input side (a multiple of 64) gives (S/64)² image tokens from the same
// tower weights — exactly what the tower computes on pixels of that side — and a prompt that uses them;
// sizes that are not multiples of the stride, or above LoadLimits::max_image_size, name the option.
TEST(PipelineImageSize, SmallerSideFewerTokensSameTower) {
    const auto m = Model<>::load(kTiny, {.threads = 1, .kv_type = text::KVType::f32, .image_size = 128});
    EXPECT_EQ(m.config().vision.image_size, 128);
    io::Image img;
    img.width = 96, img.height = 160;  // not square: padded, then resized to 128²
    img.rgb.resize(std::size_t(img.width * img.height * 3));
    for (std::size_t i = 0; i < img.rgb.size(); ++i) img.rgb[i] = std::uint8_t(i * 37 % 251);
    const auto px = m.preprocess(img);
    EXPECT_EQ(px.shape(), (std::array<Index, 3>{3, 128, 128}));
    const auto feats = m.encode_image(px.view());
    EXPECT_EQ(feats.dim(0), 4);  // (128/64)²
    // The same tower loaded at the config's side (256), run on the 128² pixels directly: identical features.
    const auto store = io::TensorStore::open(kTiny);
    const auto cfg = io::ModelConfig::load(kTiny).vision;
    ASSERT_EQ(cfg.image_size, 256);
    const auto tower = vision::FastViTHD<policy::fp32>::load(store, cfg, vision::kCheckpointPrefix);
    const auto ref = tower.forward(px.view(), nullptr);
    ASSERT_EQ(ref.dim(0), feats.dim(0));
    EXPECT_EQ(max_diff(feats.span(), ref.span()), 0.f);
    // The 256² model refuses 128² pixels; the 128² model answers with 4 image positions.
    const auto m256 = Model<>::load(kTiny, {.threads = 1});
    EXPECT_THROW(m256.encode_image(px.view()), Error);
    Session s(m);
    const auto io = io::TensorStore::open(kTinyIo);
    const auto r = s.generate(golden_ids(io), m.project(feats.view()).view(), {.max_new_tokens = 3});
    EXPECT_EQ(r.ids.size(), 3u);
    EXPECT_EQ(r.timings.prefill_tokens, Index(golden_ids(io).size()) - 1 + 4);
    for (int bad : {100, -64, 64 * 1000}) {
        const auto e = error_of([&] { Model<>::load(kTiny, {.threads = 1, .image_size = bad}); });
        EXPECT_NE(e.find("LoadOptions::image_size = " + std::to_string(bad)), std::string::npos) << e;
        EXPECT_NE(e.find(bad == 64 * 1000 ? "max_image_size" : "multiple of the vision tower's total stride"), std::string::npos) << e;
    }
}

TEST(PipelineErrors, PromptLongerThanTheContextNamesTheLimit) {
    const auto io = io::TensorStore::open(kTinyIo);
    const auto model = Model<>::load(kTiny, {.threads = 1, .context = 30});
    Tensor<float, 2> feats({16, 256});
    std::fill(feats.span().begin(), feats.span().end(), 0.01f);
    const auto tokens = model.project(feats);
    const auto ids = golden_ids(io);  // 27 positions after the image expansion
    Session s(model);
    auto e = error_of([&] { s.generate(ids, tokens.view(), {.max_new_tokens = 8}); });  // 27 + 7 > 30
    EXPECT_NE(e.find("context of 30 tokens"), std::string::npos) << e;
    EXPECT_EQ(s.position(), 0) << "nothing may run when the prompt cannot fit";
    EXPECT_NO_THROW(s.generate(ids, tokens.view(), {.max_new_tokens = 4}));  // 27 + 3 = 30 fits exactly
    e = error_of([&] { Session big(model, {.context = 40000}); });
    EXPECT_NE(e.find("max_position_embeddings"), std::string::npos) << e;
    e = error_of([&] { Model<>::load(kTiny, {.context = 1 << 20}); });
    EXPECT_NE(e.find("max_position_embeddings"), std::string::npos) << e;
    // placeholder / image mismatches
    Session s2(model);
    EXPECT_THROW(s2.generate(std::vector<std::int32_t>{1, 2, 3}, tokens.view(), {}), Error);
    EXPECT_THROW(s2.generate(ids, std::nullopt, {}), Error);
    EXPECT_THROW(s2.generate(std::vector<std::int32_t>{1, 300}, std::nullopt, {}), Error);  // id >= vocab_size
}

// ---- sampling, cancellation, threads ------------------------------------------------------------------
TEST(PipelineGeneration, SeededSamplingIsDeterministic) {
    const auto io = io::TensorStore::open(kTinyIo);
    const auto model = Model<>::load(kTiny, {.threads = 1, .load_vision = false});
    Tensor<float, 2> feats({16, 256});
    for (Index i = 0; i < feats.size(); ++i) feats.data()[i] = 0.05f * float(std::sin(0.37 * double(i)));
    const auto tokens = model.project(feats);
    auto draw = [&](std::uint64_t seed) {
        Session s(model);
        return s.generate(golden_ids(io), tokens.view(), {.max_new_tokens = 24, .sampling = {.temperature = 1.0f, .top_k = 40, .seed = seed}})
            .ids;
    };
    const auto a = draw(11);
    EXPECT_EQ(a, draw(11));
    EXPECT_EQ(a.size(), 24u);
    bool differs = false;
    for (std::uint64_t seed : {12, 13, 14}) differs = differs || draw(seed) != a;
    EXPECT_TRUE(differs) << "different seeds should give different samples";
    EXPECT_THROW(model.encode_image(Tensor<float, 3>({3, 256, 256})), Error);  // vision not loaded
}

TEST(PipelineGeneration, CancellationStopsAfterTheCurrentToken) {
    const auto io = io::TensorStore::open(kTinyIo);
    const auto model = Model<>::load(kTiny, {.threads = 1, .load_vision = false});
    const auto tokens = model.project(Tensor<float, 2>::zeros({16, 256}));
    std::atomic<bool> cancel{false};
    int seen = 0;
    Session s(model);
    const auto r = s.generate(golden_ids(io), tokens.view(),
                              {.max_new_tokens = 50,
                               .on_token = [&](std::int32_t id, std::string_view) {
                                   if (id >= 0 && ++seen == 3) cancel = true;
                               },
                               .cancel = &cancel});
    EXPECT_EQ(r.stop, StopReason::cancelled);
    EXPECT_EQ(r.ids.size(), 3u);
    EXPECT_EQ(s.position(), 27 + 2);  // prompt + the two tokens fed before the cancel
}

TEST(PipelineGeneration, TwoThreadsTwoSessionsOneModel) {
    const auto io = io::TensorStore::open(kTinyIo);
    const auto model = Model<>::load(kTiny, {.threads = 2});
    const auto& pv = io.at("pixel_values");
    Tensor<float, 3> px({pv.shape[1], pv.shape[2], pv.shape[3]});
    io.load_f32_into("pixel_values", pv.shape, px.span());
    const auto ids = golden_ids(io);
    auto job = [&](ThreadPool* pool) {
        Session s(model, {.pool = pool});
        const auto t = model.project(model.encode_image(px, pool), pool);
        return s.generate(ids, t.view(), {.max_new_tokens = 8}).ids;
    };
    const auto ref = job(nullptr);
    std::vector<std::int32_t> a, b, c, d;
    ThreadPool p1(1), p2(1);
    std::thread t1([&] { a = job(&p1); }), t2([&] { b = job(&p2); });
    std::thread t3([&] { c = job(nullptr); }), t4([&] { d = job(nullptr); });  // both on the model's shared pool
    t1.join(), t2.join(), t3.join(), t4.join();
    EXPECT_EQ(a, ref);
    EXPECT_EQ(b, ref);
    EXPECT_EQ(c, ref);
    EXPECT_EQ(d, ref);
    const auto want = io.load_i64("generated_ids");
    EXPECT_EQ(std::vector<std::int64_t>(ref.begin(), ref.end()), want);
}

// ---- text path: tokenizer, prompt, multi-turn ---------------------------------------------------------
TEST(PipelineText, DescribeAndMultiTurnReuseTheKvCache) {
    TempDir d("test_pipeline_", "text");
    make_text_model(d.path);
    const auto model = Model<>::load(d.path, {.threads = 2});
    const auto& tok = model.tokenizer();
    EXPECT_EQ(model.valid_vocab(), 276);  // len(tokenizer) < vocab_size 300: ids >= 276 masked (spec §5.5)
    const auto img = test_image(40, 24);

    Session s(model);
    std::string streamed;
    int calls = 0;
    const auto r1 = s.describe(img, "What is it?", {.max_new_tokens = 12, .on_token = [&](std::int32_t, std::string_view t) {
                                                      streamed += t;
                                                      ++calls;
                                                  }});
    EXPECT_FALSE(r1.ids.empty());
    for (auto id : r1.ids) EXPECT_LT(id, 276);
    EXPECT_EQ(streamed, r1.text);
    EXPECT_EQ(calls, int(r1.ids.size()) + 1);
    EXPECT_EQ(r1.text, tok.decode(r1.ids, true));
    EXPECT_GT(r1.timings.vision_ms, 0);
    EXPECT_GT(r1.timings.ttft_ms, r1.timings.prefill_ms);

    // Prompt ids: ChatML as in spec §5.2 with <image> → −200.
    const std::string p1 = text::image_prompt("What is it?");
    const auto ids1 = text::tokenize_with_image(p1, [&](const std::string& x) { return tok.encode(x); });
    EXPECT_EQ(std::count(ids1.begin(), ids1.end(), text::kImageTokenIndex), 1);
    EXPECT_EQ(ids1.front(), *tok.token_id("<|im_start|>"));

    const auto r2 = s.chat("And the colours?", {.max_new_tokens = 6});
    // Same conversation in one prefill from a fresh session: identical greedy ids.
    std::vector<std::int32_t> all = ids1;
    all.insert(all.end(), r1.ids.begin(), r1.ids.end());
    // (a last token sampled at max_new_tokens is fed first by the session: it is in r1.ids too)
    const auto cont = tok.encode(text::continuation_prompt("And the colours?"));
    all.insert(all.end(), cont.begin(), cont.end());
    Session fresh(model);
    const auto px = model.preprocess(img);
    const auto tokens = model.project(model.encode_image(px));
    const auto r2b = fresh.generate(all, tokens.view(), {.max_new_tokens = 6});
    EXPECT_EQ(r2.ids, r2b.ids);
    EXPECT_EQ(s.position(), fresh.position());
    EXPECT_THROW(s.chat(std::string("\xff bad utf-8"), {}), Error);
}

}  // namespace
