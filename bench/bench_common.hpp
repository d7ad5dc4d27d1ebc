// bench/bench_common.hpp — this machine's limits, measured in the same process as the kernels,
// so every kernel benchmark can report itself as a percentage of them:
//   FMA peak      : f32 FMAs on independent zmm/ymm accumulators, 1 and 2 threads (GFLOP/s)
//   dpbf16 / VNNI : vdpbf16ps and vpdpbusd throughput where compiled in (GFLOP/s, GOP/s)
//   read bandwidth: STREAM-like sum over a 1 GiB array, 1 and 2 threads (GB/s)
// Each limit is measured once, lazily (best of a few trials), for the % counters, and is also
// registered as a benchmark (Limit/...) so that repetitions show its spread in the same run.
#pragma once
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include <xsimd/xsimd.hpp>

#include "fastvlm/core/thread_pool.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace fastvlm::bench {

inline double wall_now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

enum class Unit { fma, dpbf16, vnni };

// Throughput loop on one thread: `iters` × 12 independent accumulators; returns flops (or int ops).
[[gnu::noinline]] inline double peak_loop(Unit u, long iters) {
    constexpr int A = 12;
    if (u == Unit::fma) {
        using B = xsimd::batch<float>;
        B acc[A];
        for (int i = 0; i < A; ++i) acc[i] = B(0.001f * float(i));
        const B b(0.9999f), c(1e-6f);
        for (long it = 0; it < iters; ++it)
#pragma GCC unroll 12
            for (int i = 0; i < A; ++i) acc[i] = xsimd::fma(acc[i], b, c);
        B s = acc[0];
        for (int i = 1; i < A; ++i) s += acc[i];
        benchmark::DoNotOptimize(s);
        return double(iters) * A * 2.0 * double(B::size);
    }
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    if (u == Unit::dpbf16) {
        __m512 acc[A];
        for (int i = 0; i < A; ++i) acc[i] = _mm512_set1_ps(0.001f * float(i));
        const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3a80);
        for (long it = 0; it < iters; ++it)
#pragma GCC unroll 12
            for (int i = 0; i < A; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], b, c);
        __m512 s = acc[0];
        for (int i = 1; i < A; ++i) s = _mm512_add_ps(s, acc[i]);
        benchmark::DoNotOptimize(s);
        return double(iters) * A * 64.0;  // 32 multiply-adds per instruction
    }
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
    if (u == Unit::vnni) {
        __m512i acc[A];
        for (int i = 0; i < A; ++i) acc[i] = _mm512_set1_epi32(i);
        const __m512i b = _mm512_set1_epi8(3), c = _mm512_set1_epi8(5);
        for (long it = 0; it < iters; ++it)
#pragma GCC unroll 12
            for (int i = 0; i < A; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], b, c);
        __m512i s = acc[0];
        for (int i = 1; i < A; ++i) s = _mm512_add_epi32(s, acc[i]);
        benchmark::DoNotOptimize(s);
        return double(iters) * A * 128.0;  // 64 byte multiply-adds per instruction
    }
#endif
    return 0.0;
}

inline bool unit_available(Unit u) {
    if (u == Unit::fma) return true;
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    if (u == Unit::dpbf16) return true;
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
    if (u == Unit::vnni) return true;
#endif
    return false;
}

// One timed run of the peak loop on `threads` threads (each ~50 ms); G(FL)OP/s.
inline double measure_peak(Unit u, unsigned threads, ThreadPool* pool) {
    const long iters = 4'000'000;
    const double t0 = wall_now();
    double ops = 0;
    if (threads == 1 || !pool) {
        ops = peak_loop(u, iters);
    } else {
        double per[64] = {};
        pool->run(threads, [&](std::size_t t, unsigned) { per[t] = peak_loop(u, iters); });
        for (unsigned t = 0; t < threads; ++t) ops += per[t];
    }
    return ops / (wall_now() - t0) * 1e-9;
}

// ---- read bandwidth -------------------------------------------------------------------------------------
inline constexpr std::size_t kBwBytes = std::size_t(1) << 30;

inline float* bw_array() {
    static std::unique_ptr<float, decltype(&std::free)> a(static_cast<float*>(std::aligned_alloc(64, kBwBytes)), &std::free);
    static const bool init = [] {
        std::memset(a.get(), 0, kBwBytes);
        return true;
    }();
    (void)init;
    return a.get();
}

[[gnu::noinline]] inline float read_sum(const float* p, std::size_t n) {
    using B = xsimd::batch<float>;
    constexpr std::size_t S = B::size;
    B s0(0.f), s1(0.f), s2(0.f), s3(0.f);
    for (std::size_t i = 0; i + 4 * S <= n; i += 4 * S) {
        s0 += B::load_aligned(p + i);
        s1 += B::load_aligned(p + i + S);
        s2 += B::load_aligned(p + i + 2 * S);
        s3 += B::load_aligned(p + i + 3 * S);
    }
    return xsimd::hadd((s0 + s1) + (s2 + s3));
}

// One pass over the 1 GiB array split over `threads`; GB/s.
inline double measure_read_bw(unsigned threads, ThreadPool* pool) {
    const float* a = bw_array();
    const std::size_t n = kBwBytes / sizeof(float);
    const double t0 = wall_now();
    if (threads == 1 || !pool) {
        benchmark::DoNotOptimize(read_sum(a, n));
    } else {
        const std::size_t chunk = n / threads;
        pool->run(threads, [&](std::size_t t, unsigned) { benchmark::DoNotOptimize(read_sum(a + t * chunk, chunk)); });
    }
    return double(kBwBytes) / (wall_now() - t0) * 1e-9;
}

