// fastvlm/session.hpp — Session<Policy>: one conversation on a Model (its own KV sequence,
// position and sampler), run on the calling thread through the same batch-first decoder the Engine
// uses (a batch of one sequence). Not thread-safe: one per thread; many may share one Model.
#pragma once
#include "fastvlm/model.hpp"

namespace fastvlm {

struct SessionOptions {
    Index context = 0;           // KV-cache positions; 0 = the model's LoadOptions::context
    ThreadPool* pool = nullptr;  // nullptr = the model's pool (shared; parallel regions then take turns)
    std::optional<text::KVType> kv_type = {};  // KV storage; unset = the model's LoadOptions::kv_type
};

// A conversation: KV cache, position, sampler state. Not thread-safe; use one per thread.
template <class Policy>
class Session {
public:
    explicit Session(const Model<Policy>& model, const SessionOptions& opt = {});

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
                    const GenerateOptions& g = {});
    Result describe(const io::Image& image, std::string_view question = text::kDefaultQuestion, const GenerateOptions& g = {});
    // pixels [3, S, S], already preprocessed.
    Result describe_pixels(TensorView<const float, 3> pixels, std::string_view question = text::kDefaultQuestion,
                           const GenerateOptions& g = {});
    // Next user turn of the conversation, keeping the KV cache. The first turn of a session gets
    // the system prompt; with an image its content is "<image>\n" + text.
    Result chat(std::string_view user_text, const GenerateOptions& g = {}, const io::Image* image = nullptr);

    // ---- low level -------------------------------------------------------------------------------------
    // Appends ids (−200 = the image slot, spliced with image_tokens [N, hidden]) to the context and
    // runs them. Returns the logits of the last position, or of every position ([T, vocab]) when
    // all_logits. Throws before running when the context would overflow.
    Tensor<float, 2> prefill(std::span<const std::int32_t> ids, std::optional<TensorView<const float, 2>> image_tokens,
                             bool all_logits = false);

private:
    Tensor<float, 2> run_prefill(Tensor<float, 2>& x, bool all_logits) {
        const Index T = x.dim(0), V = model_.decoder().vocab_size();
        check_fits(T, 0);
        pending_.reset();
        Tensor<float, 2> out({all_logits ? T : 1, V});
        model_.decoder().forward(x.data(), T, cache_, ws_, rope_, pool_, all_logits ? text::Logits::all : text::Logits::last,
                                 out.data());
        std::copy(out.data() + (out.dim(0) - 1) * V, out.data() + out.dim(0) * V, logits_.begin());
        return out;
    }

public:
    // Several images: the k-th −200 slot takes images[k].
    Tensor<float, 2> prefill(std::span<const std::int32_t> ids, std::span<const TensorView<const float, 2>> images,
                             bool all_logits = false);
    // Feeds one token; returns the next logits (valid until the next call).
    std::span<const float> step(std::int32_t id);
    // Prefill ids (with optional image tokens), then sample up to max_new_tokens.
    Result generate(std::span<const std::int32_t> ids, std::optional<TensorView<const float, 2>> image_tokens,
                    const GenerateOptions& g = {});

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

