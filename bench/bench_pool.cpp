// bench_pool — cost of one parallel region of fastvlm::ThreadPool (the hand-over a decoder pays
// ~120 times per generated token: 4 matrix products, attention and the odd element-wise pass per
// layer). Each region hands one tiny task to every thread; the time per region is the fork/join
// overhead. spin_us = 2000 (default: workers spin between regions) vs 0 (workers sleep on a
// condition variable after every region), and a std::thread create/join baseline. Time = per region.
// When a worker is late (not scheduled), the caller takes the remaining tasks itself and does not wait
// for it, so on a busy machine the time approaches that of one thread doing all the work.
//
//   bench_pool --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <atomic>
#include <thread>
#include <vector>

#include "fastvlm/core/thread_pool.hpp"

namespace {

void BM_Region(benchmark::State& st) {
    const unsigned threads = unsigned(st.range(0)), spin_us = unsigned(st.range(1));
    fastvlm::ThreadPool pool(threads, spin_us);
    std::atomic<long> sink{0};
    for (auto _ : st) pool.run(threads, [&](std::size_t i, unsigned) { sink.fetch_add(long(i), std::memory_order_relaxed); });
    benchmark::DoNotOptimize(sink.load());
}
BENCHMARK(BM_Region)->ArgsProduct({{2}, {2000, 0}})->ArgNames({"threads", "spin_us"})->UseRealTime();

void BM_ThreadCreateJoin(benchmark::State& st) {
    std::atomic<long> sink{0};
    for (auto _ : st) {
        std::thread t([&] { sink.fetch_add(1, std::memory_order_relaxed); });
        t.join();
    }
}
BENCHMARK(BM_ThreadCreateJoin)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
