// fastvlm/model.hpp — Model<Policy>: a loaded model folder (tokenizer, FastViTHD, projector,
// Qwen2 decoder, thread pool), immutable after load and shared by cheap copies of a handle;
// plus the options and results of generation shared by Session and Engine (docs/api.md).
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
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
#include "fastvlm/kernels/kernel_choice.hpp"
#include "fastvlm/text/chat.hpp"
#include "fastvlm/text/projector.hpp"
#include "fastvlm/text/qwen2.hpp"
#include "fastvlm/text/sampling.hpp"
#include "fastvlm/text/tokenizer.hpp"
#include "fastvlm/vision/fastvithd.hpp"

namespace fastvlm {

using text::SamplingOptions;

struct LoadOptions {
    unsigned threads = 0;     // thread pool size (the caller included); 0 = all hardware threads
    unsigned spin_us = 2000;  // pool workers spin this long between parallel regions before they sleep (0 = never spin)
    Index context = 0;        // default KV-cache positions per session; 0 = min(8192, max_position_embeddings)
    bool load_vision = true;  // false: text only, or image features computed elsewhere
    text::KVType kv_type = text::KVType::bf16;  // KV cache storage of sessions and engines (f32: exact)
    // Side of the vision tower's square input in pixels; 0 = config.json's (1024 for FastVLM). Any multiple
    // of the tower's stride (64) works: (S/64)² image tokens, work ∝ S². The models were trained at 1024 only,
    // so a smaller side is faster and less accurate (docs/precision.md, "Image size").
    int image_size = 0;
    io::LoadLimits limits = {};  // file sizes, JSON depth, tensor counts, image_size (docs/reliability.md)
    io::ImageLimits image_limits = {};  // images given by path (Session::describe) and preprocess()'s padded square
    // Kernel paths (kernels/kernel_choice.hpp, docs/kernels.md): "" = FASTVLM_KERNELS if set, else "measure"
    // (time the candidate paths on this model's layers, through the per-CPU cache); "default" (builtin, no
    // timing); or forced paths, e.g. "bf16xbf16=widen_f32,q8xq8.gemv=avx2_int8".
    std::string kernels = {};
    // A tokenizer to use instead of loading the folder's (several presets of one folder share one: the
    // adaptive model of load_model(dir, "auto:int8,int4")).
    std::shared_ptr<const text::Tokenizer> tokenizer = {};
    // Called while loading: fraction done in [0, 1] and the part being loaded.
    std::function<void(float fraction, std::string_view stage)> progress = {};
};

struct GenerateOptions {
    int max_new_tokens = 256;
    SamplingOptions sampling = {};  // greedy by default (deterministic reference, spec §5.4)
    std::vector<std::int32_t> stop_ids = {};  // empty: config eos ids + <|im_end|> + <|endoftext|>
    // Streaming: called for every generated token with the newly complete UTF-8 text (may be
    // empty while a character is split over tokens). The final call after the last token carries
    // id −1 and any held-back bytes.
    std::function<void(std::int32_t id, std::string_view text)> on_token = {};
    const std::atomic<bool>* cancel = nullptr;  // set to true from any thread to stop after the current token
};


enum class StopReason { eos, max_tokens, cancelled, timeout, error };

inline const char* to_string(StopReason s) {
    switch (s) {
        case StopReason::eos: return "eos";
        case StopReason::max_tokens: return "max_tokens";
        case StopReason::cancelled: return "cancelled";
        case StopReason::timeout: return "timeout";
        case StopReason::error: return "error";
    }
    return "?";
}

// Why a request of the engine failed (Result::error_kind); none when it did not.
enum class ErrorKind {
    none,
    invalid_request,  // bad image, prompt, placeholder count, options, or a prompt over the context
    too_large,        // its worst case can never fit (the context, or the KV budget)
    queue_full,       // submit: the queue holds EngineOptions::max_queued requests
    timeout,          // the request's deadline passed
    cancelled,        // cancelled by the caller
    shutdown,         // the engine was destroyed before the request ended
    internal,         // anything else (a bug: please report)
};
inline const char* to_string(ErrorKind k) {
    switch (k) {
        case ErrorKind::none: return "none";
        case ErrorKind::invalid_request: return "invalid_request";
        case ErrorKind::too_large: return "too_large";
        case ErrorKind::queue_full: return "queue_full";
        case ErrorKind::timeout: return "timeout";
        case ErrorKind::cancelled: return "cancelled";
        case ErrorKind::shutdown: return "shutdown";
        case ErrorKind::internal: return "internal";
    }
    return "?";
}

// Milliseconds. ttft: from the start of the call to the first sampled token (preprocess, vision,
// projector, prefill and the first sampling included).
struct Timings {
    double queue_ms = 0;  // engine: from submit to admission
    double total_ms = 0;  // engine: from submit to the result
    double load_ms = 0, preprocess_ms = 0, vision_ms = 0, projector_ms = 0, prefill_ms = 0, ttft_ms = 0, decode_ms = 0;
    Index prefill_tokens = 0;  // positions run through the decoder in the prefill (image tokens included)
    Index decode_tokens = 0;   // single-token decoder steps
    Index image_cache_hits = 0;  // engine: images whose tokens came from the image-feature cache (no vision time)
    Index cached_tokens = 0;     // engine: prompt positions whose KV came from the prefix cache (not in prefill_tokens)
    double prefill_tok_s() const { return prefill_ms > 0 ? 1e3 * double(prefill_tokens) / prefill_ms : 0; }
    double decode_tok_s() const { return decode_ms > 0 ? 1e3 * double(decode_tokens) / decode_ms : 0; }
};

struct Result {
    std::string text;               // decoded answer, special tokens skipped
    std::vector<std::int32_t> ids;  // generated ids, the stop token excluded
    StopReason stop = StopReason::eos;
    Timings timings;
    Index prompt_tokens = 0;                 // positions of the prompt (image tokens included)
    std::string preset;                      // engine requests: the precision preset that served it (e.g. "int8")
    ErrorKind error_kind = ErrorKind::none;  // engine requests: why it failed
    std::string error;                       // and the message (empty when it did not fail)
    bool ok() const { return error_kind == ErrorKind::none; }
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
    std::shared_ptr<const text::Tokenizer> tokenizer;  // shared between presets of one folder
    std::optional<vision::FastViTHD<Policy>> vision;
    text::Projector<Policy> projector;
    text::Qwen2<Policy> decoder;
    std::unique_ptr<ThreadPool> pool;
    Index context = 0;
    text::KVType kv_type = text::KVType::bf16;
    double load_ms = 0;
    std::vector<std::int32_t> stop_ids;
    io::ImageLimits image_limits;
};

// Bytes the weights of `store` will take once Model<Policy>::load has packed them (the policy's format
// per layer class, f32 for norms, biases and depthwise kernels), from the tensor shapes alone, before
// any weight is read. Panel padding is ignored (FastVLM's sizes are multiples of 32).
template <class Policy>
double estimated_weight_bytes(const io::TensorStore& store, bool with_vision) {
    auto bytes = [](auto fmt_tag) { return decltype(fmt_tag)::bits_per_weight / 8; };
    constexpr std::string_view vprefix = "model.vision_tower.";
    double total = 0;
    for (const auto& name : store.names()) {
        const io::TensorRef& t = store.at(name);
        const double n = double(t.numel());
        std::string_view nm = name;
        const bool matrix = nm.ends_with(".weight") && t.shape.size() >= 2;
        if (nm.starts_with(vprefix)) {
            if (!with_vision || nm.find(".head.") != std::string_view::npos) continue;  // CLIP head: unused
            const bool one_by_one = t.shape.size() == 4 && t.shape[2] == 1 && t.shape[3] == 1;
            total += n * (t.shape.size() == 2 ? bytes(typename Policy::vision_attention::weight{})
                          : one_by_one        ? bytes(typename Policy::vision_conv::weight{})
                                              : 4.0);
        } else if (nm.starts_with("model.mm_projector.")) {
            total += n * (matrix ? bytes(typename Policy::projector::weight{}) : 4.0);
        } else if (nm == "lm_head.weight") {
            total += n * bytes(typename Policy::lm_head::weight{});
        } else if (nm == "model.embed_tokens.weight") {
            total += n * bytes(typename Policy::embeddings{});
            if (!store.contains("lm_head.weight")) total += n * bytes(typename Policy::lm_head::weight{});  // tied
        } else if (matrix && nm.find(".self_attn.") != std::string_view::npos) {
            total += n * bytes(typename Policy::decoder_attention::weight{});
        } else if (matrix && nm.find(".mlp.") != std::string_view::npos) {
            total += n * bytes(typename Policy::decoder_mlp::weight{});
        } else if (t.dtype != io::DType::I64) {
            total += n * 4.0;
        }
    }
    return total;
}

// Memory a load may still take: MemAvailable + SwapFree (/proc/meminfo), and no more than the room
// left under this process's cgroup v2 memory.max. 0 when /proc/meminfo cannot be read.
inline double available_memory_bytes() {
    auto meminfo = [](std::string_view key) -> double {
        std::ifstream f("/proc/meminfo");
        std::string k;
        double kb = 0;
        std::string unit;
        while (f >> k >> kb) {
            std::getline(f, unit);
            if (k.size() == key.size() + 1 && k.starts_with(key) && k.back() == ':') return kb * 1024;
        }
        return -1;
    };
    const double avail = meminfo("MemAvailable");
    if (avail < 0) return 0;
    double room = avail + std::max(0.0, meminfo("SwapFree"));
    std::ifstream cg("/proc/self/cgroup");
    for (std::string line; std::getline(cg, line);) {
        if (!line.starts_with("0::")) continue;  // cgroup v2
        const std::filesystem::path dir = std::filesystem::path("/sys/fs/cgroup") / line.substr(4);
        std::ifstream fmax(dir / "memory.max"), fcur(dir / "memory.current");
        double max = 0, cur = 0;
        if (fmax >> max && fcur >> cur) room = std::min(room, std::max(0.0, max - cur));  // "max" = no limit: not read
    }
    return room;
}

// Throws before any weight is read when the policy's weights cannot fit: LoadLimits::max_weight_bytes,
// or (0, the default) the memory available now. An fp32 FastVLM-7B (~31 GB) on a 24 GB machine is this
// error instead of the kernel's OOM killer part-way through a minute-long load.
template <class Policy>
void check_weight_memory(const io::TensorStore& store, bool with_vision, const io::LoadLimits& limits,
                         const std::filesystem::path& dir, std::string_view preset) {
    const double need = estimated_weight_bytes<Policy>(store, with_vision);
    const bool automatic = limits.max_weight_bytes == 0;
    const double room = automatic ? available_memory_bytes() : double(limits.max_weight_bytes);
    if (room <= 0 || need <= room) return;
    auto gib = [](double b) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.2f", b / double(1 << 30));
        return std::string(buf);
    };
    fail("model '", dir.string(), "' with precision ", preset, ": its weights need about ", gib(need), " GiB, more than ",
         automatic ? "the " + gib(room) + " GiB of memory available (MemAvailable + SwapFree, cgroup memory.max)"
                   : "the limit max_weight_bytes = " + std::to_string(limits.max_weight_bytes) + " bytes",
         "; choose a smaller precision (int8, int4) or set the limit max_weight_bytes");
}
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
    static Model load(const std::filesystem::path& dir, const LoadOptions& opt = {});

    bool loaded() const { return p_ != nullptr; }
    const io::ModelConfig& config() const { return parts().config; }
    const std::filesystem::path& dir() const { return parts().dir; }
    bool has_tokenizer() const { return parts().tokenizer != nullptr; }
    // The tokenizer shared (LoadOptions::tokenizer of another load); nullptr when the folder has none.
    std::shared_ptr<const text::Tokenizer> shared_tokenizer() const { return parts().tokenizer; }
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
    text::KVType kv_type() const { return parts().kv_type; }
    double load_ms() const { return parts().load_ms; }
    const io::ImageLimits& image_limits() const { return parts().image_limits; }
    // Bytes of the weights as held in memory (packed formats of the policy, f32 norms and biases).
    std::size_t weight_bytes() const {
        const auto& p = parts();
        return (p.vision ? p.vision->weight_bytes() : 0) + p.projector.weight_bytes() + p.decoder.weight_bytes();
    }
    // Bytes of weights one decode step streams (text::Qwen2::decode_weight_bytes).
    std::size_t decode_weight_bytes() const { return parts().decoder.decode_weight_bytes(); }
    const std::vector<std::int32_t>& stop_ids() const { return parts().stop_ids; }
    // Ids that may be generated: len(tokenizer) when there is one (spec §5.5), else vocab_size.
    Index valid_vocab() const {
        const Index v = parts().decoder.vocab_size();
        return has_tokenizer() ? std::min<Index>(v, Index(parts().tokenizer->size())) : v;
    }

    // [3, S, S] pixels of an image (spec §6.1: pad to square, bicubic, /255).
    // The padded square is bounded by LoadOptions::image_limits.
    Tensor<float, 3> preprocess(const io::Image& img) const {
        return io::preprocess_image(img, config().vision.image_size, image_limits());
    }
    // Vision tower: pixels [3, S, S] → image features [N, mm_hidden_size]. on_stage is called after every
    // block of the tower (vision/fastvithd.hpp); it may throw to stop the encoding.
    Tensor<float, 2> encode_image(TensorView<const float, 3> pixels, ThreadPool* pool = nullptr,
                                  const vision::StageCallback& on_stage = {}) const {
        FASTVLM_CHECK(has_vision(), parts().dir.string(), ": the vision tower was not loaded (LoadOptions::load_vision)");
        const Index S = config().vision.image_size;
        FASTVLM_CHECK(pixels.dim(0) == 3 && pixels.dim(1) == S && pixels.dim(2) == S, "pixels have shape ",
                      shape_str(pixels.shape()), ", the vision tower expects [3, ", S, ", ", S, "]");
        return parts().vision->forward(pixels, pool ? pool : this->pool(), on_stage);
    }
    // Projector: image features [N, mm_hidden_size] → image tokens [N, hidden_size].
    Tensor<float, 2> project(TensorView<const float, 2> features, ThreadPool* pool = nullptr) const {
        return parts().projector.forward(features, pool ? pool : this->pool());
    }

    // [T − from, hidden] decoder input of a prompt's positions [from, T): text ids embedded, the k-th
    // −200 slot replaced by the rows of images[k] (spec §5.3; several images as mlx-vlm does for
    // FastVLM). An image whose positions all lie before `from` (a prefix whose KV is already there)
    // may be an empty view: it stands for num_tokens() positions. Errors name the placeholder count
    // and the shapes.
    Tensor<float, 2> embed_prompt(std::span<const std::int32_t> ids, std::span<const TensorView<const float, 2>> images,
                                  Index from = 0) const;

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

