// Tests of kernels/matmul.hpp: every (weight, compute) pair and every kernel path that runs on
// this CPU (plus the portable scalar/xsimd fallbacks) against matmul_reference, on odd sizes,
// with every epilogue, serial and with 2 threads, with padded leading dimensions.
//
// Tolerances (per output element; S = Σ_p |x_p·w_p| + |b| over the operands the kernel really
// multiplies, s = |scale| or 1, Y0 = the prior value when accumulating):
//   tight, against the reference on the kernel's own operands (f32 weights; bf16/f16-rounded
//   weights; bf16-rounded x; dequantized Q8/Q4 weights × dequantized Q8 activations):
//       |y − ref| ≤ 1e-5·S·s + 1e-6·|Y0| + 1e-30                 (f32 sums of ≤ 4097 terms)
//   loose, against the reference on the original f32 operands (the format's own error):
//       BF16 weights: |Δ| ≤ 2^-8·S·s        F16 weights: 2^-10·S·s      BF16×BF16: 2^-7·S·s
//       Q8/Q4: |Δ| ≤ Σ_p (|x_p|·ew_p + (|w_p| + ew_p)·ex_p)·s·1.01 + tight,  where ew = 0.57·amax/127
//       (Q8) or 1.01·amax/8 (Q4) bounds the weight rounding and ex = 0.51·dx the activation one.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "fastvlm/kernels/kernel_choice.hpp"
#include "fastvlm/kernels/matmul.hpp"
#include "support.hpp"

