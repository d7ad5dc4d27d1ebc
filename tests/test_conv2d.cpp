// Depthwise and dense HWC convolutions against the double-precision grouped-conv reference.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <tuple>
#include <vector>

#include "fastvlm/kernels/conv2d.hpp"

namespace fastvlm {
namespace {

std::vector<float> random_vec(std::size_t n, std::mt19937& rng, float lo = -1.f, float hi = 1.f) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

float max_abs(const std::vector<float>& v) {
    float m = 0.f;
    for (float x : v) m = std::max(m, std::fabs(x));
    return m;
}

float max_err(const std::vector<float>& a, const std::vector<float>& b) {
    float m = 0.f;
    for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
    return m;
}

struct DwCase {
    Index h, w, cin, mult, k, stride;
    Act act;
};

class DepthwiseTest : public ::testing::TestWithParam<DwCase> {};

TEST_P(DepthwiseTest, MatchesReference) {
    const DwCase p = GetParam();
    std::mt19937 rng(unsigned(p.h * 1000 + p.w * 100 + p.cin * 10 + p.k + p.stride + p.mult * 7));
    const Index cout = p.cin * p.mult;
    const auto in = random_vec(std::size_t(p.h * p.w * p.cin), rng);
    const auto wt = random_vec(std::size_t(cout * p.k * p.k), rng);
    const auto bias = random_vec(std::size_t(cout), rng);
    DepthwiseConv2d conv(wt.data(), bias.data(), p.cin, cout, p.k, p.stride);
    const Index ho = conv.out_size(p.h), wo = conv.out_size(p.w);
    std::vector<float> ref(std::size_t(ho * wo * cout)), got(ref.size(), NAN);
    conv2d_ref(in.data(), p.h, p.w, p.cin, wt.data(), bias.data(), cout, p.k, p.stride, p.cin, p.act, ref.data());
    ThreadPool pool(2);
    conv.forward(in.data(), p.h, p.w, got.data(), &pool, p.act);
    // fp32 sums of k² products of values in [-1, 1] vs double: |err| ≤ 1e-5·(1 + max|ref|).
    EXPECT_LE(max_err(ref, got), 1e-5f * (1.f + max_abs(ref)));
    std::vector<float> serial(ref.size(), NAN);
    conv.forward(in.data(), p.h, p.w, serial.data(), nullptr, p.act);
    EXPECT_EQ(max_err(got, serial), 0.f) << "threaded and serial results differ";
}

std::vector<DwCase> dw_cases() {
    std::vector<DwCase> cs;
    for (Index hw : {1, 2, 7, 33})
        for (Index cin : {1, 7, 16, 33, 48})
            for (Index mult : {1, 2})
                for (auto [k, s] : {std::pair<Index, Index>{3, 1}, {3, 2}, {7, 1}, {7, 2}, {5, 1}, {1, 1}})
                    cs.push_back({hw, hw + (hw > 2 ? 3 : 0), cin, mult, k, s, cin % 2 ? Act::none : Act::gelu});
    cs.push_back({17, 40, 96, 1, 7, 1, Act::none});
    cs.push_back({16, 16, 96, 2, 7, 2, Act::gelu});
    cs.push_back({9, 9, 5, 3, 3, 1, Act::none});  // multiplier 3: generic path
    return cs;
}

INSTANTIATE_TEST_SUITE_P(Shapes, DepthwiseTest, ::testing::ValuesIn(dw_cases()));

// forward_rows on an input window (only the rows the outputs read) equals the full forward.
TEST(DepthwiseConv2d, RowWindowsMatchFullForward) {
    std::mt19937 rng(5);
    for (auto [h, w, c, m, k, s] : {std::tuple<Index, Index, Index, Index, Index, Index>{13, 9, 32, 1, 7, 1},
                                    {17, 6, 16, 2, 3, 2}, {11, 5, 5, 1, 7, 2}, {9, 9, 48, 2, 7, 2}}) {
        const auto in = random_vec(std::size_t(h * w * c), rng);
        const auto wt = random_vec(std::size_t(c * m * k * k), rng), bias = random_vec(std::size_t(c * m), rng);
        DepthwiseConv2d conv(wt.data(), bias.data(), c, c * m, k, s);
        const Index ho = conv.out_size(h), wo = conv.out_size(w), co = c * m;
        std::vector<float> full(std::size_t(ho * wo * co));
        conv.forward(in.data(), h, w, full.data(), nullptr, Act::gelu);
        for (Index y0 = 0; y0 < ho; ++y0)
            for (Index y1 = y0 + 1; y1 <= std::min(ho, y0 + 3); ++y1) {
                const Index r0 = std::max<Index>(0, y0 * s - k / 2), r1 = std::min(h, (y1 - 1) * s - k / 2 + k);
                const std::vector<float> window(in.begin() + r0 * w * c, in.begin() + r1 * w * c);  // exactly the rows read
                std::vector<float> out(std::size_t((y1 - y0) * wo * co));
                conv.forward_rows(window.data(), r0, h, w, out.data(), y0, y1, Act::gelu);
                for (std::size_t i = 0; i < out.size(); ++i)
                    ASSERT_EQ(out[i], full[std::size_t(y0 * wo * co) + i]) << "rows " << y0 << ".." << y1 << " element " << i;
            }
    }
}

TEST(DepthwiseConv2d, OutputSizes) {
    EXPECT_EQ(conv_out_size(1024, 3, 2), 512);
    EXPECT_EQ(conv_out_size(256, 7, 2), 128);
    EXPECT_EQ(conv_out_size(33, 7, 2), 17);
    EXPECT_EQ(conv_out_size(7, 7, 1), 7);
    EXPECT_EQ(conv_out_size(1, 7, 2), 1);
}

TEST(DepthwiseConv2d, RejectsBadGeometry) {
    std::vector<float> w(9 * 6, 0.f);
    EXPECT_THROW(DepthwiseConv2d(w.data(), nullptr, 4, 6, 3, 1), Error);  // 6 not a multiple of 4
    EXPECT_THROW(DepthwiseConv2d(w.data(), nullptr, 3, 6, 4, 1), Error);  // even kernel
}

TEST(Conv2d, DenseMatchesReference) {
    ThreadPool pool(2);
    for (auto [h, w, cin, cout, k, s] : {std::tuple<Index, Index, Index, Index, Index, Index>{33, 33, 3, 96, 3, 2},
                                         {7, 9, 3, 16, 3, 2},
                                         {1, 1, 3, 8, 3, 2},
                                         {12, 5, 5, 7, 3, 1},
                                         {8, 8, 4, 9, 1, 1},
                                         {10, 11, 2, 3, 5, 2}}) {
        std::mt19937 rng(unsigned(h * w + cin + cout + k));
        const auto in = random_vec(std::size_t(h * w * cin), rng);
        const auto wt = random_vec(std::size_t(cout * cin * k * k), rng);
        const auto bias = random_vec(std::size_t(cout), rng);
        Conv2d<> conv(wt.data(), bias.data(), cin, cout, k, s);
        const Index ho = conv.out_size(h), wo = conv.out_size(w);
        std::vector<float> ref(std::size_t(ho * wo * cout)), got(ref.size(), NAN);
        conv2d_ref(in.data(), h, w, cin, wt.data(), bias.data(), cout, k, s, 1, Act::gelu, ref.data());
        conv.forward(in.data(), h, w, got.data(), &pool, Act::gelu);
        EXPECT_LE(max_err(ref, got), 1e-5f * (1.f + max_abs(ref))) << h << "x" << w << " cin " << cin << " k " << k;
        if (ho > 2) {  // rows [1, ho-1) alone
            std::vector<float> part(std::size_t((ho - 2) * wo * cout));
            conv.forward_rows(in.data(), h, w, part.data(), 1, ho - 1, Act::gelu);
            for (std::size_t i = 0; i < part.size(); ++i) ASSERT_EQ(part[i], got[std::size_t(wo * cout) + i]);
        }
        // The same input stored planar [cin][h][w] (how the stem reads preprocessed pixels): identical rows.
        std::vector<float> planar(in.size());
        for (Index y = 0; y < h; ++y)
            for (Index x = 0; x < w; ++x)
                for (Index c = 0; c < cin; ++c) planar[std::size_t((c * h + y) * w + x)] = in[std::size_t((y * w + x) * cin + c)];
        std::vector<float> from_planar(got.size(), NAN);
        conv.forward_rows(planar.data(), h, w, from_planar.data(), 0, ho, Act::gelu, Conv2dInput::planar);
        for (std::size_t i = 0; i < got.size(); ++i) ASSERT_EQ(from_planar[i], got[i]) << "planar input, element " << i;
    }
}

// The reference itself: a 3×3 depthwise identity kernel reproduces the input; a grouped conv with
// multiplier 2 sends input channel i to outputs 2i and 2i+1 (spec §10.2).
TEST(Conv2dRef, IdentityAndMultiplier) {
    const Index h = 4, w = 5, c = 3;
    std::vector<float> in(std::size_t(h * w * c));
    for (std::size_t i = 0; i < in.size(); ++i) in[i] = float(i);
    std::vector<float> wt(std::size_t(2 * c * 9), 0.f);
    for (Index o = 0; o < 2 * c; ++o) wt[std::size_t(o * 9 + 4)] = float(o % 2 + 1);
    std::vector<float> out(std::size_t(h * w * 2 * c));
    conv2d_ref(in.data(), h, w, c, wt.data(), nullptr, 2 * c, 3, 1, c, Act::none, out.data());
    for (Index p = 0; p < h * w; ++p)
        for (Index o = 0; o < 2 * c; ++o)
            ASSERT_EQ(out[std::size_t(p * 2 * c + o)], in[std::size_t(p * c + o / 2)] * float(o % 2 + 1));
}

}  // namespace
}  // namespace fastvlm
