// fastvlm/fastvlm.hpp — the umbrella header and the pipeline (docs/api.md):
//   image → FastViTHD → mlp2x_gelu projector → spliced into the ChatML prompt → Qwen2 → text.
//
//   auto model = fastvlm::Model<>::load("FastVLM-0.5B");          // fp32 policy; one per process
//   fastvlm::Session session(model);                              // one per thread (KV cache)
//   auto r = session.describe("cat.jpg", "Describe the image.", {.on_token = print});
//
// A Model is immutable after load and shared (cheap copies of a handle); several threads may each
// run their own Session on it. AnyModel / load_model(dir, "bf16") pick the policy at run time.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fastvlm/core/error.hpp"
#include "fastvlm/core/policy.hpp"
#include "fastvlm/core/tensor.hpp"
#include "fastvlm/core/thread_pool.hpp"
#include "fastvlm/io/config.hpp"
#include "fastvlm/io/image.hpp"
#include "fastvlm/io/safetensors.hpp"
#include "fastvlm/text/chat.hpp"
#include "fastvlm/text/projector.hpp"
#include "fastvlm/text/qwen2.hpp"
#include "fastvlm/text/sampling.hpp"
#include "fastvlm/text/tokenizer.hpp"
#include "fastvlm/vision/fastvithd.hpp"

namespace fastvlm {

struct LoadOptions {
    unsigned threads = 0;     // thread pool size (the caller included); 0 = all hardware threads
    unsigned spin_us = 2000;  // pool workers spin this long between parallel regions before they sleep (0 = never spin)
    Index context = 0;        // default KV-cache positions per session; 0 = min(8192, max_position_embeddings)
    bool load_vision = true;  // false: text only, or image features computed elsewhere
    // Called while loading: fraction done in [0, 1] and the part being loaded.
    std::function<void(float fraction, std::string_view stage)> progress = {};
};

struct GenerateOptions {
    int max_new_tokens = 256;
    float temperature = 0.f;  // 0 = greedy (deterministic reference, spec §5.4)
    int top_k = 0;            // 0 = off
    float top_p = 1.f;        // 1 = off
    std::uint64_t seed = 0;
    std::vector<std::int32_t> stop_ids = {};  // empty: config eos ids + <|im_end|> + <|endoftext|>
    // Streaming: called for every generated token with the newly complete UTF-8 text (may be
    // empty while a character is split over tokens). The final call after the last token carries
    // id −1 and any held-back bytes.
    std::function<void(std::int32_t id, std::string_view text)> on_token = {};
    const std::atomic<bool>* cancel = nullptr;  // set to true from any thread to stop after the current token
};

enum class StopReason { eos, max_tokens, cancelled };

inline const char* to_string(StopReason s) {
    switch (s) {
        case StopReason::eos: return "eos";
        case StopReason::max_tokens: return "max_tokens";
        case StopReason::cancelled: return "cancelled";
    }
    return "?";
}

// Milliseconds. ttft: from the start of the call to the first sampled token (preprocess, vision,
// projector, prefill and the first sampling included).
struct Timings {
    double load_ms = 0, preprocess_ms = 0, vision_ms = 0, projector_ms = 0, prefill_ms = 0, ttft_ms = 0, decode_ms = 0;
    Index prefill_tokens = 0;  // positions run through the decoder in the prefill (image tokens included)
    Index decode_tokens = 0;   // single-token decoder steps
    double prefill_tok_s() const { return prefill_ms > 0 ? 1e3 * double(prefill_tokens) / prefill_ms : 0; }
    double decode_tok_s() const { return decode_ms > 0 ? 1e3 * double(decode_tokens) / decode_ms : 0; }
};

struct Result {
    std::string text;               // decoded answer, special tokens skipped
    std::vector<std::int32_t> ids;  // generated ids, the stop token excluded
    StopReason stop = StopReason::eos;
    Timings timings;
};

namespace detail {
class Stopwatch {
public:
    Stopwatch() : t0_(std::chrono::steady_clock::now()) {}
    double ms() const { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count(); }

private:
    std::chrono::steady_clock::time_point t0_;
};

template <class Policy>
struct ModelParts {
    std::filesystem::path dir;
    io::ModelConfig config;
    std::optional<text::Tokenizer> tokenizer;
    std::optional<vision::FastViTHD<Policy>> vision;
    text::Projector<Policy> projector;
    text::Qwen2<Policy> decoder;
    std::unique_ptr<ThreadPool> pool;
    Index context = 0;
    double load_ms = 0;
    std::vector<std::int32_t> stop_ids;
};
}  // namespace detail

template <class Policy>
class Session;

template <class Policy = policy::fp32>
class Model {
    static_assert(PrecisionPolicy<Policy>, "fastvlm::Model<Policy>: Policy must satisfy fastvlm::PrecisionPolicy");

public:
    using policy_type = Policy;
    Model() = default;

