// fastvlm/core/policy.hpp — precision policies. A policy names, per layer class, the weight
// format (how the weights are stored after loading) and the compute format (what the
// activations are converted to inside the matrix kernels: f32, bf16, or q8 blocks quantized on
// the fly). Activations between layers are always f32 (spec §9.1: keep vision activations in f32).
//
//   struct MyPolicy : fastvlm::policy::fp32 {            // start from a preset...
//       using decoder_mlp = fastvlm::Layer<fastvlm::fmt::Q4, fastvlm::fmt::Q8>;  // ...change one class
//       static constexpr const char* name = "my-mix";
//   };
//   static_assert(fastvlm::PrecisionPolicy<MyPolicy>);
#pragma once
#include <string>
#include <tuple>
#include <type_traits>

#include "fastvlm/core/compiled.hpp"
#include "fastvlm/core/formats.hpp"

namespace fastvlm {

// A (weight format, compute format) pair of a matrix kernel.
template <class W, class A>
struct KernelPair {
    using weight = W;
    using compute = A;
    static std::string name() { return std::string(W::name) + "x" + A::name; }  // e.g. "q4xq8"
};

// The registry of the pairs that have a matrix kernel (kernels/matmul.hpp binds each to its
// implementation with an ImplFor<W, A> specialization). Layer<W, A> and Linear<W, A> of any other pair
// fail to compile with FASTVLM_KERNEL_PAIRS_TEXT in the message; kernel choice (kernels/kernel_choice.hpp)
// measures every pair listed here. A new pair is added here, in both.
using KernelPairs = std::tuple<KernelPair<fmt::F32, fmt::F32>, KernelPair<fmt::BF16, fmt::F32>, KernelPair<fmt::F16, fmt::F32>,
                               KernelPair<fmt::BF16, fmt::BF16>, KernelPair<fmt::Q8, fmt::Q8>, KernelPair<fmt::Q4, fmt::Q8>>;
#define FASTVLM_KERNEL_PAIRS_TEXT "<F32,F32> <BF16,F32> <F16,F32> <BF16,BF16> <Q8,Q8> <Q4,Q8>"

namespace detail {
template <class Pair, class Tuple>
inline constexpr bool tuple_has = false;
template <class Pair, class... Ps>
inline constexpr bool tuple_has<Pair, std::tuple<Ps...>> = (std::is_same_v<Pair, Ps> || ...);
}  // namespace detail
template <class W, class A>
inline constexpr bool has_matmul_kernel = detail::tuple_has<KernelPair<W, A>, KernelPairs>;

template <class W, class A = fmt::F32>
struct Layer {
    static_assert(WeightFormat<W>, "fastvlm::Layer: the weight format must be one of fmt::F32, BF16, F16, Q8, Q4");
    static_assert(has_matmul_kernel<W, A>,
                  "fastvlm::Layer<W, A>: no matrix kernel multiplies these weights with this compute format. "
                  "Supported: " FASTVLM_KERNEL_PAIRS_TEXT);
    using weight = W;
    using compute = A;
};

template <class L>
concept LayerPrecision = requires {
    typename L::weight;
    typename L::compute;
} && has_matmul_kernel<typename L::weight, typename L::compute>;

template <class P>
concept PrecisionPolicy = requires {
    { P::name } -> std::convertible_to<const char*>;
} && LayerPrecision<typename P::vision_conv> && LayerPrecision<typename P::vision_attention> &&
    LayerPrecision<typename P::projector> && LayerPrecision<typename P::decoder_attention> &&
    LayerPrecision<typename P::decoder_mlp> && LayerPrecision<typename P::lm_head> &&
    WeightFormat<typename P::embeddings>;

namespace policy {
struct fp32 {
    static constexpr const char* name = "fp32";
    using vision_conv = Layer<fmt::F32>;        // 1×1 convs (ConvFFN fc1/fc2, PatchEmbed proj.1, stem 1×1)
    using vision_attention = Layer<fmt::F32>;   // MHSA qkv / proj
    using projector = Layer<fmt::F32>;
    using decoder_attention = Layer<fmt::F32>;  // q/k/v/o projections
    using decoder_mlp = Layer<fmt::F32>;        // gate/up/down
    using lm_head = Layer<fmt::F32>;
    using embeddings = fmt::F32;                // token embedding table (a lookup, no matmul)
};
struct bf16 {
    static constexpr const char* name = "bf16";
    using vision_conv = Layer<fmt::BF16, fmt::BF16>;
    using vision_attention = Layer<fmt::BF16, fmt::BF16>;
    using projector = Layer<fmt::BF16, fmt::BF16>;
    using decoder_attention = Layer<fmt::BF16, fmt::BF16>;
    using decoder_mlp = Layer<fmt::BF16, fmt::BF16>;
    using lm_head = Layer<fmt::BF16, fmt::BF16>;
    using embeddings = fmt::BF16;
};
struct fp16 {
    static constexpr const char* name = "fp16";
    using vision_conv = Layer<fmt::F16>;
    using vision_attention = Layer<fmt::F16>;
    using projector = Layer<fmt::F16>;
    using decoder_attention = Layer<fmt::F16>;
    using decoder_mlp = Layer<fmt::F16>;
    using lm_head = Layer<fmt::F16>;
    using embeddings = fmt::F16;
};
struct int8 {
    static constexpr const char* name = "int8";
    using vision_conv = Layer<fmt::Q8, fmt::Q8>;
    using vision_attention = Layer<fmt::Q8, fmt::Q8>;
    using projector = Layer<fmt::Q8, fmt::Q8>;
    using decoder_attention = Layer<fmt::Q8, fmt::Q8>;
    using decoder_mlp = Layer<fmt::Q8, fmt::Q8>;
    using lm_head = Layer<fmt::Q8, fmt::Q8>;
    using embeddings = fmt::Q8;
};
// int8 for vision, attention and the output projection; int4 for the feed-forward layers.
struct int8_int4 : int8 {
    static constexpr const char* name = "int8_int4";
    using decoder_mlp = Layer<fmt::Q4, fmt::Q8>;
};
struct int4 {
    static constexpr const char* name = "int4";
    using vision_conv = Layer<fmt::Q4, fmt::Q8>;
    using vision_attention = Layer<fmt::Q4, fmt::Q8>;
    using projector = Layer<fmt::Q4, fmt::Q8>;
    using decoder_attention = Layer<fmt::Q4, fmt::Q8>;
    using decoder_mlp = Layer<fmt::Q4, fmt::Q8>;
    using lm_head = Layer<fmt::Q4, fmt::Q8>;
    using embeddings = fmt::Q4;
};
}  // namespace policy

static_assert(PrecisionPolicy<policy::fp32> && PrecisionPolicy<policy::bf16> && PrecisionPolicy<policy::fp16> &&
              PrecisionPolicy<policy::int8> && PrecisionPolicy<policy::int8_int4> && PrecisionPolicy<policy::int4>);

// X(name) for every preset, for code that must list them all (the extern templates of compiled mode, core/compiled.hpp).
#define FASTVLM_PRESETS(X) X(fp32) X(bf16) X(fp16) X(int8) X(int8_int4) X(int4)

// Calls fn.template operator()<Policy>() for the preset named `name`; throws for unknown names.
template <class Fn>
decltype(auto) with_preset(const std::string& name, Fn&& fn) {
    if (name == "fp32") return fn.template operator()<policy::fp32>();
    if (name == "bf16") return fn.template operator()<policy::bf16>();
    if (name == "fp16") return fn.template operator()<policy::fp16>();
    if (name == "int8") return fn.template operator()<policy::int8>();
    if (name == "int8_int4") return fn.template operator()<policy::int8_int4>();
    if (name == "int4") return fn.template operator()<policy::int4>();
    fail("unknown precision preset '", name, "' (known: fp32, bf16, fp16, int8, int8_int4, int4)");
}

}  // namespace fastvlm
