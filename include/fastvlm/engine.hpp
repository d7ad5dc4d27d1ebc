// fastvlm/engine.hpp — Engine: many requests at once on one loaded Model (docs/api.md, docs/architecture.md).
//
//   fastvlm::Engine engine(model, {.max_running = 8});
//   auto h = engine.submit({.images = {fastvlm::ImageInput::file("a.png")}, .prompt = "What is it?"});
//   fastvlm::Result r = h.wait();            // r.ok(), r.text, r.error_kind, r.error, r.timings
//
// Threads: submit() from any thread. A preparation thread tokenizes and decodes/resizes images of
// queued requests; one scheduler thread runs continuous batching on the model's pool:
//   admission  — FIFO; a request starts when a running slot is free and the KV pool can reserve its
//                worst case (prompt + max_new_tokens positions). A request that can never fit fails
//                with ErrorKind::too_large; one that does not fit now waits (head of line, no starvation).
//   prefix     — at admission a request adopts the KV pages of the longest prompt prefix that an ended
//                request left in the prefix cache (engine/prefix_cache.hpp) and starts its prefill after
//                it; images inside that prefix skip vision. When it ends, its own pages are kept there.
//   vision     — one image at a time (FastViTHD + projector), between steps. While other sequences
//                decode or prefill, the tower runs in slices of about vision_slice_ms on a helper thread
//                (engine/sliced_runner.hpp), one slice per loop iteration, so running streams pause for
//                one slice instead of a whole image; alone (or with vision_slice_ms = 0) it runs whole.
//   step       — one decode row of every decoding sequence (GEMV: the weights stream once for all of
//                them) plus at most prefill_chunk prompt rows (GEMM) of the sequences still in prefill,
//                in one Qwen2::forward_batch call; then per-sequence sampling (each request has its own
//                Sampler and seed, so its tokens do not depend on the rest of the batch). With
//                prefill_first (batch work), decode rows wait until no running sequence is in vision or
//                prefill, so the sequences admitted together decode as one batch.
// Every path gives the same greedy tokens as Session (rows of a batch are bit-identical to running
// alone; tests/test_engine.cpp). Callbacks (on_token) run on the scheduler thread: keep them short.
#pragma once
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <variant>

#include "fastvlm/engine/adaptive_policy.hpp"
#include "fastvlm/engine/image_cache.hpp"
#include "fastvlm/engine/metrics.hpp"
#include "fastvlm/engine/prefix_cache.hpp"
#include "fastvlm/engine/sliced_runner.hpp"
#include "fastvlm/model.hpp"
#include "fastvlm/text/kv_cache.hpp"

namespace fastvlm {

// An engine error thrown by submit (queue_full, shutdown) or reported in Result::error_kind.
class EngineError : public Error {
public:
    EngineError(ErrorKind kind, const std::string& msg) : Error(msg), kind_(kind) {}
    ErrorKind kind() const { return kind_; }

private:
    ErrorKind kind_;
};

// One image of a request: a file, encoded bytes (PNG/JPEG/BMP/PNM…), decoded RGB pixels, or
// model input already preprocessed ([3, S, S] floats, spec §6.1).
struct ImageInput {
    std::filesystem::path path;                           // file
    std::shared_ptr<const std::string> bytes;             // encoded
    std::shared_ptr<const io::Image> image;               // decoded
    std::shared_ptr<const Tensor<float, 3>> pixels;       // preprocessed
    std::string name;                                     // for error messages
    io::ImageLimits limits = {};                          // checked from the header before decoding
    static ImageInput file(std::filesystem::path p) {
        ImageInput i;
        i.name = p.string();
        i.path = std::move(p);
        return i;
    }
    static ImageInput encoded(std::string data, std::string name = "<image bytes>") {
        ImageInput i;
        i.bytes = std::make_shared<const std::string>(std::move(data));
        i.name = std::move(name);
        return i;
    }
    static ImageInput decoded(io::Image img, std::string name = "<image>") {
        ImageInput i;
        i.image = std::make_shared<const io::Image>(std::move(img));
        i.name = std::move(name);
        return i;
    }
    static ImageInput preprocessed(Tensor<float, 3> px, std::string name = "<pixels>") {
        ImageInput i;
        i.pixels = std::make_shared<const Tensor<float, 3>>(std::move(px));
        i.name = std::move(name);
        return i;
    }
    io::Image load() const {
        if (image) return *image;
        if (bytes)
            return io::load_image_from_memory(
                std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(bytes->data()), bytes->size()), name, limits);
        FASTVLM_CHECK(!path.empty(), "image input is empty (use ImageInput::file, ::encoded or ::decoded)");
        return io::load_image(path, limits);
    }
};

struct Request {
    std::vector<ImageInput> images;  // zero, one or several
    // The user message. Each "<image>" takes the next image; without any, "<image>\n" per image is
    // put in front. Ignored when `messages` or `prompt_ids` is given.
    std::string prompt;
    std::vector<text::ChatMessage> messages;  // a whole conversation (user/assistant turns), rendered as ChatML
    std::string system = std::string(text::kDefaultSystem);
    std::vector<std::int32_t> prompt_ids;  // raw ids (−200 = an image slot), no chat template; for tokenizer-less use
    int max_new_tokens = 256;
    SamplingOptions sampling = {};            // greedy by default; its seed is the request's own
    std::vector<std::int32_t> stop_ids = {};  // empty: the model's (eos, <|im_end|>, <|endoftext|>)
    std::vector<std::string> stop_strings = {};  // generation ends before the first occurrence (excluded)
    // Streaming, on the scheduler thread: each generated token with its newly final text (text that
    // might start a stop string is held back). A last call with id −1 carries what remains.
    std::function<void(std::int32_t id, std::string_view text)> on_token = {};
    // Called once when the request ends, whatever the outcome (failures before it ran included), on an
    // engine thread, before wait() returns. Exceptions it throws are ignored.
    std::function<void(const Result&)> on_finish = {};
    double timeout_s = 0;  // from submit to the last token; 0 = the engine's default (EngineOptions::timeout_s)
    std::string id;        // free-form, for logs
};

