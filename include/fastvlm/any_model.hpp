// fastvlm/any_model.hpp — the precision preset chosen at run time: AnyModel / AnySession /
// load_model(dir, "int8"). Each wraps the Model<P> / Session<P> of one compiled preset.
#pragma once
#include <filesystem>
#include <memory>

#include "fastvlm/adaptive.hpp"
#include "fastvlm/engine.hpp"
#include "fastvlm/model.hpp"
#include "fastvlm/session.hpp"

namespace fastvlm {

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
    virtual std::shared_ptr<const text::Tokenizer> shared_tokenizer() const = 0;  // the same, to share (LoadOptions::tokenizer)
    virtual double load_ms() const = 0;
    virtual std::size_t weight_bytes() const = 0;
    virtual std::size_t decode_weight_bytes() const = 0;  // weights one decode step streams (Model::decode_weight_bytes)
    virtual Index context() const = 0;
    virtual Index valid_vocab() const = 0;
    virtual Tensor<float, 3> preprocess(const io::Image& img) const = 0;
    virtual Tensor<float, 2> encode_image(TensorView<const float, 3> pixels) const = 0;
    virtual Tensor<float, 2> project(TensorView<const float, 2> features) const = 0;
    virtual std::unique_ptr<AnySession> new_session(const SessionOptions& opt = {}) const = 0;
    virtual std::unique_ptr<Engine> new_engine(const EngineOptions& opt = {}) const = 0;
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
    std::shared_ptr<const text::Tokenizer> shared_tokenizer() const override { return m_.shared_tokenizer(); }
    double load_ms() const override { return m_.load_ms(); }
    std::size_t weight_bytes() const override { return m_.weight_bytes(); }
    std::size_t decode_weight_bytes() const override { return m_.decode_weight_bytes(); }
    Index context() const override { return m_.context(); }
    Index valid_vocab() const override { return m_.valid_vocab(); }
    Tensor<float, 3> preprocess(const io::Image& img) const override { return m_.preprocess(img); }
    Tensor<float, 2> encode_image(TensorView<const float, 3> px) const override { return m_.encode_image(px); }
    Tensor<float, 2> project(TensorView<const float, 2> f) const override { return m_.project(f); }
    std::unique_ptr<AnySession> new_session(const SessionOptions& o) const override {
        return std::make_unique<AnySessionImpl<Policy>>(m_, o);
    }
    std::unique_ptr<Engine> new_engine(const EngineOptions& o) const override { return std::make_unique<Engine>(m_, o); }
    const Model<Policy>& model() const { return m_; }

private:
    Model<Policy> m_;
};

// Model<Policy>::load behind the AnyModel interface: everything a preset needs is instantiated from here.
// A function template, not inline, so that compiled mode (core/compiled.hpp) can keep it out of a file.
template <class Policy>
std::unique_ptr<AnyModel> load_any_model(const std::filesystem::path& dir, const LoadOptions& opt) {
    return std::make_unique<AnyModelImpl<Policy>>(Model<Policy>::load(dir, opt));
}
}  // namespace detail

// Build time (core/compiled.hpp, docs/api.md "Build time"). Header-only, every file that calls load_model()
// compiles all six presets (the whole model six times: minutes per file). In compiled mode, every file is
// compiled with FASTVLM_COMPILED_LIB and the presets are compiled once, in files of their own (one per
// preset builds them in parallel), each holding FASTVLM_INSTANTIATE_PRESET(fp32) ... (int4), plus one file
// that defines FASTVLM_COMPILED_LIB_SOURCE before including fastvlm/fastvlm.hpp (the non-template
// functions). The headers declare the same instantiations `extern template` for every preset, so a file
// that uses Model<P>, Session<P>, Engine(Model<P>) or a tower of a preset P directly compiles none of their
// code either.
// CMake target fastvlm::presets does all this (fastvlm-cli, fastvlm-server, the Python module, the tests
// and benchmarks use it).
#define FASTVLM_INSTANTIATE_PRESET(name)                                                                \
    template class fastvlm::vision::FastViTHD<::fastvlm::policy::name>;                                  \
    template class fastvlm::text::Qwen2<::fastvlm::policy::name>;                                         \
    template class fastvlm::text::Projector<::fastvlm::policy::name>;                                     \
    template class fastvlm::Model<::fastvlm::policy::name>;                                               \
    template class fastvlm::Session<::fastvlm::policy::name>;                                             \
    template std::unique_ptr<::fastvlm::detail::EngineCore> fastvlm::detail::make_engine_core<::fastvlm::policy::name>( \
        const ::fastvlm::Model<::fastvlm::policy::name>&, ::fastvlm::EngineOptions);                      \
    template std::unique_ptr<::fastvlm::AnyModel> fastvlm::detail::load_any_model<::fastvlm::policy::name>( \
        const std::filesystem::path&, const ::fastvlm::LoadOptions&);
