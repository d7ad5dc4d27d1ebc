// fastvlm/kernels/matmul.hpp — Y[m×n] = epilogue(X[m×k] · Wᵀ + b) for every weight format.
// (First, simple version: correct for all shapes; the packed fast kernels replace the internals.)
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fastvlm/core/dtypes.hpp"
#include "fastvlm/core/error.hpp"
#include "fastvlm/core/formats.hpp"
#include "fastvlm/core/policy.hpp"
#include "fastvlm/core/tensor.hpp"
#include "fastvlm/core/thread_pool.hpp"
#include "fastvlm/kernels/activation.hpp"

namespace fastvlm {

// y = act(x·wᵀ + bias); if scale: y *= scale[n]; then Y = y, or Y += y when accumulate.
struct Epilogue {
    Act act = Act::none;
    const float* scale = nullptr;
    bool accumulate = false;
};

// Scalar reference, double accumulation: x row-major [m][k], w row-major [n][k], y [m][n].
inline void matmul_reference(const float* x, Index m, Index k, const float* w, Index n, const float* bias, float* y,
                             const Epilogue& ep = {}) {
    for (Index i = 0; i < m; ++i)
        for (Index j = 0; j < n; ++j) {
            double s = bias ? double(bias[j]) : 0.0;
            for (Index p = 0; p < k; ++p) s += double(x[i * k + p]) * double(w[j * k + p]);
            float v = act_ref(ep.act, float(s));
            if (ep.scale) v *= ep.scale[j];
            y[i * n + j] = ep.accumulate ? y[i * n + j] + v : v;
        }
}

template <class W, class A = fmt::F32>
class Linear {
    static_assert(has_matmul_kernel<W, A>,
                  "fastvlm::Linear<W, A>: no matrix kernel for this (weight, compute) pair. "
                  "Supported: <F32,F32> <BF16,F32> <BF16,BF16> <F16,F32> <Q8,Q8> <Q4,Q8>");
    static constexpr bool kQuant = QuantizedFormat<W>;
    using Elem = std::conditional_t<std::is_same_v<W, fmt::F32>, float,
                 std::conditional_t<std::is_same_v<W, fmt::BF16>, bf16,
                 std::conditional_t<std::is_same_v<W, fmt::F16>, f16,
                 std::conditional_t<std::is_same_v<W, fmt::Q8>, BlockQ8, BlockQ4>>>>;

public:
    Linear() = default;
    Linear(const float* w, Index n, Index k, const float* bias = nullptr) { init(w, n, k, bias); }
    Linear(const bf16* w, Index n, Index k, const float* bias = nullptr) {
        FASTVLM_CHECK(n >= 0 && k >= 0, "Linear: bad shape [", n, ", ", k, "]");
        std::vector<float> f(std::size_t(n) * std::size_t(k));
        convert(w, f.data(), f.size());
        init(f.data(), n, k, bias);
    }

    Index out_features() const { return n_; }
    Index in_features() const { return k_; }
    std::size_t weight_bytes() const { return w_.size() * sizeof(Elem); }

    void forward(const float* x, Index m, Index ldx, float* y, Index ldy, ThreadPool* pool, const Epilogue& ep = {}) const {
        FASTVLM_CHECK(m >= 0 && ldx >= k_ && ldy >= n_, "Linear::forward: m=", m, " ldx=", ldx, " (k=", k_, ") ldy=", ldy,
                      " (n=", n_, ")");
        if (m == 0 || n_ == 0) return;
        parallel_for(pool, std::size_t(m), 1, [&](std::size_t i0, std::size_t i1) {
            std::vector<float> xf(std::size_t(kp_), 0.f);
            std::vector<BlockQ8> xq(std::size_t(kp_ / Index(kQBlock)));
            for (std::size_t i = i0; i < i1; ++i) {
                const float* xr = x + Index(i) * ldx;
                std::fill(xf.begin(), xf.end(), 0.f);
                std::copy(xr, xr + k_, xf.begin());
                if constexpr (std::is_same_v<A, fmt::BF16>)
                    for (auto& v : xf) v = to_float(to_bf16(v));
                if constexpr (std::is_same_v<A, fmt::Q8>) quantize_row(xf.data(), xq.data(), std::size_t(kp_));
                float* yr = y + Index(i) * ldy;
                for (Index j = 0; j < n_; ++j) {
                    float s = dot_row(j, xf.data(), xq.data());
                    if (!bias_.empty()) s += bias_[std::size_t(j)];
                    s = act_ref(ep.act, s);
                    if (ep.scale) s *= ep.scale[j];
                    yr[j] = ep.accumulate ? yr[j] + s : s;
                }
            }
        });
    }

