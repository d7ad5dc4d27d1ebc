// bench_engine — the engine's throughput and latency on one loaded model (issue 11's table):
//
//   bench_engine --model DIR --precision int8 --images a.png,b.png,... [--threads 2] [--max-tokens 64]
//                [--reps 1] [--prompt "Describe the image."] [--prefill-first 1] [--json FILE]
//   bench_engine --model DIR --kv-fit          (3. below only)
//   bench_engine --model DIR --decode-bw [--precision P] [--pairs 8] [--max-tokens 64]   (6. below only)
//   bench_engine --model DIR --caches --images a.png,b.png [--reps 3]   (4. below only)
//
// 1. Throughput: the N requests (one image each, greedy, max-tokens new tokens, EOS ignored so every
//    request makes exactly that many) submitted at once to an engine with max_running = 1, then to
//    one with max_running = N — what `fastvlm-cli batch --parallel 1|N` does. Reported per run:
//    wall time, aggregate decode tok/s (generated tokens ÷ summed wall time of the steps that carry
//    decode rows: EngineStats::aggregate_decode_tok_s, the `batch --json` figure) and the decode-only
//    rate (steps with decode rows and no prefill chunk). The ratio N vs 1 is from the same run.
//    Both engines run whole images between steps (vision_slice_ms = 0, as batch does) and, unless
//    --prefill-first 0, hold decode rows while a request is in vision or prefill (prefill_first, as batch
//    does); neither has the image-feature or prefix cache.
// 2. Late arrival: N−1 requests decode (long answers); 1.5 s after each has streamed ≥ 2 tokens, one
//    more request arrives. Its TTFT vs the TTFT of the same request on the idle engine, and how long
//    the running streams pause meanwhile (the longest gap between two tokens of a running stream
//    from the arrival to the newcomer's first token, next to their median gap in those 1.5 s). The
//    engine encodes the newcomer's image in slices (vision_slice_ms 50, the server's default).
// 4. Caches (issue 13): on one engine with both caches on, a first question about image A, then a
//    second, different question about A (TTFT second / first), the same pair with the prefix cache off
//    (image-feature cache alone) and with both off; then a 6-turn chat about image B sent as growing
//    `messages` (what a chat client sends): per turn vision ms, prompt positions, positions prefilled,
//    positions adopted from the prefix cache, TTFT. Greedy, 16 new tokens per answer.
// 5. Adaptive precision (issue 13): `--precision auto:P1,P2 --adaptive-load [--clients 1,2,4,8,1]
//    [--phase-s 40] [--ttft-target-ms T]`: closed-loop clients (each sends its next request when its
//    previous one ends, images round-robin) whose number steps through --clients, one phase each. The
//    images are put in the shared image-feature cache for every preset first and the prefix cache is
//    off (TTFT is then queueing + the prefill of the whole prompt, what the preset changes). Per phase: requests, p50/p95 TTFT, how many
//    each preset served; then every switch with its time and reason.
// 6. Decode against the read bandwidth, paired (issue 15): `--decode-bw [--pairs 8] [--max-tokens 64]`.
//    A shared machine's read bandwidth changes by 2× within seconds (Zen 5: 45 ↔ 83 GB/s), so a decode
//    rate and a bandwidth measured minutes apart give a meaningless ratio. Each pair measures the 1 GiB
//    read bandwidth (bench_common.hpp), decodes max-tokens tokens on a plain session (a 64-token text
//    prompt, then step() per token, greedy) and measures the bandwidth again. Its ratio = the weights a
//    decode step streams (Model::decode_weight_bytes) × tok/s ÷ the mean of its two bandwidths. A pair whose
//    two bandwidths differ by > 10 % straddles a change: it is printed but not counted.
// Medians over --reps. Output: a markdown table on stdout, everything in --json.
#include <algorithm>
#include <atomic>
#include <map>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_common.hpp"
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
    bool kv_fit = false, caches = false, adaptive_load = false, prefill_first = true, decode_bw = false;
    int pairs = 8;
    std::vector<int> clients = {1, 2, 4, 8, 1};
    double phase_s = 40, ttft_target_ms = 0;
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

// Issue 11's engine: no image-feature or prefix cache (issue 13), so that every request is encoded and
// prefilled (the late arrival repeats the lone request's image and question).
EngineOptions uncached(int max_running) {
    EngineOptions o;
    o.max_running = max_running;
    o.image_cache_bytes = 0;
    o.prefix_cache_bytes = 0;
    return o;
}