    // Loads a model folder (spec model-dir.md). Errors name the file, the tensor or the key.
    static Model load(const std::filesystem::path& dir, const LoadOptions& opt = {}) {
        namespace fs = std::filesystem;
        detail::Stopwatch sw;
        auto p = std::make_shared<detail::ModelParts<Policy>>();
        p->dir = dir;
        auto progress = [&](float f, std::string_view stage) {
            if (opt.progress) opt.progress(f, stage);
        };
        progress(0.f, "config");
        p->config = io::ModelConfig::load(dir);
        const auto& tc = p->config.text;
        p->pool = std::make_unique<ThreadPool>(opt.threads, opt.spin_us);
        p->context = opt.context > 0 ? opt.context : std::min<Index>(8192, tc.max_position_embeddings);
        FASTVLM_CHECK(p->context <= tc.max_position_embeddings, "context of ", p->context,
                      " tokens exceeds max_position_embeddings (", tc.max_position_embeddings, ") of ", p->config.source);
        std::error_code ec;
        if (fs::exists(dir / "vocab.json", ec) || fs::exists(dir / "merges.txt", ec) || fs::exists(dir / "tokenizer.json", ec)) {
            progress(0.f, "tokenizer");
            p->tokenizer = text::Tokenizer::load(dir);
        }
        const auto store = io::TensorStore::open(dir);
        // Rough split of the load time: vision 15 %, projector 1 %, decoder the rest.
        if (opt.load_vision) {
            progress(0.01f, "vision");
            p->vision = vision::FastViTHD<Policy>::load(store, p->config.vision, "model.vision_tower.vision_tower.model.",
                                                        p->pool.get());
        }
        progress(0.15f, "projector");
        p->projector = text::Projector<Policy>::load(store, p->config);
        progress(0.16f, "decoder");
        p->decoder = text::Qwen2<Policy>::load(store, tc, [&](int done, int total) {
            progress(0.16f + 0.84f * float(done) / float(total), "decoder");
        }, p->pool.get());
        // Stop ids (spec §5.4): config eos, <|im_end|>, <|endoftext|>.
        p->stop_ids = tc.eos_token_ids;
        if (p->tokenizer)
            for (const char* s : {"<|im_end|>", "<|endoftext|>"})
                if (auto id = p->tokenizer->token_id(s)) p->stop_ids.push_back(*id);
        p->load_ms = sw.ms();
        progress(1.f, "done");
        Model m;
        m.p_ = std::move(p);
        return m;
    }

