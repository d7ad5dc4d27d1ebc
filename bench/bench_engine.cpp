// bench_engine — the engine's throughput and latency on one loaded model (issue 11's table):
//
//   bench_engine --model DIR --precision int8 --images a.png,b.png,... [--threads 2] [--max-tokens 64]
//                [--reps 1] [--prompt "Describe the image."] [--json FILE]
//   bench_engine --model DIR --kv-fit          (3. below only)
//
// 1. Throughput: the N requests (one image each, greedy, max-tokens new tokens, EOS ignored so every
//    request makes exactly that many) submitted at once to an engine with max_running = 1, then to
//    one with max_running = N — what `fastvlm-cli batch --parallel 1|N` does. Reported per run:
//    wall time, aggregate decode tok/s (generated tokens ÷ summed wall time of the steps that carry
//    decode rows: EngineStats::aggregate_decode_tok_s, the `batch --json` figure) and the decode-only
//    rate (steps with decode rows and no prefill chunk). The ratio N vs 1 is from the same run.
// 2. Late arrival: N−1 requests decode (long answers); 1.5 s after each has streamed ≥ 2 tokens, one
//    more request arrives. Its TTFT vs the TTFT of the same request on the idle engine, and how long
//    the running streams pause meanwhile (the longest gap between two tokens of a running stream
//    from the arrival to the newcomer's first token, next to their median gap in those 1.5 s).
// Medians over --reps. Output: a markdown table on stdout, everything in --json.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastvlm/fastvlm.hpp"

namespace {
using namespace fastvlm;
using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    std::size_t a = 0;
    for (std::size_t b; (b = s.find(sep, a)) != std::string::npos; a = b + 1) out.push_back(s.substr(a, b - a));
    out.push_back(s.substr(a));
    std::erase(out, std::string());
    return out;
}

struct Args {
    std::string model, precision = "int8", prompt = "Describe the image.", json;
    std::vector<std::string> images;
    unsigned threads = 2;
    int max_tokens = 64, reps = 1;
    bool kv_fit = false;
};

Request make_request(const Args& a, const std::string& image, int max_tokens) {
    Request r;
    r.images.push_back(ImageInput::file(image));
    r.prompt = a.prompt;
    r.max_new_tokens = max_tokens;
    r.stop_ids = {-1};  // no stop id: every request makes exactly max_tokens tokens
    r.id = image;
    return r;
}

struct Throughput {
    double wall_s = 0, aggregate = 0, decode_only = 0, ttft_p50_ms = 0;
};

Throughput throughput(const AnyModel& m, const Args& a, int parallel) {
    EngineOptions o;
    o.max_running = parallel;
    auto engine = m.new_engine(o);
    std::vector<RequestHandle> hs;
    const auto t0 = Clock::now();
    for (const auto& img : a.images) hs.push_back(engine->submit(make_request(a, img, a.max_tokens)));
    std::vector<double> ttft;
    for (auto& h : hs) {
        const Result r = h.wait();
        FASTVLM_CHECK(r.ok(), "request ", h.id(), " failed: ", r.error);
        FASTVLM_CHECK(Index(r.ids.size()) == a.max_tokens, "request ", h.id(), " made ", r.ids.size(), " tokens");
        ttft.push_back(r.timings.ttft_ms);
    }
    Throughput t;
    t.wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
    const EngineStats st = engine->stats();
    t.aggregate = st.aggregate_decode_tok_s();
    t.decode_only = st.decode_only_tok_s();
    t.ttft_p50_ms = median(ttft);
    return t;
}

struct Late {
    double lone_ttft_ms = 0, late_ttft_ms = 0, max_pause_ms = 0, median_gap_ms = 0;
};

