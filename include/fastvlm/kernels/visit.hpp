// fastvlm/kernels/visit.hpp — what a model block's tensor visitor gives.
//
// A block (vision/blocks.hpp, the towers) provides `for_each_tensor(f)`: f is called with every weight the
// block holds (Linear layers, convolutions, vectors of norm weights and scales), nested blocks
// forwarding to theirs. Byte counts and the list of matrix layers that kernel choice times are then
// derived from the block instead of being listed by hand in several places (gemma.cpp's ForEachTensor).
#pragma once
#include <cstddef>
#include <type_traits>

namespace fastvlm {

// A matrix layer (Linear<W, A>): what kernel choice times. Convolutions hold one inside but are not one.
template <class T>
concept MatrixLayer = requires {
    typename T::weight_format;
    typename T::compute_format;
};

// Bytes a forward reads of one visited weight: weight_bytes() of layers, the storage of plain vectors.
template <class T>
std::size_t tensor_bytes(const T& t) {
    if constexpr (requires { t.weight_bytes(); }) return t.weight_bytes();
    else return t.size() * sizeof(typename T::value_type);
}

// Sum of tensor_bytes over a block's for_each_tensor.
template <class Block>
std::size_t weight_bytes_of(const Block& b) {
    std::size_t n = 0;
    b.for_each_tensor([&](const auto& t) { n += tensor_bytes(t); });
    return n;
}

// Calls f(const Linear<W, A>&) for every matrix layer of a block, in visiting order.
template <class Block, class F>
void for_each_linear_of(const Block& b, F&& f) {
    b.for_each_tensor([&](const auto& t) {
        if constexpr (MatrixLayer<std::remove_cvref_t<decltype(t)>>) f(t);
    });
}

}  // namespace fastvlm