    bool loaded() const { return p_ != nullptr; }
    const io::ModelConfig& config() const { return parts().config; }
    const std::filesystem::path& dir() const { return parts().dir; }
    bool has_tokenizer() const { return parts().tokenizer.has_value(); }
    const text::Tokenizer& tokenizer() const {
        FASTVLM_CHECK(has_tokenizer(), parts().dir.string(),
                      ": the model folder has no tokenizer files (vocab.json + merges.txt, or tokenizer.json)");
        return *parts().tokenizer;
    }
    bool has_vision() const { return parts().vision.has_value(); }
    const text::Qwen2<Policy>& decoder() const { return parts().decoder; }
    const text::Projector<Policy>& projector() const { return parts().projector; }
    ThreadPool* pool() const { return parts().pool.get(); }
    Index context() const { return parts().context; }
    double load_ms() const { return parts().load_ms; }
    // Bytes of the weights as held in memory (packed formats of the policy, f32 norms and biases).
    std::size_t weight_bytes() const {
        const auto& p = parts();
        return (p.vision ? p.vision->weight_bytes() : 0) + p.projector.weight_bytes() + p.decoder.weight_bytes();
    }
    const std::vector<std::int32_t>& stop_ids() const { return parts().stop_ids; }
    // Ids that may be generated: len(tokenizer) when there is one (spec §5.5), else vocab_size.
    Index valid_vocab() const {
        const Index v = parts().decoder.vocab_size();
        return has_tokenizer() ? std::min<Index>(v, Index(parts().tokenizer->size())) : v;
    }

    // [3, S, S] pixels of an image (spec §6.1: pad to square, bicubic, /255).
    Tensor<float, 3> preprocess(const io::Image& img) const { return io::preprocess_image(img, config().vision.image_size); }
    // Vision tower: pixels [3, S, S] → image features [N, mm_hidden_size].
    Tensor<float, 2> encode_image(TensorView<const float, 3> pixels, ThreadPool* pool = nullptr) const {
        FASTVLM_CHECK(has_vision(), parts().dir.string(), ": the vision tower was not loaded (LoadOptions::load_vision)");
        const Index S = config().vision.image_size;
        FASTVLM_CHECK(pixels.dim(0) == 3 && pixels.dim(1) == S && pixels.dim(2) == S, "pixels have shape ",
                      shape_str(pixels.shape()), ", the vision tower expects [3, ", S, ", ", S, "]");
        return parts().vision->forward(pixels, pool ? pool : this->pool());
    }
    // Projector: image features [N, mm_hidden_size] → image tokens [N, hidden_size].
    Tensor<float, 2> project(TensorView<const float, 2> features, ThreadPool* pool = nullptr) const {
        return parts().projector.forward(features, pool ? pool : this->pool());
    }

    // One-shot convenience: a fresh session per call.
    Result describe(const std::filesystem::path& image, std::string_view question = text::kDefaultQuestion,
                    const GenerateOptions& g = {}) const;

private:
    const detail::ModelParts<Policy>& parts() const {
        FASTVLM_CHECK(p_ != nullptr, "fastvlm::Model: no model loaded (use Model::load)");
        return *p_;
    }
    std::shared_ptr<const detail::ModelParts<Policy>> p_;
    friend class Session<Policy>;
};

struct SessionOptions {
    Index context = 0;           // KV-cache positions; 0 = the model's LoadOptions::context
    ThreadPool* pool = nullptr;  // nullptr = the model's pool (shared; parallel regions then take turns)
};

// A conversation: KV cache, position, sampler state. Not thread-safe; use one per thread.
template <class Policy>
class Session {
public:
    explicit Session(const Model<Policy>& model, const SessionOptions& opt = {}) : model_(model) {
        const auto& dec = model_.decoder();
        const Index ctx = opt.context > 0 ? opt.context : model_.context();
        cache_ = dec.make_cache(ctx);
        ws_ = dec.make_workspace();
        rope_ = dec.make_rope(ctx);
        logits_.resize(std::size_t(dec.vocab_size()));
        pool_ = opt.pool ? opt.pool : model_.pool();
    }

    const Model<Policy>& model() const { return model_; }
    Index position() const { return cache_.size(); }
    Index context() const { return cache_.capacity(); }
    ThreadPool* pool() const { return pool_; }
    void reset() {
        cache_.clear();
        pending_.reset();
    }
    // Logits after the last prefill/step (vocab_size values).
    std::span<const float> logits() const { return logits_; }

