// core/: tensors, the thread pool, precision policies, CPU features.
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

using namespace fastvlm;


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