    // Row n of W dequantized to float (k values).
    void row(Index n, float* out) const {
        FASTVLM_CHECK(n >= 0 && n < n_, "Linear::row: row ", n, " out of range [0, ", n_, ")");
        const Elem* r = w_.data() + std::size_t(n) * std::size_t(row_elems());
        if constexpr (kQuant) {
            std::vector<float> t(static_cast<std::size_t>(kp_));
            dequantize_row(r, t.data(), std::size_t(kp_));
            std::copy(t.begin(), t.begin() + k_, out);
        } else {
            for (Index p = 0; p < k_; ++p) out[p] = to_float(r[p]);
        }
    }

private:
    Index row_elems() const { return kQuant ? kp_ / Index(kQBlock) : k_; }

    void init(const float* w, Index n, Index k, const float* bias) {
        FASTVLM_CHECK(n >= 0 && k >= 0, "Linear: bad shape [", n, ", ", k, "]");
        n_ = n, k_ = k;
        kp_ = kQuant ? (k + Index(kQBlock) - 1) / Index(kQBlock) * Index(kQBlock) : k;
        if (bias) bias_.assign(bias, bias + n);
        w_.resize(std::size_t(n) * std::size_t(row_elems()));
        std::vector<float> t(std::size_t(kp_), 0.f);
        for (Index j = 0; j < n; ++j) {
            Elem* r = w_.data() + std::size_t(j) * std::size_t(row_elems());
            const float* src = w + j * k;
            if constexpr (kQuant) {
                std::copy(src, src + k, t.begin());
                quantize_row(t.data(), r, std::size_t(kp_));
            } else if constexpr (std::is_same_v<Elem, float>) {
                std::copy(src, src + k, r);
            } else if constexpr (std::is_same_v<Elem, bf16>) {
                for (Index p = 0; p < k; ++p) r[p] = to_bf16(src[p]);
            } else {
                for (Index p = 0; p < k; ++p) r[p] = to_f16(src[p]);
            }
        }
    }

    float dot_row(Index j, const float* xf, const BlockQ8* xq) const {
        const Elem* r = w_.data() + std::size_t(j) * std::size_t(row_elems());
        if constexpr (kQuant) {
            float s = 0.f;
            for (Index b = 0; b < kp_ / Index(kQBlock); ++b) {
                int acc = 0;
                for (std::size_t t = 0; t < kQBlock; ++t) {
                    int q;
                    if constexpr (std::is_same_v<W, fmt::Q8>) q = r[b].qs[t];
                    else q = t < kQBlock / 2 ? int(r[b].qs[t] & 0xf) - 8 : int(r[b].qs[t - kQBlock / 2] >> 4) - 8;
                    acc += q * int(xq[b].qs[t]);
                }
                s += to_float(r[b].d) * to_float(xq[b].d) * float(acc);
            }
            return s;
        } else {
            float s = 0.f;
            for (Index p = 0; p < k_; ++p) s += to_float(r[p]) * xf[p];
            return s;
        }
    }

    Index n_ = 0, k_ = 0, kp_ = 0;
    std::vector<Elem> w_;
    std::vector<float> bias_;
};

}  // namespace fastvlm
