// text/sampling.hpp: greedy and seeded sampling, the logit mask, argmax.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "fastvlm/text/sampling.hpp"

using namespace fastvlm;

TEST(Sampling, GreedyMaskAndSeededDeterminism) {
    std::vector<float> logits = {0.f, 3.f, 1.f, 3.f, 9.f};
    text::Sampler greedy;
    EXPECT_EQ(greedy.sample(logits, 5), 4);
    EXPECT_EQ(greedy.sample(logits, 4), 1);  // id 4 >= valid: masked; ties -> lowest id
    auto draw = [&](std::uint64_t seed, int k, float p) {
        text::Sampler s({.temperature = 1.5f, .top_k = k, .top_p = p, .seed = seed});
        std::vector<int> ids;
        for (int i = 0; i < 64; ++i) ids.push_back(s.sample(logits, 4));
        return ids;
    };
    EXPECT_EQ(draw(7, 0, 1.f), draw(7, 0, 1.f));
    EXPECT_NE(draw(7, 0, 1.f), draw(8, 0, 1.f));
    for (int id : draw(3, 0, 1.f)) EXPECT_LT(id, 4);
    for (int id : draw(3, 2, 1.f)) EXPECT_TRUE(id == 1 || id == 3);  // top-2 of the 4 valid ids
    for (int id : draw(3, 0, 0.3f)) EXPECT_TRUE(id == 1 || id == 3);  // nucleus: 1 and 3 hold 0.44 each
    EXPECT_THROW(text::Sampler({.temperature = -1.f}), Error);
    EXPECT_THROW(text::Sampler({.temperature = 1.f, .top_p = 0.f}), Error);
}

// The blocked argmax equals the plain first-largest loop on every length, with ties, NaN, ±inf and the
// maximum anywhere (block starts, block ends, the tail).
TEST(Sampling, ArgmaxEqualsPlainLoop) {
    auto plain = [](const std::vector<float>& v, std::size_t n) {
        std::size_t best = 0;
        for (std::size_t i = 1; i < n; ++i)
            if (v[i] > v[best]) best = i;
        return std::int32_t(best);
    };
    std::mt19937 g(5);
    std::uniform_real_distribution<float> u(-4.f, 4.f);
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    for (std::size_t n : {1, 2, 15, 16, 17, 31, 33, 64, 100, 1000, 151936}) {
        for (int trial = 0; trial < 12; ++trial) {
            std::vector<float> v(n);
            for (auto& x : v) x = trial % 3 == 0 ? float(int(u(g))) : u(g);  // integers: many ties
            if (trial == 1) v[n - 1] = 9.f;                                   // the last position
            if (trial == 2) v[n / 2] = 9.f, v[n - 1] = 9.f;                   // a tie: the first wins
            if (trial == 4) std::fill(v.begin(), v.end(), -inf);
            if (trial == 5) v[0] = nan;                                       // NaN first: nothing is larger
            if (trial == 6) for (std::size_t i = 0; i < n; i += 3) v[i] = nan;
            if (trial == 7) v[n - 1] = inf;
            if (trial == 8) for (std::size_t i = 0; i < n; ++i) v[i] = float(i);  // a new maximum every step
            SCOPED_TRACE(::testing::Message() << "n=" << n << " trial " << trial);
            EXPECT_EQ(text::argmax(v.data(), n), plain(v, n));
        }
    }
}