// ---- defined out of the class (not inline), so that compiled mode (core/compiled.hpp) keeps them out of
// a user's file ----

template <class Policy>
Model<Policy> Model<Policy>::load(const std::filesystem::path& dir, const LoadOptions& opt) {
    detail::Stopwatch sw;
    auto p = std::make_shared<detail::ModelParts<Policy>>();
    p->dir = dir;
    auto progress = [&](float f, std::string_view stage) {
        if (opt.progress) opt.progress(f, stage);
    };
    progress(0.f, "config");
    p->config = io::ModelConfig::load(dir, opt.limits);
    if (opt.image_size != 0) io::set_image_size(p->config.vision, opt.image_size, opt.limits, "LoadOptions::image_size");
    const auto& tc = p->config.text;
    {  // every parallel region is split over the pool: thousands of threads on a few cores only thrash
        const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
        const unsigned max_threads = std::min(1024u, std::max(16u, 8 * hw));
        FASTVLM_CHECK(opt.threads <= max_threads, "LoadOptions::threads = ", opt.threads, " is more than the limit of ", max_threads,
                      " (8 x the ", hw, " hardware threads, at least 16, at most 1024)");
    }
    p->pool = std::make_unique<ThreadPool>(opt.threads, opt.spin_us);
    p->kv_type = opt.kv_type;
    p->image_limits = opt.image_limits;
    p->context = opt.context > 0 ? opt.context : std::min<Index>(8192, tc.max_position_embeddings);
    FASTVLM_CHECK(p->context <= tc.max_position_embeddings, "context of ", p->context,
                  " tokens exceeds max_position_embeddings (", tc.max_position_embeddings, ") of ", p->config.source);
    if (opt.tokenizer) {
        p->tokenizer = opt.tokenizer;
    } else if (io::present(dir / "vocab.json") || io::present(dir / "merges.txt") || io::present(dir / "tokenizer.json")) {
        progress(0.f, "tokenizer");
        p->tokenizer = std::make_shared<const text::Tokenizer>(text::Tokenizer::load(dir, opt.limits));
    }
    const auto store = io::TensorStore::open(dir, opt.limits);
    detail::check_weight_memory<Policy>(store, opt.load_vision, opt.limits, dir, Policy::name);
    // Rough split of the load time: vision 15 %, projector 1 %, decoder the rest.
    if (opt.load_vision) {
        progress(0.01f, "vision");
        p->vision = vision::FastViTHD<Policy>::load(store, p->config.vision, vision::kCheckpointPrefix,
                                                    p->pool.get());
    }
    progress(0.15f, "projector");
    p->projector = text::Projector<Policy>::load(store, p->config);
    progress(0.16f, "decoder");
    p->decoder = text::Qwen2<Policy>::load(store, tc, [&](int done, int total) {
        progress(0.16f + 0.84f * float(done) / float(total), "decoder");
    }, p->pool.get());
    progress(0.99f, "kernels");
    choose_kernels([&](auto&& fn) {
        if (p->vision) p->vision->for_each_linear(fn);
        p->projector.for_each_linear(fn);
        p->decoder.for_each_linear(fn);
    }, p->pool.get(), opt.kernels);
    detail::mm::HugeSlabs::instance().advise_deferred();  // the weights are written (matmul/common.hpp)
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

template <class Policy>
Tensor<float, 2> Model<Policy>::embed_prompt(std::span<const std::int32_t> ids,
                                             std::span<const TensorView<const float, 2>> images, Index from) const {
    const auto& dec = decoder();
    const Index H = dec.hidden_size();
    const Index n_img = Index(std::count(ids.begin(), ids.end(), text::kImageTokenIndex));
    FASTVLM_CHECK(n_img == Index(images.size()), "the prompt has ", n_img, " image placeholder", n_img == 1 ? "" : "s",
                  " (<image> / ", text::kImageTokenIndex, ") but ", images.size(), " image", images.size() == 1 ? " was" : "s were",
                  " given");
    auto rows = [&](const TensorView<const float, 2>& im) { return im.data() ? im.dim(0) : Index(config().vision.num_tokens()); };
    Index T = Index(ids.size()) - n_img;
    for (const auto& im : images) {
        FASTVLM_CHECK(!im.data() || (im.dim(1) == H && im.is_contiguous()), "image tokens have shape ", shape_str(im.shape()),
                      ", expected [N, ", H, "] (hidden_size)");
        T += rows(im);
    }
    FASTVLM_CHECK(from >= 0 && from <= T, "embed_prompt: position ", from, " is outside the prompt's ", T, " positions");
    Tensor<float, 2> x({T - from, H});
    Index pos = 0;
    std::size_t k = 0;
    for (auto id : ids) {
        if (id == text::kImageTokenIndex) {
            const auto& im = images[k++];
            const Index n = rows(im);
            if (pos + n > from) {
                FASTVLM_CHECK(im.data(), "image ", k, " of the prompt has no tokens but is not before position ", from);
                const Index skip = std::max<Index>(from - pos, 0);
                std::copy_n(im.data() + skip * H, (n - skip) * H, x.data() + (pos + skip - from) * H);
            }
            pos += n;
        } else {
            if (pos >= from) dec.embed(id, x.data() + (pos - from) * H);
            ++pos;
        }
    }
    return x;
}

#if defined(FASTVLM_COMPILED_LIB)
// Compiled once per preset in libfastvlm_presets (any_model.hpp: FASTVLM_INSTANTIATE_PRESET).
#define FASTVLM_EXTERN_(name) extern template class Model<policy::name>;
FASTVLM_PRESETS(FASTVLM_EXTERN_)
#undef FASTVLM_EXTERN_
#endif

}  // namespace fastvlm