struct EngineOptions {
    int max_running = 8;              // sequences decoding (or in prefill/vision) at once
    int max_queued = 1024;            // waiting beyond the running slots; submit throws queue_full beyond it
    std::size_t kv_budget_bytes = 0;  // KV pool; 0 = max_running × min(context, 4096) positions
    std::optional<text::KVType> kv_type = {};  // unset: the model's LoadOptions::kv_type (bf16 by default)
    Index kv_page = 16;              // positions per KV page
    Index prefill_chunk = 256;       // most prompt rows per step (bounds the pause of running streams)
    // While other sequences run, a new image goes through the vision tower in slices of about this many
    // milliseconds (each ends at the first block boundary after it), one slice between two steps. Bounds
    // the pause of running streams as prefill_chunk does for prompts. 0 = off: each image whole between
    // two steps, which gives batch work the most throughput (fastvlm-cli batch uses 0).
    double vision_slice_ms = 50;
    // Throughput scheduling for offline work (fastvlm-cli batch): while any running sequence is still in
    // vision or prefill, steps carry no decode rows, so the requests admitted together all reach decode
    // first and every decode step then runs the whole batch (what vLLM's default scheduler does). Running
    // streams pause for each newcomer's vision and prefill; the first token of every request comes later.
    // false (interactive): decode rows ride in every step, with at most prefill_chunk prompt rows.
    bool prefill_first = false;
    double timeout_s = 0;            // default per-request timeout; 0 = none
    Index context = 0;               // most positions of one sequence; 0 = the model's context
    // Image-feature cache (projected image tokens by a hash of the preprocessed pixels, LRU); 0 = off.
    std::size_t image_cache_bytes = std::size_t(256) << 20;
    // A cache to share instead (image_cache_bytes is then ignored): engines of presets whose vision tower and
    // projector use the same formats (int8 and int8_int4) share entries; others never see each other's, since
    // keys are salted with those formats.
    std::shared_ptr<ImageFeatureCache> image_cache = {};
    // Prefix KV reuse (engine/prefix_cache.hpp): most bytes of KV pages kept from ended sequences for
    // later ones that start the same. Unset: up to the whole KV budget (cached pages are evicted, least
    // recently used first, whenever admission needs their room); 0 = off.
    std::optional<std::size_t> prefix_cache_bytes = {};
    // Called (on the thread that recorded it) when a stage takes more than 2× its running mean.
    std::function<void(const metrics::Anomaly&)> on_anomaly = {};
    // When to switch presets; read only by the engine of an adaptive model (load_model(dir, "auto:int8,int4"),
    // fastvlm/adaptive.hpp).
    AdaptiveOptions adaptive = {};
};

// A point-in-time view of the engine (the same numbers as metrics_json()).
struct EngineStats {
    Index running = 0, queued = 0;
    Index kv_pages_used = 0, kv_pages_reserved = 0, kv_pages_total = 0;
    std::size_t kv_page_bytes = 0, kv_bytes_per_position = 0, weight_bytes = 0, peak_rss_bytes = 0;
    std::uint64_t requests_ok = 0, requests_failed = 0, prompt_tokens = 0, generated_tokens = 0, images = 0;
    double decode_busy_s = 0;  // summed wall time of steps that carried decode rows
    // Steps of decode rows only (no prefill chunk in them): their wall time and the tokens they made.
    // decode_only_tokens / decode_only_s is the batched decode rate without the prefill work of
    // sequences that joined while others decoded.
    double decode_only_s = 0;
    std::uint64_t decode_only_tokens = 0;
    ImageFeatureCache::Stats image_cache;  // hits, misses, evictions, bytes, entries
    PrefixCache::Stats prefix_cache;       // hits, misses, positions reused, pages held
    std::map<std::string, metrics::HistogramSnapshot> stages;  // queue_wait, preprocess, vision, ... (seconds)
    double aggregate_decode_tok_s() const { return decode_busy_s > 0 ? double(generated_tokens) / decode_busy_s : 0; }
    double decode_only_tok_s() const { return decode_only_s > 0 ? double(decode_only_tokens) / decode_only_s : 0; }
};

namespace detail {
using Clock = std::chrono::steady_clock;

struct RequestState {
    Request req;
    Clock::time_point submitted = Clock::now(), deadline = Clock::time_point::max();
    std::atomic<bool> cancel{false};
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    Result result;
    void finish(Result r) {
        {
            std::lock_guard lk(mu);
            if (done) return;
            result = std::move(r);
            done = true;
        }
        cv.notify_all();
    }
};

// Stop strings over streamed text: emits what can no longer become part of a stop string.
class StopText {
public:
    explicit StopText(std::vector<std::string> stops) : stops_(std::move(stops)) {
        std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
    }
    // Adds text; returns what may be emitted now. hit() tells whether a stop string was found (the
    // text from it on is dropped).
    std::string push(std::string_view piece) {
        if (hit_) return {};
        held_ += piece;
        std::size_t cut = std::string::npos;
        for (const auto& s : stops_) cut = std::min(cut, held_.find(s));
        if (cut != std::string::npos) {
            hit_ = true;
            held_.resize(cut);
            return take(held_.size());
        }
        // Hold back the longest suffix that is a prefix of a stop string.
        std::size_t keep = 0;
        for (const auto& s : stops_)
            for (std::size_t k = std::min(s.size() - 1, held_.size()); k > keep; --k)
                if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
                    keep = k;
                    break;
                }
        return take(held_.size() - keep);
    }
    std::string flush() { return hit_ ? std::string() : take(held_.size()); }
    bool hit() const { return hit_; }
    const std::string& text() const { return text_; }  // everything emitted so far

private:
    std::string take(std::size_t n) {
        std::string out = held_.substr(0, n);
        held_.erase(0, n);
        text_ += out;
        return out;
    }
    std::vector<std::string> stops_;
    std::string held_, text_;
    bool hit_ = false;
};

class EngineCore {
public:
    virtual ~EngineCore() = default;
    virtual std::shared_ptr<RequestState> submit(Request r) = 0;
    virtual EngineStats stats() const = 0;
    virtual metrics::Registry& registry() = 0;
    virtual const EngineOptions& options() const = 0;
    virtual void drain() = 0;
    virtual Index waiting() const = 0;  // submitted, not yet running
};
class AdaptiveCore;
}  // namespace detail

// The caller's side of a submitted request.
class RequestHandle {
public:
    RequestHandle() = default;
    explicit RequestHandle(std::shared_ptr<detail::RequestState> s) : s_(std::move(s)) {}
    bool valid() const { return s_ != nullptr; }
    bool done() const {
        std::lock_guard lk(s_->mu);
        return s_->done;
    }
    // Blocks until the request ends; the result (also for failures: see Result::ok()).
    Result wait() const {
        std::unique_lock lk(s_->mu);
        s_->cv.wait(lk, [&] { return s_->done; });
        return s_->result;
    }
    std::optional<Result> wait_for(double seconds) const {
        std::unique_lock lk(s_->mu);
        if (!s_->cv.wait_for(lk, std::chrono::duration<double>(seconds), [&] { return s_->done; })) return std::nullopt;
        return s_->result;
    }
    // Stops the request at the next step; it ends with ErrorKind::cancelled and what it had generated.
    void cancel() const { s_->cancel.store(true, std::memory_order_relaxed); }
    const std::string& id() const { return s_->req.id; }

private:
    std::shared_ptr<detail::RequestState> s_;
};