Late late_arrival(const AnyModel& m, const Args& a) {
    const Index n = Index(a.images.size());
    EngineOptions o;
    o.max_running = int(n);
    auto engine = m.new_engine(o);
    Late out;
    const std::string& newcomer = a.images.back();
    {
        const Result r = engine->run(make_request(a, newcomer, 1));
        FASTVLM_CHECK(r.ok(), "lone request failed: ", r.error);
        out.lone_ttft_ms = r.timings.ttft_ms;
    }
    std::mutex mu;
    std::vector<std::vector<Clock::time_point>> times(std::size_t(n - 1));
    std::vector<RequestHandle> running;
    for (Index i = 0; i + 1 < n; ++i) {
        Request r = make_request(a, a.images[std::size_t(i)], 2000);
        r.on_token = [&, i](std::int32_t id, std::string_view) {
            if (id < 0) return;
            std::lock_guard lk(mu);
            times[std::size_t(i)].push_back(Clock::now());
        };
        running.push_back(engine->submit(std::move(r)));
    }
    auto all_decoding = [&] {
        std::lock_guard lk(mu);
        return std::all_of(times.begin(), times.end(), [](const auto& t) { return t.size() >= 2; });
    };
    while (!all_decoding()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const auto steady = Clock::now();  // every stream decodes: gaps from here on are batched steps
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    const auto arrive = Clock::now();
    const Result r = engine->run(make_request(a, newcomer, 1));
    FASTVLM_CHECK(r.ok(), "late request failed: ", r.error);
    out.late_ttft_ms = r.timings.ttft_ms;
    const auto first = arrive + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(r.timings.ttft_ms));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the streams' next tokens after it
    for (auto& h : running) h.cancel();
    engine->drain();
    std::vector<double> gaps;
    std::lock_guard lk(mu);
    for (const auto& t : times)
        for (std::size_t i = 1; i < t.size(); ++i) {
            const double g = std::chrono::duration<double, std::milli>(t[i] - t[i - 1]).count();
            if (t[i - 1] >= steady && t[i] <= arrive) gaps.push_back(g);
            else if (t[i - 1] <= first) out.max_pause_ms = std::max(out.max_pause_ms, g);  // a gap overlapping the newcomer's wait
        }
    out.median_gap_ms = median(gaps);
    return out;
}