    // [T, hidden]: text ids embedded, the −200 slots replaced by the image tokens (spec §5.3).
    Tensor<float, 2> embed(std::span<const std::int32_t> ids, std::optional<TensorView<const float, 2>> image) {
        if (!image) return model_.embed_prompt(ids, {});
        return model_.embed_prompt(ids, std::span<const TensorView<const float, 2>>(&*image, 1));
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
        text::Sampler sampler(g.sampling);
        const std::vector<std::int32_t>& stops = g.stop_ids.empty() ? model_.stop_ids() : g.stop_ids;
        const Index valid = model_.valid_vocab();
        check_fits(Index(ids.size()) + (image ? image->dim(0) - 1 : 0), g.max_new_tokens);  // before embedding
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

// ---- defined out of the class (not inline), so that compiled mode (core/compiled.hpp) keeps them out of
// a user's file ----

template <class Policy>
Session<Policy>::Session(const Model<Policy>& model, const SessionOptions& opt) : model_(model) {
    const auto& dec = model_.decoder();
    const Index ctx = opt.context > 0 ? opt.context : model_.context();
    cache_ = dec.make_cache(ctx, opt.kv_type.value_or(model_.kv_type()));
    ws_ = dec.make_workspace();
    rope_ = dec.make_rope(ctx);
    logits_.resize(std::size_t(dec.vocab_size()));
    pool_ = opt.pool ? opt.pool : model_.pool();
}

template <class Policy>
Result Session<Policy>::describe(const std::filesystem::path& image, std::string_view question, const GenerateOptions& g) {
    detail::Stopwatch sw;
    const io::Image img = io::load_image(image, model_.image_limits());
    auto px = model_.preprocess(img);
    const double pre = sw.ms();
    reset();
    return turn(std::string(question), &px, g, sw, pre);
}

template <class Policy>
Result Session<Policy>::describe(const io::Image& image, std::string_view question, const GenerateOptions& g) {
    detail::Stopwatch sw;
    auto px = model_.preprocess(image);
    const double pre = sw.ms();
    reset();
    return turn(std::string(question), &px, g, sw, pre);
}

template <class Policy>
Result Session<Policy>::describe_pixels(TensorView<const float, 3> pixels, std::string_view question, const GenerateOptions& g) {
    detail::Stopwatch sw;
    reset();
    return turn(std::string(question), &pixels, g, sw, 0.0);
}

template <class Policy>
Result Session<Policy>::chat(std::string_view user_text, const GenerateOptions& g, const io::Image* image) {
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

template <class Policy>
Tensor<float, 2> Session<Policy>::prefill(std::span<const std::int32_t> ids,
                                          std::optional<TensorView<const float, 2>> image_tokens, bool all_logits) {
    check_fits(Index(ids.size()) + (image_tokens ? image_tokens->dim(0) - 1 : 0), 0);  // before embedding
    Tensor<float, 2> x = embed(ids, image_tokens);
    return run_prefill(x, all_logits);
}

template <class Policy>
Tensor<float, 2> Session<Policy>::prefill(std::span<const std::int32_t> ids, std::span<const TensorView<const float, 2>> images,
                                          bool all_logits) {
    Index T = Index(ids.size());
    for (const auto& im : images) T += im.dim(0) - 1;
    check_fits(T, 0);  // before embedding: a long prompt fails without allocating T x hidden
    Tensor<float, 2> x = model_.embed_prompt(ids, images);
    return run_prefill(x, all_logits);
}

template <class Policy>
std::span<const float> Session<Policy>::step(std::int32_t id) {
    check_fits(1, 0);
    embed_buf_.resize(std::size_t(model_.decoder().hidden_size()));
    model_.decoder().embed(id, embed_buf_.data());
    model_.decoder().forward(embed_buf_.data(), 1, cache_, ws_, rope_, pool_, text::Logits::last, logits_.data());
    return logits_;
}

template <class Policy>
Result Session<Policy>::generate(std::span<const std::int32_t> ids, std::optional<TensorView<const float, 2>> image_tokens,
                                 const GenerateOptions& g) {
    detail::Stopwatch sw;
    Timings t;
    return run(ids, image_tokens, g, sw, t);
}


template <class Policy>
Session(const Model<Policy>&) -> Session<Policy>;
template <class Policy>
Session(const Model<Policy>&, const SessionOptions&) -> Session<Policy>;

template <class Policy>
Result Model<Policy>::describe(const std::filesystem::path& image, std::string_view question, const GenerateOptions& g) const {
    Session<Policy> s(*this);
    return s.describe(image, question, g);
}

#if defined(FASTVLM_COMPILED_LIB)
// Compiled once per preset in libfastvlm_presets (any_model.hpp: FASTVLM_INSTANTIATE_PRESET).
#define FASTVLM_EXTERN_(name) extern template class Session<policy::name>;
FASTVLM_PRESETS(FASTVLM_EXTERN_)
#undef FASTVLM_EXTERN_
#endif

}  // namespace fastvlm