    // ---- high level ---------------------------------------------------------------------------------
    // Starts a new conversation about an image (predict.py prompt, spec §5.2).
    Result describe(const std::filesystem::path& image, std::string_view question = text::kDefaultQuestion,
                    const GenerateOptions& g = {}) {
        detail::Stopwatch sw;
        const io::Image img = io::load_image(image);
        auto px = model_.preprocess(img);
        const double pre = sw.ms();
        reset();
        return turn(std::string(question), &px, g, sw, pre);
    }
    Result describe(const io::Image& image, std::string_view question = text::kDefaultQuestion, const GenerateOptions& g = {}) {
        detail::Stopwatch sw;
        auto px = model_.preprocess(image);
        const double pre = sw.ms();
        reset();
        return turn(std::string(question), &px, g, sw, pre);
    }
    // pixels [3, S, S], already preprocessed.
    Result describe_pixels(TensorView<const float, 3> pixels, std::string_view question = text::kDefaultQuestion,
                           const GenerateOptions& g = {}) {
        detail::Stopwatch sw;
        reset();
        return turn(std::string(question), &pixels, g, sw, 0.0);
    }
    // Next user turn of the conversation, keeping the KV cache. The first turn of a session gets
    // the system prompt; with an image its content is "<image>\n" + text.
    Result chat(std::string_view user_text, const GenerateOptions& g = {}, const io::Image* image = nullptr) {
        detail::Stopwatch sw;
        std::optional<Tensor<float, 3>> px;
        if (image) px = model_.preprocess(*image);
        const double pre = sw.ms();
        if (px) {
            TensorView<const float, 3> v = px->view();
            return turn(std::string(user_text), &v, g, sw, pre);
        }
        return turn<TensorView<const float, 3>>(std::string(user_text), nullptr, g, sw, pre);
    }

    // ---- low level -------------------------------------------------------------------------------------
    // Appends ids (−200 = the image slot, spliced with image_tokens [N, hidden]) to the context and
    // runs them. Returns the logits of the last position, or of every position ([T, vocab]) when
    // all_logits. Throws before running when the context would overflow.
    Tensor<float, 2> prefill(std::span<const std::int32_t> ids, std::optional<TensorView<const float, 2>> image_tokens,
                             bool all_logits = false) {
        Tensor<float, 2> x = embed(ids, image_tokens);
        const Index T = x.dim(0), V = model_.decoder().vocab_size();
        check_fits(T, 0);
        pending_.reset();
        Tensor<float, 2> out({all_logits ? T : 1, V});
        model_.decoder().forward(x.data(), T, cache_, ws_, rope_, pool_, all_logits ? text::Logits::all : text::Logits::last,
                                 out.data());
        std::copy(out.data() + (out.dim(0) - 1) * V, out.data() + out.dim(0) * V, logits_.begin());
        return out;
    }
    // Feeds one token; returns the next logits (valid until the next call).
    std::span<const float> step(std::int32_t id) {
        check_fits(1, 0);
        embed_buf_.resize(std::size_t(model_.decoder().hidden_size()));
        model_.decoder().embed(id, embed_buf_.data());
        model_.decoder().forward(embed_buf_.data(), 1, cache_, ws_, rope_, pool_, text::Logits::last, logits_.data());
        return logits_;
    }
    // Prefill ids (with optional image tokens), then sample up to max_new_tokens.
    Result generate(std::span<const std::int32_t> ids, std::optional<TensorView<const float, 2>> image_tokens,
                    const GenerateOptions& g = {}) {
        detail::Stopwatch sw;
        Timings t;
        return run(ids, image_tokens, g, sw, t);
    }

private:
    void check_fits(Index prompt, Index new_tokens) const {
        // The last sampled token is never fed back, hence new_tokens − 1 further positions.
        const Index need = position() + prompt + std::max<Index>(new_tokens - 1, 0);
        if (need > context())
            fail("the prompt (", prompt, " positions after image expansion", position() ? ", after " : "",
                 position() ? std::to_string(position()) + " positions of conversation" : std::string(), ") plus up to ",
                 new_tokens, " new tokens needs ", need, " positions, more than the context of ", context(),
                 " tokens (raise the context, up to max_position_embeddings = ",
                 model_.config().text.max_position_embeddings, ", or lower max_new_tokens)");
    }

