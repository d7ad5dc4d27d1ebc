// fastvlm/text/projector.hpp — the multimodal projector `mlp2x_gelu` (spec §3):
//   y = W2·GELU(W1·x + b1) + b2,  W1 [H, mm_hidden], W2 [H, H], exact-erf GELU,
// applied to each image token ([N, 3072] → [N, H]). Also the loader that turns checkpoint tensors
// (one or several, concatenated by rows) into a Linear of the policy's format.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "fastvlm/core/error.hpp"
#include "fastvlm/core/policy.hpp"
#include "fastvlm/core/tensor.hpp"
#include "fastvlm/core/thread_pool.hpp"
#include "fastvlm/io/config.hpp"
#include "fastvlm/io/safetensors.hpp"
#include "fastvlm/kernels/matmul.hpp"

namespace fastvlm::text {

// The Linear kernel of one policy layer class (Layer<W, A>).
template <class L>
using LinearOf = Linear<typename L::weight, typename L::compute>;

// One checkpoint matrix [rows, k] (and its bias [rows], empty name = none) of a fused Linear.
struct LinearPart {
    std::string weight;
    std::string bias;
    Index rows = 0;
};

// Loads parts stacked by rows into one Linear (q|k|v or gate|up fusion). Shapes are checked
// against the file; a missing tensor or a shape mismatch throws an Error naming file and tensor.
template <class W, class A>
Linear<W, A> load_linear_keep(const io::TensorStore& st, const std::vector<LinearPart>& parts, Index k) {
    FASTVLM_CHECK(!parts.empty(), "load_linear: no tensors given");
    Index n = 0;
    bool all_bf16 = true;
    const bool with_bias = !parts.front().bias.empty();
    for (const auto& p : parts) {
        const Index shape[2] = {p.rows, k};
        all_bf16 = all_bf16 && st.checked(p.weight, shape).dtype == io::DType::BF16;
        FASTVLM_CHECK(p.bias.empty() != with_bias, "load_linear: '", p.weight, "' fused with tensors of different bias presence");
        n += p.rows;
    }
    std::vector<float> bias;
    if (with_bias) {
        bias.resize(std::size_t(n));
        Index r = 0;
        for (const auto& p : parts) {
            const Index shape[1] = {p.rows};
            st.load_f32_into(p.bias, shape, std::span<float>(bias.data() + r, std::size_t(p.rows)));
            r += p.rows;
        }
    }
    const float* b = with_bias ? bias.data() : nullptr;
    if (all_bf16) {  // stored bf16 (official checkpoints): no float copy of the whole matrix
        if (parts.size() == 1) {
            const Index shape[2] = {n, k};
            return Linear<W, A>(st.bf16_data(parts.front().weight, shape)->data(), n, k, b);
        }
        std::vector<bf16> w(std::size_t(n * k));
        Index r = 0;
        for (const auto& p : parts) {
            const Index shape[2] = {p.rows, k};
            const auto src = *st.bf16_data(p.weight, shape);
            std::copy(src.begin(), src.end(), w.begin() + std::ptrdiff_t(r * k));
            r += p.rows;
        }
        return Linear<W, A>(w.data(), n, k, b);
    }
    std::vector<float> w(std::size_t(n * k));
    Index r = 0;
    for (const auto& p : parts) {
        const Index shape[2] = {p.rows, k};
        st.load_f32_into(p.weight, shape, std::span<float>(w.data() + r * k, std::size_t(p.rows * k)));
        r += p.rows;
    }
    return Linear<W, A>(w.data(), n, k, b);
}

// As load_linear_keep, then the checkpoint pages of the weights are released (TensorStore::release).
template <class W, class A>
Linear<W, A> load_linear(const io::TensorStore& st, const std::vector<LinearPart>& parts, Index k) {
    Linear<W, A> lin = load_linear_keep<W, A>(st, parts, k);
    for (const auto& p : parts) st.release(p.weight);
    return lin;
}

template <class L>
LinearOf<L> load_layer(const io::TensorStore& st, const std::vector<LinearPart>& parts, Index k) {
    return load_linear<typename L::weight, typename L::compute>(st, parts, k);
}

template <class Policy>
class Projector {
public:
    static constexpr const char* kPrefix = "model.mm_projector.";

    Projector() = default;

    static Projector load(const io::TensorStore& st, const io::ModelConfig& cfg);

    Index in_features() const { return in_; }
    Index out_features() const { return out_; }
    std::size_t weight_bytes() const { return fc1_.weight_bytes() + fc2_.weight_bytes(); }
    template <class F>
    void for_each_linear(F&& f) const {
        f(fc1_), f(fc2_);
    }

    // features [N, mm_hidden] → [N, H].
    Tensor<float, 2> forward(TensorView<const float, 2> features, ThreadPool* pool) const;

private:
    Index in_ = 0, out_ = 0;
    LinearOf<typename Policy::projector> fc1_, fc2_;
};

// ---- defined out of the class (not inline), so that compiled mode (core/compiled.hpp) keeps them out of
// a user's file ----

template <class Policy>
Projector<Policy> Projector<Policy>::load(const io::TensorStore& st, const io::ModelConfig& cfg) {
    FASTVLM_CHECK(cfg.mm_projector_type == "mlp2x_gelu", cfg.source, ": mm_projector_type '", cfg.mm_projector_type,
                  "' is not supported (only \"mlp2x_gelu\")");
    Projector p;
    p.in_ = cfg.mm_hidden_size;
    p.out_ = cfg.text.hidden_size;
    const std::string pre = kPrefix;
    p.fc1_ = load_layer<typename Policy::projector>(st, {{pre + "0.weight", pre + "0.bias", p.out_}}, p.in_);
    p.fc2_ = load_layer<typename Policy::projector>(st, {{pre + "2.weight", pre + "2.bias", p.out_}}, p.out_);
    return p;
}

template <class Policy>
Tensor<float, 2> Projector<Policy>::forward(TensorView<const float, 2> features, ThreadPool* pool) const {
    FASTVLM_CHECK(features.dim(1) == in_ && features.stride(1) == 1,
                  "projector: image features have shape ", shape_str(features.shape()), ", expected [N, ", in_,
                  "] (mm_hidden_size) with contiguous rows");
    const Index n = features.dim(0);
    Tensor<float, 2> hidden({n, out_}), out({n, out_});
    fc1_.forward(features.data(), n, features.stride(0), hidden.data(), out_, pool, {.act = Act::gelu});
    fc2_.forward(hidden.data(), n, out_, out.data(), out_, pool);
    return out;
}

#if defined(FASTVLM_COMPILED_LIB)
// Compiled once per preset in libfastvlm_presets (any_model.hpp: FASTVLM_INSTANTIATE_PRESET).
#define FASTVLM_EXTERN_(name) extern template class Projector<policy::name>;
FASTVLM_PRESETS(FASTVLM_EXTERN_)
#undef FASTVLM_EXTERN_
#endif

}  // namespace fastvlm::text
