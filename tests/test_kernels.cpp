// kernels/activation.hpp, norm.hpp, softmax.hpp and rope.hpp: the row-wise kernels against their
// scalar references on odd sizes (matmul, conv2d and attention have files of their own).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "fastvlm/kernels/activation.hpp"
#include "fastvlm/kernels/norm.hpp"
#include "fastvlm/kernels/rope.hpp"
#include "fastvlm/kernels/softmax.hpp"
#include "numeric_support.hpp"

using namespace fastvlm;
using test_support::max_diff;
using test_support::random_vec;

namespace {
std::vector<float> randn(std::size_t n, unsigned seed, float scale = 1.f, float shift = 0.f) {
    std::mt19937 g(seed);
    std::normal_distribution<float> d;
    std::vector<float> v(n);
    for (auto& x : v) x = d(g) * scale + shift;
    return v;
}
double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    double m = 0;
    for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
    return m;
}
const Index kOddSizes[] = {1, 7, 33, 96, 4097};
}  // namespace

TEST(Activation, MatchesScalarReference) {
    // Exact GELU/SiLU/sigmoid in float: |simd − double reference| ≤ 1e-6·max(1, |y|).
    for (Index n : kOddSizes) {
        auto x = randn(std::size_t(n), unsigned(n), 4.f);
        for (Act a : {Act::gelu, Act::silu, Act::relu, Act::sigmoid, Act::none}) {
            auto y = x;
            apply_act(a, y.data(), y.size());
            for (std::size_t i = 0; i < y.size(); ++i) {
                const double xd = x[i];
                double r = xd;
                if (a == Act::gelu) r = 0.5 * xd * (1 + std::erf(xd / std::sqrt(2.0)));
                if (a == Act::silu) r = xd / (1 + std::exp(-xd));
                if (a == Act::sigmoid) r = 1 / (1 + std::exp(-xd));
                if (a == Act::relu) r = std::max(0.0, xd);
                ASSERT_NEAR(y[i], r, 1e-6 * std::max(1.0, std::fabs(r))) << "act " << int(a) << " x=" << x[i];
                ASSERT_NEAR(y[i], act_ref(a, x[i]), 1e-6 * std::max(1.0, std::fabs(r)));
            }
        }
        auto g = x, u = randn(std::size_t(n), 99);
        silu_mul(g.data(), u.data(), g.size());
        for (std::size_t i = 0; i < g.size(); ++i) ASSERT_NEAR(g[i], silu_ref(x[i]) * u[i], 1e-5 * (1 + std::fabs(g[i])));
    }
}

TEST(Norm, LayerNormAndRmsNormMatchReference) {
    ThreadPool pool(2);
    for (Index c : kOddSizes) {
        const Index rows = 5;
        auto x = randn(std::size_t(rows * c), 1, 2.f, 3.f), w = randn(std::size_t(c), 2), b = randn(std::size_t(c), 3);
        std::vector<float> y(x.size()), r(x.size());
        layer_norm(x.data(), y.data(), rows, c, w.data(), b.data(), 1e-5f, &pool);
        layer_norm_ref(x.data(), r.data(), rows, c, w.data(), b.data(), 1e-5f);
        EXPECT_LT(max_abs_diff(y, r), 1e-5) << "c=" << c;  // outputs are O(1..4)
        rms_norm(x.data(), y.data(), rows, c, w.data(), 1e-6f, nullptr);
        rms_norm_ref(x.data(), r.data(), rows, c, w.data(), 1e-6f);
        EXPECT_LT(max_abs_diff(y, r), 1e-5) << "c=" << c;
        auto inplace = x;  // aliasing input and output is allowed
        rms_norm(inplace.data(), inplace.data(), rows, c, w.data(), 1e-6f, &pool);
        EXPECT_EQ(max_abs_diff(inplace, y), 0.0);
    }
}

TEST(Norm, BatchNormFoldingEqualsConvThenBn) {
    const Index out = 3, per = 4;
    auto w = randn(std::size_t(out * per), 5), x = randn(std::size_t(per), 6);
    auto cb = randn(std::size_t(out), 7), g = randn(std::size_t(out), 8, 0.1f, 1.f), be = randn(std::size_t(out), 9);
    auto mu = randn(std::size_t(out), 10);
    std::vector<float> var = {0.5f, 1.0f, 1.5f};
    std::vector<float> fw = w;
    std::vector<float> fb(static_cast<std::size_t>(out));
    fold_batch_norm(fw.data(), fb.data(), cb.data(), out, per, g.data(), be.data(), mu.data(), var.data(), 1e-5);
    for (Index o = 0; o < out; ++o) {
        double conv = cb[std::size_t(o)], folded = fb[std::size_t(o)];
        for (Index i = 0; i < per; ++i) conv += double(w[std::size_t(o * per + i)]) * x[std::size_t(i)];
        for (Index i = 0; i < per; ++i) folded += double(fw[std::size_t(o * per + i)]) * x[std::size_t(i)];
        const double bn = (conv - mu[std::size_t(o)]) / std::sqrt(var[std::size_t(o)] + 1e-5) * g[std::size_t(o)] + be[std::size_t(o)];
        EXPECT_NEAR(folded, bn, 1e-5);
    }
}

TEST(Softmax, MatchesReferenceAndSumsToOne) {
    for (Index n : kOddSizes) {
        auto x = randn(std::size_t(n), unsigned(n) + 3, 10.f), r = x;
        softmax(x.data(), n);
        softmax_ref(r.data(), n);
        double s = 0;
        for (float v : x) s += v;
        EXPECT_NEAR(s, 1.0, 1e-5);
        EXPECT_LT(max_abs_diff(x, r), 1e-6);
    }
    std::vector<float> big = {1000.f, 1000.f, -1e30f};
    softmax(big.data(), 3);
    EXPECT_NEAR(big[0], 0.5f, 1e-7);
    EXPECT_EQ(big[2], 0.f);
}

// ---- RoPE ------------------------------------------------------------------------------------------
TEST(Rope, TableMatchesReference) {
    for (Index d : {2, 6, 16, 34, 64, 128})
        for (Index heads : {1, 3})
            for (Index T : {1, 5})
                for (Index p0 : {0, 77, 1000}) {
                    for (double theta : {1e4, 1e6}) {
                        const Index ld = heads * d + 3;  // padded rows
                        auto x = random_vec(std::size_t(T * ld), std::uint64_t(d * 7 + T + p0));
                        auto y = x;
                        RopeTable table(d, p0 + T + 1, theta);
                        table.apply(x.data(), T, ld, heads, p0);
                        rope_ref(y.data(), T, ld, heads, d, p0, theta);
                        // float table vs double angles: |error| <= ~2 ulp of values of size ~3
                        EXPECT_LT(max_diff(x.data(), y.data(), x.size()), 2e-6f) << "d=" << d << " T=" << T << " p0=" << p0;
                    }
                }
}

TEST(Rope, PositionZeroIsIdentityAndErrorsNameTheLimit) {
    RopeTable t(8, 4, 1e6);
    auto x = random_vec(8, 1);
    auto y = x;
    t.apply(x.data(), 1, 8, 1, 0);
    EXPECT_EQ(x, y);
    try {
        t.apply(x.data(), 1, 8, 1, 4);
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("4 positions"), std::string::npos) << e.what();
    }
    EXPECT_THROW(RopeTable(7, 4, 1e6), Error);
}
