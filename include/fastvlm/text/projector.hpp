// fastvlm/text/projector.hpp — the multimodal projector `mlp2x_gelu` (spec §3):
//   y = W2·GELU(W1·x + b1) + b2,  W1 [H, mm_hidden], W2 [H, H], exact-erf GELU,
// applied to each image token ([N, 3072] → [N, H]). Also load_layer: checkpoint tensors (one or several,
// concatenated by rows) into a Linear of a policy layer class's format (io/weights.hpp).
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
#include "fastvlm/io/weights.hpp"
#include "fastvlm/kernels/matmul.hpp"

namespace fastvlm::text {

// The Linear kernel of one policy layer class (Layer<W, A>).
template <class L>
using LinearOf = Linear<typename L::weight, typename L::compute>;

// The Linear of a policy layer class from checkpoint parts (io/weights.hpp), pages released.
template <class L>
LinearOf<L> load_layer(const io::TensorStore& st, const std::vector<io::LinearPart>& parts, Index k) {
    return io::load_linear<LinearOf<L>>(st, parts, k);
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