    // [T, hidden]: text ids embedded, the −200 slot replaced by the image tokens (spec §5.3).
    Tensor<float, 2> embed(std::span<const std::int32_t> ids, std::optional<TensorView<const float, 2>> image) {
        const auto& dec = model_.decoder();
        const Index H = dec.hidden_size();
        const Index n_img = Index(std::count(ids.begin(), ids.end(), text::kImageTokenIndex));
        FASTVLM_CHECK(n_img <= 1, "the prompt has ", n_img, " image placeholders (", text::kImageTokenIndex,
                      "); one image per turn is supported");
        FASTVLM_CHECK(n_img == 1 || !image, "image tokens were given but the prompt has no image placeholder (",
                      text::kImageTokenIndex, " / <image>)");
        FASTVLM_CHECK(n_img == 0 || image, "the prompt has an image placeholder (", text::kImageTokenIndex,
                      ") but no image was given");
        if (image)
            FASTVLM_CHECK(image->dim(1) == H && image->is_contiguous(), "image tokens have shape ", shape_str(image->shape()),
                          ", expected [N, ", H, "] (hidden_size)");
        const Index N = image ? image->dim(0) : 0;
        const Index T = Index(ids.size()) - n_img + N;
        Tensor<float, 2> x({T, H});
        Index row = 0;
        for (auto id : ids) {
            if (id == text::kImageTokenIndex) {
                std::copy_n(image->data(), N * H, x.data() + row * H);
                row += N;
            } else {
                dec.embed(id, x.data() + row * H);
                ++row;
            }
        }
        return x;
    }

    template <class Pixels>
    Result turn(std::string user_text, const Pixels* pixels, const GenerateOptions& g, detail::Stopwatch& sw, double pre_ms) {
        const auto& tok = model_.tokenizer();
        std::string prompt;
        const std::string content = pixels ? std::string(text::kImageToken) + "\n" + user_text : user_text;
        std::vector<std::int32_t> ids;
        if (position() == 0) {
            const text::ChatMessage m{"user", content};
            prompt = text::chat_prompt(std::span<const text::ChatMessage>(&m, 1));
        } else {
            prompt = text::continuation_prompt(content);
            if (pending_) ids.push_back(*pending_);  // sampled but not yet in the cache
        }
        const auto body = text::tokenize_with_image(prompt, [&](const std::string& s) { return tok.encode(s); });
        ids.insert(ids.end(), body.begin(), body.end());
        Timings t;
        t.preprocess_ms = pre_ms;
        std::optional<Tensor<float, 2>> img_tokens;
        if (pixels) {
            // Fail before the expensive part when the prompt cannot fit.
            const Index n_tok = Index(model_.config().vision.num_tokens());
            check_fits(Index(ids.size()) - 1 + n_tok, g.max_new_tokens);
            detail::Stopwatch v;
            const auto feats = model_.encode_image(*pixels, pool_);
            t.vision_ms = v.ms();
            detail::Stopwatch pj;
            img_tokens = model_.project(feats, pool_);
            t.projector_ms = pj.ms();
        }
        std::optional<TensorView<const float, 2>> view;
        if (img_tokens) view = img_tokens->view();
        return run(ids, view, g, sw, t);
    }

