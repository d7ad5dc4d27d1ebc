// fastvlm/kernels/matmul.hpp — Y[m×n] = epilogue(X[m×k] · Wᵀ + b) for every (weight, compute)
// format pair of core/policy.hpp. W is given row-major [n][k] (PyTorch Linear layout) as f32 or
// bf16 and repacked once, at construction, into the layout of matmul/*.hpp:
//   F32/BF16/F16 · f32     : [panel][k][16]            f32 FMA (xsimd), BLIS-style blocked GEMM
//   BF16 · bf16            : [panel][k/2][16][2]       vdpbf16ps (AVX512-BF16)
//   Q8/Q4 · q8             : [panel][k/32][...]        vpdpbusd (AVX512-VNNI), X quantized on the fly
// m = 1 takes a GEMV path that streams the packed weights once, split over the threads.
// Each format keeps a portable path (xsimd or scalar) next to the intrinsic one; see docs/kernels.md.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fastvlm/core/diagnostics.hpp"
#include "fastvlm/core/dtypes.hpp"
#include "fastvlm/core/error.hpp"
#include "fastvlm/core/formats.hpp"
#include "fastvlm/core/policy.hpp"
#include "fastvlm/core/tensor.hpp"
#include "fastvlm/core/thread_pool.hpp"
#include "fastvlm/kernels/activation.hpp"
#include "fastvlm/kernels/matmul/common.hpp"
#include "fastvlm/kernels/matmul/driver.hpp"
#include "fastvlm/kernels/matmul/f32.hpp"
#include "fastvlm/kernels/matmul/bf16.hpp"
#include "fastvlm/kernels/matmul/q8.hpp"

FASTVLM_SIMD_WARNINGS_OFF  // core/diagnostics.hpp

namespace fastvlm {

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

namespace detail::mm {

// ---- float compute: F32 / BF16 / F16 weights ---------------------------------------------------------
template <class E>
struct ImplFloat : PackedImpl<PackedF<E>> {
    using PackedImpl<PackedF<E>>::P;
    static Path best() { return Path::simd; }
    static bool supports(Path p) { return p == Path::scalar || p == Path::simd; }

    template <class Arch>
    void run(const float* x, Index m, Index ldx, float* y, Index ldy, ThreadPool* pool, const Epilogue& ep,
             const float* bias) const {
        KernFloat<E, Arch> kern{&P, P.n, P.npanels, bias};
        if (use_gemv(m, ep)) gemv_rows(kern, [&](Index r) { return x + r * ldx; }, m, y, ldy, pool, ep, P.k);
        else gemm_blocked(kern, x, m, ldx, y, ldy, pool, ep);
    }
    void forward(Path path, const float* x, Index m, Index ldx, float* y, Index ldy, ThreadPool* pool,
                 const Epilogue& ep, const float* bias) const {
        if (path == Path::simd) run<xsimd::default_arch>(x, m, ldx, y, ldy, pool, ep, bias);
        else run<void>(x, m, ldx, y, ldy, pool, ep, bias);
    }
};

template <class W, class A>
struct ImplFor;
template <>
struct ImplFor<fmt::F32, fmt::F32> {
    using type = ImplFloat<float>;
};
template <>
struct ImplFor<fmt::BF16, fmt::F32> {
    using type = ImplFloat<bf16>;
};
template <>
struct ImplFor<fmt::F16, fmt::F32> {
    using type = ImplFloat<f16>;
};
template <>
struct ImplFor<fmt::BF16, fmt::BF16> {
    using type = ImplBF16;
};
template <>
struct ImplFor<fmt::Q8, fmt::Q8> {
    using type = ImplQ<fmt::Q8>;
};
template <>
struct ImplFor<fmt::Q4, fmt::Q8> {
    using type = ImplQ<fmt::Q4>;
};

// The builtin path of a kernel class: Impl::best(), or for the GEMM Impl::best_gemm() where the format
// has a GEMM-only path (AMX).
template <class W, class A>
Path builtin_path(bool gemv_rows) {
    using Impl = typename ImplFor<W, A>::type;
    if constexpr (requires { Impl::best_gemm(); })
        if (!gemv_rows) return Impl::best_gemm();
    return Impl::best();
}

// The path every Linear<W, A> without a forced path runs, per kernel class, for the whole process:
// builtin_path() until kernel_choice.hpp measures, reads a cached choice or is told (FASTVLM_KERNELS).
struct PathChoice {
    std::atomic<Path> gemv, gemm;
    std::atomic<int> source{0};  // KernelSource (kernel_choice.hpp)
    PathChoice(Path v, Path m) : gemv(v), gemm(m) {}
    Path get(bool gemv_rows) const { return (gemv_rows ? gemv : gemm).load(std::memory_order_relaxed); }
};
template <class W, class A>
PathChoice& path_choice() {
    static PathChoice c(builtin_path<W, A>(true), builtin_path<W, A>(false));
    return c;
}

}  // namespace detail::mm

// Which loop nest a call runs, for kernel choice: GEMV (m = 1 and decode rows: the weights are streamed)
// or the blocked GEMM (prefill, vision).
enum class KernelClass { gemv, gemm };

// A layer's output handed to the next Q8 layer as that layer's quantized input (Linear::forward_quantized_for):
// int8 codes, scales and corrections in the row groups of the GEMM micro-kernel, in the producing thread's scratch.
struct Q8Handoff {
    detail::mm::QRows rows{};
    Index m = 0, k = 0;
    detail::mm::Path path = detail::mm::Path::scalar;
};

// A linear layer y = x·Wᵀ + b with weights repacked for the kernels of (W, A).
template <class W, class A = fmt::F32>
class Linear {
    template <class, class>
    friend class Linear;
    static_assert(has_matmul_kernel<W, A>,
                  "fastvlm::Linear<W, A>: no matrix kernel for this (weight, compute) pair. "
                  "Supported: " FASTVLM_KERNEL_PAIRS_TEXT);
    using Impl = typename detail::mm::ImplFor<W, A>::type;

public:
    using weight_format = W;
    using compute_format = A;

