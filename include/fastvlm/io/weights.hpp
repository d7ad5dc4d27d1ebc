// fastvlm/io/weights.hpp — the one way both towers turn checkpoint matrices into packed linear layers:
// the parts of a fused layer (q|k|v, gate|up) stacked by rows, shapes checked against the file, bf16
// tensors (official checkpoints) packed straight from the mapped file without a float copy, and the
// checkpoint pages given back once packed (TensorStore::release).
#pragma once
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "fastvlm/core/dtypes.hpp"
#include "fastvlm/core/error.hpp"
#include "fastvlm/core/tensor.hpp"
#include "fastvlm/io/safetensors.hpp"

namespace fastvlm::io {

// One checkpoint matrix [rows, k] (and its bias [rows], empty name = none) of a fused linear layer;
// conv1x1: stored as a 1×1 convolution's weight [rows, k, 1, 1] (FastViTHD's ConvFFN).
struct LinearPart {
    std::string weight;
    std::string bias;
    Index rows = 0;
    bool conv1x1 = false;
};

// Loads parts stacked by rows into one Lin: any type constructible as Lin(const T* w, Index n, Index k,
// const float* bias) for T = bf16 and float, with w row-major [n][k] (kernels/matmul.hpp's Linear<W, A>).
// A missing tensor or a shape mismatch throws an Error naming the file and the tensor. The checkpoint's
// pages stay resident (for a tensor used twice, such as tied embeddings); see load_linear.
template <class Lin>
Lin load_linear_keep(const TensorStore& st, std::span<const LinearPart> parts, Index k) {
    FASTVLM_CHECK(!parts.empty(), "load_linear: no tensors given");
    auto shape_of = [&](const LinearPart& p) { return p.conv1x1 ? std::vector<Index>{p.rows, k, 1, 1} : std::vector<Index>{p.rows, k}; };
    Index n = 0;
    bool all_bf16 = true;
    const bool with_bias = !parts.front().bias.empty();
    for (const auto& p : parts) {
        all_bf16 = all_bf16 && st.checked(p.weight, shape_of(p)).dtype == DType::BF16;
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
        if (parts.size() == 1) return Lin(st.bf16_data(parts.front().weight, shape_of(parts.front()))->data(), n, k, b);
        std::vector<bf16> w(std::size_t(n * k));
        Index r = 0;
        for (const auto& p : parts) {
            const auto src = *st.bf16_data(p.weight, shape_of(p));
            std::copy(src.begin(), src.end(), w.begin() + std::ptrdiff_t(r * k));
            r += p.rows;
        }
        return Lin(w.data(), n, k, b);
    }
    std::vector<float> w(std::size_t(n * k));
    Index r = 0;
    for (const auto& p : parts) {
        st.load_f32_into(p.weight, shape_of(p), std::span<float>(w.data() + r * k, std::size_t(p.rows * k)));
        r += p.rows;
    }
    return Lin(w.data(), n, k, b);
}

template <class Lin>
Lin load_linear_keep(const TensorStore& st, const LinearPart& part, Index k) {
    return load_linear_keep<Lin>(st, std::span<const LinearPart>(&part, 1), k);
}

// As load_linear_keep, then the checkpoint pages of the weights are released (TensorStore::release): the
// peak RSS of a load stays near the packed weights instead of packed + checkpoint.
template <class Lin>
Lin load_linear(const TensorStore& st, std::span<const LinearPart> parts, Index k) {
    Lin lin = load_linear_keep<Lin>(st, parts, k);
    for (const auto& p : parts) st.release(p.weight);
    return lin;
}
template <class Lin>
Lin load_linear(const TensorStore& st, const LinearPart& part, Index k) {
    return load_linear<Lin>(st, std::span<const LinearPart>(&part, 1), k);
}

}  // namespace fastvlm::io