    Result run(std::span<const std::int32_t> ids, std::optional<TensorView<const float, 2>> image, const GenerateOptions& g,
               detail::Stopwatch& sw, Timings t) {
        FASTVLM_CHECK(g.max_new_tokens >= 0, "max_new_tokens must be >= 0, got ", g.max_new_tokens);
        const auto& dec = model_.decoder();
        text::Sampler sampler({g.temperature, g.top_k, g.top_p, g.seed});
        const std::vector<std::int32_t>& stops = g.stop_ids.empty() ? model_.stop_ids() : g.stop_ids;
        const Index valid = model_.valid_vocab();
        Tensor<float, 2> x = embed(ids, image);
        const Index T = x.dim(0);
        check_fits(T, g.max_new_tokens);
        pending_.reset();
        t.load_ms = model_.load_ms();
        t.prefill_tokens = T;
        {
            detail::Stopwatch pf;
            dec.forward(x.data(), T, cache_, ws_, rope_, pool_, text::Logits::last, logits_.data());
            t.prefill_ms = pf.ms();
        }
        std::optional<text::Tokenizer::StreamDecoder> stream;
        if (model_.has_tokenizer()) stream.emplace(model_.tokenizer(), true);
        Result r;
        r.stop = StopReason::max_tokens;
        detail::Stopwatch dw;
        double decode_start = 0;
        embed_buf_.resize(std::size_t(dec.hidden_size()));
        for (int i = 0; i < g.max_new_tokens; ++i) {
            if (g.cancel && g.cancel->load(std::memory_order_relaxed)) {
                r.stop = StopReason::cancelled;
                break;
            }
            const std::int32_t id = sampler.sample(logits_, std::size_t(valid));
            if (i == 0) {
                t.ttft_ms = sw.ms();
                decode_start = dw.ms();
            }
            if (std::find(stops.begin(), stops.end(), id) != stops.end()) {
                r.stop = StopReason::eos;
                break;
            }
            r.ids.push_back(id);
            if (g.on_token) g.on_token(id, stream ? stream->push(id) : std::string());
            else if (stream) stream->push(id);
            if (i + 1 == g.max_new_tokens || (g.cancel && g.cancel->load(std::memory_order_relaxed))) {
                pending_ = id;  // not fed: the next chat turn feeds it first
                if (i + 1 < g.max_new_tokens) r.stop = StopReason::cancelled;
                break;
            }
            dec.embed(id, embed_buf_.data());
            dec.forward(embed_buf_.data(), 1, cache_, ws_, rope_, pool_, text::Logits::last, logits_.data());
            ++t.decode_tokens;
        }
        t.decode_ms = t.decode_tokens > 0 ? dw.ms() - decode_start : 0;
        if (stream && g.on_token) g.on_token(-1, stream->flush());
        if (model_.has_tokenizer()) r.text = model_.tokenizer().decode(r.ids, true);
        r.timings = t;
        return r;
    }

