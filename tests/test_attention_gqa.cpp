// kernels/attention_gqa.hpp: the decoder's grouped-query attention against its reference on odd
// sizes, the causal mask, and paged bf16 KV rows (keys as columns) against contiguous ones.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "fastvlm/kernels/attention_gqa.hpp"
#include "numeric_support.hpp"

using namespace fastvlm;
using test_support::max_diff;
using test_support::random_vec;

namespace {

// ---- GQA attention -----------------------------------------------------------------------------------
struct AttnCase {
    Index hq, hkv, d, T, p0;
};

TEST(AttentionGQA, MatchesReferenceOnOddSizes) {
    ThreadPool pool(2);
    const AttnCase cases[] = {{4, 2, 16, 1, 0},  {4, 2, 16, 27, 0}, {14, 2, 64, 1, 300}, {14, 2, 64, 40, 13},
                              {3, 1, 7, 9, 4},   {6, 3, 33, 5, 100}, {2, 2, 1, 3, 2},     {12, 2, 128, 1, 1000},
                              {5, 5, 17, 70, 0}, {6, 2, 16, 33, 31}};
    for (const auto& c : cases) {
        const AttentionDims dims{c.hq, c.hkv, c.d};
        const Index ldq = c.hq * c.d + 5, ldkv = c.hkv * c.d, ldo = c.hq * c.d + 1, n = c.p0 + c.T;
        auto q = random_vec(std::size_t(c.T * ldq), 1 + c.d);
        auto k = random_vec(std::size_t(n * ldkv), 2 + c.d);
        auto v = random_vec(std::size_t(n * ldkv), 3 + c.d);
        std::vector<float> ref(std::size_t(c.T * ldo), 0.f), out1(ref.size(), 0.f), out2(ref.size(), 0.f);
        attention_gqa_ref(q.data(), ldq, k.data(), v.data(), ldkv, ref.data(), ldo, c.T, c.p0, dims);
        attention_gqa(q.data(), ldq, k.data(), v.data(), ldkv, out1.data(), ldo, c.T, c.p0, dims, nullptr);
        attention_gqa(q.data(), ldq, k.data(), v.data(), ldkv, out2.data(), ldo, c.T, c.p0, dims, &pool);
        // f32 accumulation vs double: outputs are convex combinations of N(0,1) values.
        EXPECT_LT(max_diff(out1.data(), ref.data(), ref.size()), 2e-5f) << c.hq << "/" << c.hkv << " d=" << c.d << " T=" << c.T;
        EXPECT_EQ(out1, out2) << "threaded result must equal the serial one bit for bit";
    }
}

TEST(AttentionGQA, CausalMaskIgnoresFutureKeys) {
    // Changing the key/value of position p must not change query rows at positions < p.
    const AttentionDims dims{4, 2, 8};
    const Index T = 6, ld = 16;
    auto q = random_vec(std::size_t(T * 32), 5);
    auto k = random_vec(std::size_t(T * ld), 6);
    auto v = random_vec(std::size_t(T * ld), 7);
    std::vector<float> a(std::size_t(T * 32)), b(a.size());
    attention_gqa(q.data(), 32, k.data(), v.data(), ld, a.data(), 32, T, 0, dims, nullptr);
    for (Index i = 4 * ld; i < 5 * ld; ++i) k[std::size_t(i)] += 1.f, v[std::size_t(i)] -= 1.f;
    attention_gqa(q.data(), 32, k.data(), v.data(), ld, b.data(), 32, T, 0, dims, nullptr);
    EXPECT_TRUE(std::equal(a.begin(), a.begin() + 4 * 32, b.begin()));
    EXPECT_FALSE(std::equal(a.begin() + 4 * 32, a.end(), b.begin() + 4 * 32));
    EXPECT_THROW(attention_gqa(q.data(), 32, k.data(), v.data(), ld, a.data(), 32, T, 0, AttentionDims{3, 2, 8}, nullptr),
                 Error);
}

TEST(AttentionGQA, PagedBf16RowsEqualContiguousAndBatchesAreIndependent) {
    // The decode path reads keys/values from bf16 pages of a few positions (text/kv_cache.hpp). With values
    // that bf16 holds exactly, any page size gives the contiguous float result bit for bit, and a
    // sequence's rows do not depend on the other sequences of the call. Head sizes cover the register
    // tiles of the value pass (1–7 heads per KV head, 1–8 vectors per head, a column tail).
    ThreadPool pool(2);
    const AttnCase cases[] = {{14, 2, 64, 1, 300}, {14, 2, 64, 9, 40}, {12, 2, 128, 1, 77}, {7, 1, 33, 3, 20},
                              {28, 4, 128, 1, 50}, {5, 5, 17, 4, 10},  {8, 1, 256, 2, 31}, {2, 1, 8, 1, 0}};
    for (const auto& c : cases) {
        const AttentionDims dims{c.hq, c.hkv, c.d};
        const Index ldq = c.hq * c.d, ldkv = c.hkv * c.d, n = c.p0 + c.T;
        auto q = random_vec(std::size_t(c.T * ldq), 11 + c.d);
        auto k = random_vec(std::size_t(n * ldkv), 12 + c.d);
        auto v = random_vec(std::size_t(n * ldkv), 13 + c.d);
        for (auto* x : {&k, &v})
            for (float& f : *x) f = to_float(to_bf16(f));
        std::vector<float> want(std::size_t(c.T * ldq)), ref(want.size());
        attention_gqa(q.data(), ldq, k.data(), v.data(), ldkv, want.data(), ldq, c.T, c.p0, dims, &pool);
        attention_gqa_ref(q.data(), ldq, k.data(), v.data(), ldkv, ref.data(), ldq, c.T, c.p0, dims);
        EXPECT_LT(max_diff(want.data(), ref.data(), ref.size()), 2e-5f);
        for (Index page : {1, 3, 16, 64}) {
            // pages of `page` positions with gaps: V as rows (ld apart), K as columns (a channel's positions
            // side by side, channels cs apart), both after `off` elements, as the pool lays them out
            const Index ld = ldkv + 3, off = 2, cs = page + 5;
            std::vector<std::vector<bf16>> store;
            std::vector<const bf16*> kp, vp;
            for (Index p0 = 0; p0 < n; p0 += page) {
                std::vector<bf16> pg(std::size_t(off + ldkv * cs), bf16{});
                std::vector<bf16> pv(std::size_t(off + page * ld), bf16{});
                for (Index r = 0; r < page && p0 + r < n; ++r)
                    for (Index i = 0; i < ldkv; ++i) {
                        pg[std::size_t(off + i * cs + r)] = to_bf16(k[std::size_t((p0 + r) * ldkv + i)]);
                        pv[std::size_t(off + r * ld + i)] = to_bf16(v[std::size_t((p0 + r) * ldkv + i)]);
                    }
                store.push_back(std::move(pg)), store.push_back(std::move(pv));
            }
            for (std::size_t i = 0; i < store.size(); i += 2) kp.push_back(store[i].data()), vp.push_back(store[i + 1].data());
            std::vector<float> out(want.size(), -1.f), other(std::size_t(3 * ldq), -1.f);
            const KVRows<bf16> kr{kp.data(), page, 1, off, cs}, vr{vp.data(), page, ld, off};
            // a second sequence in the same call: up to 3 query rows over the first min(n, 5) positions
            const Index n2 = std::min<Index>(n, 5), t2 = std::min<Index>(3, n2);
            const auto q2 = random_vec(std::size_t(t2 * ldq), 14 + c.d);
            const AttentionSeq<bf16> seqs[] = {{q.data(), ldq, out.data(), ldq, c.T, c.p0, kr, vr},
                                               {q2.data(), ldq, other.data(), ldq, t2, n2 - t2, kr, vr}};
            attention_gqa_batch<bf16>(seqs, dims, &pool);
            EXPECT_EQ(out, want) << c.hq << "/" << c.hkv << " d=" << c.d << " T=" << c.T << " p0=" << c.p0 << " page=" << page;
            std::vector<float> alone(other.size(), -1.f);
            AttentionSeq<bf16> one = seqs[1];
            one.out = alone.data();
            attention_gqa_batch<bf16>(std::span<const AttentionSeq<bf16>>(&one, 1), dims, nullptr);
            EXPECT_EQ(other, alone) << "page=" << page;
        }
    }
}

}  // namespace
