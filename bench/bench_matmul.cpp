// bench_matmul — Linear<W, A>::forward for every weight format at the shapes FastVLM runs
// (spec §1.10 and §4), OpenBLAS (cblas_sgemm / cblas_sgemv, same process) as the baseline, and the
// machine limits of bench_common.hpp (FMA peak, dpbf16 / VNNI peak, 1 GiB read bandwidth).
//
// m = 1 shapes rotate over copies of the weights (≥ 128 MB in total) so that they stream from DRAM
// as in a full decoder pass, not from the 32 MB L3.
// Counters (from the wall time of the timed loop): GFLOP/s (2·m·n·k per second; integer ops for
// Q8/Q4), GB/s (packed weight bytes per second: the streaming rate for m = 1), %FMA (of the f32 FMA peak, same thread count), %BW (of
// the read bandwidth, same thread count), %ISA (of vdpbf16ps / vpdpbusd peak for BF16 / Q formats);
// the limits are the best seen so far in the run (bench_common.hpp). bench/matmul_table.py turns
// the JSON output into the tables of bench/README.md, with the best limits of the whole run.
//
//   bench_matmul --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//   bench_matmul --benchmark_filter='square_1024|Limit'
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
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
    // m = 1 (decode) streams each layer's weights from DRAM: rotate over copies of ≥ 128 MB in
    // total, so that neither these weights nor a part of them stay in the 32 MB L3.
    std::vector<std::unique_ptr<const Linear<W, A>>> lins;
    {
        auto first = std::make_unique<Linear<W, A>>(w.data(), s.n, s.k);
        if (st.range(2) >= 0) first->set_path(detail::mm::kAllPaths[st.range(2)]);  // else the builtin path
        lins.push_back(std::move(first));
    }
    const std::size_t bytes = lins[0]->weight_bytes();
    if (s.m == 1)
        while (lins.size() < 64 && lins.size() * bytes < (std::size_t(128) << 20))
            lins.push_back(std::make_unique<const Linear<W, A>>(*lins[0]));
    ThreadPool& pool = fb::pool_for(threads);
    if (s.m == 1) fb::observe_read_bw(threads);  // the limit this benchmark is compared with, measured now too
    else fb::observe_peak(threads);
    for (auto& l : lins) l->forward(x.data(), s.m, s.k, y.data(), s.n, &pool);  // warm-up
    std::size_t next = 0;
    const fb::LoopTimer timer;
    for (auto _ : st) {
        lins[next]->forward(x.data(), s.m, s.k, y.data(), s.n, &pool);
        next = next + 1 == lins.size() ? 0 : next + 1;
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    const fb::Unit isa = std::is_same_v<A, fmt::BF16> ? fb::Unit::dpbf16 : std::is_same_v<A, fmt::Q8> ? fb::Unit::vnni : fb::Unit::fma;
    fb::report(st, 2.0 * double(s.m) * double(s.n) * double(s.k), double(bytes), timer.seconds(), threads, isa);
    st.SetLabel(std::string(detail::mm::path_name(lins[0]->path(s.m == 1 ? KernelClass::gemv : KernelClass::gemm))) + (lins.size() > 1 ? " x" + std::to_string(lins.size()) + " copies" : ""));
}