    Model<Policy> model_;
    text::KVCache cache_;
    text::DecoderWorkspace ws_;
    RopeTable rope_;
    std::vector<float> logits_, embed_buf_;
    ThreadPool* pool_ = nullptr;
    std::optional<std::int32_t> pending_;
};

template <class Policy>
Session(const Model<Policy>&) -> Session<Policy>;
template <class Policy>
Session(const Model<Policy>&, const SessionOptions&) -> Session<Policy>;

template <class Policy>
Result Model<Policy>::describe(const std::filesystem::path& image, std::string_view question, const GenerateOptions& g) const {
    Session<Policy> s(*this);
    return s.describe(image, question, g);
}

// ---- run-time policy choice ---------------------------------------------------------------------------
class AnySession {
public:
    virtual ~AnySession() = default;
    virtual Result describe(const io::Image& image, std::string_view question, const GenerateOptions& g) = 0;
    virtual Result describe_pixels(TensorView<const float, 3> pixels, std::string_view question, const GenerateOptions& g) = 0;
    virtual Result chat(std::string_view user_text, const GenerateOptions& g, const io::Image* image = nullptr) = 0;
    virtual Result generate(std::span<const std::int32_t> ids, std::optional<TensorView<const float, 2>> image_tokens,
                            const GenerateOptions& g) = 0;
    virtual Tensor<float, 2> prefill(std::span<const std::int32_t> ids, std::optional<TensorView<const float, 2>> image_tokens,
                                     bool all_logits) = 0;
    virtual std::span<const float> step(std::int32_t id) = 0;
    virtual void reset() = 0;
    virtual Index position() const = 0;
    virtual Index context() const = 0;
};

class AnyModel {
public:
    virtual ~AnyModel() = default;
    virtual const char* precision() const = 0;
    virtual const io::ModelConfig& config() const = 0;
    virtual const text::Tokenizer* tokenizer() const = 0;  // nullptr when the folder has none
    virtual double load_ms() const = 0;
    virtual std::size_t weight_bytes() const = 0;
    virtual Index context() const = 0;
    virtual Index valid_vocab() const = 0;
    virtual Tensor<float, 3> preprocess(const io::Image& img) const = 0;
    virtual Tensor<float, 2> encode_image(TensorView<const float, 3> pixels) const = 0;
    virtual Tensor<float, 2> project(TensorView<const float, 2> features) const = 0;
    virtual std::unique_ptr<AnySession> new_session(const SessionOptions& opt = {}) const = 0;
};

namespace detail {
template <class Policy>
class AnySessionImpl final : public AnySession {
public:
    AnySessionImpl(const Model<Policy>& m, const SessionOptions& o) : s_(m, o) {}
    Result describe(const io::Image& image, std::string_view q, const GenerateOptions& g) override { return s_.describe(image, q, g); }
    Result describe_pixels(TensorView<const float, 3> px, std::string_view q, const GenerateOptions& g) override {
        return s_.describe_pixels(px, q, g);
    }
    Result chat(std::string_view u, const GenerateOptions& g, const io::Image* image) override { return s_.chat(u, g, image); }
    Result generate(std::span<const std::int32_t> ids, std::optional<TensorView<const float, 2>> img,
                    const GenerateOptions& g) override {
        return s_.generate(ids, img, g);
    }
    Tensor<float, 2> prefill(std::span<const std::int32_t> ids, std::optional<TensorView<const float, 2>> img,
                             bool all) override {
        return s_.prefill(ids, img, all);
    }
    std::span<const float> step(std::int32_t id) override { return s_.step(id); }
    void reset() override { s_.reset(); }
    Index position() const override { return s_.position(); }
    Index context() const override { return s_.context(); }

private:
    Session<Policy> s_;
};

template <class Policy>
class AnyModelImpl final : public AnyModel {
public:
    explicit AnyModelImpl(Model<Policy> m) : m_(std::move(m)) {}
    const char* precision() const override { return Policy::name; }
    const io::ModelConfig& config() const override { return m_.config(); }
    const text::Tokenizer* tokenizer() const override { return m_.has_tokenizer() ? &m_.tokenizer() : nullptr; }
    double load_ms() const override { return m_.load_ms(); }
    std::size_t weight_bytes() const override { return m_.weight_bytes(); }
    Index context() const override { return m_.context(); }
    Index valid_vocab() const override { return m_.valid_vocab(); }
    Tensor<float, 3> preprocess(const io::Image& img) const override { return m_.preprocess(img); }
    Tensor<float, 2> encode_image(TensorView<const float, 3> px) const override { return m_.encode_image(px); }
    Tensor<float, 2> project(TensorView<const float, 2> f) const override { return m_.project(f); }
    std::unique_ptr<AnySession> new_session(const SessionOptions& o) const override {
        return std::make_unique<AnySessionImpl<Policy>>(m_, o);
    }
    const Model<Policy>& model() const { return m_; }

private:
    Model<Policy> m_;
};
}  // namespace detail

// Loads `dir` with the compiled precision preset `precision` (fp32, bf16, fp16, int8, int8_int4, int4).
inline std::unique_ptr<AnyModel> load_model(const std::filesystem::path& dir, const std::string& precision = "fp32",
                                            const LoadOptions& opt = {}) {
    return with_preset(precision, [&]<class P>() -> std::unique_ptr<AnyModel> {
        return std::make_unique<detail::AnyModelImpl<P>>(Model<P>::load(dir, opt));
    });
}

}  // namespace fastvlm
