// bench_vision — FastViTHD timing.
//
//   bench_vision --model DIR [--threads 2] [--runs 3] [--warmup 1] [--precision fp32] [--json OUT]
//                [--ffn-fuse-mb MB] [--chunk-pixels 512]   (FastViTHD::Options; MB default 32 f32 / 8 bf16, q8)
//   FASTVLM_KERNELS=SPEC forces kernel paths (docs/kernels.md), e.g. "bf16xbf16.gemm=avx512_bf16" to time without AMX.
//       full model (a model folder, e.g. the synthetic one of tests/vision_fullsize.py) on one
//       uniform-random image of the configured size: median wall time, process CPU time, per-part
//       time (stem, network{j}, conv_exp) and GFLOP/s with the MAC counts of spec §1.10.
//   bench_vision [--benchmark_filter=...]
//       Google Benchmark micro-benchmarks of the vision kernels at full-size shapes.
#include <benchmark/benchmark.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "fastvlm/core/policy.hpp"
#include "fastvlm/kernels/attention.hpp"
#include "fastvlm/kernels/conv2d.hpp"
#include "fastvlm/kernels/kernel_choice.hpp"
#include "fastvlm/vision/fastvithd.hpp"

namespace {
using namespace fastvlm;

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
double cpu_s() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// MACs per part (spec §1.10 rules: convs, linears, QKᵀ and AV; element-wise ops not counted).
std::map<std::string, double> part_macs(const io::VisionConfig& c) {
    std::map<std::string, double> m;
    const auto& d = c.embed_dims;
    double s = c.image_size / 2;
    m["stem"] = double(d[0]) * 27 * s * s;
    s /= 2;
    m["stem"] += double(d[0]) * 9 * s * s + double(d[0]) * d[0] * s * s;
    int j = 0;
    for (int i = 0; i < 5; ++i) {
        const double ch = d[std::size_t(i)], hid = c.mlp_hidden(i), n = s * s;
        if (int k = c.pos_emb_kernel_sizes[std::size_t(i)]; k) m["network" + std::to_string(j++)] = ch * k * k * n;
        const double ffn = ch * 49 * n + 2 * ch * hid * n;
        const double block = c.is_attention(i) ? 4 * ch * ch * n + 2 * n * n * ch + ffn
                                               : ch * c.repmixer_kernel_size * c.repmixer_kernel_size * n + ffn;
        m["network" + std::to_string(j++)] = c.layers[std::size_t(i)] * block;
        if (i < 4) {
            const double co = d[std::size_t(i + 1)];
            s /= c.down_stride;
            m["network" + std::to_string(j++)] = co * c.down_patch_size * c.down_patch_size * s * s + co * co * s * s;
        }
    }
    const double cx = c.out_channels();
    m["conv_exp"] = cx * 9 * s * s + 2 * cx * c.se_channels();
    return m;
}

const char* arg(int argc, char** argv, const char* name, const char* def) {
    for (int i = 1; i + 1 < argc; ++i)
        if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
    return def;
}

template <class P>
int run_full(const std::string& dir, unsigned threads, int runs, int warmup, const std::string& json_path,
             double fuse_mb, Index chunk_pixels) {
    const auto t_load0 = now_s();
    const auto store = io::TensorStore::open(dir);
    const auto cfg = io::ModelConfig::load(dir).vision;
    ThreadPool pool(threads);
    auto model = vision::FastViTHD<P>::load(store, cfg, vision::detect_prefix(store), &pool);
    typename vision::FastViTHD<P>::Options opt;
    if (fuse_mb >= 0) opt.ffn_fuse_min_bytes = std::size_t(fuse_mb * double(1 << 20));
    if (chunk_pixels > 0) opt.chunk_pixels = chunk_pixels;
    model.set_options(opt);
    // The builtin kernel paths, or FASTVLM_KERNELS's (docs/kernels.md), e.g. "bf16xbf16.gemm=avx512_bf16".
    if (const char* e = std::getenv("FASTVLM_KERNELS"); e && *e && std::string_view(e) != "measure") force_kernels(e, "FASTVLM_KERNELS");
    const double t_load = now_s() - t_load0;
    const Index s = cfg.image_size;
    Tensor<float, 3> px({3, s, s});
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    for (auto& v : px.span()) v = u(rng);

    const auto macs = part_macs(cfg);
    std::vector<std::string> order;
    std::map<std::string, std::vector<double>> part_times, part_cpu;
    std::vector<double> totals, cpus;
    for (int r = 0; r < warmup + runs; ++r) {
        std::map<std::string, double> t, tc;
        double last = now_s(), last_cpu = cpu_s();
        const double t0 = last, c0 = last_cpu;
        auto cb = [&](const std::string& name, TensorView<const float, 3>) {
            if (!macs.count(name)) return;  // stageN / blocks: not a part
            const double tn = now_s();
            const double cn = cpu_s();
            t[name] += tn - last;
            tc[name] += cn - last_cpu;
            last = tn;
            last_cpu = cn;
            if (r == 0 && std::find(order.begin(), order.end(), name) == order.end()) order.push_back(name);
        };
        const auto out = model.forward(px.view(), &pool, cb);
        benchmark::DoNotOptimize(out.data());
        const double total = now_s() - t0, cpu = cpu_s() - c0;
        if (r < warmup) continue;
        totals.push_back(total);
        cpus.push_back(cpu);
        for (auto& [k, v] : t) part_times[k].push_back(v);
        for (auto& [k, v] : tc) part_cpu[k].push_back(v);
    }
    auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v.empty() ? 0.0 : v[v.size() / 2];
    };
    double total_macs = 0;
    for (auto& [k, v] : macs) total_macs += v;
    const double med = median(totals);
    std::printf("FastViTHD %lldx%lld, %s, %u threads, load %.2f s, weights %.1f MB\n", (long long)s, (long long)s, P::name,
                threads, t_load, double(model.weight_bytes()) / 1e6);
    std::printf("GEMM paths:");
    for (const auto& c : kernel_choices()) std::printf(" %s=%s", c.pair.c_str(), c.gemm.c_str());
    std::printf("\n");
    std::printf("total: median %.3f s (runs:", med);
    for (double t : totals) std::printf(" %.3f", t);
    std::printf("), process CPU %.2f s, %.1f GFLOP -> %.1f GFLOP/s\n", median(cpus), 2 * total_macs / 1e9,
                2 * total_macs / 1e9 / med);
    std::printf("%-10s %9s %7s %9s %9s %11s %7s\n", "part", "time ms", "share", "GFLOP", "GFLOP/s", "CPU ms", "share");
    std::string parts_json;
    for (const auto& name : order) {
        const double t = median(part_times[name]), g = 2 * macs.at(name) / 1e9;
        const double tc = median(part_cpu[name]);
        std::printf("%-10s %9.1f %6.1f%% %9.2f %9.1f %11.1f %6.1f%%\n", name.c_str(), 1e3 * t, 100 * t / med, g,
                    t > 0 ? g / t : 0.0, 1e3 * tc, 100 * tc / median(cpus));
        parts_json += std::string(parts_json.empty() ? "" : ", ") + "\"" + name + "\": " + std::to_string(t);
    }
    if (!json_path.empty()) {
        std::ofstream f(json_path);
        f << "{\"label\": \"fastvlm " << P::name << "\", \"threads\": " << threads << ", \"median_s\": " << med
          << ", \"cpu_s\": " << median(cpus) << ", \"gflop\": " << 2 * total_macs / 1e9
          << ", \"gflops_per_s\": " << 2 * total_macs / 1e9 / med << ", \"parts_median_s\": {" << parts_json << "}}\n";
    }
    return 0;
}

