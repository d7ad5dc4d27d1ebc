// Core types and the small kernels (activations, norms, softmax) against their scalar references.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <random>
#include <vector>
#include <thread>
#include <chrono>

#include "fastvlm/core/cpu.hpp"
#include "fastvlm/core/policy.hpp"
#include "fastvlm/core/tensor.hpp"
#include "fastvlm/core/thread_pool.hpp"
#include "fastvlm/kernels/activation.hpp"
#include "fastvlm/kernels/norm.hpp"
#include "fastvlm/kernels/softmax.hpp"

using namespace fastvlm;

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

TEST(Tensor, ShapeStridesAndAlignment) {
    Tensor<float, 3> t({2, 3, 5});
    EXPECT_EQ(t.size(), 30);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.data()) % kAlignment, 0u);
    auto v = t.view();
    EXPECT_EQ(v.stride(0), 15);
    EXPECT_EQ(v.stride(2), 1);
    EXPECT_TRUE(v.is_contiguous());
    v(1, 2, 4) = 42.f;
    EXPECT_EQ(t.data()[29], 42.f);
    EXPECT_EQ(v[1][2](4), 42.f);
    auto s = v.slice(2, 1, 3);
    EXPECT_EQ(s.dim(2), 2);
    EXPECT_FALSE(s.is_contiguous());
    EXPECT_EQ(&s(1, 2, 1), &v(1, 2, 2));
}

TEST(Tensor, ChecksThrowWithContext) {
    Tensor<float, 2> t({4, 6});
    auto v = t.view();
    EXPECT_THROW(v.at(4, 0), Error);
    EXPECT_THROW(v.slice(1, 3, 7), Error);
    EXPECT_THROW(v.reshape<2>({5, 5}), Error);
    EXPECT_THROW(v.slice(1, 0, 3).reshape<1>({12}), Error);
    try {
        check_shape(v, Shape<2>{4, 5}, "model.norm.weight");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("model.norm.weight"), std::string::npos);
        EXPECT_NE(std::string(e.what()).find("[4, 5]"), std::string::npos);
        EXPECT_NE(std::string(e.what()).find("[4, 6]"), std::string::npos);
    }
    EXPECT_THROW((Tensor<float, 1>({-1})), Error);
    auto r = std::move(t).reshaped<1>({24});
    EXPECT_EQ(r.dim(0), 24);
}

TEST(ThreadPool, CoversEveryIndexOnceAndPropagatesExceptions) {
    for (unsigned n : {1u, 2u, 3u}) {
        ThreadPool pool(n);
        EXPECT_EQ(pool.size(), n);
        for (std::size_t count : {std::size_t(0), std::size_t(1), std::size_t(7), std::size_t(1000)}) {
            std::vector<std::atomic<int>> hits(count);
            pool.parallel_for(count, 3, [&](std::size_t b, std::size_t e) {
                for (std::size_t i = b; i < e; ++i) hits[i]++;
            });
            for (auto& h : hits) EXPECT_EQ(h.load(), 1);
        }
        EXPECT_THROW(pool.run(10, [](std::size_t i, unsigned) {
            if (i == 5) throw Error("task 5 failed");
        }), Error);
        // Nested regions run serially on the calling thread instead of deadlocking.
        std::atomic<int> total = 0;
        pool.run(4, [&](std::size_t, unsigned) { pool.run(3, [&](std::size_t, unsigned) { total++; }); });
        EXPECT_EQ(total.load(), 12);
    }
    EXPECT_GE(ThreadPool().size(), 1u);  // default = hardware concurrency
}

// Back-to-back regions (the decoder runs hundreds per token): the hand-over between spinning and
// sleeping workers must neither lose a region nor let one overlap the next.
TEST(ThreadPool, ManyShortRegionsSpinningAndSleeping) {
    for (unsigned spin_us : {0u, 50u, 2000u}) {
        ThreadPool pool(3, spin_us);
        std::vector<int> slot(64, 0);
        long expected = 0;
        for (int r = 0; r < 3000; ++r) {
            const std::size_t n = 1 + std::size_t(r % 17);
            pool.run(n, [&](std::size_t i, unsigned) { slot[i] += r; });  // distinct i: no race
            expected += r;
            if (r % 500 == 0) std::this_thread::sleep_for(std::chrono::microseconds(spin_us + 100));  // let workers sleep
        }
        long sum0 = slot[0];
        EXPECT_EQ(sum0, expected) << "spin_us=" << spin_us;
        EXPECT_THROW(pool.run(5, [](std::size_t i, unsigned) {
            if (i == 4) throw Error("late failure");
        }), Error);
        std::atomic<int> after = 0;  // the pool still works after an exception
        pool.run(9, [&](std::size_t, unsigned) { after++; });
        EXPECT_EQ(after.load(), 9);
    }
}

TEST(Policy, PresetsAndRuntimeSelection) {
    static_assert(std::is_same_v<policy::int8_int4::decoder_mlp::weight, fmt::Q4>);
    static_assert(std::is_same_v<policy::int8_int4::decoder_attention::weight, fmt::Q8>);
    static_assert(std::is_same_v<policy::int8_int4::vision_conv::weight, fmt::Q8>);
    static_assert(!has_matmul_kernel<fmt::Q4, fmt::F32>);
    for (const char* n : {"fp32", "bf16", "fp16", "int8", "int8_int4", "int4"})
        EXPECT_EQ(std::string(with_preset(n, []<class P>() { return P::name; })), n);
    EXPECT_THROW(with_preset("int3", []<class P>() { return 0; }), Error);
}

TEST(Cpu, FeaturesAreConsistent) {
    const auto& c = cpu();
    if (c.avx512bw) {
        EXPECT_TRUE(c.avx512f);
    }
    if (!c.amx_tile) {
        EXPECT_FALSE(amx_available());
    }
}

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