// ---- the limits used for the % counters --------------------------------------------------------------------
// The machine is shared: a limit is the best value seen in this process (many short trials at start,
// refreshed by every Limit/... benchmark), i.e. what the hardware does when nothing else runs.
struct Limits {
    double peak[3][3] = {};  // [unit][threads] G(FL)OP/s
    double bw[3] = {};       // [threads] GB/s
};

inline ThreadPool& pool_for(unsigned threads) {
    static ThreadPool p1(1), p2(2);
    return threads >= 2 ? p2 : p1;
}

inline Limits& limits_mut() {
    static Limits l = [] {
        Limits x;
        for (int u = 0; u < 3; ++u)
            if (unit_available(Unit(u)))
                for (unsigned t = 1; t <= 2; ++t)
                    for (int trial = 0; trial < 20; ++trial)
                        x.peak[u][t] = std::max(x.peak[u][t], measure_peak(Unit(u), t, &pool_for(t)));
        for (unsigned t = 1; t <= 2; ++t)
            for (int trial = 0; trial < 8; ++trial) x.bw[t] = std::max(x.bw[t], measure_read_bw(t, &pool_for(t)));
        return x;
    }();
    return l;
}
inline const Limits& limits() { return limits_mut(); }

// A few more trials right before a kernel benchmark (contention comes and goes); returns the
// best known limit, which the benchmark reports as a counter (LimitFMA / LimitBW).
inline double observe_peak(unsigned threads) {
    double& known = limits_mut().peak[int(Unit::fma)][std::min(threads, 2u)];
    for (int trial = 0; trial < 4; ++trial) known = std::max(known, measure_peak(Unit::fma, threads, &pool_for(threads)));
    return known;
}
inline double observe_read_bw(unsigned threads) {
    double& known = limits_mut().bw[std::min(threads, 2u)];
    for (int trial = 0; trial < 2; ++trial) known = std::max(known, measure_read_bw(threads, &pool_for(threads)));
    return known;
}

// Times the benchmark loop itself (wall clock), so the % counters can be plain numbers.
struct LoopTimer {
    double t0 = wall_now();
    double seconds() const { return wall_now() - t0; }
};

// Adds GFLOP/s, GB/s and the % counters to a kernel benchmark. flops and bytes are per
// iteration; secs = wall time of all iterations (LoopTimer started right before the loop).
inline void report(benchmark::State& st, double flops, double bytes, double secs, unsigned threads, Unit isa = Unit::fma) {
    const Limits& L = limits();
    const unsigned t = std::min(threads, 2u);
    const double n = double(st.iterations());
    const double gflops = flops * n / secs * 1e-9, gbs = bytes * n / secs * 1e-9;
    st.counters["GFLOP/s"] = gflops;
    st.counters["GB/s"] = gbs;
    st.counters["LimitFMA"] = L.peak[int(Unit::fma)][t];
    st.counters["LimitBW"] = L.bw[t];
    st.counters["%FMA"] = 100.0 * gflops / L.peak[int(Unit::fma)][t];
    st.counters["%BW"] = 100.0 * gbs / L.bw[t];
    if (isa != Unit::fma && L.peak[int(isa)][t] > 0) st.counters["%ISA"] = 100.0 * gflops / L.peak[int(isa)][t];
}

// ---- the Limit/... benchmarks (each reports the best trial of its repetition) -----------------------------
inline void BM_LimitPeak(benchmark::State& st) {
    const Unit u = Unit(st.range(0));
    const unsigned t = unsigned(st.range(1));
    if (!unit_available(u)) {
        st.SkipWithError("instruction not compiled in");
        return;
    }
    double best = 0;
    for (auto _ : st) best = std::max(best, measure_peak(u, t, &pool_for(t)));
    double& known = limits_mut().peak[int(u)][std::min(t, 2u)];
    known = std::max(known, best);
    st.counters[u == Unit::vnni ? "GOP/s" : "GFLOP/s"] = best;
}

inline void BM_LimitReadBW(benchmark::State& st) {
    const unsigned t = unsigned(st.range(0));
    bw_array();
    double best = 0;
    for (auto _ : st) best = std::max(best, measure_read_bw(t, &pool_for(t)));
    double& known = limits_mut().bw[std::min(t, 2u)];
    known = std::max(known, best);
    st.counters["GB/s"] = best;
}

// Registered once before the kernels and once after them (suffix "_end"): the tables use the best.
inline void register_limits(const std::string& suffix = "") {
    benchmark::RegisterBenchmark(("Limit/FMA_f32" + suffix).c_str(), BM_LimitPeak)->Args({0, 1})->Args({0, 2})->ArgNames({"unit", "threads"})->Iterations(10)->UseRealTime();
    benchmark::RegisterBenchmark(("Limit/dpbf16" + suffix).c_str(), BM_LimitPeak)->Args({1, 1})->Args({1, 2})->ArgNames({"unit", "threads"})->Iterations(10)->UseRealTime();
    benchmark::RegisterBenchmark(("Limit/vnni_int8" + suffix).c_str(), BM_LimitPeak)->Args({2, 1})->Args({2, 2})->ArgNames({"unit", "threads"})->Iterations(10)->UseRealTime();
    benchmark::RegisterBenchmark(("Limit/ReadBW_1GiB" + suffix).c_str(), BM_LimitReadBW)->Arg(1)->Arg(2)->ArgName("threads")->Iterations(5)->UseRealTime();
}

}  // namespace fastvlm::bench