// 3. Memory: 8 sequences of 1,000 positions (text prompts, EOS ignored) in a KV budget of 200 MB: all
//    8 must be running at once (admission reserves each one's worst case), then they are cancelled.
void kv_fit(const AnyModel& m) {
    EngineOptions o;
    o.max_running = 8;
    o.kv_budget_bytes = 200'000'000;
    auto engine = m.new_engine(o);
    std::vector<RequestHandle> hs;
    for (int i = 0; i < 8; ++i) {
        Request r;
        r.prompt_ids = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
        r.max_new_tokens = 991;  // 10 + 991 − 1 = 1,000 positions
        r.stop_ids = {-1};
        hs.push_back(engine->submit(std::move(r)));
    }
    Index most = 0;
    EngineStats st;
    for (int t = 0; t < 6000 && most < 8; ++t) {
        st = engine->stats();
        most = std::max(most, st.running);
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    for (auto& h : hs) h.cancel();
    engine->drain();
    std::printf("KV cache: %zu bytes/position, page %zu B, budget 200 MB = %lld pages; 8 x 1,000 positions = %.1f MB; "
                "%lld of 8 ran at once, %lld pages reserved\n",
                st.kv_bytes_per_position,
                st.kv_page_bytes, (long long)st.kv_pages_total, 8.0 * 1000 * double(st.kv_bytes_per_position) / 1e6, (long long)most,
                (long long)st.kv_pages_reserved);
}

int run(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        const std::string k = argv[i];
        auto val = [&]() -> std::string {
            FASTVLM_CHECK(i + 1 < argc, k, " needs a value");
            return argv[++i];
        };
        if (k == "--model") a.model = val();
        else if (k == "--precision") a.precision = val();
        else if (k == "--images") a.images = split(val(), ',');
        else if (k == "--threads") a.threads = unsigned(std::stoul(val()));
        else if (k == "--max-tokens") a.max_tokens = std::stoi(val());
        else if (k == "--reps") a.reps = std::stoi(val());
        else if (k == "--prompt") a.prompt = val();
        else if (k == "--json") a.json = val();
        else if (k == "--kv-fit") a.kv_fit = true;
        else fail("unknown option ", k, " (see the comment at the top of bench/bench_engine.cpp)");
    }
    if (a.kv_fit) {
        FASTVLM_CHECK(!a.model.empty(), "usage: bench_engine --model DIR --kv-fit [--precision P]");
        LoadOptions lo;
        lo.threads = a.threads;
        kv_fit(*load_model(a.model, a.precision, lo));
        return 0;
    }
    FASTVLM_CHECK(!a.model.empty() && a.images.size() >= 2, "usage: bench_engine --model DIR --images a.png,b.png,... [--precision P]");
    FASTVLM_CHECK(a.reps >= 1 && a.max_tokens >= 2, "--reps must be >= 1 and --max-tokens >= 2");
    LoadOptions lo;
    lo.threads = a.threads;
    auto m = load_model(a.model, a.precision, lo);
    const int N = int(a.images.size());
    std::vector<double> agg1, aggN, only1, onlyN, wall1, wallN, lone, late, pause, gap;
    for (int rep = 0; rep < a.reps; ++rep) {
        const Throughput t1 = throughput(*m, a, 1), tN = throughput(*m, a, N);
        const Late l = late_arrival(*m, a);
        std::fprintf(stderr,
                     "rep %d: parallel 1: %.1f tok/s (decode-only %.1f), %.1f s | parallel %d: %.1f tok/s (decode-only %.1f), %.1f s | "
                     "TTFT lone %.0f ms, late %.0f ms, stream pause %.0f ms (median gap %.1f ms)\n",
                     rep + 1, t1.aggregate, t1.decode_only, t1.wall_s, N, tN.aggregate, tN.decode_only, tN.wall_s, l.lone_ttft_ms,
                     l.late_ttft_ms, l.max_pause_ms, l.median_gap_ms);
        agg1.push_back(t1.aggregate), aggN.push_back(tN.aggregate), only1.push_back(t1.decode_only), onlyN.push_back(tN.decode_only);
        wall1.push_back(t1.wall_s), wallN.push_back(tN.wall_s);
        lone.push_back(l.lone_ttft_ms), late.push_back(l.late_ttft_ms), pause.push_back(l.max_pause_ms), gap.push_back(l.median_gap_ms);
    }
    const double r_agg = median(aggN) / median(agg1), r_only = median(onlyN) / median(only1), r_ttft = median(late) / median(lone);
    std::printf("| %s | %.1f | %.1f | **%.2f×** | %.1f | %.1f | %.2f× | %.1f / %.1f s | %.0f | %.0f | %.2f× | %.0f (median gap %.0f) |\n",
                m->precision(), median(agg1), median(aggN), r_agg, median(only1), median(onlyN), r_only, median(wall1), median(wallN),
                median(lone), median(late), r_ttft, median(pause), median(gap));
    if (!a.json.empty()) {
        nlohmann::json j = {{"precision", m->precision()}, {"threads", a.threads},       {"requests", N},
                            {"max_tokens", a.max_tokens},  {"reps", a.reps},             {"aggregate_tok_s_1", agg1},
                            {"aggregate_tok_s_n", aggN},   {"decode_only_tok_s_1", only1}, {"decode_only_tok_s_n", onlyN},
                            {"wall_s_1", wall1},           {"wall_s_n", wallN},          {"lone_ttft_ms", lone},
                            {"late_ttft_ms", late},        {"stream_pause_ms", pause},   {"median_gap_ms", gap},
                            {"ratio_aggregate", r_agg},    {"ratio_decode_only", r_only}, {"ratio_ttft", r_ttft}};
        std::FILE* f = std::fopen(a.json.c_str(), "w");
        FASTVLM_CHECK(f, "cannot write ", a.json);
        std::fprintf(f, "%s\n", j.dump(1).c_str());
        std::fclose(f);
    }
    return 0;
}
}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_engine: %s\n", e.what());
        return 1;
    }
}