namespace {

using namespace fastvlm;
using detail::mm::Path;

inline std::size_t sz(Index i) { return static_cast<std::size_t>(i); }

struct Case {
    Index m, k, n;
    int epi;      // which epilogue (see make_epilogue)
    bool pooled;  // 2 threads or null pool
    Index padx, pady;
    RowKernel rows = RowKernel::automatic;
};

struct EpiSetup {
    Epilogue ep;
    bool bias;
};
EpiSetup make_epilogue(int i, const float* scale) {
    switch (i % 6) {
        case 0: return {Epilogue{}, false};
        case 1: return {Epilogue{Act::gelu, nullptr, false}, true};
        case 2: return {Epilogue{Act::none, scale, true}, true};
        case 3: return {Epilogue{Act::silu, scale, false}, false};
        case 4: return {Epilogue{Act::relu, nullptr, true}, true};
        default: return {Epilogue{Act::sigmoid, scale, true}, false};
    }
}

std::vector<float> randn(std::size_t n, std::mt19937& g, float sd = 1.f) {
    std::normal_distribution<float> d(0.f, sd);
    std::vector<float> v(n);
    for (auto& e : v) e = d(g);
    return v;
}

template <class W, class A>
constexpr bool kQuant = std::is_same_v<A, fmt::Q8>;
template <class W, class A>
constexpr int kCorr = std::is_same_v<W, fmt::Q4> ? 8 : 128;

// The activations the kernel really multiplies (x rounded to bf16, or quantized to Q8 blocks).
// Path::widen_f32 computes a BF16 x BF16 layer on unrounded x.
template <class W, class A>
std::vector<float> kernel_x(const std::vector<float>& x, Index m, Index k, std::vector<float>* err_bound = nullptr,
                            Path path = Path::simd) {
    std::vector<float> out(x);
    if (err_bound) err_bound->assign(x.size(), 0.f);
    if constexpr (std::is_same_v<A, fmt::BF16>) {
        if (path != Path::widen_f32)
            for (auto& v : out) v = to_float(to_bf16(v));
    } else if constexpr (kQuant<W, A>) {
        if (path == Path::amx_bf16) {  // X rounded to bf16 instead of quantized (weights dequantized to bf16)
            for (std::size_t i = 0; i < out.size(); ++i) {
                out[i] = to_float(to_bf16(x[i]));
                if (err_bound) (*err_bound)[i] = std::ldexp(std::fabs(x[i]), -8);
            }
            return out;
        }
        const Index kb = (k + 31) / 32;
        std::vector<std::int8_t> q(sz(kb * 32));
        std::vector<float> d(sz(kb));
        std::vector<std::int32_t> c(sz(kb));
        for (Index i = 0; i < m; ++i) {
            detail::mm::quantize_act_ref(x.data() + i * k, k, kCorr<W, A>, q.data(), d.data(), c.data());
            for (Index p = 0; p < k; ++p) {
                out[std::size_t(i * k + p)] = d[std::size_t(p / 32)] * float(q[std::size_t(p)]);
                if (err_bound) (*err_bound)[std::size_t(i * k + p)] = 0.51f * d[std::size_t(p / 32)];
            }
        }
    }
    return out;
}

// Weight rounding bound per element (for the loose comparison against f32 weights).
template <class W>
std::vector<float> weight_err_bound(const std::vector<float>& w, Index n, Index k) {
    std::vector<float> e(w.size(), 0.f);
    if constexpr (QuantizedFormat<W>) {
        for (Index r = 0; r < n; ++r)
            for (Index b = 0; b < k; b += 32) {
                float amax = 0.f;
                for (Index p = b; p < std::min(k, b + 32); ++p) amax = std::max(amax, std::fabs(w[std::size_t(r * k + p)]));
                // Q8: d/2 rounding + 127·|d − f16(d)| ≤ 0.562·d;  Q4: up to |d| at the clamp (q = 16 → 15) + 8·|d − f16(d)|
                const float bound = std::is_same_v<W, fmt::Q8> ? 0.57f * amax / 127.f : 1.01f * amax / 8.f;
                for (Index p = b; p < std::min(k, b + 32); ++p) e[std::size_t(r * k + p)] = bound;
            }
    }
    return e;
}

// Reference in double, returning per element the value and the magnitude S·s (for tolerances).
void reference(const std::vector<float>& x, Index m, Index k, const std::vector<float>& w, Index n, const float* bias,
               const Epilogue& ep, const std::vector<float>& y0, std::vector<float>& ref, std::vector<double>& mag,
               const std::vector<float>* ex = nullptr, const std::vector<float>* ew = nullptr,
               std::vector<double>* qbound = nullptr) {
    ref.assign(std::size_t(m * n), 0.f);
    mag.assign(std::size_t(m * n), 0.0);
    if (qbound) qbound->assign(std::size_t(m * n), 0.0);
    std::vector<float> yl(y0);
    matmul_reference(x.data(), m, k, w.data(), n, bias, yl.data(), Epilogue{ep.act, ep.scale, false});
    for (Index i = 0; i < m; ++i)
        for (Index j = 0; j < n; ++j) {
            double s = bias ? std::fabs(bias[j]) : 0.0, qb = 0.0;
            for (Index p = 0; p < k; ++p) {
                const double xv = x[std::size_t(i * k + p)], wv = w[std::size_t(j * k + p)];
                s += std::fabs(xv * wv);
                if (qbound) {  // |xw − x'w'| ≤ |x|·ew + (|w| + ew)·ex
                    const double e_w = (*ew)[std::size_t(j * k + p)], e_x = (*ex)[std::size_t(i * k + p)];
                    qb += std::fabs(xv) * e_w + (std::fabs(wv) + e_w) * e_x;
                }
            }
            const double sc = ep.scale ? std::fabs(ep.scale[j]) : 1.0;
            const std::size_t o = std::size_t(i * n + j);
            ref[o] = ep.accumulate ? y0[o] + yl[o] : yl[o];
            mag[o] = s * sc;
            if (qbound) (*qbound)[o] = qb * sc * 1.01;
        }
}

template <class W, class A>
std::vector<Path> paths_to_test() {
    std::vector<Path> out;
    Linear<W, A> probe;
    for (Path p : detail::mm::kAllPaths) {
        try {
            probe.set_path(p);
            out.push_back(p);
        } catch (const Error&) {
        }
    }
    return out;
}

template <class W, class A>
void run_case(const Case& c, Path path, ThreadPool& pool, std::mt19937& g, bool check_loose) {
    SCOPED_TRACE(::testing::Message() << W::name << "x" << A::name << " path=" << detail::mm::path_name(path) << " m=" << c.m
                                      << " k=" << c.k << " n=" << c.n << " epi=" << c.epi << " pool=" << c.pooled);
    const Index m = c.m, k = c.k, n = c.n;
    const auto w = randn(std::size_t(n * k), g, 0.5f);
    const auto x = randn(std::size_t(m * k), g, 1.f);
    const auto b = randn(std::size_t(n), g, 0.5f);
    auto scale = randn(std::size_t(n), g, 1.f);
    EpiSetup es = make_epilogue(c.epi, scale.data());
    es.ep.rows = c.rows;
    const float* bias = es.bias ? b.data() : nullptr;

    Linear<W, A> lin(w.data(), n, k, bias);
    ASSERT_EQ(lin.out_features(), n);
    ASSERT_EQ(lin.in_features(), k);
    lin.set_path(path);

    // Padded X and Y; Y prefilled (for accumulate) and its padding guarded.
    const Index ldx = k + c.padx, ldy = n + c.pady;
    std::vector<float> xp(std::size_t(std::max<Index>(m * ldx, 1)), 1e30f);
    for (Index i = 0; i < m; ++i) std::copy(x.begin() + i * k, x.begin() + (i + 1) * k, xp.begin() + i * ldx);
    const auto y0 = randn(std::size_t(m * n), g, 1.f);
    std::vector<float> yp(std::size_t(std::max<Index>(m * ldy, 1)), -7.f);
    for (Index i = 0; i < m; ++i) std::copy(y0.begin() + i * n, y0.begin() + (i + 1) * n, yp.begin() + i * ldy);

    lin.forward(xp.data(), m, ldx, yp.data(), ldy, c.pooled ? &pool : nullptr, es.ep);

    // Tight: the reference on the operands the kernel multiplies.
    std::vector<float> wk(sz(n * k));
    for (Index j = 0; j < n; ++j) lin.row(j, wk.data() + j * k);
    // A GEMM-only path (AMX) runs calls of the GEMV class through the format's vector path.
    const Path eff = detail::mm::gemm_only(path) && use_gemv(m, es.ep) ? (kQuant<W, A> ? Path::avx512_vnni : Path::avx512_bf16) : path;
    if (kQuant<W, A> && eff == Path::amx_bf16)  // Q8/Q4 through AMX: the weights as bf16(d·q)
        for (auto& v : wk) v = to_float(to_bf16(v));
    std::vector<float> ex;
    const auto xk = kernel_x<W, A>(x, m, k, &ex, eff);
    std::vector<float> ref;
    std::vector<double> mag;
    reference(xk, m, k, wk, n, bias, es.ep, y0, ref, mag);
    int bad = 0;
    for (Index i = 0; i < m; ++i) {
        for (Index j = 0; j < n; ++j) {
            const std::size_t o = std::size_t(i * n + j);
            const double tol = 1e-5 * mag[o] + (es.ep.accumulate ? 1e-6 * std::fabs(y0[o]) : 0.0) + 1e-30;
            const float got = yp[std::size_t(i * ldy + j)];
            if (!(std::fabs(double(got) - ref[o]) <= tol) && bad++ < 5)
                ADD_FAILURE() << "tight: y[" << i << "][" << j << "] = " << got << ", reference " << ref[o] << ", tol " << tol;
        }
        for (Index j = n; j < ldy && i + 1 < m; ++j) ASSERT_EQ(yp[std::size_t(i * ldy + j)], -7.f) << "padding of Y written";
    }
    ASSERT_EQ(bad, 0);

    if (!check_loose) return;
    // Loose: against the original f32 operands, with the format's own error bound.
    std::vector<float> ref32;
    std::vector<double> mag32, qb;
    const auto ew = weight_err_bound<W>(w, n, k);
    reference(x, m, k, w, n, bias, es.ep, y0, ref32, mag32, &ex, &ew, &qb);
    double rel = 0.0;
    if constexpr (std::is_same_v<W, fmt::BF16> && std::is_same_v<A, fmt::F32>) rel = std::ldexp(1.0, -8);
    if constexpr (std::is_same_v<W, fmt::F16>) rel = std::ldexp(1.0, -10);
    if constexpr (std::is_same_v<W, fmt::BF16> && std::is_same_v<A, fmt::BF16>) rel = std::ldexp(1.0, -7);
    if (kQuant<W, A> && eff == Path::amx_bf16) rel = std::ldexp(1.0, -8);  // the weights' rounding to bf16
    for (Index i = 0; i < m; ++i)
        for (Index j = 0; j < n; ++j) {
            const std::size_t o = std::size_t(i * n + j);
            // GELU/SiLU/sigmoid/ReLU are 1.13-Lipschitz at most.
            const double tol = 1.13 * (rel * mag32[o] + qb[o]) + 2e-5 * mag32[o] +
                               (es.ep.accumulate ? 1e-6 * std::fabs(y0[o]) : 0.0) + 1e-30;
            const float got = yp[std::size_t(i * ldy + j)];
            if (!(std::fabs(double(got) - ref32[o]) <= tol) && bad++ < 5)
                ADD_FAILURE() << "vs f32: y[" << i << "][" << j << "] = " << got << ", f32 reference " << ref32[o]
                              << ", bound " << tol;
        }
    ASSERT_EQ(bad, 0);
}

template <class W, class A>
void run_all() {
    ThreadPool pool(2);
    std::mt19937 g(1234);
    const auto paths = paths_to_test<W, A>();
    ASSERT_FALSE(paths.empty());
    int idx = 0;
    for (Path path : paths) {
        for (Index m : {0, 1, 2, 7, 16, 33, 65})
            for (Index k : {1, 7, 8, 32, 33, 96})
                for (Index n : {1, 7, 33, 65, 257}) {
                    ++idx;
                    const auto rows = RowKernel(idx % 3);  // automatic, gemv, gemm in turn
                    const Case c{m, k, n, idx, idx % 2 == 0, Index(idx % 3), Index((idx / 5) % 3), rows};
                    run_case<W, A>(c, path, pool, g, idx % 4 == 0);
                    if (::testing::Test::HasFatalFailure()) return;
                }
        // Long K (several K blocks; accumulate + activation over K blocks goes through a buffer),
        // and more rows than one M block (several tasks).
        for (int e = 0; e < 6; ++e) {
            run_case<W, A>(Case{e % 3 == 0 ? 1 : 7, 4097, 33, e, e % 2 == 0, 3, 1}, path, pool, g, true);
            if (::testing::Test::HasFatalFailure()) return;
        }
        run_case<W, A>(Case{200, 33, 65, 1, true, 1, 2}, path, pool, g, true);
        run_case<W, A>(Case{400, 40, 200, 2, true, 0, 0}, path, pool, g, false);
        if (::testing::Test::HasFatalFailure()) return;
    }
}

// RowKernel::gemv: every row of a batch equals, bit for bit, the same row run alone (m = 1), and
// RowKernel::gemm gives every row the same bits whatever the other rows of the call are (1 row, or
// among 37): a sequence's tokens never depend on what else is batched with it.
template <class W, class A>
void rows_are_independent() {
    ThreadPool pool(2);
    std::mt19937 g(77);
    for (Path path : paths_to_test<W, A>())
        for (Index k : {33, 896})
            for (Index n : {65, 300}) {
                SCOPED_TRACE(::testing::Message() << W::name << "x" << A::name << " " << detail::mm::path_name(path) << " k=" << k
                                                  << " n=" << n);
                const auto w = randn(sz(n * k), g, 0.5f), b = randn(sz(n), g, 0.5f);
                Linear<W, A> lin(w.data(), n, k, b.data());
                lin.set_path(path);
                const Index m = 37;
                const auto x = randn(sz(m * k), g, 1.f);
                for (RowKernel rk : {RowKernel::gemv, RowKernel::gemm})
                    for (Index mb : {Index(2), Index(3), Index(7), Index(8), Index(32), m}) {
                        std::vector<float> yb(sz(mb * n)), y1(sz(n));
                        lin.forward(x.data(), mb, k, yb.data(), n, &pool, {.rows = rk});
                        for (Index r = 0; r < mb; ++r) {
                            lin.forward(x.data() + r * k, 1, k, y1.data(), n, r % 2 ? &pool : nullptr,
                                        {.rows = rk == RowKernel::gemv ? RowKernel::automatic : RowKernel::gemm});
                            for (Index j = 0; j < n; ++j)
                                ASSERT_EQ(yb[sz(r * n + j)], y1[sz(j)]) << "rows=" << int(rk) << " m=" << mb << " row " << r;
                        }
                    }
            }
}
TEST(Matmul, RowsIndependentOfBatchF32) { rows_are_independent<fmt::F32, fmt::F32>(); }
TEST(Matmul, RowsIndependentOfBatchBF16) { rows_are_independent<fmt::BF16, fmt::F32>(); }
TEST(Matmul, RowsIndependentOfBatchF16) { rows_are_independent<fmt::F16, fmt::F32>(); }
TEST(Matmul, RowsIndependentOfBatchBF16xBF16) { rows_are_independent<fmt::BF16, fmt::BF16>(); }
TEST(Matmul, RowsIndependentOfBatchQ8) { rows_are_independent<fmt::Q8, fmt::Q8>(); }
TEST(Matmul, RowsIndependentOfBatchQ4) { rows_are_independent<fmt::Q4, fmt::Q8>(); }

TEST(Matmul, F32xF32) { run_all<fmt::F32, fmt::F32>(); }
TEST(Matmul, BF16xF32) { run_all<fmt::BF16, fmt::F32>(); }
TEST(Matmul, F16xF32) { run_all<fmt::F16, fmt::F32>(); }
TEST(Matmul, BF16xBF16) { run_all<fmt::BF16, fmt::BF16>(); }
TEST(Matmul, Q8xQ8) { run_all<fmt::Q8, fmt::Q8>(); }
TEST(Matmul, Q4xQ8) { run_all<fmt::Q4, fmt::Q8>(); }

// The CPU's fast paths are in use where the CPU has them (and the compiler targeted them).
TEST(Matmul, BestPathOnThisCpu) {
    force_kernels("default");  // the builtin paths, whatever an earlier test chose
    std::vector<float> w(64, 1.f);
    EXPECT_EQ((Linear<fmt::F32>(w.data(), 8, 8).path()), Path::simd);
    EXPECT_EQ((Linear<fmt::BF16, fmt::BF16>(w.data(), 8, 8).path()),
              detail::mm::have_avx512_bf16() ? Path::avx512_bf16 : Path::widen_f32);
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    if (cpu().avx512vnni) {
        EXPECT_EQ((Linear<fmt::Q8, fmt::Q8>(w.data(), 8, 8).path()), Path::avx512_vnni);
        EXPECT_EQ((Linear<fmt::Q4, fmt::Q8>(w.data(), 8, 8).path()), Path::avx512_vnni);
    }
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    if (!detail::mm::have_avx512_vnni() && cpu().avx2 && cpu().fma && cpu().f16c) {  // e.g. AMD Zen 3
        EXPECT_EQ((Linear<fmt::Q8, fmt::Q8>(w.data(), 8, 8).path()), Path::avx2_int8);
        EXPECT_EQ((Linear<fmt::Q4, fmt::Q8>(w.data(), 8, 8).path()), Path::avx2_int8);
    }
#endif
    if (detail::mm::have_amx_bf16()) {  // GEMM calls take AMX where the CPU has it (and grants it)
        EXPECT_EQ((Linear<fmt::BF16, fmt::BF16>(w.data(), 8, 8).path(KernelClass::gemm)), Path::amx_bf16);
        if (detail::mm::have_avx512_vnni()) EXPECT_EQ((Linear<fmt::Q8, fmt::Q8>(w.data(), 8, 8).path(KernelClass::gemm)), Path::amx_bf16);
    }
    Linear<fmt::F32> f(w.data(), 8, 8);
    EXPECT_THROW(f.set_path(Path::avx512_vnni), Error);
    EXPECT_THROW(f.set_path(Path::amx_bf16), Error);
}

// SIMD activation quantization equals the scalar reference bit for bit.
TEST(Matmul, QuantizeActivationsMatchesReference) {
    std::mt19937 g(7);
    for (Index k : {1, 5, 31, 32, 33, 64, 100, 511, 512, 513, 544, 1536, 4097}) {  // 16-block batches and tails
        auto x = randn(std::size_t(k), g, 3.f);
        if (k > 40) std::fill(x.begin() + 32, x.begin() + 64, 0.f);  // an all-zero block
        if (k > 2) x[1] = 1e-30f, x[2] = -1e-42f;                     // tiny and subnormal values
        const Index kb = (k + 31) / 32;
        std::vector<std::int8_t> q1(sz(kb * 32)), q2(sz(kb * 32));
        std::vector<float> d1(sz(kb)), d2(sz(kb));
        std::vector<std::int32_t> c1(sz(kb)), c2(sz(kb));
        detail::mm::quantize_act_ref(x.data(), k, 128, q1.data(), d1.data(), c1.data());
        detail::mm::quantize_act(x.data(), k, 128, q2.data(), d2.data(), c2.data());
        EXPECT_EQ(q1, q2) << "k=" << k;
        EXPECT_EQ(c1, c2) << "k=" << k;
        for (Index b = 0; b < kb; ++b) EXPECT_EQ(std::bit_cast<std::uint32_t>(d1[b]), std::bit_cast<std::uint32_t>(d2[b]));
        for (Index p = 0; p < k; ++p) {  // |x − d·q| ≤ d/2 (+ rounding of d)
            const float d = d1[std::size_t(p / 32)];
            EXPECT_LE(std::fabs(x[std::size_t(p)] - d * q1[std::size_t(p)]), 0.5f * d * (1.f + 1e-5f) + 1e-37f);
        }
    }
}

// quantize_rows lays rows out in groups of the GEMM micro-kernel's rows (q8.hpp): every code, scale and
// correction of the reference sits at its documented place; blocks past k and rows past m are zero.
TEST(Matmul, QuantizedRowsAreGroupedForTheMicroKernel) {
    std::mt19937 g(5);
    for (const Index gr : {Index(1), Index(4), Index(6)}) {
        for (const Index m : {Index(1), Index(5), Index(7), Index(13)}) {
            const Index k = 100, kb = 8, ldx = 104;  // 4 blocks of data, 4 of the weights' padding
            auto x = randn(std::size_t(m * ldx), g, 2.f);
            const Index mpad = (m + 5) / 6 * 6;
            ThreadPool pool(2);
            const auto xq = detail::mm::quantize_rows(x.data(), m, ldx, k, kb, mpad, 128, &pool, gr);
            const Index rows = (mpad + gr - 1) / gr * gr;
            for (Index r = 0; r < rows; ++r) {
                std::vector<std::int8_t> q(sz(kb * 32), 0);
                std::vector<float> d(sz(kb), 0.f);
                std::vector<std::int32_t> c(sz(kb), 0);
                if (r < m) detail::mm::quantize_act_ref(x.data() + r * ldx, k, 128, q.data(), d.data(), c.data());
                const Index base = (r / gr) * gr;
                for (Index b = 0; b < kb; ++b) {
                    ASSERT_EQ(xq.d[base * kb + b * gr + r % gr], d[sz(b)]) << "gr " << gr << " m " << m << " row " << r << " block " << b;
                    ASSERT_EQ(xq.corr[base * kb + b * gr + r % gr], c[sz(b)]) << "gr " << gr << " row " << r << " block " << b;
                    for (Index j = 0; j < 32; ++j)
                        ASSERT_EQ(xq.q[base * kb * 32 + b * gr * 32 + (j / 4) * gr * 4 + r % gr * 4 + j % 4], q[sz(b * 32 + j)])
                            << "gr " << gr << " m " << m << " row " << r << " k " << b * 32 + j;
                }
            }
        }
    }
}

// A Q8 hand-off (fc1's output quantized in its GEMM epilogue, Linear::forward_quantized_for) gives fc2 the
// very codes it would make from fc1's float output: the two-layer result is bit for bit the float round
// trip's, on every path that makes hand-offs, for Q8 and Q4 weights on either side, partial row groups,
// and a next layer whose K is padded to whole superblocks. Where no hand-off can be made, it says so.
template <class W1, class W2>
void check_handoff(Path path, Index m, Index k1, Index n1, Index n2, ThreadPool* pool) {
    std::mt19937 g(unsigned(m * 131 + k1 * 7 + n1 * 3 + n2));
    const auto w1 = randn(sz(n1 * k1), g, 0.5f), b1 = randn(sz(n1), g), w2 = randn(sz(n2 * n1), g, 0.5f), b2 = randn(sz(n2), g);
    const auto x = randn(sz(m * (k1 + 3)), g, 2.f), scale = randn(sz(n2), g);
    Linear<W1, fmt::Q8> fc1(w1.data(), n1, k1, b1.data());
    Linear<W2, fmt::Q8> fc2(w2.data(), n2, n1, b2.data());
    fc1.set_path(path), fc2.set_path(path);
    const Epilogue e1{Act::gelu}, e2{Act::none, scale.data(), true};
    std::vector<float> hidden(sz(m * n1)), y_ref = randn(sz(m * n2), g), y = y_ref;
    fc1.forward(x.data(), m, k1 + 3, hidden.data(), n1, pool, e1);
    fc2.forward(hidden.data(), m, n1, y_ref.data(), n2, pool, e2);
    Q8Handoff hq;
    ASSERT_TRUE(fc1.forward_quantized_for(fc2, x.data(), m, k1 + 3, hq, pool, e1))
        << detail::mm::path_name(path) << " m " << m << " k " << k1 << " n " << n1;
    fc2.forward(hq, y.data(), n2, pool, e2);
    ASSERT_EQ(0, std::memcmp(y.data(), y_ref.data(), y.size() * sizeof(float)))
        << detail::mm::path_name(path) << " " << W1::name << "->" << W2::name << " m " << m << " k " << k1 << " n " << n1;
}

TEST(Matmul, Q8HandoffEqualsTheFloatRoundTrip) {
    ThreadPool pool(2);
    std::vector<Path> paths = {Path::scalar};
    if (detail::mm::have_avx512_vnni()) paths.push_back(Path::avx512_vnni);
    for (const Path p : paths)
        for (const Index m : {Index(2), Index(7), Index(13), Index(200)}) {
            ThreadPool* pl = m > 100 ? &pool : nullptr;
            check_handoff<fmt::Q8, fmt::Q8>(p, m, 96, 128, 48, pl);
            check_handoff<fmt::Q8, fmt::Q4>(p, m, 70, 64, 32, pl);
            check_handoff<fmt::Q4, fmt::Q8>(p, m, 384, 160, 24, pl);  // 5 blocks: fc2's K padded to 8 blocks
            check_handoff<fmt::Q4, fmt::Q4>(p, m, 1024, 96, 16, pl);
        }
}

TEST(Matmul, Q8HandoffRefusedWhereItCannotBeMade) {
    std::mt19937 g(11);
    const auto w = randn(sz(64 * 1100), g), x = randn(sz(8 * 1100), g);
    Linear<fmt::Q8, fmt::Q8> a(w.data(), 64, 96), next(w.data(), 16, 64), wide_k(w.data(), 64, 1100);
    Linear<fmt::Q8, fmt::Q8> odd_n(w.data(), 40, 96), next40(w.data(), 16, 40);
    for (auto* l : {&a, &next, &wide_k, &odd_n, &next40}) l->set_path(Path::scalar);
    Q8Handoff hq;
    EXPECT_TRUE(a.forward_quantized_for(next, x.data(), 8, 96, hq, nullptr));
    EXPECT_FALSE(a.forward_quantized_for(next, x.data(), 1, 96, hq, nullptr));                           // m = 1: GEMV
    EXPECT_FALSE(a.forward_quantized_for(next, x.data(), 8, 96, hq, nullptr, Epilogue{Act::none, nullptr, true}));  // accumulate
    EXPECT_FALSE(a.forward_quantized_for(next, x.data(), 8, 96, hq, nullptr, Epilogue{.rows = RowKernel::gemv}));
    EXPECT_FALSE(wide_k.forward_quantized_for(next, x.data(), 8, 1100, hq, nullptr));  // K > 1024: two K blocks
    EXPECT_FALSE(odd_n.forward_quantized_for(next40, x.data(), 8, 96, hq, nullptr));   // 40 columns: not whole blocks
    EXPECT_THROW(a.forward_quantized_for(next40, x.data(), 8, 96, hq, nullptr), Error);  // 64 features into 40
    if (detail::mm::have_avx512_vnni()) {
        next.set_path(Path::avx512_vnni);
        EXPECT_FALSE(a.forward_quantized_for(next, x.data(), 8, 96, hq, nullptr));  // paths differ
    }
    if (detail::mm::have_avx2_int8()) {
        a.set_path(Path::avx2_int8), next.set_path(Path::avx2_int8);
        EXPECT_FALSE(a.forward_quantized_for(next, x.data(), 8, 96, hq, nullptr));  // 4 × 16 tiles: half a block
    }
    // A hand-off made for one path is refused by a layer on another.
    a.set_path(Path::scalar), next.set_path(Path::scalar);
    ASSERT_TRUE(a.forward_quantized_for(next, x.data(), 8, 96, hq, nullptr));
    std::vector<float> y(8 * 16);
    if (detail::mm::have_avx512_vnni()) {
        next.set_path(Path::avx512_vnni);
        EXPECT_THROW(next.forward(hq, y.data(), 16, nullptr), Error);
    }
}

// The packers' block quantizers (AVX-512 and scalar) give exactly core/formats.hpp's quantize_row.
TEST(Matmul, WeightQuantizersMatchFormats) {
    std::mt19937 g(11);
    std::normal_distribution<float> nd(0.f, 1.f);
    std::uniform_int_distribution<int> pick(0, 31);
    for (int trial = 0; trial < 20000; ++trial) {
        float x[32];
        const float s = std::ldexp(1.f, trial % 40 - 20);
        for (float& v : x) v = nd(g) * s;
        switch (trial % 7) {
            case 1: for (float& v : x) v = std::round(v / s * 4.f) * 0.25f * s; break;  // many exact ties x·id = k + 1/2
            case 2: std::fill(x, x + 32, 0.f); x[pick(g)] = -0.f; break;               // zero block with −0
            case 3: { const int a = pick(g), b = pick(g); x[a] = 3.f * s; x[b] = -3.f * s; } break;  // ±max: first wins
            case 4: x[pick(g)] = 1e-40f; break;
            default: break;
        }
        BlockQ8 r8;
        BlockQ4 r4;
        quantize_row(x, &r8, 32);
        quantize_row(x, &r4, 32);
        for (int impl = 0; impl < 2; ++impl) {
            f16 d8, d4;
            std::uint8_t q8[32], q4[16];
            ASSERT_TRUE(impl ? detail::mm::quantize_block_q8(x, d8, q8) : fmt::Q8::quantize_block(x, d8, q8));
            ASSERT_TRUE(impl ? detail::mm::quantize_block_q4(x, d4, q4) : fmt::Q4::quantize_block(x, d4, q4));
            ASSERT_EQ(d8.bits, r8.d.bits) << "trial " << trial << " impl " << impl;
            ASSERT_EQ(d4.bits, r4.d.bits) << "trial " << trial << " impl " << impl;
            for (int j = 0; j < 32; ++j) ASSERT_EQ(int(q8[j]) - 128, int(r8.qs[j])) << "trial " << trial << " j " << j;
            for (int j = 0; j < 16; ++j) ASSERT_EQ(q4[j], r4.qs[j]) << "trial " << trial << " j " << j;
        }
    }
    float bad[32] = {};
    bad[5] = std::numeric_limits<float>::quiet_NaN();
    f16 d;
    std::uint8_t q[32];
    EXPECT_FALSE(detail::mm::quantize_block_q8(bad, d, q));
    EXPECT_FALSE(detail::mm::quantize_block_q4(bad, d, q));
    bad[5] = std::numeric_limits<float>::infinity();
    EXPECT_FALSE(fmt::Q8::quantize_block(bad, d, q));
    EXPECT_FALSE(fmt::Q4::quantize_block(bad, d, q));
    std::vector<float> w(16 * 40, 0.5f);
    w[3 * 40 + 7] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_THROW((Linear<fmt::Q8, fmt::Q8>(w.data(), 16, 40)), Error);  // a NaN weight is reported, not quantized
    EXPECT_THROW((Linear<fmt::Q4, fmt::Q8>(w.data(), 16, 40)), Error);
}

// Extreme finite weights and non-finite activations: every float → int conversion stays in range
// (run under UBSan by scripts/test.sh), quantized values stay in their range, SIMD = scalar.
TEST(Matmul, QuantizersAreOverflowFreeForAnyInput) {
    const float cases[][4] = {{3.4e38f, -3.4e38f, 1e-45f, 0.f},  // largest finite, smallest subnormal
                              {1e-40f, -2e-40f, 1e-44f, 0.f},    // block of subnormals only: 1/d overflows
                              {1e-38f, 5e-39f, -1e-38f, 1e-45f},
                              {-0.f, 0.f, 1e-45f, -1e-45f}};
    for (const auto& c : cases) {
        float x[32];
        for (int j = 0; j < 32; ++j) x[j] = c[j % 4] * (j % 3 == 0 ? 1.f : 0.5f);
        f16 d[4];
        std::uint8_t q8a[32], q8b[32], q4a[16], q4b[16];
        ASSERT_TRUE(detail::mm::quantize_block_q8(x, d[0], q8a));
        ASSERT_TRUE(fmt::Q8::quantize_block(x, d[1], q8b));
        ASSERT_TRUE(detail::mm::quantize_block_q4(x, d[2], q4a));
        ASSERT_TRUE(fmt::Q4::quantize_block(x, d[3], q4b));
        EXPECT_EQ(d[0].bits, d[1].bits);
        EXPECT_EQ(d[2].bits, d[3].bits);
        for (int j = 0; j < 32; ++j) {
            EXPECT_EQ(q8a[j], q8b[j]) << j;
            EXPECT_GE(int(q8a[j]) - 128, -127);  // within ±127 (stored + 128)
            EXPECT_LE(int(q8a[j]) - 128, 127);
        }
        for (int j = 0; j < 16; ++j) EXPECT_EQ(q4a[j], q4b[j]) << j;
    }
    // Activations that overflowed upstream (±inf, NaN) and extreme finite ones: q within ±127.
    const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> a = {inf, -inf, nan, 3.4e38f, -3.4e38f, 1e-45f, 1.f, 0.f};
    a.resize(96, 1e-40f);
    a[40] = 3.4e38f;
    a[41] = -1e-45f;
    std::vector<std::int8_t> q1(96), q2(96);
    std::vector<float> d1(3), d2(3);
    std::vector<std::int32_t> c1(3), c2(3);
    detail::mm::quantize_act_ref(a.data(), 96, 128, q1.data(), d1.data(), c1.data());
    detail::mm::quantize_act(a.data(), 96, 128, q2.data(), d2.data(), c2.data());
    EXPECT_EQ(q1, q2);
    EXPECT_EQ(c1, c2);
    for (auto v : q1) EXPECT_GE(int(v), -127);
}

// Constructing from bf16 equals constructing from the same values as f32; row() returns them.
TEST(Matmul, Bf16ConstructorAndRow) {
    std::mt19937 g(3);
    const Index n = 37, k = 45;
    const auto w = randn(std::size_t(n * k), g);
    std::vector<bf16> wb(w.size());
    std::vector<float> wr(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) wb[i] = to_bf16(w[i]), wr[i] = to_float(wb[i]);
    Linear<fmt::F32> a(wb.data(), n, k), b(wr.data(), n, k);
    std::vector<float> ra(sz(k)), rb(sz(k));
    for (Index j = 0; j < n; ++j) {
        a.row(j, ra.data());
        b.row(j, rb.data());
        ASSERT_EQ(ra, rb);
        ASSERT_TRUE(std::equal(rb.begin(), rb.end(), wr.begin() + j * k));
    }
    Linear<fmt::Q8, fmt::Q8> q(wb.data(), n, k);
    // 8.5 bits per weight, n padded to panels of 16 and k to superblocks of 4 blocks of 32
    EXPECT_EQ(q.weight_bytes(), std::size_t((n + 15) / 16 * 16) * std::size_t((k + 127) / 128 * 128) * 34 / 32);
    Linear<fmt::Q4, fmt::Q8> q4(wb.data(), n, k);  // 4.5 bits, k padded to superblocks of 2 blocks
    EXPECT_EQ(q4.weight_bytes(), std::size_t((n + 15) / 16 * 16) * std::size_t((k + 63) / 64 * 64) * 18 / 32);
}

// k = 0: y = epilogue(bias), for every format, GEMV and GEMM.
template <class W, class A>
void check_k0() {
    const std::vector<float> bias = {1.f, -2.f, 0.5f, 3.f, -1.f};
    std::vector<float> x(1), y(3 * 5, 9.f);
    Linear<W, A> lin(x.data(), 5, 0, bias.data());
    for (Index m : {1, 3}) {
        lin.forward(x.data(), m, 0, y.data(), 5, nullptr, Epilogue{Act::relu});
        for (Index i = 0; i < m; ++i)
            for (Index j = 0; j < 5; ++j) EXPECT_EQ(y[std::size_t(i * 5 + j)], std::max(bias[std::size_t(j)], 0.f)) << W::name;
    }
}
TEST(Matmul, EmptyK) {
    check_k0<fmt::F32, fmt::F32>();
    check_k0<fmt::BF16, fmt::F32>();
    check_k0<fmt::F16, fmt::F32>();
    check_k0<fmt::BF16, fmt::BF16>();
    check_k0<fmt::Q8, fmt::Q8>();
    check_k0<fmt::Q4, fmt::Q8>();
}

TEST(Matmul, BadArgumentsThrow) {
    std::vector<float> w(6 * 5, 1.f), x(20, 1.f), y(20);
    Linear<fmt::F32> lin(w.data(), 6, 5);
    EXPECT_THROW(lin.forward(x.data(), 2, 4, y.data(), 6, nullptr), Error);  // ldx < k
    EXPECT_THROW(lin.forward(x.data(), 2, 5, y.data(), 5, nullptr), Error);  // ldy < n
    EXPECT_THROW(lin.forward(x.data(), -1, 5, y.data(), 6, nullptr), Error);
    EXPECT_THROW(lin.row(6, y.data()), Error);
    EXPECT_THROW((Linear<fmt::F32>(w.data(), -1, 5)), Error);
    Linear<fmt::Q4, fmt::Q8> empty;
    EXPECT_EQ(empty.out_features(), 0);
    EXPECT_NO_THROW(empty.forward(x.data(), 0, 0, y.data(), 0, nullptr));
}


// ---- kernel choice (kernels/kernel_choice.hpp) -------------------------------------------------------------
// Restores the builtin paths and the environment at the end of a test (the choice is process-wide).
struct KernelChoiceGuard {
    std::string cache_env, kernels_env;
    bool had_cache = false, had_kernels = false;
    KernelChoiceGuard() {
        if (const char* e = std::getenv("FASTVLM_KERNEL_CACHE")) had_cache = true, cache_env = e;
        if (const char* e = std::getenv("FASTVLM_KERNELS")) had_kernels = true, kernels_env = e;
        ::unsetenv("FASTVLM_KERNELS");
        force_kernels("default");
    }
    ~KernelChoiceGuard() {
        force_kernels("default");
        if (had_cache) ::setenv("FASTVLM_KERNEL_CACHE", cache_env.c_str(), 1);
        else ::unsetenv("FASTVLM_KERNEL_CACHE");
        if (had_kernels) ::setenv("FASTVLM_KERNELS", kernels_env.c_str(), 1);
    }
};

const KernelChoice& choice_of(const std::vector<KernelChoice>& all, const std::string& pair) {
    for (const auto& c : all)
        if (c.pair == pair) return c;
    throw std::runtime_error("no pair " + pair);
}

TEST(KernelChoice, ForceSpecIsParsedValidatedAndAllOrNothing) {
    KernelChoiceGuard guard;
    auto bf = [] { return choice_of(kernel_choices(), "bf16xbf16"); };
    EXPECT_EQ(bf().source, KernelSource::builtin);
    EXPECT_EQ(choice_of(kernel_choices(), "f32xf32").candidates, std::vector<std::string>{"simd"});

    force_kernels("bf16xbf16=simd");
    EXPECT_EQ(bf().gemv, "simd");
    EXPECT_EQ(bf().gemm, "simd");
    EXPECT_EQ(bf().source, KernelSource::forced);
    force_kernels("bf16xbf16.gemm=widen_f32, ");  // one class; a trailing comma is fine
    EXPECT_EQ(bf().gemv, "simd");
    EXPECT_EQ(bf().gemm, "widen_f32");
    std::vector<float> w(64, 1.f);
    Linear<fmt::BF16, fmt::BF16> lin(w.data(), 8, 8);
    EXPECT_EQ(lin.path(KernelClass::gemv), Path::simd);
    EXPECT_EQ(lin.path(KernelClass::gemm), Path::widen_f32);

    using test_support::error_of;
    EXPECT_NE(error_of([] { force_kernels("nope=simd", "FASTVLM_KERNELS"); }).find("FASTVLM_KERNELS: unknown pair 'nope' (pairs: f32xf32, bf16xf32"),
              std::string::npos);
    EXPECT_NE(error_of([] { force_kernels("bf16xbf16=avx512_vnni"); })
                  .find("kernel path 'avx512_vnni' is not available for bf16xbf16 on this CPU (available: scalar, simd"),
              std::string::npos);
    EXPECT_NE(error_of([] { force_kernels("f32xf32=fast"); }).find("'fast' is not available for f32xf32"), std::string::npos);
    EXPECT_NE(error_of([] { force_kernels("bf16xbf16"); }).find("is not PAIR=PATH"), std::string::npos);
    EXPECT_NE(error_of([] { force_kernels("bf16xbf16.gemx=simd"); }).find("unknown pair 'bf16xbf16.gemx'"), std::string::npos);
    // A spec with one bad item changes nothing.
    force_kernels("default");
    EXPECT_THROW(force_kernels("bf16xbf16=simd,q8xq8=bogus"), Error);
    EXPECT_EQ(bf().source, KernelSource::builtin);
    EXPECT_EQ(bf().gemv, detail::mm::path_name(detail::mm::ImplBF16::best()));
}

// AMX runs only the GEMM class: a pair forced to it keeps its GEMV path, naming the GEMV class is an
// error, and measurement never offers it for GEMV.
TEST(KernelChoice, AmxIsGemmOnly) {
    if (!Linear<fmt::Q8, fmt::Q8>::supports(Path::amx_bf16)) GTEST_SKIP() << "no AMX-BF16 on this CPU / build";
    KernelChoiceGuard guard;
    auto q8 = [] { return choice_of(kernel_choices(), "q8xq8"); };
    force_kernels("q8xq8=avx512_vnni");
    EXPECT_EQ(q8().gemm, "avx512_vnni");
    force_kernels("q8xq8=amx_bf16");
    EXPECT_EQ(q8().gemm, "amx_bf16");
    EXPECT_EQ(q8().gemv, "avx512_vnni");
    using test_support::error_of;
    EXPECT_NE(error_of([] { force_kernels("bf16xbf16.gemv=amx_bf16"); }).find("runs only the GEMM class; use bf16xbf16.gemm=amx_bf16"),
              std::string::npos);
    for (Path p : detail::kc::candidates<fmt::BF16, fmt::BF16>(KernelClass::gemv)) EXPECT_NE(p, Path::amx_bf16);
    const auto gm = detail::kc::candidates<fmt::BF16, fmt::BF16>(KernelClass::gemm);
    EXPECT_NE(std::find(gm.begin(), gm.end(), Path::amx_bf16), gm.end());
    // A layer forced to AMX still answers m = 1 (through vdpbf16ps): the same bits as that path.
    std::mt19937 g(3);
    const auto w = randn(sz(40 * 64), g, 0.5f), x = randn(sz(64), g, 1.f);
    Linear<fmt::BF16, fmt::BF16> a(w.data(), 40, 64), v(w.data(), 40, 64);
    a.set_path(Path::amx_bf16);
    v.set_path(Path::avx512_bf16);
    std::vector<float> ya(40), yv(40);
    a.forward(x.data(), 1, 64, ya.data(), 40, nullptr);
    v.forward(x.data(), 1, 64, yv.data(), 40, nullptr);
    EXPECT_EQ(ya, yv);
}

// A Linear without a forced path runs the process-wide choice: forcing a path gives exactly that path's
// result, for GEMV and GEMM calls.
TEST(KernelChoice, CallsRunTheChosenPath) {
    KernelChoiceGuard guard;
    ThreadPool pool(2);
    std::mt19937 g(5);
    const Index n = 70, k = 45;
    const auto w = randn(sz(n * k), g, 0.5f), x = randn(sz(9 * k), g, 1.f);
    Linear<fmt::BF16, fmt::BF16> chosen(w.data(), n, k), fixed(w.data(), n, k);
    for (Path p : {Path::simd, Path::widen_f32}) {
        force_kernels(std::string("bf16xbf16=") + detail::mm::path_name(p));
        fixed.set_path(p);
        for (Index m : {Index(1), Index(9)}) {
            std::vector<float> a(sz(m * n)), b(sz(m * n));
            chosen.forward(x.data(), m, k, a.data(), n, &pool);
            fixed.forward(x.data(), m, k, b.data(), n, &pool);
            EXPECT_EQ(a, b) << detail::mm::path_name(p) << " m=" << m;
        }
    }
    // The two paths differ (x rounded or not), so the check above can fail.
    std::vector<float> a(sz(n)), b(sz(n));
    fixed.set_path(Path::simd);
    fixed.forward(x.data(), 1, k, a.data(), n, nullptr);
    fixed.set_path(Path::widen_f32);
    fixed.forward(x.data(), 1, k, b.data(), n, nullptr);
    EXPECT_NE(a, b);
}

// choose_kernels times the candidates on the given layers, keeps the result in the cache file, reads it
// back on the next choice, and measures again when the file is corrupt or names a path this CPU lacks.
TEST(KernelChoice, MeasuresCachesAndSurvivesABadCache) {
    KernelChoiceGuard guard;
    test_support::TempDir dir("kernel_choice", "cache");
    const auto file = dir.path / "sub" / "kernels.json";
    ::setenv("FASTVLM_KERNEL_CACHE", file.c_str(), 1);
    ThreadPool pool(2);
    std::mt19937 g(9);
    const auto w = randn(sz(96 * 64), g, 0.5f);
    std::vector<Linear<fmt::BF16, fmt::BF16>> bf;
    for (int i = 0; i < 3; ++i) bf.emplace_back(w.data(), 96, 64);
    Linear<fmt::F32> f32(w.data(), 96, 64);
    auto visit = [&](auto&& fn) {
        for (const auto& l : bf) fn(l);
        fn(f32);
    };
    auto bfc = [] { return choice_of(kernel_choices(), "bf16xbf16"); };
    ASSERT_GE(bfc().candidates.size(), 2u);  // simd and widen_f32 at least

    choose_kernels(visit, &pool, "measure");
    const KernelChoice m = bfc();
    EXPECT_EQ(m.source, KernelSource::measured);
    // GEMM-only paths (AMX) are timed for the GEMM class only.
    ASSERT_EQ(m.gemv_ms.size(), (detail::kc::candidates<fmt::BF16, fmt::BF16>(KernelClass::gemv).size()));
    ASSERT_EQ(m.gemm_ms.size(), m.candidates.size());
    for (const auto& [path, ms] : m.gemv_ms) EXPECT_NE(path, "amx_bf16");
    for (const auto& [path, ms] : m.gemv_ms) EXPECT_GT(ms, 0.0) << path;
    EXPECT_EQ(choice_of(kernel_choices(), "f32xf32").source, KernelSource::builtin);  // one candidate: nothing to time
    ASSERT_TRUE(std::filesystem::exists(file));
    const auto cache = io::parse_json(io::read_file(file, 1 << 20), "cache");
    const std::string key = detail::kc::cache_key(pool.size());
    ASSERT_TRUE(cache.contains(key)) << cache.dump();
    EXPECT_EQ(cache[key]["bf16xbf16"]["gemv"], m.gemv);
    EXPECT_EQ(cache[key]["bf16xbf16"]["gemm"], m.gemm);

    // Already decided in this process: kept. A new process (here: back to builtin) reads the cache.
    choose_kernels(visit, &pool, "");
    EXPECT_EQ(bfc().source, KernelSource::measured);
    force_kernels("default");
    choose_kernels(visit, &pool, "");
    EXPECT_EQ(bfc().source, KernelSource::cached);
    EXPECT_EQ(bfc().gemv, m.gemv);
    EXPECT_EQ(bfc().gemm, m.gemm);

    // Bad caches are measured over and rewritten.
    const std::string deep(100000, '[');
    const std::string bad_path = "{\"" + key + "\": {\"bf16xbf16\": {\"gemv\": \"avx512_bf16\", \"gemm\": \"no_such\"}}}";
    for (const std::string& bad : {std::string("{{{ not json"), deep, std::string("[1, 2]"), bad_path, std::string(2 << 20, ' ')}) {
        { std::ofstream(file, std::ios::trunc) << bad; }
        force_kernels("default");
        choose_kernels(visit, &pool, "");
        EXPECT_EQ(bfc().source, KernelSource::measured) << bad.substr(0, 40);
        const auto again = io::parse_json(io::read_file(file, 1 << 20), "cache");
        EXPECT_TRUE(again.contains(key)) << bad.substr(0, 40);
    }

    // FASTVLM_KERNELS applies where the caller gives no spec; "off" keeps no cache.
    force_kernels("default");
    ::setenv("FASTVLM_KERNELS", "bf16xbf16=simd", 1);
    choose_kernels(visit, &pool, "");
    EXPECT_EQ(bfc().source, KernelSource::forced);
    EXPECT_EQ(bfc().gemm, "simd");
    ::setenv("FASTVLM_KERNELS", "bf16xbf16=warp_drive", 1);
    EXPECT_NE(test_support::error_of([&] { choose_kernels(visit, &pool, ""); }).find("FASTVLM_KERNELS: kernel path 'warp_drive'"),
              std::string::npos);
    ::setenv("FASTVLM_KERNELS", "default", 1);
    choose_kernels(visit, &pool, "");
    EXPECT_EQ(bfc().source, KernelSource::builtin);
    ::unsetenv("FASTVLM_KERNELS");
    std::filesystem::remove(file);
    ::setenv("FASTVLM_KERNEL_CACHE", "off", 1);
    choose_kernels(visit, &pool, "measure");
    EXPECT_EQ(bfc().source, KernelSource::measured);
    EXPECT_FALSE(std::filesystem::exists(file));
}

}  // namespace