    Linear() = default;
    // w row-major [n][k] (PyTorch Linear layout); bias [n] or null.
    Linear(const float* w, Index n, Index k, const float* bias = nullptr) {
        init(n, k, bias, [&](Index r0, Index cnt, float* dst) {
            std::copy(w + r0 * k, w + (r0 + cnt) * k, dst);
        });
    }
    // From checkpoint bf16 directly (converted panel by panel: no full f32 copy).
    Linear(const bf16* w, Index n, Index k, const float* bias = nullptr) {
        init(n, k, bias, [&](Index r0, Index cnt, float* dst) {
            convert(w + r0 * k, dst, std::size_t(cnt * k));
        });
    }

    Index out_features() const { return n_; }
    Index in_features() const { return k_; }
    // Bytes of packed weights (quants and scales; what an m = 1 product reads).
    std::size_t weight_bytes() const { return impl_.bytes(); }

    // Y[m][ldy] = epilogue(X[m][ldx] · Wᵀ + b). pool may be null (serial).
    void forward(const float* x, Index m, Index ldx, float* y, Index ldy, ThreadPool* pool, const Epilogue& ep = {}) const {
        FASTVLM_CHECK(m >= 0, "Linear::forward: negative row count m=", m);
        if (m == 0 || n_ == 0) return;
        FASTVLM_CHECK(ldx >= k_ && ldy >= n_, "Linear::forward [", n_, "x", k_, "]: ldx=", ldx, " must be >= k=", k_,
                      " and ldy=", ldy, " >= n=", n_);
        FASTVLM_CHECK(x && y, "Linear::forward: null input or output pointer");
        const bool gemv = use_gemv(m, ep);
        impl_.forward(forced_ ? path_ : detail::mm::path_choice<W, A>().get(gemv), x, m, ldx, y, ldy, pool, ep,
                      bias_.empty() ? nullptr : bias_.data());
    }
    // Y = epilogue(X·Wᵀ + b) handed to `next` as its quantized input, instead of written as floats that next
    // would read back and quantize (ConvFFN: fc1 → GELU → fc2; the 4×-wide hidden map never goes to memory as
    // floats). next.forward(out, …) then gives bit for bit what forward + next.forward give. Returns false,
    // doing nothing, where no hand-off can be made — the two layers' GEMM paths differ or have no 6 × 32 tile
    // (AVX2, AMX), m < 2 or GEMV rows, accumulate, K over 1,024 (several K blocks), out_features not a
    // multiple of 32 — and the caller goes through floats. `out` lives in this thread's scratch until the
    // thread's next hand-off.
    template <class W2>
        requires std::is_same_v<A, fmt::Q8>
    bool forward_quantized_for(const Linear<W2, fmt::Q8>& next, const float* x, Index m, Index ldx, Q8Handoff& out,
                               ThreadPool* pool, const Epilogue& ep = {}) const {
        namespace mm = detail::mm;
        FASTVLM_CHECK(next.in_features() == n_, "Linear::forward_quantized_for: this layer gives ", n_,
                      " features, the next one takes ", next.in_features());
        FASTVLM_CHECK(m >= 0 && (m == 0 || (x && ldx >= k_)), "Linear::forward_quantized_for: bad input (m=", m, ", ldx=", ldx,
                      ", k=", k_, ")");
        const mm::Path p = path(KernelClass::gemm);
        if (m < 2 || n_ == 0 || p != next.path(KernelClass::gemm) || !impl_.can_hand_off(p, m, ep)) return false;
        const Index gr = Impl::handoff_rows(p), kb = next.impl_.P.kb, mpad = mm::round_up(m, gr);
        auto* q = mm::scratch<std::int8_t, mm::Scratch::q8_next>(std::size_t(mpad * kb * mm::kQB + 64));
        auto* d = mm::scratch<float, mm::Scratch::q8_next_d>(std::size_t(mpad * kb + 16));
        auto* c = mm::scratch<std::int32_t, mm::Scratch::q8_next_c>(std::size_t(mpad * kb + 16));
        // What the tiles do not write is zero, as quantize_rows leaves it: blocks past n (the next layer's
        // padding to whole superblocks) and the rows past m of the last group.
        const Index from = kb * mm::kQB > n_ ? 0 : mpad > m ? mpad - gr : mpad;
        std::memset(q + from * kb * mm::kQB, 0, std::size_t((mpad - from) * kb * mm::kQB));
        std::fill(d + from * kb, d + mpad * kb, 0.f);
        std::fill(c + from * kb, c + mpad * kb, 0);
        impl_.forward_to(p, x, m, ldx, mm::QSink{q, d, c, kb, gr, mm::PackedQ<W2>::kCorr}, pool, ep,
                         bias_.empty() ? nullptr : bias_.data());
        out = Q8Handoff{mm::QRows{q, d, c, kb}, m, n_, p};
        return true;
    }
    // Y[m][ldy] = epilogue(X · Wᵀ + b) from X handed off by the previous layer (forward_quantized_for).
    void forward(const Q8Handoff& xq, float* y, Index ldy, ThreadPool* pool, const Epilogue& ep = {}) const
        requires std::is_same_v<A, fmt::Q8>
    {
        FASTVLM_CHECK(xq.k == k_ && xq.path == path(KernelClass::gemm) && !use_gemv(xq.m, ep) && ldy >= n_ && y,
                      "Linear::forward: a Q8 hand-off of ", xq.k, " features for path ", detail::mm::path_name(xq.path),
                      " does not fit this layer (", k_, " features, path ", detail::mm::path_name(path(KernelClass::gemm)), ")");
        if (xq.m > 0 && n_ > 0) impl_.forward_rows(xq.path, xq.rows, xq.m, y, ldy, pool, ep, bias_.empty() ? nullptr : bias_.data());
    }
    // Internal (kernel measurement, kernel_choice.hpp): one call through path p, which must be supported.
    void forward_path(detail::mm::Path p, const float* x, Index m, Index ldx, float* y, Index ldy, ThreadPool* pool,
                      const Epilogue& ep = {}) const {
        if (m > 0 && n_ > 0) impl_.forward(p, x, m, ldx, y, ldy, pool, ep, bias_.empty() ? nullptr : bias_.data());
    }

