// bench_matmul — Linear<W, A>::forward for every weight format at the shapes FastVLM runs
// (spec §1.10 and §4), OpenBLAS (cblas_sgemm / cblas_sgemv, same process) as the baseline, and the
// machine limits of bench_common.hpp (FMA peak, dpbf16 / VNNI peak, 1 GiB read bandwidth).
//
// Counters (from the wall time of the timed loop): GFLOP/s (2·m·n·k per second; integer ops for
// Q8/Q4), GB/s (packed weight bytes per second: the streaming rate for m = 1), %FMA (of the f32 FMA peak, same thread count), %BW (of
// the read bandwidth, same thread count), %ISA (of vdpbf16ps / vpdpbusd peak for BF16 / Q formats).
//
//   bench_matmul --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//   bench_matmul --benchmark_filter='square_1024|Limit'
#include <benchmark/benchmark.h>

#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "fastvlm/kernels/matmul.hpp"

#if defined(FASTVLM_HAVE_BLAS)
#include <cblas.h>
#endif

namespace {
using namespace fastvlm;
namespace fb = fastvlm::bench;

struct Shape {
    const char* name;
    Index m, n, k;
};
// M = rows of X (pixels or tokens), N = output features, K = input features.
const Shape kShapes[] = {
    {"conv1x1_4096x1536x384", 4096, 1536, 384},  // stage-4-like ConvFFN fc (1×1 conv as matmul)
    {"conv1x1_3136x384x96", 3136, 384, 96},      // stage-0-like 1×1 conv
    {"decode_1x4864x896", 1, 4864, 896},         // decoder MLP gate/up, one token
    {"prefill_280x4864x896", 280, 4864, 896},    // decoder MLP gate/up, 280-token prompt
    {"lm_head_1x151936x896", 1, 151936, 896},    // lm_head, one token (~545 MB in f32: DRAM-bound)
    {"square_1024", 1024, 1024, 1024},
};

const std::vector<float>& data(const std::string& key, std::size_t n) {
    static std::map<std::string, std::unique_ptr<std::vector<float>>> cache;
    auto& p = cache[key];
    if (!p) {
        p = std::make_unique<std::vector<float>>(n);
        std::mt19937 g(std::hash<std::string>{}(key));
        std::uniform_real_distribution<float> d(-1.f, 1.f);
        for (auto& v : *p) v = d(g);
    }
    return *p;
}

template <class W, class A>
void BM_Linear(benchmark::State& st) {
    const Shape& s = kShapes[st.range(0)];
    const unsigned threads = unsigned(st.range(1));
    const auto& w = data(std::string("w") + s.name, std::size_t(s.n * s.k));
    const auto& x = data(std::string("x") + s.name, std::size_t(s.m * s.k));
    std::vector<float> y(std::size_t(s.m * s.n));
    const Linear<W, A> lin(w.data(), s.n, s.k);
    ThreadPool& pool = fb::pool_for(threads);
    fb::limits();  // measured before timing starts
    lin.forward(x.data(), s.m, s.k, y.data(), s.n, &pool);  // warm-up
    const fb::LoopTimer timer;
    for (auto _ : st) {
        lin.forward(x.data(), s.m, s.k, y.data(), s.n, &pool);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    const fb::Unit isa = std::is_same_v<A, fmt::BF16> ? fb::Unit::dpbf16 : std::is_same_v<A, fmt::Q8> ? fb::Unit::vnni : fb::Unit::fma;
    fb::report(st, 2.0 * double(s.m) * double(s.n) * double(s.k), double(lin.weight_bytes()), timer.seconds(), threads, isa);
    st.SetLabel(detail::mm::path_name(lin.path()));
}

#if defined(FASTVLM_HAVE_BLAS)
void BM_OpenBLAS(benchmark::State& st) {
    const Shape& s = kShapes[st.range(0)];
    const int threads = int(st.range(1));
    const auto& w = data(std::string("w") + s.name, std::size_t(s.n * s.k));
    const auto& x = data(std::string("x") + s.name, std::size_t(s.m * s.k));
    std::vector<float> y(std::size_t(s.m * s.n));
    fb::limits();
    openblas_set_num_threads(threads);
    auto run = [&] {
        if (s.m == 1)  // sgemv: OpenBLAS's sgemm at m = 1 is far slower
            cblas_sgemv(CblasRowMajor, CblasNoTrans, int(s.n), int(s.k), 1.f, w.data(), int(s.k), x.data(), 1, 0.f, y.data(), 1);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(s.m), int(s.n), int(s.k), 1.f, x.data(), int(s.k), w.data(),
                        int(s.k), 0.f, y.data(), int(s.n));
    };
    run();
    const fb::LoopTimer timer;
    for (auto _ : st) {
        run();
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    fb::report(st, 2.0 * double(s.m) * double(s.n) * double(s.k), double(s.n * s.k) * 4.0, timer.seconds(), unsigned(threads));
    st.SetLabel(s.m == 1 ? "sgemv" : "sgemm");
}
#endif

template <class W, class A>
void register_format(const std::string& name) {
    for (int i = 0; i < int(std::size(kShapes)); ++i)
        benchmark::RegisterBenchmark(("Matmul/" + name + "/" + kShapes[i].name).c_str(), BM_Linear<W, A>)
            ->Args({i, 1})
            ->Args({i, 2})
            ->ArgNames({"shape", "threads"})
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
    fb::register_limits();
    register_format<fmt::F32, fmt::F32>("f32");
    register_format<fmt::BF16, fmt::F32>("bf16w_f32");
    register_format<fmt::F16, fmt::F32>("f16w_f32");
    register_format<fmt::BF16, fmt::BF16>("bf16");
    register_format<fmt::Q8, fmt::Q8>("q8");
    register_format<fmt::Q4, fmt::Q8>("q4");
#if defined(FASTVLM_HAVE_BLAS)
    for (int i = 0; i < int(std::size(kShapes)); ++i)
        benchmark::RegisterBenchmark((std::string("OpenBLAS/f32/") + kShapes[i].name).c_str(), BM_OpenBLAS)
            ->Args({i, 1})
            ->Args({i, 2})
            ->ArgNames({"shape", "threads"})
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
#endif
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