#if defined(FASTVLM_HAVE_BLAS)
void BM_OpenBLAS(benchmark::State& st) {
    const Shape& s = kShapes[st.range(0)];
    const int threads = int(st.range(1));
    const auto& w = data(std::string("w") + s.name, std::size_t(s.n * s.k));
    const auto& x = data(std::string("x") + s.name, std::size_t(s.m * s.k));
    std::vector<float> y(std::size_t(s.m * s.n));
    if (s.m == 1) fb::observe_read_bw(unsigned(threads));
    else fb::observe_peak(unsigned(threads));
    openblas_set_num_threads(threads);
    std::vector<std::vector<float>> copies;  // m = 1: as for Linear, ≥ 128 MB of weights in rotation
    if (s.m == 1)
        while (copies.size() + 1 < 64 && (copies.size() + 1) * w.size() * 4 < (std::size_t(128) << 20)) copies.push_back(w);
    std::size_t next = 0;
    auto run = [&] {
        if (s.m == 1) {  // sgemv: OpenBLAS's sgemm at m = 1 is far slower
            const float* wp = next == 0 ? w.data() : copies[next - 1].data();
            next = next == copies.size() ? 0 : next + 1;
            cblas_sgemv(CblasRowMajor, CblasNoTrans, int(s.n), int(s.k), 1.f, wp, int(s.k), x.data(), 1, 0.f, y.data(), 1);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(s.m), int(s.n), int(s.k), 1.f, x.data(), int(s.k), w.data(),
                        int(s.k), 0.f, y.data(), int(s.n));
        }
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

// ---- small M: the matmuls of decode batches (issue 11) -------------------------------------------------
// One Qwen2-0.5B decoder layer (q 896×896, k/v 128×896, o 896×896, gate/up 4864×896, down 896×4864),
// the lm_head (151936×896) or one Qwen2-1.5B layer (hidden 1536, intermediate 8960) at M = 1…32 rows, through the GEMV rows kernel (RowKernel::gemv: the
// weights stream once for all M rows; what Qwen2::forward_batch uses for decode rows) or the blocked
// GEMM (RowKernel::gemm). Layers rotate over copies (≥ 256 MB) so the weights come from DRAM, as in
// a decode step. GB/s = packed weight bytes / time, against the read bandwidth of the same run.
struct SmallMShape {
    const char* name;
    std::vector<std::pair<Index, Index>> mats;  // (n, k) of each matmul, run in order
};
const SmallMShape kSmallM[] = {
    {"qwen2_0.5b_layer", {{896, 896}, {128, 896}, {128, 896}, {896, 896}, {4864, 896}, {4864, 896}, {896, 4864}}},
    {"lm_head_151936x896", {{151936, 896}}},
    {"qwen2_1.5b_layer", {{1536, 1536}, {256, 1536}, {256, 1536}, {1536, 1536}, {8960, 1536}, {8960, 1536}, {1536, 8960}}},
};
constexpr int kSmallMRows[] = {1, 2, 4, 8, 16, 32};

template <class W, class A>
void BM_SmallM(benchmark::State& st) {
    const SmallMShape& s = kSmallM[st.range(0)];
    const Index m = st.range(1);
    const bool gemv = st.range(2) == 0;
    const unsigned threads = unsigned(st.range(3));
    std::vector<std::vector<std::unique_ptr<const Linear<W, A>>>> copies(1);
    std::size_t bytes = 0;
    double flops = 0;
    Index kmax = 0;
    for (auto [n, k] : s.mats) {
        const auto& w = data("w" + std::to_string(n) + "x" + std::to_string(k), std::size_t(n * k));
        copies[0].push_back(std::make_unique<const Linear<W, A>>(w.data(), n, k));
        bytes += copies[0].back()->weight_bytes();
        flops += 2.0 * double(m) * double(n) * double(k);
        kmax = std::max({kmax, n, k});
    }
    while (copies.size() < 64 && copies.size() * bytes < (std::size_t(256) << 20)) {
        copies.emplace_back();
        for (const auto& l : copies[0]) copies.back().push_back(std::make_unique<const Linear<W, A>>(*l));
    }
    const auto& x = data("x_smallm", std::size_t(32 * kmax));
    std::vector<float> y(std::size_t(32 * kmax));
    ThreadPool& pool = fb::pool_for(threads);
    fb::observe_read_bw(threads);
    Epilogue ep;
    ep.rows = gemv ? RowKernel::gemv : RowKernel::gemm;
    auto pass = [&](const auto& layer) {
        for (const auto& l : layer) l->forward(x.data(), m, l->in_features(), y.data(), l->out_features(), &pool, ep);
    };
    for (const auto& layer : copies) pass(layer);  // warm-up
    std::size_t next = 0;
    const fb::LoopTimer timer;
    for (auto _ : st) {
        pass(copies[next]);
        next = next + 1 == copies.size() ? 0 : next + 1;
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    const fb::Unit isa = std::is_same_v<A, fmt::BF16> ? fb::Unit::dpbf16 : std::is_same_v<A, fmt::Q8> ? fb::Unit::vnni : fb::Unit::fma;
    fb::report(st, flops, double(bytes), timer.seconds(), threads, isa);
    st.SetLabel(std::string(detail::mm::path_name(copies[0][0]->path())) + " x" + std::to_string(copies.size()) + " copies");
}

// DecodeSweep/FORMAT/0.5b: the matrix layers of one decoded token of FastVLM-0.5B (24 × qkv 1152×896,
// o 896×896, gate_up 9728×896, down 896×4864; lm_head left out: Matmul/.../lm_head has it), each its own
// weights, m = 1 in network order: what decode streams per token apart from attention and the head, with
// a parallel region per product. Against the read bandwidth: how much of it many short streams keep.
template <class W, class A>
void BM_DecodeSweep(benchmark::State& st) {
    const unsigned threads = unsigned(st.range(0));
    constexpr Index H = 896, Q = 896, KV = 128, I = 4864, L = 24;
    const Index shapes[4][2] = {{Q + 2 * KV, H}, {H, Q}, {2 * I, H}, {H, I}};
    const auto& w = data("w_sweep", std::size_t(2 * I * H));
    const auto& x = data("x_sweep", std::size_t(I));
    std::vector<float> y(std::size_t(2 * I));
    std::vector<std::unique_ptr<const Linear<W, A>>> lins;
    std::size_t bytes = 0;
    for (Index l = 0; l < L; ++l)
        for (const auto& sh : shapes) {
            lins.push_back(std::make_unique<const Linear<W, A>>(w.data(), sh[0], sh[1]));
            bytes += lins.back()->weight_bytes();
        }
    ThreadPool& pool = fb::pool_for(threads);
    fb::observe_read_bw(threads);
    auto token = [&] {
        for (const auto& l : lins) l->forward(x.data(), 1, l->in_features(), y.data(), l->out_features(), &pool);
    };
    token();  // warm-up
    const fb::LoopTimer timer;
    for (auto _ : st) {
        token();
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    fb::report(st, 2.0 * double(bytes), double(bytes), timer.seconds(), threads);
    st.SetLabel(std::string(detail::mm::path_name(lins[0]->path(KernelClass::gemv))) + ", " + std::to_string(lins.size()) + " products");
}
template <class W, class A>
void register_decode_sweep(const std::string& name) {
    benchmark::RegisterBenchmark(("DecodeSweep/" + name + "/0.5b").c_str(), BM_DecodeSweep<W, A>)
        ->Arg(1)
        ->Arg(2)
        ->ArgNames({"threads"})
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
}

template <class W, class A>
void register_small_m(const std::string& name) {
    for (int i = 0; i < int(std::size(kSmallM)); ++i)
        for (int kern = 0; kern < 2; ++kern) {
            auto* b = benchmark::RegisterBenchmark(
                ("SmallM/" + name + "/" + kSmallM[i].name + (kern == 0 ? "/gemv" : "/gemm")).c_str(), BM_SmallM<W, A>);
            for (int m : kSmallMRows) b->Args({i, m, kern, 2});
            b->ArgNames({"shape", "m", "kernel", "threads"})->UseRealTime()->Unit(benchmark::kMillisecond);
        }
}

// ---- the Q8 GEMM micro-kernel alone (issue 15: the int8 vision GEMM against the vpdpbusd peak) ----------
// ukr_q_vnni<Q8, 6, 2> (6 rows × 32 columns) over 32 blocks (k = 1,024), operands in L1, one thread:
// what the loop itself reaches. "int_only" runs the same vpdpbusd on the same operands without the per-block
// float rescale (cvt, ·d_x, fma ·d_w per accumulator and block: the float steps Q8 blocks of 32 on both sides
// need) — not a usable kernel, the measure of what the rescale costs; the results are not comparable.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
[[gnu::noinline]] void ukr_int_only(Index nb, const std::int8_t* aq, const std::int32_t* ac, const std::uint8_t* bp, Index ps,
                                    float* tile) {
    __m512i acc[6][2];
    for (int r = 0; r < 6; ++r) acc[r][0] = acc[r][1] = _mm512_set1_epi32(ac[r]);
    for (Index b = 0; b < nb; ++b) {
        const std::uint8_t* w = detail::mm::qblock<fmt::Q8>(bp, b);
        const std::int8_t* x = aq + b * 6 * 32;
#pragma GCC unroll 8
        for (int t = 0; t < 8; ++t) {
            const __m512i w0 = _mm512_load_si512(w + t * 64), w1 = _mm512_load_si512(w + ps + t * 64);
#pragma GCC unroll 6
            for (int r = 0; r < 6; ++r) {
                std::int32_t xv;
                std::memcpy(&xv, x + (t * 6 + r) * 4, 4);
                const __m512i bx = _mm512_set1_epi32(xv);
                acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], w0, bx);
                acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], w1, bx);
            }
        }
    }
    for (int r = 0; r < 6; ++r)
        for (int v = 0; v < 2; ++v) _mm512_store_ps(tile + r * 32 + v * 16, _mm512_cvtepi32_ps(acc[r][v]));
}