#if defined(FASTVLM_COMPILED_LIB)
#define FASTVLM_EXTERN_PRESET_(name)                                                                          \
    extern template std::unique_ptr<AnyModel> detail::load_any_model<policy::name>(const std::filesystem::path&, \
                                                                                   const LoadOptions&);
FASTVLM_PRESETS(FASTVLM_EXTERN_PRESET_)
#undef FASTVLM_EXTERN_PRESET_
#endif

namespace detail {
// Several presets of one folder behind one AnyModel (load_model(dir, "auto:int8,int4")): its engine is an
// AdaptiveCore (adaptive.hpp) over one engine per preset; direct calls use the first preset.
class AdaptiveModel final : public AnyModel {
public:
    AdaptiveModel(std::string spec, std::vector<std::unique_ptr<AnyModel>> models) : spec_(std::move(spec)), models_(std::move(models)) {}
    const char* precision() const override { return spec_.c_str(); }
    const io::ModelConfig& config() const override { return first().config(); }
    const text::Tokenizer* tokenizer() const override { return first().tokenizer(); }
    std::shared_ptr<const text::Tokenizer> shared_tokenizer() const override { return first().shared_tokenizer(); }
    double load_ms() const override {
        double t = 0;
        for (const auto& m : models_) t += m->load_ms();
        return t;
    }
    std::size_t weight_bytes() const override {
        std::size_t b = 0;
        for (const auto& m : models_) b += m->weight_bytes();
        return b;
    }
    std::size_t decode_weight_bytes() const override { return first().decode_weight_bytes(); }  // of the first preset
    Index context() const override { return first().context(); }
    Index valid_vocab() const override { return first().valid_vocab(); }
    Tensor<float, 3> preprocess(const io::Image& img) const override { return first().preprocess(img); }
    Tensor<float, 2> encode_image(TensorView<const float, 3> px) const override { return first().encode_image(px); }
    Tensor<float, 2> project(TensorView<const float, 2> f) const override { return first().project(f); }
    std::unique_ptr<AnySession> new_session(const SessionOptions& o) const override { return first().new_session(o); }
    std::unique_ptr<Engine> new_engine(const EngineOptions& opt) const override {
        EngineOptions o = opt;
        if (!o.image_cache) o.image_cache = std::make_shared<ImageFeatureCache>(o.image_cache_bytes);
        std::vector<std::pair<std::string, std::unique_ptr<Engine>>> engines;
        for (const auto& m : models_) engines.emplace_back(m->precision(), m->new_engine(o));
        return std::make_unique<Engine>(std::make_unique<AdaptiveCore>(std::move(engines), opt));
    }
    // The presets, level 0 first.
    const std::vector<std::unique_ptr<AnyModel>>& presets() const { return models_; }

private:
    const AnyModel& first() const { return *models_.front(); }
    std::string spec_;
    std::vector<std::unique_ptr<AnyModel>> models_;
};

inline std::unique_ptr<AnyModel> load_adaptive_model(const std::filesystem::path& dir, const std::string& spec, const LoadOptions& opt) {
    const auto names = parse_adaptive_spec(spec);
    std::vector<std::unique_ptr<AnyModel>> models;
    LoadOptions o = opt;
    for (std::size_t i = 0; i < names.size(); ++i) {
        if (opt.progress)
            o.progress = [&, i](float f, std::string_view stage) {
                opt.progress((float(i) + f) / float(names.size()), names[i] + ": " + std::string(stage));
            };
        models.push_back(with_preset(names[i], [&]<class P>() { return load_any_model<P>(dir, o); }));
        if (!o.tokenizer) o.tokenizer = models.back()->shared_tokenizer();  // loaded once
    }
    std::string canonical = "auto:";
    for (std::size_t i = 0; i < names.size(); ++i) canonical += (i ? "," : "") + names[i];
    return std::make_unique<AdaptiveModel>(canonical, std::move(models));
}
}  // namespace detail

// Loads `dir` with the compiled precision preset `precision` (fp32, bf16, fp16, int8, int8_int4, int4), or
// with several presets and an engine that chooses between them per request: "auto:int8,int4", the most
// accurate first (fastvlm/adaptive.hpp).
inline std::unique_ptr<AnyModel> load_model(const std::filesystem::path& dir, const std::string& precision = "fp32",
                                            const LoadOptions& opt = {}) {
    if (precision.starts_with("auto:")) return detail::load_adaptive_model(dir, precision, opt);
    return with_preset(precision, [&]<class P>() -> std::unique_ptr<AnyModel> { return detail::load_any_model<P>(dir, opt); });
}

}  // namespace fastvlm