Throughput throughput(const AnyModel& m, const Args& a, int parallel) {
    EngineOptions o = uncached(parallel);
    o.vision_slice_ms = 0;             // whole images between steps, as `fastvlm-cli batch` runs them
    o.prefill_first = a.prefill_first;  // batch's default: true
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
    const EngineOptions o = uncached(int(n));  // vision in slices (vision_slice_ms 50), as the server runs
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
void decode_bw(const AnyModel& m, const Args& a) {
    namespace fb = fastvlm::bench;
    ThreadPool& bw_pool = fb::pool_for(a.threads);
    fb::measure_read_bw(a.threads, &bw_pool);  // first touch of the 1 GiB array
    const double mb = double(m.decode_weight_bytes()) / 1e6;
    std::vector<std::int32_t> prompt(64);
    for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = std::int32_t(100 + 37 * i % 5000);
    auto session = m.new_session();
    std::vector<double> ratios, rates, bws;
    for (int p = 0; p < a.pairs; ++p) {
        const double bw0 = fb::measure_read_bw(a.threads, &bw_pool);
        session->reset();
        auto logits = session->prefill(prompt, std::nullopt, false);
        // Greedy, as a session's sampler picks (text::argmax, SIMD): std::max_element cost 0.27 ms per token.
        std::int32_t id = text::argmax(logits.data(), std::size_t(logits.size()));
        const auto t0 = Clock::now();
        for (int t = 0; t < a.max_tokens; ++t) {
            const auto l = session->step(id);
            id = text::argmax(l.data(), l.size());
        }
        const double tok_s = a.max_tokens / std::chrono::duration<double>(Clock::now() - t0).count();
        const double bw1 = fb::measure_read_bw(a.threads, &bw_pool), bw = 0.5 * (bw0 + bw1);
        const bool steady = std::max(bw0, bw1) <= 1.1 * std::min(bw0, bw1);
        const double ratio = tok_s * mb / 1e3 / bw;
        std::fprintf(stderr, "pair %d: read %.1f / %.1f GB/s, decode %.1f tok/s = %.1f GB/s: %.0f %%%s\n", p + 1, bw0, bw1, tok_s,
                     tok_s * mb / 1e3, 100 * ratio, steady ? "" : " (bandwidth changed: not counted)");
        if (steady) ratios.push_back(ratio), rates.push_back(tok_s), bws.push_back(bw);
    }
    FASTVLM_CHECK(!ratios.empty(), "--decode-bw: the read bandwidth changed by > 10 % across every pair; run again");
    std::printf("| %s | %.1f MB | %.1f | %.1f GB/s | **%.0f %%** | %.0f–%.0f %% (%zu of %d pairs) |\n", m.precision(), mb, median(rates),
                median(bws), 100 * median(ratios), 100 * *std::min_element(ratios.begin(), ratios.end()),
                100 * *std::max_element(ratios.begin(), ratios.end()), ratios.size(), a.pairs);
}

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

// 4. Caches: second question about an image, and a 6-turn chat.
Request question(const std::string& image, const std::string& q) {
    Request r;
    r.images.push_back(ImageInput::file(image));
    r.prompt = q;
    r.max_new_tokens = 16;
    return r;
}

void caches(const AnyModel& m, const Args& a) {
    const std::string A = a.images[0], B = a.images[1];
    struct Mode {
        const char* name;
        std::size_t image_cache;
        std::optional<std::size_t> prefix;
    };
    const Mode modes[] = {{"both caches on", std::size_t(256) << 20, std::nullopt},
                          {"image-feature cache only", std::size_t(256) << 20, std::size_t(0)},
                          {"both off", 0, std::size_t(0)}};
    std::printf("| caches | first question TTFT | second question TTFT | ratio | second: vision ms, prefilled / cached positions |\n"
                "|---|---|---|---|---|\n");
    nlohmann::json out = nlohmann::json::object();
    for (const Mode& mode : modes) {
        std::vector<double> first, second, vision2;
        Result last;
        for (int rep = 0; rep < a.reps; ++rep) {
            EngineOptions o;
            o.max_running = 2;
            o.image_cache_bytes = mode.image_cache;
            o.prefix_cache_bytes = mode.prefix;
            auto engine = m.new_engine(o);
            const Result r1 = engine->run(question(A, "Describe the image."));
            const Result r2 = engine->run(question(A, "What colour is the largest object?"));
            FASTVLM_CHECK(r1.ok() && r2.ok(), "caches: a request failed: ", r1.error, r2.error);
            first.push_back(r1.timings.ttft_ms), second.push_back(r2.timings.ttft_ms), vision2.push_back(r2.timings.vision_ms);
            last = r2;
        }
        const double ratio = median(second) / median(first);
        std::printf("| %s | %.0f ms | %.0f ms | **%.1f %%** | %.0f ms, %lld / %lld |\n", mode.name, median(first), median(second),
                    100 * ratio, median(vision2), (long long)last.timings.prefill_tokens, (long long)last.timings.cached_tokens);
        out[mode.name] = {{"first_ttft_ms", first}, {"second_ttft_ms", second}, {"ratio", ratio}, {"second_vision_ms", vision2}};
    }
    // The 6-turn chat (both caches on).
    EngineOptions o;
    o.max_running = 2;
    auto engine = m.new_engine(o);
    const char* turns[] = {"Describe the image.", "What colour is the largest object?", "How many objects are there?",
                           "Which one is on the left?", "Is anything round?", "Summarize in three words."};
    std::vector<text::ChatMessage> msgs;
    std::printf("\n| turn | prompt positions | vision ms | prefilled | cached | TTFT ms |\n|---|---|---|---|---|---|\n");
    nlohmann::json chat = nlohmann::json::array();
    for (int t = 0; t < 6; ++t) {
        msgs.push_back({"user", turns[t]});
        Request r;
        r.images.push_back(ImageInput::file(B));
        r.messages = msgs;
        r.max_new_tokens = 16;
        const Result res = engine->run(r);
        FASTVLM_CHECK(res.ok(), "chat turn ", t + 1, " failed: ", res.error);
        msgs.push_back({"assistant", res.text});
        const Timings& tm = res.timings;
        std::printf("| %d | %lld | %.0f | %lld | %lld | %.0f |\n", t + 1, (long long)res.prompt_tokens, tm.vision_ms,
                    (long long)tm.prefill_tokens, (long long)tm.cached_tokens, tm.ttft_ms);
        chat.push_back({{"turn", t + 1}, {"prompt_tokens", res.prompt_tokens}, {"vision_ms", tm.vision_ms},
                        {"prefill_tokens", tm.prefill_tokens}, {"cached_tokens", tm.cached_tokens}, {"ttft_ms", tm.ttft_ms}});
    }
    out["chat"] = chat;
    if (!a.json.empty()) {
        std::FILE* f = std::fopen(a.json.c_str(), "w");
        FASTVLM_CHECK(f, "cannot write ", a.json);
        std::fprintf(f, "%s\n", out.dump(1).c_str());
        std::fclose(f);
    }
}

// 5. (see the top of the file)
void adaptive_load(const AnyModel& m, const Args& a) {
    const auto* am = dynamic_cast<const detail::AdaptiveModel*>(&m);
    FASTVLM_CHECK(am, "--adaptive-load needs --precision auto:P1,P2,...");
    const int max_clients = *std::max_element(a.clients.begin(), a.clients.end());
    EngineOptions o;
    o.max_running = max_clients;
    o.prefix_cache_bytes = 0;  // every request prefills its prompt (the prefix cache would skip it: same image, same question)
    o.image_cache = std::make_shared<ImageFeatureCache>(std::size_t(512) << 20);
    for (const auto& p : am->presets()) {  // warm the shared image cache for every preset
        EngineOptions w;
        w.image_cache = o.image_cache;
        auto e = p->new_engine(w);
        for (const auto& img : a.images) (void)e->run(make_request(a, img, 2));
    }
    struct Switch {
        double t_s;
        PresetSwitch sw;
    };
    std::mutex mu;
    std::vector<Switch> switches;
    const auto t0 = Clock::now();
    auto since = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
    o.adaptive.ttft_target_ms = a.ttft_target_ms;
    o.adaptive.on_switch = [&](const PresetSwitch& sw) {
        std::lock_guard lk(mu);
        switches.push_back({since(), sw});
        std::fprintf(stderr, "  %.1f s: %s -> %s (%s)\n", since(), sw.from_preset.c_str(), sw.to_preset.c_str(), sw.reason.c_str());
    };
    auto engine = m.new_engine(o);
    struct Done {
        int phase;
        double ttft_ms;
        std::string preset;
    };
    std::vector<Done> done;
    std::atomic<int> phase{0}, active{0}, next_image{0};
    std::atomic<bool> over{false};
    std::vector<std::thread> pool;
    auto client = [&](int id) {
        while (!over.load()) {
            if (id >= active.load()) {
                std::this_thread::sleep_for(std::chrono::milliseconds(20));
                continue;
            }
            const int ph = phase.load();
            const auto& img = a.images[std::size_t(next_image.fetch_add(1)) % a.images.size()];
            const Result r = engine->run(make_request(a, img, a.max_tokens));
            FASTVLM_CHECK(r.ok(), "request failed: ", r.error);
            std::lock_guard lk(mu);
            done.push_back({ph, r.timings.ttft_ms, r.preset});
        }
    };
    for (int i = 0; i < max_clients; ++i) pool.emplace_back(client, i);
    for (std::size_t p = 0; p < a.clients.size(); ++p) {
        phase = int(p);
        active = a.clients[p];
        std::fprintf(stderr, "%.1f s: phase %zu, %d clients\n", since(), p + 1, a.clients[p]);
        std::this_thread::sleep_for(std::chrono::duration<double>(a.phase_s));
    }
    over = true;
    for (auto& t : pool) t.join();
    auto q = [](std::vector<double> v, double f) {
        if (v.empty()) return 0.0;
        std::sort(v.begin(), v.end());
        return v[std::min(v.size() - 1, std::size_t(f * double(v.size() - 1) + 0.5))];
    };
    std::printf("| phase | clients | requests | p50 TTFT | p95 TTFT | served by |\n|---|---:|---:|---:|---:|---|\n");
    nlohmann::json phases = nlohmann::json::array();
    for (std::size_t p = 0; p < a.clients.size(); ++p) {
        std::vector<double> t;
        std::map<std::string, int> by;
        for (const auto& d : done)
            if (d.phase == int(p)) t.push_back(d.ttft_ms), ++by[d.preset];
        std::string served;
        for (const auto& [k, n] : by) served += (served.empty() ? "" : ", ") + k + " " + std::to_string(n);
        std::printf("| %zu | %d | %zu | %.0f ms | %.0f ms | %s |\n", p + 1, a.clients[p], t.size(), q(t, 0.5), q(t, 0.95), served.c_str());
        phases.push_back({{"clients", a.clients[p]}, {"requests", t.size()}, {"ttft_p50_ms", q(t, 0.5)}, {"ttft_p95_ms", q(t, 0.95)},
                          {"served_by", by}});
    }
    std::printf("\nswitches:\n");
    nlohmann::json sw = nlohmann::json::array();
    for (const auto& s : switches) {
        std::printf("- %.1f s: %s -> %s (%s)\n", s.t_s, s.sw.from_preset.c_str(), s.sw.to_preset.c_str(), s.sw.reason.c_str());
        sw.push_back({{"t_s", s.t_s}, {"from", s.sw.from_preset}, {"to", s.sw.to_preset}, {"reason", s.sw.reason}});
    }
    if (!a.json.empty()) {
        std::FILE* f = std::fopen(a.json.c_str(), "w");
        FASTVLM_CHECK(f, "cannot write ", a.json);
        const nlohmann::json j = {{"precision", m.precision()}, {"phase_s", a.phase_s}, {"ttft_target_ms", a.ttft_target_ms},
                                  {"max_tokens", a.max_tokens}, {"phases", phases}, {"switches", sw}};
        std::fprintf(f, "%s\n", j.dump(1).c_str());
        std::fclose(f);
    }
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
        else if (k == "--decode-bw") a.decode_bw = true;
        else if (k == "--pairs") a.pairs = std::stoi(val());
        else if (k == "--prefill-first") a.prefill_first = std::stoi(val()) != 0;
        else if (k == "--caches") a.caches = true;
        else if (k == "--adaptive-load") a.adaptive_load = true;
        else if (k == "--phase-s") a.phase_s = std::stod(val());
        else if (k == "--ttft-target-ms") a.ttft_target_ms = std::stod(val());
        else if (k == "--clients") {
            a.clients.clear();
            for (const auto& c : split(val(), ',')) a.clients.push_back(std::stoi(c));
            FASTVLM_CHECK(!a.clients.empty() && *std::min_element(a.clients.begin(), a.clients.end()) >= 1, "--clients: counts >= 1");
        }
        else fail("unknown option ", k, " (see the comment at the top of bench/bench_engine.cpp)");
    }
    if (a.kv_fit) {
        FASTVLM_CHECK(!a.model.empty(), "usage: bench_engine --model DIR --kv-fit [--precision P]");
        LoadOptions lo;
        lo.threads = a.threads;
        kv_fit(*load_model(a.model, a.precision, lo));
        return 0;
    }
    if (a.decode_bw) {
        FASTVLM_CHECK(!a.model.empty() && a.pairs >= 1 && a.max_tokens >= 1,
                      "usage: bench_engine --model DIR --decode-bw [--precision P] [--pairs N] [--max-tokens T]");
        LoadOptions lo;
        lo.threads = a.threads;
        decode_bw(*load_model(a.model, a.precision, lo), a);
        return 0;
    }
    FASTVLM_CHECK(!a.model.empty() && a.images.size() >= 2, "usage: bench_engine --model DIR --images a.png,b.png,... [--precision P]");
    FASTVLM_CHECK(a.reps >= 1 && a.max_tokens >= 2, "--reps must be >= 1 and --max-tokens >= 2");
    LoadOptions lo;
    lo.threads = a.threads;
    auto m = load_model(a.model, a.precision, lo);
    if (a.caches) {
        caches(*m, a);
        return 0;
    }
    if (a.adaptive_load) {
        adaptive_load(*m, a);
        return 0;
    }
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