void BM_UkrQ8(benchmark::State& st) {
    const bool int_only = st.range(0) == 1;
    constexpr Index k = 1024, n = 32, nb = k / 32;
    const auto& w = data("ukr_w", std::size_t(n * k));
    const auto& x = data("ukr_x", std::size_t(6 * k));
    detail::mm::PackedQ<fmt::Q8> P;
    P.pack(n, k, [&](Index r0, Index cnt, float* dst) { std::copy(w.begin() + r0 * k, w.begin() + (r0 + cnt) * k, dst); });
    const auto xq = detail::mm::quantize_rows(x.data(), 6, k, k, P.kb, 6, 128, nullptr, 6);
    alignas(64) float tile[6 * 32];
    fb::observe_peak(1);
    const fb::LoopTimer timer;
    for (auto _ : st) {
        for (int i = 0; i < 64; ++i) {
            if (int_only) ukr_int_only(nb, xq.q, xq.corr, P.panel(0), P.panel_bytes(), tile);
            else detail::mm::ukr_q_vnni<fmt::Q8, 6, 2>(nb, xq.q, xq.d, xq.corr, P.panel(0), P.panel_bytes(), tile, 32);
            benchmark::DoNotOptimize(tile);
        }
    }
    fb::report(st, 64 * 2.0 * 6 * n * k, double(P.bytes()), timer.seconds(), 1, fb::Unit::vnni);
    st.SetLabel(int_only ? "vpdpbusd only, no float rescale" : "ukr_q_vnni 6x32 (the library's)");
}
#endif

