// Adaptive precision (fastvlm/adaptive.hpp, engine/adaptive_policy.hpp): the policy's decisions under a
// fake clock and fake pressure (TTFT, queue, memory/CPU PSI, cgroup; hysteresis and dwell), reading PSI
// and cgroup files, the "auto:" spec, and an adaptive engine on the tiny model whose answers equal a
// plain engine of the preset that served them, also with several threads submitting while the pressure
// flips (run under ThreadSanitizer by scripts/test.sh).
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <set>
#include <thread>

#include "fastvlm/fastvlm.hpp"
#include "support.hpp"

using namespace fastvlm;
using namespace test_support;
namespace fs = std::filesystem;

namespace {

template <class F>
std::string error_of(F&& fn) {
    try {
        fn();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "";
}

AdaptiveSignals calm() { return {}; }
AdaptiveSignals memory(double psi) {
    AdaptiveSignals s;
    s.pressure.memory_some_avg10 = psi;
    return s;
}

}  // namespace

TEST(AdaptivePolicy, TtftAboveTargetStepsDownOnlyWithEnoughSamples) {
    AdaptivePolicy p(3, {.ttft_target_ms = 1000, .min_dwell_s = 5, .ttft_min_samples = 3}, 8);
    EXPECT_FALSE(p.update(calm(), 0));
    p.record_ttft(0, 5000, 0);
    p.record_ttft(0, 5000, 0);
    EXPECT_FALSE(p.update(calm(), 1)) << "two samples are fewer than ttft_min_samples";
    p.record_ttft(0, 5000, 0);
    const auto sw = p.update(calm(), 2);
    ASSERT_TRUE(sw);
    EXPECT_EQ(sw->from, 0);
    EXPECT_EQ(sw->to, 1);
    EXPECT_NE(sw->reason.find("p95 TTFT 5000 ms > target 1000 ms"), std::string::npos) << sw->reason;
    EXPECT_EQ(p.level(), 1);
    EXPECT_FALSE(p.p95_ttft_ms()) << "the window restarts at a switch";
    // Samples of the old level, or submitted before the switch, do not count at the new one.
    for (int i = 0; i < 3; ++i) p.record_ttft(0, 9000, 3);
    for (int i = 0; i < 3; ++i) p.record_ttft(1, 9000, 1.5);
    EXPECT_FALSE(p.p95_ttft_ms());
    for (int i = 0; i < 3; ++i) p.record_ttft(1, 9000, 2.5);
    EXPECT_FALSE(p.update(calm(), 6)) << "min_dwell_s (5 s) after the last switch at t = 2";
    ASSERT_TRUE(p.update(calm(), 7.5));
    EXPECT_EQ(p.level(), 2);
    for (int i = 0; i < 3; ++i) p.record_ttft(2, 9000, 8);
    EXPECT_FALSE(p.update(calm(), 100)) << "the cheapest level has nowhere to go";
    EXPECT_FALSE(p.overload_reason().empty());
}

TEST(AdaptivePolicy, GoesBackUpOnlyAfterASustainedCalm) {
    AdaptivePolicy p(2, {.ttft_target_ms = 1000, .up_fraction = 0.5, .min_dwell_s = 5, .up_hold_s = 10, .ttft_min_samples = 2}, 8);
    ASSERT_TRUE(p.update(memory(50), 0));
    EXPECT_EQ(p.level(), 1);
    // Calm pressure, but no TTFT samples at this level yet: not relaxed (a target is set).
    EXPECT_FALSE(p.update(calm(), 20));
    p.record_ttft(1, 700, 1);
    p.record_ttft(1, 700, 1);
    // p95 700 ms: under the target but not under half of it: the band between the marks holds the level.
    EXPECT_FALSE(p.update(calm(), 30));
    EXPECT_FALSE(p.update(calm(), 60));
    for (int i = 0; i < 16; ++i) p.record_ttft(1, 300, 1);
    EXPECT_FALSE(p.update(calm(), 61)) << "the calm starts now";
    EXPECT_FALSE(p.update(calm(), 70));
    EXPECT_FALSE(p.update(memory(5), 72)) << "memory PSI 5 % is above the low mark (2 %): the calm is broken";
    EXPECT_FALSE(p.update(calm(), 73));
    EXPECT_FALSE(p.update(calm(), 82.9));
    const auto up = p.update(calm(), 83.1);
    ASSERT_TRUE(up);
    EXPECT_EQ(up->to, 0);
    EXPECT_NE(up->reason.find("relaxed"), std::string::npos);
}

TEST(AdaptivePolicy, EachPressureSignalAndTheQueueOverload) {
    auto first_switch = [](AdaptiveSignals s) {
        AdaptivePolicy p(2, {}, 4);
        auto sw = p.update(s, 0);
        return sw ? sw->reason : std::string();
    };
    EXPECT_EQ(first_switch(calm()), "");
    EXPECT_NE(first_switch(memory(10.5)).find("memory pressure"), std::string::npos);
    EXPECT_EQ(first_switch(memory(9.5)), "") << "high mark 10 %";
    AdaptiveSignals cpu;
    cpu.pressure.cpu_some_avg10 = 61;
    EXPECT_NE(first_switch(cpu).find("CPU pressure"), std::string::npos);
    AdaptiveSignals cg;
    cg.pressure.cgroup_memory = 0.95;
    EXPECT_NE(first_switch(cg).find("cgroup memory"), std::string::npos);
    AdaptiveSignals q;
    q.waiting = 5;
    EXPECT_NE(first_switch(q).find("5 requests waiting > 4"), std::string::npos) << "queue_high defaults to max_running";
    q.waiting = 4;
    EXPECT_EQ(first_switch(q), "");
    // Without a TTFT target, relaxed = no pressure and an empty queue.
    AdaptivePolicy p(2, {.min_dwell_s = 0, .up_hold_s = 3}, 4);
    ASSERT_TRUE(p.update(cpu, 0));
    EXPECT_FALSE(p.update(calm(), 1));
    EXPECT_FALSE(p.update(calm(), 3.5));
    EXPECT_TRUE(p.update(calm(), 4.1));
    EXPECT_EQ(p.level(), 0);
}

TEST(AdaptivePolicy, RejectsInconsistentOptions) {
    EXPECT_NE(error_of([] { AdaptivePolicy(0, {}, 8); }), "");
    EXPECT_NE(error_of([] { AdaptivePolicy(2, {.ttft_target_ms = -1}, 8); }).find("ttft_target_ms"), std::string::npos);
    EXPECT_NE(error_of([] { AdaptivePolicy(2, {.up_fraction = 0}, 8); }).find("up_fraction"), std::string::npos);
    EXPECT_NE(error_of([] { AdaptivePolicy(2, {.memory_psi_high = 1, .memory_psi_low = 2}, 8); }).find("low mark"), std::string::npos);
    EXPECT_NE(error_of([] { AdaptivePolicy(2, {.ttft_window = 2, .ttft_min_samples = 3}, 8); }), "");
}

TEST(AdaptivePressure, ReadsPsiAndCgroupFilesAndToleratesTheirAbsence) {
    TempDir d("test_adaptive_", "pressure");
    const fs::path proc = d.path / "proc", cg = d.path / "cgroup";
    fs::create_directories(proc / "pressure");
    fs::create_directories(proc / "self");
    auto write = [](const fs::path& f, const std::string& s) {
        fs::create_directories(f.parent_path());
        std::ofstream(f) << s;
    };
    // Nothing there: no pressure.
    Pressure p = read_system_pressure(proc, cg);
    EXPECT_EQ(p.memory_some_avg10, 0);
    EXPECT_EQ(p.cgroup_memory, 0);
    write(proc / "pressure" / "memory", "some avg10=12.50 avg60=3.00 avg300=1.00 total=123\nfull avg10=4.00 avg60=0 avg300=0 total=9\n");
    write(proc / "pressure" / "cpu", "some avg10=oops avg60=0.00 avg300=0.00 total=0\n");
    // cgroup v2 with a limit.
    write(proc / "self" / "cgroup", "0::/svc/fastvlm\n");
    write(cg / "svc" / "fastvlm" / "memory.current", "750\n");
    write(cg / "svc" / "fastvlm" / "memory.max", "1000\n");
    p = read_system_pressure(proc, cg);
    EXPECT_DOUBLE_EQ(p.memory_some_avg10, 12.5);
    EXPECT_EQ(p.cpu_some_avg10, 0) << "a malformed line reads as no pressure";
    EXPECT_DOUBLE_EQ(p.cgroup_memory, 0.75);
    write(cg / "svc" / "fastvlm" / "memory.max", "max\n");
    EXPECT_EQ(read_system_pressure(proc, cg).cgroup_memory, 0) << "no limit";
    // cgroup v1 (hybrid hierarchy): the memory controller's own path; "no limit" is a number near 2^63.
    fs::remove_all(cg / "svc");
    write(proc / "self" / "cgroup", "4:memory:/job\n0::/\n");
    write(cg / "memory" / "job" / "memory.usage_in_bytes", "900\n");
    write(cg / "memory" / "job" / "memory.limit_in_bytes", "1000\n");
    EXPECT_DOUBLE_EQ(read_system_pressure(proc, cg).cgroup_memory, 0.9);
    write(cg / "memory" / "job" / "memory.limit_in_bytes", "9223372036854771712\n");
    EXPECT_EQ(read_system_pressure(proc, cg).cgroup_memory, 0);
    // This machine's real files parse (values in range, whatever they are).
    const Pressure real = read_system_pressure();
    EXPECT_GE(real.memory_some_avg10, 0);
    EXPECT_LE(real.cpu_some_avg10, 100);
    EXPECT_LE(real.cgroup_memory, 1);
}

TEST(AdaptiveSpec, ParsesAndRejects) {
    EXPECT_EQ(parse_adaptive_spec("auto:int8,int4"), (std::vector<std::string>{"int8", "int4"}));
    EXPECT_EQ(parse_adaptive_spec("auto:fp32,bf16,int8_int4").size(), 3u);
    EXPECT_NE(error_of([] { parse_adaptive_spec("auto:int8"); }).find("at least two"), std::string::npos);
    EXPECT_NE(error_of([] { parse_adaptive_spec("auto:int8,int8"); }).find("given twice"), std::string::npos);
    EXPECT_NE(error_of([] { parse_adaptive_spec("auto:int8,fp8"); }).find("unknown preset 'fp8'"), std::string::npos);
    EXPECT_NE(error_of([] { parse_adaptive_spec("auto:"); }).find("unknown preset ''"), std::string::npos);
    EXPECT_NE(error_of([] { parse_adaptive_spec("auto:int8,"); }).find("unknown preset ''"), std::string::npos);
    EXPECT_NE(error_of([] { load_model("/nonexistent", "auto:int8"); }).find("at least two"), std::string::npos);
}

TEST(AdaptiveSpec, ImageCacheIsSharedOnlyBetweenEqualVisionFormats) {
    EXPECT_EQ(detail::vision_formats<policy::int8>(), detail::vision_formats<policy::int8_int4>());
    EXPECT_EQ(detail::vision_formats<policy::int8>(), "q8xq8,q8xq8,q8xq8");
    EXPECT_NE(detail::vision_formats<policy::int8>(), detail::vision_formats<policy::int4>());
    EXPECT_NE(detail::vision_formats<policy::fp32>(), detail::vision_formats<policy::bf16>());
}

namespace {
// The tiny model with a tokenizer, its adaptive form (fp32 then bf16) and a plain engine per preset
// for the reference answers. The pressure and the clock are the test's.
struct Fixture {
    TempDir dir{"test_adaptive_", "model"};
    std::unique_ptr<AnyModel> adaptive, fp32, bf16;
    std::unique_ptr<Engine> ref_fp32, ref_bf16;
    std::atomic<double> mem{0}, now{0};
    Fixture() {
        make_text_model(dir.path);
        const LoadOptions lo{.threads = 2, .kernels = "default"};
        adaptive = load_model(dir.path, "auto:fp32,bf16", lo);
        fp32 = load_model(dir.path, "fp32", lo);
        bf16 = load_model(dir.path, "bf16", lo);
        ref_fp32 = fp32->new_engine();
        ref_bf16 = bf16->new_engine();
    }
    EngineOptions options(std::vector<PresetSwitch>* log = nullptr, std::mutex* log_mu = nullptr) {
        EngineOptions o;
        o.max_running = 4;
        o.adaptive.min_dwell_s = 5;
        o.adaptive.up_hold_s = 10;
        o.adaptive.sample_interval_s = 0;
        o.adaptive.pressure = [this] {
            Pressure p;
            p.memory_some_avg10 = mem.load();
            return p;
        };
        o.adaptive.clock = [this] { return now.load(); };
        if (log)
            o.adaptive.on_switch = [log, log_mu](const PresetSwitch& s) {
                std::lock_guard lk(*log_mu);
                log->push_back(s);
            };
        return o;
    }
    Result reference(const Request& q, const std::string& preset) {
        return (preset == "fp32" ? ref_fp32 : ref_bf16)->run(q);
    }
};

Request ask(const std::string& prompt, int image_seed, int max_new = 6) {
    Request q;
    q.prompt = prompt;
    if (image_seed > 0) q.images.push_back(ImageInput::decoded(test_image(24 + image_seed, 20, unsigned(image_seed))));
    q.max_new_tokens = max_new;
    return q;
}
}  // namespace

TEST(AdaptiveEngine, ServesWithTheChosenPresetAndAnswersAsThatPresetAlone) {
    Fixture f;
    EXPECT_STREQ(f.adaptive->precision(), "auto:fp32,bf16");
    const auto& presets = dynamic_cast<const detail::AdaptiveModel&>(*f.adaptive).presets();
    ASSERT_EQ(presets.size(), 2u);
    ASSERT_NE(presets[0]->shared_tokenizer(), nullptr);
    EXPECT_EQ(presets[0]->shared_tokenizer(), presets[1]->shared_tokenizer()) << "the tokenizer is loaded once";
    EXPECT_EQ(f.adaptive->weight_bytes(), f.fp32->weight_bytes() + f.bf16->weight_bytes());

    std::vector<PresetSwitch> log;
    std::mutex log_mu;
    auto engine = f.adaptive->new_engine(f.options(&log, &log_mu));
    auto check = [&](const Request& q, const char* want) {
        const Result r = engine->run(q);
        ASSERT_TRUE(r.ok()) << r.error;
        EXPECT_EQ(r.preset, want);
        const Result ref = f.reference(q, want);
        EXPECT_EQ(r.ids, ref.ids) << want;
        EXPECT_EQ(r.text, ref.text);
    };
    check(ask("What is in the picture?", 1), "fp32");
    f.mem = 50;  // memory pressure: the next request goes to bf16
    f.now = 1;
    check(ask("Describe it.", 2), "bf16");
    f.mem = 5;  // between the marks: stays
    f.now = 100;
    check(ask("And now?", 3), "bf16");
    f.mem = 0;  // calm starts at t = 101, up after 10 s of it
    f.now = 101;
    check(ask("Colours?", 1), "bf16");
    f.now = 111.5;
    check(ask("Shapes?", 2), "fp32");
    ASSERT_EQ(log.size(), 2u);
    EXPECT_EQ(log[0].from_preset, "fp32");
    EXPECT_EQ(log[0].to_preset, "bf16");
    EXPECT_NE(log[0].reason.find("memory pressure 50"), std::string::npos) << log[0].reason;
    EXPECT_EQ(log[1].to_preset, "fp32");

    // A bad request fails alone and states its preset too.
    Request bad = ask("x", 0);
    bad.images.push_back(ImageInput::encoded("not an image", "bad.png"));
    const Result rb = engine->run(bad);
    EXPECT_EQ(rb.error_kind, ErrorKind::invalid_request);
    EXPECT_EQ(rb.preset, "fp32");

    const EngineStats st = engine->stats();
    EXPECT_EQ(st.requests_ok, 5u);
    EXPECT_EQ(st.requests_failed, 1u);
    EXPECT_EQ(st.stages.at("fp32/ttft").count, 2u);
    EXPECT_EQ(st.stages.at("bf16/ttft").count, 3u);
    const auto j = engine->metrics_json();
    EXPECT_EQ(j["counters"]["preset_switches_total"]["direction=down"], 1);
    EXPECT_EQ(j["counters"]["preset_switches_total"]["direction=up"], 1);
    EXPECT_EQ(j["counters"]["preset_requests_total"]["preset=bf16"], 3);
    EXPECT_EQ(j["by_preset"]["bf16"]["counters"]["requests_total"]["status=ok"], 3);
    EXPECT_EQ(j["gauges"]["adaptive_level"], 0.0);
    const std::string prom = engine->metrics().to_prometheus();
    EXPECT_NE(prom.find("fastvlm_requests_total{preset=\"fp32\",status=\"ok\"} 2"), std::string::npos) << prom;
    EXPECT_NE(prom.find("fastvlm_preset_active{preset=\"fp32\"} 1"), std::string::npos);
    EXPECT_NE(prom.find("fastvlm_ttft_seconds_count{preset=\"bf16\"} 3"), std::string::npos);
}

TEST(AdaptiveEngine, TtftOverTheTargetSwitchesDown) {
    Fixture f;
    EngineOptions o = f.options();
    o.adaptive.ttft_target_ms = 1e-3;  // any real TTFT is above it
    o.adaptive.ttft_min_samples = 2;
    auto engine = f.adaptive->new_engine(o);
    EXPECT_EQ(engine->run(ask("a", 1)).preset, "fp32");
    EXPECT_EQ(engine->run(ask("b", 2)).preset, "fp32");
    EXPECT_GT(engine->metrics_json()["gauges"]["adaptive_ttft_p95_seconds"].get<double>(), 0.0);
    EXPECT_EQ(engine->run(ask("c", 3)).preset, "bf16") << "two TTFT samples above the target";
    EXPECT_EQ(engine->metrics_json()["gauges"]["adaptive_ttft_p95_seconds"].get<double>(), 0.0) << "a new window at bf16";
}

// Several threads submit (and some cancel) while another flips the pressure and moves the clock: every
// request ends, the ones that finish equal the reference of the preset that served them.
TEST(AdaptiveEngine, ConcurrentSubmitsWhilePressureFlips) {
    Fixture f;
    EngineOptions o = f.options();
    o.adaptive.min_dwell_s = 0;
    o.adaptive.up_hold_s = 0;
    auto engine = f.adaptive->new_engine(o);
    std::atomic<bool> stop{false};
    std::thread flipper([&] {
        for (int i = 0; !stop.load(); ++i) {
            f.mem = i % 2 ? 50.0 : 0.0;
            f.now = f.now.load() + 1;
            std::this_thread::sleep_for(std::chrono::milliseconds(3));
        }
    });
    struct Done {
        Request q;
        Result r;
        bool cancelled;
    };
    std::vector<std::vector<Done>> done(4);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, t] {
            for (int i = 0; i < 5; ++i) {
                Request q = ask("Question " + std::to_string(i), (t + i) % 3 + 1, 4 + i % 3);
                auto h = engine->submit(q);
                const bool cancel = (t == 3 && i % 2 == 1);
                if (cancel) h.cancel();
                done[std::size_t(t)].push_back({q, h.wait(), cancel});
            }
        });
    for (auto& th : threads) th.join();
    stop = true;
    flipper.join();
    std::set<std::string> seen;
    for (auto& per : done)
        for (auto& d : per) {
            ASSERT_TRUE(d.r.preset == "fp32" || d.r.preset == "bf16") << d.r.preset;
            seen.insert(d.r.preset);
            if (d.cancelled) {
                EXPECT_TRUE(d.r.ok() || d.r.error_kind == ErrorKind::cancelled) << d.r.error;
                continue;
            }
            ASSERT_TRUE(d.r.ok()) << d.r.error;
            EXPECT_EQ(d.r.ids, f.reference(d.q, d.r.preset).ids) << d.r.preset;
        }
    EXPECT_EQ(seen.size(), 2u) << "the pressure flipped every 3 ms: both presets served";
    engine->drain();
    const EngineStats st = engine->stats();
    EXPECT_EQ(st.running, 0);
    EXPECT_EQ(st.queued, 0);
    EXPECT_EQ(st.requests_ok + st.requests_failed, 20u);
}
