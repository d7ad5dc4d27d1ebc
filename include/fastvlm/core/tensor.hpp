// fastvlm/core/tensor.hpp — typed tensors. The element type and the rank are template parameters;
// shapes are run-time values. Tensor<T, R> owns 64-byte aligned storage (row-major);
// TensorView<T, R> is a non-owning strided view. Shape and index checks throw fastvlm::Error.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <type_traits>

#include "fastvlm/core/error.hpp"

namespace fastvlm {

inline constexpr std::size_t kAlignment = 64;

using Index = std::int64_t;
template <std::size_t R>
using Shape = std::array<Index, R>;

template <std::size_t R>
std::string shape_str(const Shape<R>& s) {
    std::string out = "[";
    for (std::size_t i = 0; i < R; ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
}

// ---- aligned storage ------------------------------------------------------------------------
struct AlignedFree {
    void operator()(void* p) const noexcept { std::free(p); }
};

template <class T>
class AlignedBuffer {
    static_assert(std::is_trivially_copyable_v<T>, "AlignedBuffer holds trivially copyable types");

public:
    AlignedBuffer() = default;
    explicit AlignedBuffer(std::size_t n) : n_(n) {
        if (n == 0) return;
        if (n > (std::size_t(-1) - kAlignment) / sizeof(T)) fail("AlignedBuffer: ", n, " elements overflow size_t");
        const std::size_t bytes = (n * sizeof(T) + kAlignment - 1) / kAlignment * kAlignment;
        void* p = std::aligned_alloc(kAlignment, bytes);
        if (!p) fail("out of memory allocating ", bytes, " bytes");
        p_.reset(static_cast<T*>(p));
    }
    T* data() { return p_.get(); }
    const T* data() const { return p_.get(); }
    std::size_t size() const { return n_; }
    T& operator[](std::size_t i) { return p_.get()[i]; }
    const T& operator[](std::size_t i) const { return p_.get()[i]; }
    std::span<T> span() { return {data(), n_}; }
    std::span<const T> span() const { return {data(), n_}; }

private:
    std::unique_ptr<T, AlignedFree> p_;
    std::size_t n_ = 0;
};

// ---- strided view -----------------------------------------------------------------------------
template <class T, std::size_t R>
class TensorView {
    static_assert(R >= 1, "rank must be at least 1");

public:
    using value_type = std::remove_const_t<T>;
    static constexpr std::size_t rank = R;

    TensorView() = default;
    // Contiguous row-major view.
    TensorView(T* data, const Shape<R>& shape) : data_(data), shape_(shape) {
        Index s = 1;
        for (std::size_t i = R; i-- > 0;) {
            FASTVLM_CHECK(shape[i] >= 0, "tensor shape ", shape_str(shape), " has a negative extent");
            stride_[i] = s;
            s *= shape[i];
        }
    }
    TensorView(T* data, const Shape<R>& shape, const Shape<R>& stride) : data_(data), shape_(shape), stride_(stride) {}
    // A view of const T from a view of T.
    template <class U>
        requires(std::is_const_v<T> && std::is_same_v<const U, T>)
    TensorView(const TensorView<U, R>& o) : data_(o.data()), shape_(o.shape()), stride_(o.strides()) {}

    T* data() const { return data_; }
    const Shape<R>& shape() const { return shape_; }
    const Shape<R>& strides() const { return stride_; }
    Index dim(std::size_t i) const { return shape_[i]; }
    Index stride(std::size_t i) const { return stride_[i]; }
    Index size() const {
        Index n = 1;
        for (auto d : shape_) n *= d;
        return n;
    }
    bool is_contiguous() const {
        Index s = 1;
        for (std::size_t i = R; i-- > 0;) {
            if (shape_[i] != 1 && stride_[i] != s) return false;
            s *= shape_[i];
        }
        return true;
    }

    template <class... I>
        requires(sizeof...(I) == R)
    T& operator()(I... idx) const {
        const Index ii[R] = {Index(idx)...};
        Index off = 0;
        for (std::size_t d = 0; d < R; ++d) off += ii[d] * stride_[d];
        return data_[off];
    }
    // Bounds-checked access (throws).
    template <class... I>
        requires(sizeof...(I) == R)
    T& at(I... idx) const {
        const Index ii[R] = {Index(idx)...};
        for (std::size_t d = 0; d < R; ++d)
            FASTVLM_CHECK(ii[d] >= 0 && ii[d] < shape_[d], "index ", ii[d], " out of range for dimension ", d,
                          " of tensor ", shape_str(shape_));
        return (*this)(idx...);
    }

    // Sub-view [begin, end) along dimension d.
    TensorView slice(std::size_t d, Index begin, Index end) const {
        FASTVLM_CHECK(d < R && 0 <= begin && begin <= end && end <= shape_[d], "slice [", begin, ", ", end,
                      ") of dimension ", d, " is out of range for tensor ", shape_str(shape_));
        TensorView v = *this;
        v.data_ = data_ + begin * stride_[d];
        v.shape_[d] = end - begin;
        return v;
    }
    // Drops the first dimension at index i.
    TensorView<T, R - 1> operator[](Index i) const
        requires(R > 1)
    {
        FASTVLM_CHECK(i >= 0 && i < shape_[0], "index ", i, " out of range for tensor ", shape_str(shape_));
        Shape<R - 1> s, st;
        for (std::size_t k = 1; k < R; ++k) s[k - 1] = shape_[k], st[k - 1] = stride_[k];
        return TensorView<T, R - 1>(data_ + i * stride_[0], s, st);
    }
    // Same elements, new shape (contiguous views only).
    template <std::size_t R2>
    TensorView<T, R2> reshape(const Shape<R2>& s) const {
        Index n = 1;
        for (auto d : s) n *= d;
        FASTVLM_CHECK(is_contiguous(), "reshape of a non-contiguous tensor ", shape_str(shape_));
        FASTVLM_CHECK(n == size(), "cannot reshape tensor ", shape_str(shape_), " to ", shape_str(s));
        return TensorView<T, R2>(data_, s);
    }
    std::span<T> span() const {
        FASTVLM_CHECK(is_contiguous(), "span() of a non-contiguous tensor ", shape_str(shape_));
        return {data_, std::size_t(size())};
    }

private:
    T* data_ = nullptr;
    Shape<R> shape_{};
    Shape<R> stride_{};
};

// ---- owning tensor ----------------------------------------------------------------------------
template <class T, std::size_t R>
class Tensor {
public:
    using value_type = T;
    static constexpr std::size_t rank = R;

    Tensor() = default;
    explicit Tensor(const Shape<R>& shape) : shape_(shape) {
        Index n = 1;
        for (auto d : shape) {
            FASTVLM_CHECK(d >= 0, "tensor shape ", shape_str(shape), " has a negative extent");
            n *= d;
        }
        buf_ = AlignedBuffer<T>(std::size_t(n));
    }
    // Zero-initialised.
    static Tensor zeros(const Shape<R>& shape) {
        Tensor t(shape);
        for (auto& v : t.span()) v = T{};
        return t;
    }

    T* data() { return buf_.data(); }
    const T* data() const { return buf_.data(); }
    const Shape<R>& shape() const { return shape_; }
    Index dim(std::size_t i) const { return shape_[i]; }
    Index size() const { return Index(buf_.size()); }
    std::span<T> span() { return buf_.span(); }
    std::span<const T> span() const { return buf_.span(); }

    TensorView<T, R> view() { return TensorView<T, R>(data(), shape_); }
    TensorView<const T, R> view() const { return TensorView<const T, R>(data(), shape_); }
    operator TensorView<T, R>() { return view(); }
    operator TensorView<const T, R>() const { return view(); }

    template <class... I>
        requires(sizeof...(I) == R)
    T& operator()(I... idx) { return view()(idx...); }
    template <class... I>
        requires(sizeof...(I) == R)
    const T& operator()(I... idx) const { return view()(idx...); }

    // Same storage, new shape with the same number of elements.
    template <std::size_t R2>
    Tensor<T, R2> reshaped(const Shape<R2>& s) && {
        Index n = 1;
        for (auto d : s) n *= d;
        FASTVLM_CHECK(n == size(), "cannot reshape tensor ", shape_str(shape_), " to ", shape_str(s));
        Tensor<T, R2> out;
        out.adopt(std::move(buf_), s);
        return out;
    }

    // Internal: used by reshaped().
    void adopt(AlignedBuffer<T>&& b, const Shape<R>& s) {
        buf_ = std::move(b);
        shape_ = s;
    }

private:
    AlignedBuffer<T> buf_;
    Shape<R> shape_{};
};

// Throws unless `v` has exactly the expected shape; `what` names the tensor.
template <class V, std::size_t R>
void check_shape(const V& v, const Shape<R>& expected, const std::string& what) {
    FASTVLM_CHECK(v.shape() == expected, what, ": expected shape ", shape_str(expected), ", got ",
                  shape_str(v.shape()));
}

}  // namespace fastvlm