// Matmul/NAME/... runs the builtin paths (GEMV for m = 1, GEMM otherwise); Matmul/NAME@PATH/... each other
// path this CPU has, forced for both classes (the candidates kernel choice times at load,
// kernels/kernel_choice.hpp; a GEMM-only path such as AMX runs m = 1 through the format's vector path).
template <class W, class A>
void register_format(const std::string& name) {
    const auto builtin_gemv = detail::mm::builtin_path<W, A>(true), builtin_gemm = detail::mm::builtin_path<W, A>(false);
    for (int pi = -1; pi < int(std::size(detail::mm::kAllPaths)); ++pi) {
        std::string label = name;
        if (pi >= 0) {
            const auto p = detail::mm::kAllPaths[pi];
            if ((p == builtin_gemv && p == builtin_gemm) || p == detail::mm::Path::scalar || !Linear<W, A>::supports(p)) continue;
            label += std::string("@") + detail::mm::path_name(p);
        }
        for (int i = 0; i < int(std::size(kShapes)); ++i)
            benchmark::RegisterBenchmark(("Matmul/" + label + "/" + kShapes[i].name).c_str(), BM_Linear<W, A>)
                ->Args({i, 1, pi})
                ->Args({i, 2, pi})
                ->ArgNames({"shape", "threads", "path"})
                ->UseRealTime()
                ->Unit(benchmark::kMillisecond);
    }
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
    register_decode_sweep<fmt::F16, fmt::F32>("f16w_f32");
    register_decode_sweep<fmt::BF16, fmt::BF16>("bf16");
    register_decode_sweep<fmt::Q8, fmt::Q8>("q8");
    register_decode_sweep<fmt::Q4, fmt::Q8>("q4");
    register_small_m<fmt::F32, fmt::F32>("f32");
    register_small_m<fmt::F16, fmt::F32>("f16w_f32");
    register_small_m<fmt::BF16, fmt::BF16>("bf16");
    register_small_m<fmt::Q8, fmt::Q8>("q8");
    register_small_m<fmt::Q4, fmt::Q8>("q4");
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
    if (detail::mm::have_avx512_vnni())
        benchmark::RegisterBenchmark("Ukr/q8_6x32_k1024", BM_UkrQ8)->Arg(0)->Arg(1)->ArgName("int_only")->UseRealTime();
#endif
#if defined(FASTVLM_HAVE_BLAS)
    for (int i = 0; i < int(std::size(kShapes)); ++i)
        benchmark::RegisterBenchmark((std::string("OpenBLAS/f32/") + kShapes[i].name).c_str(), BM_OpenBLAS)
            ->Args({i, 1})
            ->Args({i, 2})
            ->ArgNames({"shape", "threads"})
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
#endif
    fb::register_limits("_end");
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