namespace detail {

// The formats of a preset's vision tower and projector, e.g. "q8xq8,q8xq8,q8xq8": presets with equal
// strings compute equal image tokens.
template <class Policy>
std::string vision_formats() {
    auto f = []<class L>() { return std::string(L::weight::name) + "x" + L::compute::name; };
    return f.template operator()<typename Policy::vision_conv>() + "," + f.template operator()<typename Policy::vision_attention>() +
           "," + f.template operator()<typename Policy::projector>();
}

template <class Policy>
class EngineImpl final : public EngineCore {
    enum class Phase { vision, prefill, decode };
    struct Seq {
        std::shared_ptr<RequestState> st;
        std::vector<std::int32_t> ids;             // prompt ids, −200 = image slot
        std::vector<std::shared_ptr<const Tensor<float, 3>>> pixels;  // preprocessed images, dropped once encoded
        std::vector<ImageKey> keys;                     // their cache keys (when a cache is on)
        std::vector<Index> img_pos;                     // first position of each image's tokens
        std::vector<std::uint64_t> pos_keys;            // prompt position keys (when the prefix cache is on)
        std::vector<ImageFeatureCache::Tokens> img_tokens;  // projected image tokens (nullptr: not yet)
        Tensor<float, 2> x;                        // embedded prompt positions [x0, T) (prefill)
        Index T = 0, prefilled = 0, need = 0;      // prompt positions, run (or adopted) so far, worst case
        Index x0 = 0;                              // first position in x (the adopted prefix is not embedded)
        std::unique_ptr<text::KVSeq> kv;
        std::optional<text::Sampler> sampler;
        std::optional<text::Tokenizer::StreamDecoder> stream;
        std::optional<StopText> stop_text;
        const std::vector<std::int32_t>* stops = nullptr;
        Phase phase = Phase::vision;
        std::int32_t last = -1;  // token to feed at the next decode step
        Result r;
        Clock::time_point admitted, prefill_start, first_token;
        // The image being encoded in slices on the engine's SlicedRunner; abandoned there if the
        // sequence ends first (cancel, timeout, shutdown). Declared last: it goes first.
        struct Encoding {
            SlicedRunner* runner;  // of the first image of the sequence that has no tokens yet
            std::shared_ptr<Tensor<float, 2>> features;  // written by the helper thread
            Clock::duration spent{};                     // time inside the slices
            ~Encoding() {
                if (runner) runner->abandon();
            }
        };
        std::unique_ptr<Encoding> enc;
    };

public:
    EngineImpl(const Model<Policy>& m, EngineOptions o) : model_(m), opt_(std::move(o)) {
        const auto& dec = model_.decoder();
        FASTVLM_CHECK(opt_.max_running >= 1 && opt_.max_running <= 1024, "EngineOptions::max_running must be in 1..1024, got ",
                      opt_.max_running);
        FASTVLM_CHECK(opt_.max_queued >= 0, "EngineOptions::max_queued must be >= 0, got ", opt_.max_queued);
        FASTVLM_CHECK(opt_.prefill_chunk >= 1, "EngineOptions::prefill_chunk must be >= 1, got ", opt_.prefill_chunk);
        FASTVLM_CHECK(std::isfinite(opt_.timeout_s) && opt_.timeout_s >= 0, "EngineOptions::timeout_s must be >= 0");
        FASTVLM_CHECK(std::isfinite(opt_.vision_slice_ms) && opt_.vision_slice_ms >= 0,
                      "EngineOptions::vision_slice_ms must be >= 0, got ", opt_.vision_slice_ms);
        context_ = opt_.context > 0 ? opt_.context : model_.context();
        FASTVLM_CHECK(context_ <= model_.config().text.max_position_embeddings, "EngineOptions::context of ", context_,
                      " exceeds max_position_embeddings (", model_.config().text.max_position_embeddings, ")");
        const auto type = opt_.kv_type.value_or(model_.kv_type());
        const std::size_t per_pos = text::KVPool::bytes_per_position(dec.kv_shape(), type);
        const std::size_t budget =
            opt_.kv_budget_bytes ? opt_.kv_budget_bytes : std::size_t(opt_.max_running) * std::size_t(std::min<Index>(context_, 4096)) * per_pos;
        kv_ = std::make_shared<text::KVPool>(dec.kv_shape(), type, budget, opt_.kv_page);
        ws_ = dec.make_workspace(Index(opt_.max_running) + opt_.prefill_chunk);
        rope_ = dec.make_rope(context_);
        logits_.resize(std::size_t(opt_.max_running) * std::size_t(dec.vocab_size()));
        xbuf_.resize(std::size_t((Index(opt_.max_running) + opt_.prefill_chunk) * dec.hidden_size()));
        pool_ = model_.pool();
        image_cache_ = opt_.image_cache ? opt_.image_cache : std::make_shared<ImageFeatureCache>(opt_.image_cache_bytes);
        const std::size_t prefix_bytes = std::min(opt_.prefix_cache_bytes.value_or(budget), budget);
        prefix_ = std::make_unique<PrefixCache>(kv_, Index(prefix_bytes / kv_->page_bytes()));
        init_metrics();
        prep_ = std::thread([this] { prep_loop(); });
        sched_ = std::thread([this] { sched_loop(); });
    }
    ~EngineImpl() override {
        {
            std::lock_guard lk(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        prep_cv_.notify_all();
        if (prep_.joinable()) prep_.join();
        if (sched_.joinable()) sched_.join();
        // Nothing is lost: every request that has not ended gets a result.
        for (auto& s : running_) finish(*s, ErrorKind::shutdown, "engine shut down before the request ended");
        for (auto& s : ready_) finish(*s, ErrorKind::shutdown, "engine shut down before the request started");
        for (auto& st : queue_) fail_state(st, ErrorKind::shutdown, "engine shut down before the request started");
    }

    std::shared_ptr<RequestState> submit(Request r) override {
        auto st = std::make_shared<RequestState>();
        const double t = r.timeout_s > 0 ? r.timeout_s : opt_.timeout_s;
        if (std::isfinite(t) && t > 0 && t < 1e9) st->deadline = st->submitted + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(t));
        st->req = std::move(r);
        {
            std::lock_guard lk(mu_);
            if (stop_) throw EngineError(ErrorKind::shutdown, "engine: shutting down, request not accepted");
            // Room: max_running slots plus max_queued places to wait (a request for a free slot passes
            // through the queue too, so max_queued = 0 still accepts while a slot is free).
            if (waiting_ + n_running_ >= Index(opt_.max_running) + opt_.max_queued) {
                m_.errors_queue_full->add();
                throw EngineError(ErrorKind::queue_full, "engine: queue full (" + std::to_string(n_running_) + " running, " +
                                                             std::to_string(waiting_) + " waiting; EngineOptions::max_running = " +
                                                             std::to_string(opt_.max_running) + ", max_queued = " +
                                                             std::to_string(opt_.max_queued) + "); retry later");
            }
            ++waiting_;
            queue_.push_back(st);
            m_.queued->set(double(waiting_));
        }
        prep_cv_.notify_one();
        return st;
    }

    const EngineOptions& options() const override { return opt_; }
    metrics::Registry& registry() override {
        refresh_gauges();
        return reg_;
    }

    void drain() override {
        std::unique_lock lk(mu_);
        idle_cv_.wait(lk, [&] { return stop_ || (waiting_ == 0 && n_running_ == 0); });
    }
    Index waiting() const override {
        std::lock_guard lk(mu_);
        return waiting_;
    }

    EngineStats stats() const override {
        refresh_gauges();
        EngineStats s;
        s.running = Index(m_.running->value());
        s.queued = Index(m_.queued->value());
        s.kv_pages_used = kv_->used_pages();
        s.kv_pages_reserved = kv_->reserved_pages();
        s.kv_pages_total = kv_->total_pages();
        s.kv_page_bytes = kv_->page_bytes();
        s.kv_bytes_per_position = kv_->bytes_per_position();
        s.weight_bytes = model_.weight_bytes();
        s.peak_rss_bytes = std::size_t(m_.peak_rss->value());
        s.requests_ok = m_.ok->value();
        s.requests_failed = m_.failed_total();
        s.prompt_tokens = m_.prompt_tokens->value();
        s.generated_tokens = m_.generated_tokens->value();
        s.images = m_.images->value();
        s.decode_busy_s = m_.decode_busy->value();
        s.decode_only_s = m_.decode_only->value();
        s.decode_only_tokens = m_.decode_only_tokens->value();
        s.image_cache = image_cache_->stats();
        s.prefix_cache = prefix_->stats();
        for (const auto& [name, h] : m_.stage) s.stages[name] = h->snapshot();
        return s;
    }

private:
    // ---- metrics ------------------------------------------------------------------------------------
    struct Metrics {
        std::map<std::string, metrics::Histogram*> stage;
        metrics::Histogram *queue_wait, *preprocess, *vision, *projector, *prefill, *ttft, *decode_token, *e2e, *step;
        metrics::Counter *ok, *prompt_tokens, *generated_tokens, *images, *errors_queue_full, *decode_only_tokens;
        metrics::Counter *cache_hits, *cache_misses, *prefix_hits, *prefix_misses, *prefix_positions;
        std::map<ErrorKind, metrics::Counter*> failed;
        metrics::Gauge *running, *queued, *kv_used, *kv_total, *weight_bytes, *peak_rss, *decode_busy, *decode_only, *cache_bytes,
            *prefix_pages;
        std::uint64_t failed_total() const {
            std::uint64_t n = 0;
            for (const auto& [k, c] : failed) n += c->value();
            return n;
        }
    };
    void init_metrics() {
        auto hist = [&](const char* name, const char* help) {
            auto* h = &reg_.histogram(std::string(name) + "_seconds", help);
            m_.stage[name] = h;
            return h;
        };
        m_.queue_wait = hist("queue_wait", "Time from submit to admission");
        m_.preprocess = hist("preprocess", "Tokenizing and image decoding/resizing per request");
        m_.vision = hist("vision", "FastViTHD per image");
        m_.projector = hist("projector", "Projector per image");
        m_.prefill = hist("prefill", "Prompt prefill per request (wall time of its steps)");
        m_.ttft = hist("ttft", "Time from submit to the first token");
        m_.decode_token = hist("decode_token", "Decode latency per generated token");
        m_.e2e = hist("e2e", "Time from submit to the result");
        m_.step = hist("step", "One scheduler step (a batched decoder forward and sampling)");
        m_.ok = &reg_.counter("requests_total", "Requests by outcome", {{"status", "ok"}});
        for (ErrorKind k : {ErrorKind::invalid_request, ErrorKind::too_large, ErrorKind::timeout, ErrorKind::cancelled,
                            ErrorKind::shutdown, ErrorKind::internal})
            m_.failed[k] = &reg_.counter("requests_total", "Requests by outcome", {{"status", to_string(k)}});
        m_.errors_queue_full = &reg_.counter("requests_total", "Requests by outcome", {{"status", "queue_full"}});
        m_.prompt_tokens = &reg_.counter("prompt_tokens_total", "Prompt positions (image tokens included)");
        m_.generated_tokens = &reg_.counter("generated_tokens_total", "Generated tokens");
        m_.images = &reg_.counter("images_total", "Images in requests (encoded or taken from the image-feature cache)");
        m_.cache_hits = &reg_.counter("image_cache_hits_total", "Images whose tokens came from the image-feature cache");
        m_.cache_misses = &reg_.counter("image_cache_misses_total", "Images encoded while the image-feature cache is on");
        m_.cache_bytes = &reg_.gauge("image_cache_bytes", "Bytes held by the image-feature cache");
        m_.prefix_hits = &reg_.counter("prefix_cache_hits_total", "Requests that adopted KV pages of an earlier prefix");
        m_.prefix_misses = &reg_.counter("prefix_cache_misses_total", "Requests that found no cached prefix (prefix cache on)");
        m_.prefix_positions = &reg_.counter("prefix_cache_positions_total", "Prompt positions adopted from the prefix cache (not prefilled)");
        m_.prefix_pages = &reg_.gauge("prefix_cache_pages", "KV pages held by the prefix cache");
        m_.running = &reg_.gauge("running_sequences", "Sequences running (vision, prefill or decode)");
        m_.queued = &reg_.gauge("queue_length", "Requests submitted and not yet running");
        m_.kv_used = &reg_.gauge("kv_pages_used", "KV pages in use");
        m_.kv_total = &reg_.gauge("kv_pages_total", "KV pages in the budget");
        m_.weight_bytes = &reg_.gauge("weight_bytes", "Bytes of the weights in memory");
        m_.peak_rss = &reg_.gauge("peak_rss_bytes", "Peak resident memory of the process");
        m_.decode_busy = &reg_.gauge("decode_busy_seconds", "Summed wall time of steps with decode rows");
        m_.decode_only = &reg_.gauge("decode_only_busy_seconds", "Summed wall time of steps with decode rows only");
        m_.decode_only_tokens = &reg_.counter("decode_only_tokens_total", "Tokens generated by steps with decode rows only");
        m_.kv_total->set(double(kv_->total_pages()));
        m_.weight_bytes->set(double(model_.weight_bytes()));
        if (opt_.on_anomaly) reg_.set_anomaly_callback(opt_.on_anomaly);
    }
    void refresh_gauges() const {
        m_.kv_used->set(double(kv_->used_pages()));
        m_.prefix_pages->set(double(prefix_->stats().pages));
        m_.peak_rss->set(double(metrics::peak_rss_bytes()));
    }
    static double secs(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
    static double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

    // ---- ending a request ------------------------------------------------------------------------------
    void finish(Seq& s, ErrorKind kind = ErrorKind::none, std::string error = {}) {
        auto now = Clock::now();
        Result& r = s.r;
        if (kind == ErrorKind::none && r.error_kind != ErrorKind::none) {  // set while running (a throwing callback)
            kind = r.error_kind;
            error = r.error;
        }
        r.error_kind = kind;
        r.error = std::move(error);
        if (kind == ErrorKind::timeout) r.stop = StopReason::timeout;
        else if (kind == ErrorKind::cancelled) r.stop = StopReason::cancelled;
        else if (kind != ErrorKind::none) r.stop = StopReason::error;
        if (s.stream || s.stop_text) {
            std::string tail = s.stream ? s.stream->flush() : std::string();
            if (s.stop_text) tail = s.stop_text->push(tail) + s.stop_text->flush();
            if (s.st->req.on_token && kind == ErrorKind::none) {
                try {
                    s.st->req.on_token(-1, tail);
                } catch (...) {
                }
            }
        }
        if (s.stop_text && s.stop_text->hit()) r.text = s.stop_text->text();
        else if (model_.has_tokenizer()) r.text = model_.tokenizer().decode(r.ids, true);
        auto& t = r.timings;
        t.total_ms = ms(now - s.st->submitted);
        if (s.first_token != Clock::time_point{}) t.decode_ms = ms(now - s.first_token);
        t.load_ms = model_.load_ms();
        r.preset = Policy::name;
        if (s.kv && kind == ErrorKind::none) keep_prefix(s);
        s.kv.reset();  // pages back to the pool (those the prefix cache keeps stay)
        record(r);
        if (s.admitted != Clock::time_point{}) {  // leaves its slot before the caller learns it ended, so
            std::lock_guard lk(mu_);              // a submit right after wait() sees the slot free
            n_running_ = std::max<Index>(0, n_running_ - 1);
            m_.running->set(double(n_running_));
        }
        if (s.st->req.on_finish) {
            try {
                s.st->req.on_finish(r);
            } catch (...) {  // the caller's problem; the request still ends
            }
        }
        s.st->finish(std::move(r));
    }
    void record(const Result& r) {
        const auto& t = r.timings;
        m_.e2e->record(t.total_ms / 1e3);
        if (r.ok()) m_.ok->add();
        else m_.failed.at(r.error_kind)->add();
        if (t.ttft_ms > 0) m_.ttft->record(t.ttft_ms / 1e3);
        if (t.decode_tokens > 0) m_.decode_token->record(t.decode_ms / 1e3 / double(t.decode_tokens));
        m_.generated_tokens->add(r.ids.size());
    }
    void fail_state(const std::shared_ptr<RequestState>& st, ErrorKind kind, std::string msg, double queue_ms = -1) {
        Seq s;
        s.st = st;
        if (queue_ms >= 0) s.r.timings.queue_ms = queue_ms;
        finish(s, kind, std::move(msg));
    }
    // cancelled or past its deadline: the error to end it with.
    static std::optional<std::pair<ErrorKind, std::string>> expired(const RequestState& st, Clock::time_point now) {
        if (st.cancel.load(std::memory_order_relaxed)) return std::pair{ErrorKind::cancelled, std::string("request cancelled")};
        if (now >= st.deadline)
            return std::pair{ErrorKind::timeout, "request timed out after " + std::to_string(secs(now - st.submitted)) + " s"};
        return std::nullopt;
    }

    // ---- preparation thread: tokenize, decode and resize images ---------------------------------------------
    void prep_loop() {
        for (;;) {
            std::shared_ptr<RequestState> st;
            {
                std::unique_lock lk(mu_);
                prep_cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
                if (stop_) break;
                st = std::move(queue_.front());
                queue_.pop_front();
            }
            std::unique_ptr<Seq> s;
            try {
                if (auto e = expired(*st, Clock::now())) throw EngineError(e->first, e->second);
                s = prepare(st);
            } catch (const EngineError& e) {
                dequeue_failed(st, e.kind(), e.what());
                continue;
            } catch (const Error& e) {
                dequeue_failed(st, ErrorKind::invalid_request, e.what());
                continue;
            } catch (const std::exception& e) {
                dequeue_failed(st, ErrorKind::internal, std::string("internal error: ") + e.what());
                continue;
            }
            {
                std::lock_guard lk(mu_);
                ready_.push_back(std::move(s));
            }
            cv_.notify_all();
        }
    }
    void dequeue_failed(const std::shared_ptr<RequestState>& st, ErrorKind kind, std::string msg) {
        fail_state(st, kind, std::move(msg), ms(Clock::now() - st->submitted));
        std::lock_guard lk(mu_);
        --waiting_;
        m_.queued->set(double(waiting_));
        idle_cv_.notify_all();
    }

    std::unique_ptr<Seq> prepare(const std::shared_ptr<RequestState>& st) {
        const auto t0 = Clock::now();
        const Request& q = st->req;
        auto s = std::make_unique<Seq>();
        s->st = st;
        FASTVLM_CHECK(q.max_new_tokens >= 0, "max_new_tokens must be >= 0, got ", q.max_new_tokens);
        FASTVLM_CHECK(std::isfinite(q.timeout_s) && q.timeout_s >= 0, "timeout_s must be >= 0, got ", q.timeout_s);
        s->sampler.emplace(q.sampling);
        const Index n_img = Index(q.images.size());
        if (!q.prompt_ids.empty()) {
            s->ids = q.prompt_ids;
        } else {
            std::vector<text::ChatMessage> msgs = q.messages;
            if (msgs.empty()) msgs.push_back({"user", q.prompt});
            Index slots = 0;
            for (const auto& m : msgs)
                for (std::size_t at = m.content.find(text::kImageToken); at != std::string::npos;
                     at = m.content.find(text::kImageToken, at + 1))
                    ++slots;
            if (slots == 0 && n_img > 0) {
                auto it = std::find_if(msgs.begin(), msgs.end(), [](const auto& m) { return m.role == "user"; });
                FASTVLM_CHECK(it != msgs.end(), "the request has images but no user message to put them in");
                std::string pre;
                for (Index i = 0; i < n_img; ++i) pre += std::string(text::kImageToken) + "\n";
                it->content = pre + it->content;
            }
            const auto& tok = model_.tokenizer();
            const std::string prompt = text::chat_prompt(msgs, q.system);
            s->ids = text::tokenize_with_image(prompt, [&](const std::string& c) { return tok.encode(c); });
        }
        const Index V = model_.decoder().vocab_size();
        Index slots = 0;
        for (auto id : s->ids) {
            if (id == text::kImageTokenIndex) ++slots;
            else FASTVLM_CHECK(id >= 0 && id < V, "prompt token id ", id, " is outside the vocabulary [0, ", V, ")");
        }
        FASTVLM_CHECK(slots == n_img, "the prompt has ", slots, " image placeholder", slots == 1 ? "" : "s", " (<image>) but ",
                      n_img, " image", n_img == 1 ? " was" : "s were", " given");
        FASTVLM_CHECK(n_img == 0 || model_.has_vision(), "the request has images but the model was loaded without its vision tower");
        const Index per_img = n_img ? Index(model_.config().vision.num_tokens()) : 0;
        s->T = Index(s->ids.size()) - n_img + n_img * per_img;
        FASTVLM_CHECK(s->T >= 1, "the prompt is empty");
        s->need = s->T + std::max(q.max_new_tokens - 1, 0);
        if (s->need > context_)
            throw EngineError(ErrorKind::too_large, "the prompt (" + std::to_string(s->T) + " positions after image expansion) plus up to " +
                                                        std::to_string(q.max_new_tokens) + " new tokens needs " + std::to_string(s->need) +
                                                        " positions, more than the context of " + std::to_string(context_) + " tokens");
        if (kv_->pages_for(s->need) > kv_->total_pages())
            throw EngineError(ErrorKind::too_large,
                              "the request needs " + std::to_string(s->need) + " KV positions (" +
                                  std::to_string(kv_->pages_for(s->need) * Index(kv_->page_bytes())) +
                                  " bytes), more than the whole KV budget of " +
                                  std::to_string(kv_->total_pages() * Index(kv_->page_bytes())) +
                                  " bytes (EngineOptions::kv_budget_bytes)");
        for (Index i = 0; i < n_img; ++i) {
            try {
                const ImageInput& in = q.images[std::size_t(i)];
                if (in.pixels) {
                    const Index S = model_.config().vision.image_size;
                    FASTVLM_CHECK(in.pixels->dim(0) == 3 && in.pixels->dim(1) == S && in.pixels->dim(2) == S, in.name,
                                  ": pixels have shape ", shape_str(in.pixels->shape()), ", the vision tower expects [3, ", S, ", ", S, "]");
                    s->pixels.push_back(in.pixels);
                } else {
                    s->pixels.push_back(std::make_shared<const Tensor<float, 3>>(model_.preprocess(in.load())));
                }
                if (image_cache_->enabled() || prefix_->enabled()) s->keys.push_back(image_key(s->pixels.back()->view(), vision_salt_));
            } catch (const Error& e) {
                fail("image ", i + 1, " of ", n_img, ": ", e.what());
            }
        }
        for (Index pos = 0; auto id : s->ids) {  // positions of the images, and their keys for the prefix cache
            if (id == text::kImageTokenIndex) {
                if (!s->keys.empty())
                    for (Index j = 0; j < per_img; ++j) s->pos_keys.push_back(image_position_key(s->keys[s->img_pos.size()], j));
                s->img_pos.push_back(pos);
                pos += per_img;
            } else {
                if (prefix_->enabled()) s->pos_keys.push_back(token_position_key(id));
                ++pos;
            }
        }
        if (!prefix_->enabled()) s->pos_keys.clear();
        s->stops = q.stop_ids.empty() ? &model_.stop_ids() : &q.stop_ids;
        if (model_.has_tokenizer()) s->stream.emplace(model_.tokenizer(), true);
        if (!q.stop_strings.empty()) s->stop_text.emplace(q.stop_strings);
        s->phase = n_img ? Phase::vision : Phase::prefill;
        s->r.prompt_tokens = s->T;
        s->r.timings.prefill_tokens = s->T;
        s->r.timings.preprocess_ms = ms(Clock::now() - t0);
        m_.preprocess->record(secs(Clock::now() - t0));
        m_.prompt_tokens->add(std::uint64_t(s->T));
        return s;
    }

    // ---- scheduler thread ---------------------------------------------------------------------------------
    void sched_loop() {
        for (;;) {
            {
                std::unique_lock lk(mu_);
                if (stop_) break;
                admit(lk);
                if (running_.empty()) {
                    cv_.wait_for(lk, std::chrono::milliseconds(20), [&] { return stop_ || !ready_.empty(); });
                    continue;
                }
            }
            try {
                sweep();
                encode_one_image();
                step();
            } catch (const std::exception& e) {
                // A failure of the batch itself (e.g. out of memory): every running sequence ends with it.
                for (auto& s : running_)
                    if (s) finish(*s, ErrorKind::internal, std::string("internal error in a batched step: ") + e.what());
                running_.clear();
            }
            publish_running();
        }
    }
    void publish_running() {
        std::lock_guard lk(mu_);
        n_running_ = Index(running_.size());
        m_.running->set(double(n_running_));
        if (n_running_ == 0 && waiting_ == 0) idle_cv_.notify_all();
    }

    // Under mu_: starts ready requests while slots and KV reservations allow (FIFO).
    void admit(std::unique_lock<std::mutex>&) {
        const auto now = Clock::now();
        for (auto it = ready_.begin(); it != ready_.end();) {
            if (auto e = expired(*(*it)->st, now)) {
                (*it)->r.timings.queue_ms = ms(now - (*it)->st->submitted);
                finish(**it, e->first, e->second);
                it = ready_.erase(it);
                --waiting_;
            } else {
                ++it;
            }
        }
        while (!ready_.empty() && Index(running_.size()) < opt_.max_running) {
            auto& s = ready_.front();
            s->kv = text::KVSeq::try_create(kv_, s->need);
            while (!s->kv && prefix_->evict_one()) s->kv = text::KVSeq::try_create(kv_, s->need);  // cached pages make room
            if (!s->kv) break;  // waits for pages (head of line)
            try {
                adopt_prefix(*s);
            } catch (const std::exception&) {  // no memory for the copied page: run without the prefix
                s->kv.reset();
                s->kv = text::KVSeq::try_create(kv_, s->need);  // the reservation just given back
                if (!s->kv) break;
            }
            s->admitted = now;
            s->r.timings.queue_ms = ms(now - s->st->submitted);
            m_.queue_wait->record(secs(now - s->st->submitted));
            running_.push_back(std::move(s));
            ready_.pop_front();
            --waiting_;
        }
        n_running_ = Index(running_.size());
        m_.queued->set(double(waiting_));
        m_.running->set(double(n_running_));
    }

    // Ends cancelled and timed-out sequences (their KV pages go back).
    void sweep() {
        const auto now = Clock::now();
        std::erase_if(running_, [&](std::unique_ptr<Seq>& s) {
            if (auto e = expired(*s->st, now)) {
                finish(*s, e->first, e->second);
                return true;
            }
            return false;
        });
    }

    // Fills image tokens from the cache for every sequence in its vision phase, and runs one slice of one
    // image's encoding (vision tower, then projector) per step: while other sequences prefill or decode the
    // slice is vision_slice_ms long, so running streams pause for one slice; alone the image runs to its end.
    void encode_one_image() {
        bool encoded = false;
        const bool others = std::any_of(running_.begin(), running_.end(), [](const auto& sp) { return sp && sp->phase != Phase::vision; });
        const auto slice = others && opt_.vision_slice_ms > 0
                               ? std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(opt_.vision_slice_ms))
                               : Clock::duration::max();
        for (auto& sp : running_) {
            if (!sp || sp->phase != Phase::vision) continue;
            Seq& s = *sp;
            s.img_tokens.resize(s.pixels.size());
            try {
                for (std::size_t i = 0; i < s.pixels.size(); ++i) {
                    if (s.img_tokens[i] || !s.pixels[i]) continue;  // done, or inside the adopted prefix
                    if (image_cache_->enabled()) {
                        if (auto t = image_cache_->get(s.keys[i])) {
                            image_cache_->record(true);
                            s.img_tokens[i] = std::move(t);
                            s.pixels[i].reset();
                            ++s.r.timings.image_cache_hits;
                            m_.cache_hits->add();
                            m_.images->add();
                            continue;
                        }
                    }
                    // One slice of one image per step (a miss is counted when its encoding starts).
                    if (encoded || (runner_.busy() && !s.enc)) break;
                    if (!s.enc) {
                        if (image_cache_->enabled()) {
                            image_cache_->record(false);
                            m_.cache_misses->add();
                        }
                        auto feats = std::make_shared<Tensor<float, 2>>();
                        runner_.start([this, px = s.pixels[i], feats](const SlicedRunner::Yield& yield) {
                            *feats = model_.encode_image(px->view(), pool_,
                                                         [&](const std::string&, TensorView<const float, 3>) { yield(); });
                        });
                        s.enc.reset(new typename Seq::Encoding{&runner_, feats});
                    }
                    encoded = true;
                    const auto t0 = Clock::now();
                    const bool done = runner_.resume(slice);
                    s.enc->spent += Clock::now() - t0;
                    if (!done) break;
                    const auto enc = std::move(s.enc);
                    enc->runner = nullptr;  // ended: nothing to abandon
                    if (auto err = runner_.error()) std::rethrow_exception(err);
                    const auto t1 = Clock::now();
                    s.img_tokens[i] = std::make_shared<const Tensor<float, 2>>(model_.project(*enc->features, pool_));
                    const auto t2 = Clock::now();
                    if (image_cache_->enabled()) {
                        image_cache_->put(s.keys[i], s.img_tokens[i]);
                        m_.cache_bytes->set(double(image_cache_->stats().bytes));
                    }
                    s.pixels[i].reset();
                    s.r.timings.vision_ms += ms(enc->spent);
                    s.r.timings.projector_ms += ms(t2 - t1);
                    m_.vision->record(secs(enc->spent));
                    m_.projector->record(secs(t2 - t1));
                    m_.images->add();
                }
                bool ready = true;
                for (std::size_t i = 0; i < s.pixels.size(); ++i) ready = ready && (s.img_tokens[i] || !s.pixels[i]);
                if (ready) to_prefill(s);
            } catch (const Error& e) {
                fail_running(sp, ErrorKind::invalid_request, e.what());
            }
        }
        std::erase(running_, nullptr);
    }
    // Embeds the prompt positions still to run, [prefilled, T) (images inside an adopted prefix have no tokens).
    void to_prefill(Seq& s) {
        std::vector<TensorView<const float, 2>> views(s.pixels.size());
        for (std::size_t i = 0; i < s.img_tokens.size(); ++i)
            if (s.img_tokens[i]) views[i] = s.img_tokens[i]->view();
        s.x0 = s.prefilled;
        s.x = model_.embed_prompt(s.ids, views, s.x0);
        s.img_tokens.clear();
        s.pixels.clear();
        s.phase = Phase::prefill;
    }
    // At admission: adopts the longest cached prefix (shared whole pages, then a copied part of a page;
    // at least the last prompt position is left to compute); images entirely inside it need no vision.
    void adopt_prefix(Seq& s) {
        if (s.pos_keys.empty()) return;
        s.prefilled = prefix_->adopt_into(*s.kv, s.pos_keys, s.T - 1);
        if (s.prefilled == 0) {
            m_.prefix_misses->add();
            return;
        }
        const Index n = Index(model_.config().vision.num_tokens());
        for (std::size_t i = 0; i < s.img_pos.size(); ++i)
            if (s.img_pos[i] + n <= s.prefilled) s.pixels[i].reset();
        s.r.timings.cached_tokens = s.prefilled;
        s.r.timings.prefill_tokens = s.T - s.prefilled;
        m_.prefix_hits->add();
        m_.prefix_positions->add(std::uint64_t(s.prefilled));
    }
    // When a sequence ends well: the prefix cache keeps its pages (prompt and generated tokens fed back).
    void keep_prefix(Seq& s) {
        if (s.pos_keys.empty()) return;
        std::vector<std::uint64_t> keys = s.pos_keys;
        const Index n = s.kv->size();
        for (Index i = 0; i < n - s.T && i < Index(s.r.ids.size()); ++i) keys.push_back(token_position_key(s.r.ids[std::size_t(i)]));
        keys.resize(std::size_t(std::min<Index>(n, Index(keys.size()))));
        prefix_->insert(keys, *s.kv);
    }
    // Ends a running sequence with an error; the caller removes the null entry from running_.
    void fail_running(std::unique_ptr<Seq>& sp, ErrorKind kind, std::string msg) {
        finish(*sp, kind, std::move(msg));
        sp.reset();
    }

    void step() {
        const auto& dec = model_.decoder();
        const Index H = dec.hidden_size(), V = dec.vocab_size();
        for (auto& sp : running_)
            if (sp->phase == Phase::prefill && sp->x.size() == 0) to_prefill(*sp);
        std::vector<text::BatchSeq> batch;
        std::vector<Seq*> members, sampled;
        Index rows = 0, budget = opt_.prefill_chunk;
        bool has_decode = false;
        const bool hold_decode =
            opt_.prefill_first && std::any_of(running_.begin(), running_.end(), [](const auto& sp) { return sp->phase != Phase::decode; });
        for (auto& sp : running_) {
            if (sp->phase != Phase::decode || hold_decode) continue;
            dec.embed(sp->last, xbuf_.data() + rows * H);
            batch.push_back({sp->kv.get(), 1, true, text::Logits::last});
            members.push_back(sp.get());
            sampled.push_back(sp.get());
            ++rows;
            has_decode = true;
        }
        const auto t0 = Clock::now();
        for (auto& sp : running_) {
            Seq& s = *sp;
            if (s.phase != Phase::prefill || budget == 0) continue;
            const Index n = std::min(budget, s.T - s.prefilled);
            std::copy_n(s.x.data() + (s.prefilled - s.x0) * H, n * H, xbuf_.data() + rows * H);
            const bool last = s.prefilled + n == s.T;
            batch.push_back({s.kv.get(), n, false, last && s.st->req.max_new_tokens > 0 ? text::Logits::last : text::Logits::none});
            members.push_back(&s);
            if (last && s.st->req.max_new_tokens > 0) sampled.push_back(&s);
            if (s.prefilled == s.x0) s.prefill_start = t0;
            rows += n;
            budget -= n;
        }
        if (batch.empty()) return;
        dec.forward_batch(xbuf_.data(), batch, ws_, rope_, pool_, logits_.data());
        // Sampling, one task per sequence (own sampler: independent of the batch).
        std::vector<std::int32_t> tok(sampled.size());
        const std::size_t valid = std::size_t(model_.valid_vocab());
        if (!sampled.empty()) pool_->run(sampled.size(), [&](std::size_t i, unsigned) {
            tok[i] = sampled[i]->sampler->sample(std::span<const float>(logits_.data() + i * std::size_t(V), std::size_t(V)), valid);
        });
        const auto t1 = Clock::now();
        m_.step->record(secs(t1 - t0));
        if (has_decode) m_.decode_busy->add(secs(t1 - t0));
        if (has_decode && Index(batch.size()) == rows) {  // decode rows only
            m_.decode_only->add(secs(t1 - t0));
            m_.decode_only_tokens->add(batch.size());
        }
        std::vector<Seq*> ended;
        for (std::size_t b = 0; b < members.size(); ++b) {
            Seq& s = *members[b];
            if (s.phase == Phase::prefill) {
                s.prefilled += batch[b].rows;
                if (s.prefilled < s.T) continue;
                s.x = Tensor<float, 2>();
                s.r.timings.prefill_ms = ms(t1 - s.prefill_start);
                m_.prefill->record(secs(t1 - s.prefill_start));
                if (s.st->req.max_new_tokens == 0) {
                    s.r.stop = StopReason::max_tokens;
                    ended.push_back(&s);
                    continue;
                }
                s.phase = Phase::decode;
            } else {
                ++s.r.timings.decode_tokens;
            }
            const std::size_t i = std::size_t(std::find(sampled.begin(), sampled.end(), &s) - sampled.begin());
            if (!accept(s, tok[i], t1)) ended.push_back(&s);
        }
        for (Seq* s : ended) finish(*s);
        std::erase_if(running_, [&](const std::unique_ptr<Seq>& s) { return std::find(ended.begin(), ended.end(), s.get()) != ended.end(); });
    }

    // A sampled token: false when the sequence ends with it.
    bool accept(Seq& s, std::int32_t id, Clock::time_point now) {
        if (s.first_token == Clock::time_point{}) {
            s.first_token = now;
            s.r.timings.ttft_ms = ms(now - s.st->submitted);
        }
        if (std::find(s.stops->begin(), s.stops->end(), id) != s.stops->end()) {
            s.r.stop = StopReason::eos;
            return false;
        }
        s.r.ids.push_back(id);
        std::string piece = s.stream ? s.stream->push(id) : std::string();
        if (s.stop_text) piece = s.stop_text->push(piece);
        if (s.st->req.on_token) {
            try {
                s.st->req.on_token(id, piece);
            } catch (const std::exception& e) {
                s.r.error_kind = ErrorKind::invalid_request;
                s.r.error = std::string("on_token callback threw: ") + e.what();
            } catch (...) {
                s.r.error_kind = ErrorKind::invalid_request;
                s.r.error = "on_token callback threw";
            }
            if (s.r.error_kind != ErrorKind::none) {
                s.st->req.on_token = nullptr;
                return false;
            }
        }
        if (s.stop_text && s.stop_text->hit()) {
            s.r.stop = StopReason::eos;
            return false;
        }
        if (Index(s.r.ids.size()) >= s.st->req.max_new_tokens) {
            s.r.stop = StopReason::max_tokens;
            return false;
        }
        s.last = id;
        return true;
    }

    Model<Policy> model_;
    EngineOptions opt_;
    Index context_ = 0;
    std::shared_ptr<text::KVPool> kv_;
    text::DecoderWorkspace ws_;
    RopeTable rope_;
    std::vector<float> logits_, xbuf_;
    ThreadPool* pool_ = nullptr;
    std::shared_ptr<ImageFeatureCache> image_cache_;
    const std::string vision_salt_ = vision_formats<Policy>();  // image keys: equal only for equal vision arithmetic
    std::unique_ptr<PrefixCache> prefix_;
    metrics::Registry reg_;
    Metrics m_;
    SlicedRunner runner_;  // image encodings in slices (scheduler thread); outlives running_'s Seqs

    mutable std::mutex mu_;
    std::condition_variable cv_, prep_cv_, idle_cv_;
    std::deque<std::shared_ptr<RequestState>> queue_;  // submitted, not prepared
    std::deque<std::unique_ptr<Seq>> ready_;           // prepared, waiting for admission
    Index waiting_ = 0;                                // queue_ + ready_ + the one in preparation
    Index n_running_ = 0;
    bool stop_ = false;
    std::vector<std::unique_ptr<Seq>> running_;  // scheduler thread only
    std::thread prep_, sched_;
};

// The engine of a model of one preset. A function template defined out of any class, so that compiled mode
// (core/compiled.hpp) keeps EngineImpl<P> of the six presets out of a user's file.
template <class Policy>
std::unique_ptr<EngineCore> make_engine_core(const Model<Policy>& model, EngineOptions opt) {
    return std::make_unique<EngineImpl<Policy>>(model, std::move(opt));
}
#if defined(FASTVLM_COMPILED_LIB)
// Compiled once per preset in libfastvlm_presets (any_model.hpp: FASTVLM_INSTANTIATE_PRESET).
#define FASTVLM_EXTERN_(name) \
    extern template std::unique_ptr<EngineCore> make_engine_core<policy::name>(const Model<policy::name>&, EngineOptions);
FASTVLM_PRESETS(FASTVLM_EXTERN_)
#undef FASTVLM_EXTERN_
#endif
}  // namespace detail

// Continuous batching on one loaded model. Non-copyable, movable; the destructor ends every
// request that has not finished with ErrorKind::shutdown (call drain() first to let them finish).
class Engine {
public:
    template <class Policy>
    explicit Engine(const Model<Policy>& model, EngineOptions opt = {})
        : core_(detail::make_engine_core(model, std::move(opt))) {}
    explicit Engine(std::unique_ptr<detail::EngineCore> core) : core_(std::move(core)) {}

    // Thread-safe. Throws EngineError (queue_full, shutdown); every other problem of the request
    // comes back in its Result (error_kind, error).
    RequestHandle submit(Request r) { return RequestHandle(core_->submit(std::move(r))); }
    // submit + wait.
    Result run(Request r) { return submit(std::move(r)).wait(); }
    // Blocks until nothing is queued or running.
    void drain() { core_->drain(); }

    EngineStats stats() const { return core_->stats(); }
    metrics::Registry& metrics() { return core_->registry(); }
    nlohmann::json metrics_json() { return core_->registry().to_json(); }
    const EngineOptions& options() const { return core_->options(); }

private:
    friend class detail::AdaptiveCore;
    std::unique_ptr<detail::EngineCore> core_;
};

}  // namespace fastvlm