// The packed weights' huge-page slabs (matmul/common.hpp): buffers are 64-byte aligned, never overlap,
// keep their contents while others come and go, and a slab is returned once its last buffer is freed.
TEST(HugeSlabs, CarvesAlignedDisjointBuffersAndReturnsEmptySlabs) {
    using detail::mm::HugeSlabs;
    HugeSlabs slabs;
    std::mt19937 rng(5);
    struct Buf {
        unsigned char* p;
        std::size_t n;
        unsigned char tag;
    };
    std::vector<Buf> live;
    auto check = [&](const Buf& b) {
        for (std::size_t i = 0; i < b.n; i += 4093) ASSERT_EQ(b.p[i], b.tag) << "buffer of " << b.n << " bytes, offset " << i;
        ASSERT_EQ(b.p[b.n - 1], b.tag);
    };
    // Sizes: small ones share slabs; one over half a slab gets a slab of its own.
    const std::size_t sizes[] = {65536, 1000003, 3 << 20, 100, 7 << 20, HugeSlabs::kSlab / 2 + 12345, 200000};
    for (int round = 0; round < 40; ++round) {
        const std::size_t n = sizes[rng() % std::size(sizes)];
        auto* p = static_cast<unsigned char*>(slabs.allocate(n));
        ASSERT_EQ(reinterpret_cast<std::uintptr_t>(p) % 64, 0u);
        for (const auto& b : live) ASSERT_TRUE(p + n <= b.p || b.p + b.n <= p) << "overlap";
        const auto tag = static_cast<unsigned char>(round + 1);
        std::memset(p, tag, n);
        live.push_back({p, n, tag});
        if (rng() % 3 == 0) {  // free one at random
            const std::size_t i = rng() % live.size();
            check(live[i]);
            ASSERT_TRUE(slabs.deallocate(live[i].p));
            live.erase(live.begin() + std::ptrdiff_t(i));
        }
    }
    for (const auto& b : live) check(b);
    EXPECT_GT(slabs.slab_count(), 0u);
    int unknown = 0;
    EXPECT_FALSE(slabs.deallocate(&unknown));  // not from a slab: left to the caller
    for (const auto& b : live) ASSERT_TRUE(slabs.deallocate(b.p));
    EXPECT_EQ(slabs.slab_count(), 0u);  // every slab returned
}

