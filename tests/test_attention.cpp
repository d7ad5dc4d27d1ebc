// Vision MHSA kernel against the double-precision reference.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "fastvlm/kernels/attention.hpp"

namespace fastvlm {
namespace {

struct Case {
    Index n, c, hd;
};

class MhsaTest : public ::testing::TestWithParam<Case> {};

TEST_P(MhsaTest, MatchesReference) {
    const Case p = GetParam();
    std::mt19937 rng(unsigned(p.n * 31 + p.c * 7 + p.hd));
    std::normal_distribution<float> d(0.f, 1.f);
    std::vector<float> qkv(std::size_t(p.n * 3 * p.c));
    for (auto& x : qkv) x = 2.f * d(rng);  // scores of O(10): a peaked softmax
    std::vector<float> ref(std::size_t(p.n * p.c)), got(ref.size(), NAN), serial(ref.size(), NAN);
    mhsa_ref(qkv.data(), p.n, p.c, p.hd, ref.data());
    ThreadPool pool(2);
    mhsa(qkv.data(), p.n, p.c, p.hd, got.data(), &pool);
    mhsa(qkv.data(), p.n, p.c, p.hd, serial.data(), nullptr);
    float err = 0.f, amax = 0.f;
    for (std::size_t i = 0; i < ref.size(); ++i) {
        err = std::max(err, std::fabs(ref[i] - got[i]));
        amax = std::max(amax, std::fabs(ref[i]));
        ASSERT_EQ(got[i], serial[i]) << "threaded and serial results differ at " << i;
    }
    // fp32 scores (|s| up to ~50) and exp: relative error of a few ulps of the largest score.
    EXPECT_LE(err, 2e-5f * (1.f + amax)) << "n " << p.n << " c " << p.c << " hd " << p.hd;
}

INSTANTIATE_TEST_SUITE_P(Shapes, MhsaTest,
                         ::testing::Values(Case{1, 32, 32}, Case{7, 64, 32}, Case{33, 96, 32}, Case{64, 64, 32},
                                           Case{65, 32, 32}, Case{100, 128, 32}, Case{16, 48, 16}, Case{9, 64, 64},
                                           Case{13, 24, 8}, Case{5, 20, 20}, Case{256, 128, 32}));

TEST(Mhsa, UniformKeysAverageValues) {
    // All keys equal → softmax is uniform → every output row is the mean of v.
    const Index n = 37, c = 64, hd = 32;
    std::vector<float> qkv(std::size_t(n * 3 * c));
    for (Index i = 0; i < n; ++i)
        for (Index j = 0; j < c; ++j) {
            qkv[std::size_t(i * 3 * c + j)] = float(i - j) * 0.1f;
            qkv[std::size_t(i * 3 * c + c + j)] = 0.5f;
            qkv[std::size_t(i * 3 * c + 2 * c + j)] = float(i);
        }
    std::vector<float> out(std::size_t(n * c));
    mhsa(qkv.data(), n, c, hd, out.data(), nullptr);
    for (float v : out) ASSERT_NEAR(v, float(n - 1) / 2.f, 1e-4f);
}

TEST(Mhsa, RejectsBadHeadDim) {
    std::vector<float> qkv(3 * 40), out(40);
    EXPECT_THROW(mhsa(qkv.data(), 1, 40, 32, out.data(), nullptr), Error);
}

}  // namespace
}  // namespace fastvlm