    // Row n of W dequantized to float (k values) — used for embedding lookups.
    void row(Index n, float* out) const {
        FASTVLM_CHECK(n >= 0 && n < n_, "Linear::row: row ", n, " out of range [0, ", n_, ")");
        impl_.row(n, out);
    }

    // The kernel path calls of class c run: the one forced on this layer, else the process-wide choice
    // for (W, A) (kernel_choice.hpp). set_path forces one (tests, benchmarks).
    detail::mm::Path path(KernelClass c = KernelClass::gemv) const {
        return forced_ ? path_ : detail::mm::path_choice<W, A>().get(c == KernelClass::gemv);
    }
    static bool supports(detail::mm::Path p) { return Impl::supports(p); }
    void set_path(detail::mm::Path p) {
        FASTVLM_CHECK(Impl::supports(p), "Linear<", W::name, ",", A::name, ">: kernel path ", detail::mm::path_name(p),
                      " is not available for this format on this CPU");
        path_ = p;
        forced_ = true;
    }

private:
    template <class Rows>
    void init(Index n, Index k, const float* bias, Rows&& rows) {
        FASTVLM_CHECK(n >= 0 && k >= 0, "Linear: bad weight shape [", n, ", ", k, "]");
        n_ = n, k_ = k;
        impl_.pack(n, k, std::forward<Rows>(rows));
        if (bias) {
            bias_.assign(std::size_t(impl_.npanels() * detail::mm::kPanel), 0.f);
            std::copy(bias, bias + n, bias_.begin());
        }
    }

    Index n_ = 0, k_ = 0;
    Impl impl_;
    detail::mm::avec<float> bias_;
    detail::mm::Path path_ = detail::mm::Path::scalar;
    bool forced_ = false;
};

}  // namespace fastvlm

FASTVLM_SIMD_WARNINGS_ON