// A slab is advised at once only when the kernel has free 2 MiB blocks for it; otherwise the advice waits
// until its buffers are handed out (the next slab, or advise_deferred()), so that no first touch of the
// load compacts memory.
TEST(HugeSlabs, PutsOffAdviceWhileFreeHugeBlocksAreShort) {
    using detail::mm::HugeSlabs;
    {
        HugeSlabs plenty([] { return 64ll << 30; });
        void* a = plenty.allocate(1 << 20);
        void* b = plenty.allocate(HugeSlabs::kSlab);  // a slab of its own
        EXPECT_EQ(plenty.slab_count(), 2u);
        EXPECT_EQ(plenty.deferred_count(), 0u);
        plenty.deallocate(a);
        plenty.deallocate(b);
    }
    HugeSlabs none([] { return 0ll; });
    void* a = none.allocate(1 << 20);
    EXPECT_EQ(none.deferred_count(), 1u);
    void* b = none.allocate(1 << 20);  // same slab
    EXPECT_EQ(none.deferred_count(), 1u);
    void* c = none.allocate(HugeSlabs::kSlab - (1 << 20));  // its own slab; the first is still being carved
    EXPECT_EQ(none.slab_count(), 2u);
    EXPECT_EQ(none.deferred_count(), 2u);
    void* d = none.allocate(HugeSlabs::kSlab / 2);  // fits the first slab; the own slab is written: advised
    EXPECT_EQ(none.slab_count(), 2u);
    EXPECT_EQ(none.deferred_count(), 1u);
    void* e = none.allocate(HugeSlabs::kSlab / 2);  // the first slab is full: a fresh one
    EXPECT_EQ(none.slab_count(), 3u);
    EXPECT_EQ(none.deferred_count(), 2u);  // the first (current until now) and the fresh one
    void* f = none.allocate(100);  // the first slab is no longer current: advised
    EXPECT_EQ(none.deferred_count(), 1u);
    none.advise_deferred();
    EXPECT_EQ(none.deferred_count(), 0u);
    for (void* p : {a, b, c, d, e, f}) EXPECT_TRUE(none.deallocate(p));
    EXPECT_EQ(none.slab_count(), 0u);
}