// ---- micro-benchmarks (full-size shapes) --------------------------------------------------------------
std::vector<float> rnd(std::size_t n) {
    std::mt19937 g(1);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    std::vector<float> v(n);
    for (auto& x : v) x = u(g);
    return v;
}

// args: H, C, k, stride, mult
void BM_Depthwise(benchmark::State& st) {
    const Index h = st.range(0), c = st.range(1), k = st.range(2), s = st.range(3), m = st.range(4);
    const auto in = rnd(std::size_t(h * h * c)), w = rnd(std::size_t(c * m * k * k)), b = rnd(std::size_t(c * m));
    DepthwiseConv2d conv(w.data(), b.data(), c, c * m, k, s);
    const Index ho = conv.out_size(h);
    std::vector<float> out(std::size_t(ho * ho * c * m));
    ThreadPool pool(2);
    for (auto _ : st) conv.forward(in.data(), h, h, out.data(), &pool);
    st.counters["GFLOP/s"] = benchmark::Counter(2.0 * double(ho * ho * c * m * k * k), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Depthwise)->Args({256, 96, 7, 1, 1})->Args({128, 192, 7, 1, 1})->Args({64, 384, 7, 1, 1})->Args({256, 96, 3, 1, 1})
    ->Args({64, 384, 3, 1, 1})->Args({256, 96, 7, 2, 2})->Args({16, 1536, 3, 1, 2})->Unit(benchmark::kMillisecond)->MeasureProcessCPUTime();

// args: N, C
void BM_Mhsa(benchmark::State& st) {
    const Index n = st.range(0), c = st.range(1);
    const auto qkv = rnd(std::size_t(n * 3 * c));
    std::vector<float> out(std::size_t(n * c));
    ThreadPool pool(2);
    for (auto _ : st) mhsa(qkv.data(), n, c, 32, out.data(), &pool);
    st.counters["GFLOP/s"] = benchmark::Counter(4.0 * double(n * n * c), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Mhsa)->Args({1024, 768})->Args({256, 1536})->Unit(benchmark::kMillisecond)->MeasureProcessCPUTime();

void BM_Stem(benchmark::State& st) {
    const Index h = 1024, c = 96;
    const auto in = rnd(std::size_t(h * h * 3)), w = rnd(std::size_t(c * 27)), b = rnd(std::size_t(c));
    Conv2d<> conv(w.data(), b.data(), 3, c, 3, 2);
    std::vector<float> out(std::size_t(512 * 512 * c));
    ThreadPool pool(2);
    for (auto _ : st) conv.forward(in.data(), h, h, out.data(), &pool, Act::gelu);
    st.counters["GFLOP/s"] = benchmark::Counter(2.0 * 512 * 512 * c * 27, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Stem)->Unit(benchmark::kMillisecond)->MeasureProcessCPUTime();

}  // namespace

int main(int argc, char** argv) {
    const char* model = arg(argc, argv, "--model", nullptr);
    if (model) {
        try {
            const unsigned threads = unsigned(std::atoi(arg(argc, argv, "--threads", "2")));
            const int runs = std::atoi(arg(argc, argv, "--runs", "3")), warmup = std::atoi(arg(argc, argv, "--warmup", "1"));
            const std::string json = arg(argc, argv, "--json", "");
            const double fuse_mb = std::atof(arg(argc, argv, "--ffn-fuse-mb", "-1"));
            const Index chunk = std::atol(arg(argc, argv, "--chunk-pixels", "0"));
            return with_preset(arg(argc, argv, "--precision", "fp32"),
                               [&]<class P>() { return run_full<P>(model, threads, runs, warmup, json, fuse_mb, chunk); });
        } catch (const Error& e) {
            std::fprintf(stderr, "bench_vision: %s\n", e.what());
            return 1;
        }
    }
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
