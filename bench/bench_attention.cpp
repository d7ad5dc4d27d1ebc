// bench_attention — attention of the Qwen2 decoder against a paged bf16 KV cache: one layer's
// attention_gqa_batch call (kernels/attention_gqa.hpp) for S sequences of `rows` query rows each (1: a
// decode step; 280: a prompt's prefill), every sequence after `ctx` cached positions, in pages of 16 positions from one KVPool (text/kv_cache.hpp),
// the layout the engine uses. Shapes: 0.5B (14 query / 2 KV heads of 64), 1.5B (12 / 2 of 128) and 7B
// (28 / 4 of 128). A step runs this once per layer (24 or 28). Counters: the KV bytes read per second
// (K and V of every position of the layer, once per call) and the score + value FLOP rate (causal).
//
//   bench_attention --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// The pages are filled with random bf16 values slot by slot, whatever their layout, so the same source
// measures any page layout of the cache.
#include <benchmark/benchmark.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "fastvlm/core/thread_pool.hpp"
#include "fastvlm/kernels/attention_gqa.hpp"
#include "fastvlm/text/kv_cache.hpp"

namespace {
using namespace fastvlm;

struct Shape {
    const char* name;
    Index hq, hkv, d, layers;
};
constexpr Shape kShapes[] = {{"qwen2_0.5b", 14, 2, 64, 24}, {"qwen2_1.5b", 12, 2, 128, 28}, {"qwen2_7b", 28, 4, 128, 28}};

void BM_Attention(benchmark::State& st) {
    const Shape& sh = kShapes[st.range(0)];
    const Index seqs = st.range(1), ctx = st.range(2), rows = st.range(3);
    const unsigned threads = 2;
    const Index kvd = sh.hkv * sh.d, qd = sh.hq * sh.d, layer = sh.layers / 2;
    const text::KVShape shape{sh.layers, kvd};
    auto pool = std::make_shared<text::KVPool>(shape, text::KVType::bf16,
                                               std::size_t(seqs * (ctx + rows + 16)) * 2 * std::size_t(sh.layers * kvd) * 2, 16);
    std::vector<std::unique_ptr<text::KVSeq>> kv;
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (Index s = 0; s < seqs; ++s) {
        kv.push_back(std::make_unique<text::KVSeq>(pool, ctx + rows));
        kv.back()->ensure(ctx + rows);
        kv.back()->advance(ctx);
        for (Index p = 0; p < kv.back()->pages(); ++p) {
            auto* e = static_cast<bf16*>(kv.back()->page(p));
            for (std::size_t i = 0; i < pool->page_bytes() / sizeof(bf16); ++i) e[i] = to_bf16(nd(rng));
        }
    }
    std::vector<float> q(std::size_t(seqs * rows * qd)), out(q.size());
    for (float& x : q) x = nd(rng);
    std::vector<AttentionSeq<bf16>> as;
    for (Index s = 0; s < seqs; ++s)
        as.push_back({q.data() + s * rows * qd, qd, out.data() + s * rows * qd, qd, rows, ctx, kv[std::size_t(s)]->k_rows<bf16>(layer),
                      kv[std::size_t(s)]->v_rows<bf16>(layer)});
    ThreadPool tp(threads);
    const AttentionDims dims{sh.hq, sh.hkv, sh.d};
    for (auto _ : st) {
        attention_gqa_batch<bf16>(as, dims, &tp);
        benchmark::DoNotOptimize(out.data());
    }
    const double n = double(ctx + rows), pairs = double(rows) * double(ctx) + double(rows) * double(rows + 1) / 2,
                 calls = double(st.iterations());
    st.counters["KV_GBps"] = benchmark::Counter(calls * double(seqs) * n * 2 * double(kvd) * 2, benchmark::Counter::kIsRate,
                                                benchmark::Counter::kIs1000);
    st.counters["GFLOPs"] = benchmark::Counter(calls * double(seqs) * pairs * double(qd) * 4, benchmark::Counter::kIsRate);
    st.SetLabel(sh.name);
}
BENCHMARK(BM_Attention)
    ->ArgsProduct({{0, 1, 2}, {1, 8}, {300, 1000}, {1}})
    ->Args({0, 1, 0, 280})
    ->Args({1, 1, 0, 280})
    ->ArgNames({"shape", "seqs", "ctx", "rows"})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