TEST(HugeSlabs, ReadsFreeHugeBlocksFromBuddyinfo) {
    using detail::mm::huge_bytes_in_buddyinfo;
    const char* text =
        "Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3 \n"
        "Node 0, zone    DMA32      0      4      2      2      1      2      0      3      3      1    753 \n"
        "Node 0, zone   Normal      6      3      3      3      1      2      1      2      1      1     23\n";
    const long long mib = 1ll << 20;
    // order 9 = 2 MiB, order 10 = 4 MiB with 4 KiB pages: (1 + 1 + 1) x 2 + (3 + 753 + 23) x 4
    EXPECT_EQ(huge_bytes_in_buddyinfo(text, 4096), (3 * 2 + 779 * 4) * mib);
    // 64 KiB pages: order 5 is 2 MiB
    EXPECT_EQ(huge_bytes_in_buddyinfo("Node 0, zone Normal 1 1 1 1 1 2 0 1\n", 65536), 2 * 2 * mib + 8 * mib);
    EXPECT_EQ(huge_bytes_in_buddyinfo("", 4096), 0);
    EXPECT_EQ(huge_bytes_in_buddyinfo("garbage\nzone\n", 4096), 0);
#if defined(__linux__)
    const long long now = detail::mm::free_huge_page_bytes();
    EXPECT_GE(now, 0);
    EXPECT_EQ(now % (2 * mib), 0);
#endif
}

// The decode GEMV split (driver.hpp): one share per thread, then stealing from the back of the others.
// Every index is run exactly once, whatever the interleaving.
TEST(StealingShares, RunsEveryIndexOnce) {
    using detail::mm::StealingShares;
    ThreadPool pool(4);
    std::mt19937 rng(11);
    for (const Index n : {Index(1), Index(2), Index(3), Index(7), Index(64), Index(1000), Index(9496)}) {
        for (const unsigned shares : {1u, 2u, 3u, 4u, 8u, 9u, 12u}) {  // cursors inline up to 8, on the heap above
            if (Index(shares) > n) continue;
            const Index min_chunk = Index(1 + rng() % 5);
            std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
            StealingShares sh(n, shares);
            pool.run(sh.shares(), [&](std::size_t s, unsigned) {
                sh.run_share(unsigned(s), min_chunk, [&](Index a, Index b) {
                    ASSERT_LT(a, b);
                    for (Index i = a; i < b; ++i) hits[std::size_t(i)].fetch_add(1, std::memory_order_relaxed);
                });
            });
            for (Index i = 0; i < n; ++i) ASSERT_EQ(hits[std::size_t(i)].load(), 1) << "n " << n << ", shares " << shares << ", index " << i;
        }
    }
}

// A share whose thread stalls is finished from its back by the other thread.
TEST(StealingShares, IdleThreadTakesFromTheBackOfASlowShare) {
    using detail::mm::StealingShares;
    ThreadPool pool(2);
    const Index n = 100;
    StealingShares sh(n, 2);
    std::atomic<bool> stolen{false};
    std::vector<int> owner(std::size_t(n), -1);
    pool.run(2, [&](std::size_t s, unsigned) {
        sh.run_share(unsigned(s), 2, [&](Index a, Index b) {
            if (s == 0 && a == 0) {  // share 0 stalls in its first chunk until share 1's thread has stolen from it
                const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
                while (!stolen.load() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(1));
            }
            if (s == 1 && a < n / 2) stolen.store(true);
            for (Index i = a; i < b; ++i) owner[std::size_t(i)] = int(s);
        });
    });
    EXPECT_TRUE(stolen.load());
    EXPECT_EQ(owner[std::size_t(n / 2 - 1)], 1);  // the last index of share 0 went to the thief
    EXPECT_EQ(owner[0], 0);
    for (Index i = 0; i < n; ++i) ASSERT_GE(owner[std::size_t(i)], 0);
}
