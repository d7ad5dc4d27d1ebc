// fastvlm::metrics: histogram quantiles and buckets, the registry's JSON and Prometheus output, name and label
// validation, the anomaly callback, and concurrent recording (run this file under TSan as well).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "fastvlm/engine/metrics.hpp"

using namespace fastvlm;
using metrics::Histogram;
using metrics::Registry;

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();

// The message of the fastvlm::Error thrown by fn ("" if none was thrown).
template <class F>
std::string error_of(F&& fn) {
    try {
        fn();
    } catch (const fastvlm::Error& e) {
        return e.what();
    }
    return "";
}
}  // namespace

TEST(Metrics, QuantilesNearestRankOneToHundredMs) {
    Histogram h;
    std::vector<int> order(100);
    for (int i = 0; i < 100; ++i) order[i] = i + 1;
    std::shuffle(order.begin(), order.end(), std::mt19937(7));  // order must not matter
    for (int ms : order) h.record(ms / 1000.0);
    const auto s = h.snapshot();
    EXPECT_EQ(s.count, 100u);
    EXPECT_EQ(s.p50, 50 / 1000.0);
    EXPECT_EQ(s.p95, 95 / 1000.0);
    EXPECT_EQ(s.p99, 99 / 1000.0);
    EXPECT_EQ(s.min, 1 / 1000.0);
    EXPECT_EQ(s.max, 100 / 1000.0);
    EXPECT_NEAR(s.sum, 5.050, 1e-12);
    EXPECT_NEAR(s.mean, 0.0505, 1e-14);
    EXPECT_DOUBLE_EQ(h.mean(), s.mean);
    EXPECT_EQ(h.count(), 100u);
}

TEST(Metrics, QuantilesAreRecordedValuesNotInterpolated) {
    Histogram h;
    for (int i = 1; i <= 10; ++i) h.record(i);
    auto s = h.snapshot();
    EXPECT_EQ(s.p50, 5.0);   // rank ceil(0.5·10) = 5 (interpolation would give 5.5)
    EXPECT_EQ(s.p95, 10.0);  // rank ceil(9.5) = 10
    EXPECT_EQ(s.p99, 10.0);

    Histogram one;
    one.record(0.25);
    s = one.snapshot();
    EXPECT_EQ(s.p50, 0.25);
    EXPECT_EQ(s.p95, 0.25);
    EXPECT_EQ(s.p99, 0.25);
    EXPECT_EQ(s.min, 0.25);
    EXPECT_EQ(s.max, 0.25);
}

TEST(Metrics, EmptyHistogramIsAllZero) {
    Histogram h;
    const auto s = h.snapshot();
    EXPECT_EQ(s.count, 0u);
    EXPECT_EQ(s.sum, 0.0);
    EXPECT_EQ(s.mean, 0.0);
    EXPECT_EQ(s.min, 0.0);
    EXPECT_EQ(s.max, 0.0);
    EXPECT_EQ(s.p50, 0.0);
    EXPECT_EQ(s.p95, 0.0);
    EXPECT_EQ(s.p99, 0.0);
    EXPECT_EQ(h.mean(), 0.0);
    ASSERT_EQ(s.bounds.size(), Histogram::default_bounds().size() + 1);
    ASSERT_EQ(s.cumulative.size(), s.bounds.size());
    for (auto c : s.cumulative) EXPECT_EQ(c, 0u);
}

TEST(Metrics, RingWindowDropsOldSamples) {
    Histogram h({1.0}, 10);
    EXPECT_EQ(h.window(), 10u);
    for (int i = 1; i <= 100; ++i) h.record(i);
    auto s = h.snapshot();
    // The window holds 91..100.
    EXPECT_EQ(s.p50, 95.0);
    EXPECT_EQ(s.p95, 100.0);
    EXPECT_EQ(s.p99, 100.0);
    // count, sum, min, max are all-time.
    EXPECT_EQ(s.count, 100u);
    EXPECT_EQ(s.sum, 5050.0);
    EXPECT_EQ(s.min, 1.0);
    EXPECT_EQ(s.max, 100.0);

    // Ten new samples push every old one (including the large ones) out of the window.
    for (int i = 0; i < 10; ++i) h.record(0.5);
    s = h.snapshot();
    EXPECT_EQ(s.p50, 0.5);
    EXPECT_EQ(s.p99, 0.5);
    EXPECT_EQ(s.max, 100.0);
    // Nine: one old sample (100) is still in the window.
    Histogram g({1.0}, 10);
    for (int i = 1; i <= 100; ++i) g.record(i);
    for (int i = 0; i < 9; ++i) g.record(0.5);
    s = g.snapshot();
    EXPECT_EQ(s.p50, 0.5);
    EXPECT_EQ(s.p99, 100.0);
}

TEST(Metrics, BucketsAreCumulativeWithLeSemantics) {
    Histogram h({0.1, 0.5, 1.0});
    using V = std::vector<std::uint64_t>;
    h.record(0.1);  // equal to a bound: in that bucket
    EXPECT_EQ(h.snapshot().cumulative, (V{1, 1, 1, 1}));
    h.record(std::nextafter(0.1, 1.0));  // just above: the next one
    EXPECT_EQ(h.snapshot().cumulative, (V{1, 2, 2, 2}));
    h.record(0.5);
    EXPECT_EQ(h.snapshot().cumulative, (V{1, 3, 3, 3}));
    h.record(1.0);
    EXPECT_EQ(h.snapshot().cumulative, (V{1, 3, 4, 4}));
    h.record(2.0);  // above the last finite bound: only +Inf
    EXPECT_EQ(h.snapshot().cumulative, (V{1, 3, 4, 5}));
    h.record(-1.0);
    h.record(0.0);
    const auto s = h.snapshot();
    EXPECT_EQ(s.cumulative, (V{3, 5, 6, 7}));
    EXPECT_EQ(s.bounds, (std::vector<double>{0.1, 0.5, 1.0, kInf}));
    EXPECT_EQ(s.cumulative.back(), s.count);
    EXPECT_EQ(s.min, -1.0);
}

TEST(Metrics, DefaultBounds) {
    const auto b = Histogram::default_bounds();
    EXPECT_GE(b.size(), 18u);
    EXPECT_LE(b.size(), 24u);
    EXPECT_EQ(b.front(), 0.0005);
    EXPECT_EQ(b.back(), 120.0);
    for (std::size_t i = 1; i < b.size(); ++i) EXPECT_GT(b[i], b[i - 1]);
    Histogram h;
    EXPECT_EQ(h.bounds(), b);
    EXPECT_EQ(h.snapshot().bounds.back(), kInf);
}

TEST(Metrics, InvalidBoundsWindowAndValues) {
    EXPECT_THROW(Histogram({0.5, 0.1}), fastvlm::Error);
    EXPECT_THROW(Histogram({0.1, 0.1}), fastvlm::Error);
    EXPECT_THROW(Histogram({0.1, std::nan("")}), fastvlm::Error);
    EXPECT_THROW(Histogram({kInf, 1.0}), fastvlm::Error);
    EXPECT_THROW(Histogram({0.1}, 0), fastvlm::Error);
    Histogram ok({0.1, kInf});  // a trailing +Inf is accepted and implied anyway
    EXPECT_EQ(ok.bounds(), (std::vector<double>{0.1}));
    EXPECT_EQ(ok.snapshot().bounds, (std::vector<double>{0.1, kInf}));
    EXPECT_THROW(ok.record(std::nan("")), fastvlm::Error);
    EXPECT_THROW(ok.record(kInf), fastvlm::Error);
    EXPECT_EQ(ok.count(), 0u);
}

TEST(Metrics, PrometheusAndJsonExactOutput) {
    Registry r;
    r.counter("requests_total", "Requests finished.", {{"status", "ok"}}).add(3);
    r.counter("requests_total", "", {{"status", "error"}}).add();
    r.gauge("queue_depth", "Waiting requests.").set(5);
    r.gauge("kv_bytes", "", {{"pool", "a"}}).set(1.5);
    auto& h = r.histogram("ttft_seconds", "Time to first token.", {0.1, 1.0});
    h.record(0.0625);
    h.record(0.5);
    h.record(2.0);

    const std::string expected =
        "# TYPE fastvlm_kv_bytes gauge\n"
        "fastvlm_kv_bytes{pool=\"a\"} 1.5\n"
        "# HELP fastvlm_queue_depth Waiting requests.\n"
        "# TYPE fastvlm_queue_depth gauge\n"
        "fastvlm_queue_depth 5\n"
        "# HELP fastvlm_requests_total Requests finished.\n"
        "# TYPE fastvlm_requests_total counter\n"
        "fastvlm_requests_total{status=\"error\"} 1\n"
        "fastvlm_requests_total{status=\"ok\"} 3\n"
        "# HELP fastvlm_ttft_seconds Time to first token.\n"
        "# TYPE fastvlm_ttft_seconds histogram\n"
        "fastvlm_ttft_seconds_bucket{le=\"0.1\"} 1\n"
        "fastvlm_ttft_seconds_bucket{le=\"1\"} 2\n"
        "fastvlm_ttft_seconds_bucket{le=\"+Inf\"} 3\n"
        "fastvlm_ttft_seconds_sum 2.5625\n"
        "fastvlm_ttft_seconds_count 3\n";
    EXPECT_EQ(r.to_prometheus(), expected);
    EXPECT_EQ(r.to_prometheus("app:"), [&] {
        std::string s = expected;
        for (std::size_t p; (p = s.find("fastvlm_")) != std::string::npos;) s.replace(p, 8, "app:");
        return s;
    }());

    const auto j = r.to_json();
    ASSERT_TRUE(j.is_object());
    EXPECT_EQ(j.size(), 3u);
    EXPECT_EQ(j["counters"]["requests_total"]["status=ok"], 3);
    EXPECT_EQ(j["counters"]["requests_total"]["status=error"], 1);
    EXPECT_EQ(j["counters"]["requests_total"].size(), 2u);
    EXPECT_EQ(j["gauges"]["queue_depth"], 5.0);
    EXPECT_EQ(j["gauges"]["kv_bytes"]["pool=a"], 1.5);
    const auto& t = j["histograms"]["ttft_seconds"];
    EXPECT_EQ(t["count"], 3);
    EXPECT_EQ(t["sum"], 2.5625);
    EXPECT_DOUBLE_EQ(t["mean"].get<double>(), 2.5625 / 3);
    EXPECT_EQ(t["min"], 0.0625);
    EXPECT_EQ(t["max"], 2.0);
    EXPECT_EQ(t["p50"], 0.5);
    EXPECT_EQ(t["p95"], 2.0);
    EXPECT_EQ(t["p99"], 2.0);
    EXPECT_EQ(t["p50_ms"], 500.0);
    EXPECT_EQ(t["p95_ms"], 2000.0);
    EXPECT_EQ(t["p99_ms"], 2000.0);
    EXPECT_DOUBLE_EQ(t["mean_ms"].get<double>(), 2562.5 / 3);
    EXPECT_EQ(t.size(), 12u);
}

TEST(Metrics, LabelsSortedAndMixedFamily) {
    Registry r;
    auto& c = r.counter("x_total", "", {{"b", "2"}, {"a", "1"}});
    EXPECT_EQ(&c, &r.counter("x_total", "", {{"a", "1"}, {"b", "2"}}));  // same series, other order
    c.add(2);
    r.counter("x_total").add(7);  // the unlabelled series of the same family
    EXPECT_EQ(r.to_prometheus(""),
              "# TYPE x_total counter\n"
              "x_total 7\n"
              "x_total{a=\"1\",b=\"2\"} 2\n");
    const auto j = r.to_json();
    EXPECT_EQ(j["counters"]["x_total"]["a=1,b=2"], 2);
    EXPECT_EQ(j["counters"]["x_total"][""], 7);
    Registry plain;
    plain.counter("n").add(4);
    EXPECT_EQ(plain.to_json()["counters"]["n"], 4);  // only unlabelled: a plain number
    EXPECT_EQ(plain.to_json()["histograms"], nlohmann::json::object());
}

TEST(Metrics, LabelAndHelpEscaping) {
    Registry r;
    r.gauge("g", "Line one\nback\\slash \"quoted\"", {{"path", "a\"b\\c\nd"}}).set(-2.5);
    EXPECT_EQ(r.to_prometheus(""),
              "# HELP g Line one\\nback\\\\slash \"quoted\"\n"  // HELP escapes only \ and newline
              "# TYPE g gauge\n"
              "g{path=\"a\\\"b\\\\c\\nd\"} -2.5\n");
    EXPECT_EQ(r.to_json()["gauges"]["g"]["path=a\"b\\c\nd"], -2.5);
}

TEST(Metrics, NumbersRoundTrip) {
    Registry r;
    r.gauge("a").set(0.1 + 0.2);
    r.gauge("b").set(1e-7);
    r.gauge("c").set(-kInf);
    r.counter("d").add(std::numeric_limits<std::uint64_t>::max());
    const std::string text = r.to_prometheus("");
    auto value_of = [&](const std::string& name) {
        const auto p = text.find("\n" + name + " ");
        EXPECT_NE(p, std::string::npos) << name;
        const auto b = p + name.size() + 2;
        return text.substr(b, text.find('\n', b) - b);
    };
    EXPECT_EQ(std::strtod(value_of("a").c_str(), nullptr), 0.1 + 0.2);
    EXPECT_EQ(value_of("a"), "0.30000000000000004");
    EXPECT_EQ(std::strtod(value_of("b").c_str(), nullptr), 1e-7);
    EXPECT_EQ(value_of("c"), "-Inf");
    EXPECT_EQ(value_of("d"), "18446744073709551615");
}

TEST(Metrics, NameValidation) {
    Registry r;
    std::string msg = error_of([&] { r.counter("bad name"); });
    EXPECT_NE(msg.find("'bad name'"), std::string::npos) << msg;
    msg = error_of([&] { r.histogram("bad-name"); });
    EXPECT_NE(msg.find("'bad-name'"), std::string::npos) << msg;
    msg = error_of([&] { r.gauge("1abc"); });
    EXPECT_NE(msg.find("'1abc'"), std::string::npos) << msg;
    EXPECT_THROW(r.counter(""), fastvlm::Error);
    EXPECT_THROW(r.gauge("é"), fastvlm::Error);
    EXPECT_NO_THROW(r.counter("ok:name_1"));
    EXPECT_NO_THROW(r.gauge("_x"));
    EXPECT_NO_THROW(r.histogram(":h9"));

    // Label names.
    msg = error_of([&] { r.counter("c", "", {{"1x", "v"}}); });
    EXPECT_NE(msg.find("'1x'"), std::string::npos) << msg;
    EXPECT_THROW(r.counter("c", "", {{"__reserved", "v"}}), fastvlm::Error);
    EXPECT_THROW(r.counter("c", "", {{"a-b", "v"}}), fastvlm::Error);
    EXPECT_THROW(r.counter("c", "", {{"k", "1"}, {"k", "2"}}), fastvlm::Error);

    // One name, one type.
    r.histogram("lat");
    msg = error_of([&] { r.counter("lat"); });
    EXPECT_NE(msg.find("'lat'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("histogram"), std::string::npos) << msg;
    EXPECT_THROW(r.gauge("ok:name_1"), fastvlm::Error);

    // Prefix.
    EXPECT_THROW(r.to_prometheus("bad-"), fastvlm::Error);
    EXPECT_THROW(r.to_prometheus("9"), fastvlm::Error);

    // Nothing invalid was registered.
    const auto j = r.to_json();
    EXPECT_EQ(j["counters"].size(), 1u);
    EXPECT_EQ(j["gauges"].size(), 1u);
    EXPECT_EQ(j["histograms"].size(), 2u);
}

TEST(Metrics, RegistryReturnsStableReferences) {
    Registry r;
    Histogram* h = &r.histogram("a", "first help");
    metrics::Counter* c = &r.counter("c", "", {{"k", "v"}});
    metrics::Gauge* g = &r.gauge("g");
    for (int i = 0; i < 1000; ++i) {
        r.histogram("h" + std::to_string(i));
        r.counter("c", "", {{"k", std::to_string(i)}});
        r.gauge("g" + std::to_string(i));
    }
    EXPECT_EQ(h, &r.histogram("a", "other help"));
    EXPECT_EQ(c, &r.counter("c", "", {{"k", "v"}}));
    EXPECT_EQ(g, &r.gauge("g"));
    EXPECT_EQ(h->name(), "a");
    // The first non-empty help text stays.
    EXPECT_NE(r.to_prometheus().find("# HELP fastvlm_a first help\n"), std::string::npos);
}

TEST(Metrics, HistogramBoundsOverload) {
    Registry r;
    auto& h = r.histogram("h", "", {0.1, 0.2}, 16);
    EXPECT_EQ(&h, &r.histogram("h"));
    EXPECT_EQ(&h, &r.histogram("h", "", {0.1, 0.2, kInf}, 16));
    EXPECT_THROW(r.histogram("h", "", {0.1, 0.3}, 16), fastvlm::Error);
    EXPECT_THROW(r.histogram("h", "", {0.1, 0.2}, 17), fastvlm::Error);
    EXPECT_EQ(h.window(), 16u);
    // Invalid bounds leave no trace in the registry.
    EXPECT_THROW(r.histogram("bad", "", {2.0, 1.0}), fastvlm::Error);
    EXPECT_EQ(r.to_json()["histograms"].size(), 1u);
    EXPECT_NO_THROW(r.counter("bad"));
}

TEST(Metrics, GaugeSetAndAdd) {
    metrics::Gauge g;
    EXPECT_EQ(g.value(), 0.0);
    g.set(3.5);
    g.add(-1.25);
    EXPECT_EQ(g.value(), 2.25);
    metrics::Counter c;
    c.add();
    c.add(41);
    EXPECT_EQ(c.value(), 42u);
}

TEST(Metrics, AnomalyFiresOnTwiceTheMeanAfterMinSamples) {
    Registry r;
    std::vector<metrics::Anomaly> seen;
    r.set_anomaly_callback([&](const metrics::Anomaly& a) { seen.push_back(a); });
    auto& h = r.histogram("decode");
    for (int i = 0; i < 7; ++i) h.record(1.0);
    h.record(10.0);  // 10x the mean, but only 7 samples before it (< 8): no anomaly
    EXPECT_TRUE(seen.empty());
    // Now 8 samples, mean 17/8 = 2.125: exactly 2x (4.25) is not "exceeds".
    h.record(4.25);
    EXPECT_TRUE(seen.empty());
    EXPECT_DOUBLE_EQ(h.mean(), 21.25 / 9);
    h.record(5.0);  // > 2 · 21.25/9 = 4.72
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].stage, "decode");
    EXPECT_EQ(seen[0].seconds, 5.0);
    EXPECT_DOUBLE_EQ(seen[0].running_mean, 21.25 / 9);
    EXPECT_EQ(seen[0].samples, 9u);
    h.record(1.0);
    h.record(4.0);
    EXPECT_EQ(seen.size(), 1u);

    // Configurable: factor 3, at least 2 samples before.
    r.set_anomaly_threshold(3.0, 2);
    auto& g = r.histogram("prefill");
    g.record(1.0);
    g.record(100.0);  // only 1 sample before
    g.record(150.0);  // mean 50.5: 150 < 151.5
    EXPECT_EQ(seen.size(), 1u);
    g.record(252.0);  // mean 251/3: 252 > 251
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_EQ(seen[1].stage, "prefill");
    EXPECT_EQ(seen[1].samples, 3u);
    EXPECT_DOUBLE_EQ(seen[1].running_mean, 251.0 / 3);

    EXPECT_THROW(r.set_anomaly_threshold(0.0, 2), fastvlm::Error);
    EXPECT_THROW(r.set_anomaly_threshold(2.0, 0), fastvlm::Error);

    // No callback: anomalies are simply not reported.
    r.set_anomaly_callback(nullptr);
    g.record(1e4);
    EXPECT_EQ(seen.size(), 2u);
    EXPECT_EQ(g.count(), 5u);
}

TEST(Metrics, AnomalyCallbackExceptionPropagatesAfterRecording) {
    Registry r;
    r.set_anomaly_threshold(2.0, 1);
    r.set_anomaly_callback([](const metrics::Anomaly&) { throw std::runtime_error("boom"); });
    auto& h = r.histogram("x");
    h.record(1.0);
    EXPECT_THROW(h.record(3.0), std::runtime_error);
    EXPECT_EQ(h.count(), 2u);
    h.record(0.5);  // the histogram is still usable
    EXPECT_EQ(h.count(), 3u);
}

TEST(Metrics, CallbackMayUseTheRegistryWithoutDeadlock) {
    Registry r;
    r.set_anomaly_threshold(2.0, 1);
    int first = 0, second = 0;
    r.set_anomaly_callback([&](const metrics::Anomaly& a) {
        ++first;
        // Readers, lookups, a record into the same histogram, and replacing the callback itself.
        const auto j = r.to_json();
        EXPECT_EQ(j["histograms"][a.stage]["count"], 2);
        EXPECT_FALSE(r.to_prometheus().empty());
        EXPECT_EQ(r.histogram(a.stage).snapshot().count, 2u);
        EXPECT_DOUBLE_EQ(r.histogram(a.stage).mean(), 5.5);
        r.counter("anomalies_total", "", {{"stage", a.stage}}).add();
        r.histogram(a.stage).record(0.0);  // not anomalous, no recursion
        r.set_anomaly_callback([&](const metrics::Anomaly&) { ++second; });
    });
    auto& h = r.histogram("lat");
    h.record(1.0);
    h.record(10.0);
    EXPECT_EQ(first, 1);
    EXPECT_EQ(h.count(), 3u);
    EXPECT_EQ(r.counter("anomalies_total", "", {{"stage", "lat"}}).value(), 1u);
    h.record(100.0);  // goes to the replacement
    EXPECT_EQ(first, 1);
    EXPECT_EQ(second, 1);
}

TEST(Metrics, ConcurrentRecordingIsExact) {
    constexpr int kThreads = 8, kPerThread = 10000;
    Registry r;
    auto& h = r.histogram("step", "Step time.");
    auto& total = r.counter("steps_total");
    auto& g = r.gauge("inflight");
    std::atomic<bool> done{false};
    std::atomic<int> reads{0};
    std::thread reader([&] {
        // Reads while the writers run: exercised for races (TSan), and each read must be self-consistent.
        do {  // at least once, however the threads are scheduled
            const auto s = h.snapshot();
            EXPECT_EQ(s.cumulative.back(), s.count);
            const auto j = r.to_json();
            EXPECT_TRUE(j.contains("histograms"));
            EXPECT_FALSE(r.to_prometheus().empty());
            reads.fetch_add(1);
        } while (!done.load());
    });
    std::vector<std::thread> writers;
    for (int t = 0; t < kThreads; ++t) {
        writers.emplace_back([&, t] {
            auto& mine = r.counter("per_thread_total", "", {{"thread", std::to_string(t)}});
            for (int i = 0; i < kPerThread; ++i) {
                h.record((i % 100 + 1) / 1000.0);
                total.add();
                mine.add();
                g.add(0.5);
                if (i % 1000 == 0) r.counter("lookups_total").add();  // lookups race with creation
            }
        });
    }
    for (auto& w : writers) w.join();
    done = true;
    reader.join();
    EXPECT_GT(reads.load(), 0);

    // The same multiset of values, recorded serially.
    Histogram ref;
    for (int t = 0; t < kThreads; ++t)
        for (int i = 0; i < kPerThread; ++i) ref.record((i % 100 + 1) / 1000.0);
    const auto s = h.snapshot(), e = ref.snapshot();
    EXPECT_EQ(s.count, std::uint64_t(kThreads) * kPerThread);
    EXPECT_EQ(s.cumulative, e.cumulative);
    EXPECT_EQ(s.min, e.min);
    EXPECT_EQ(s.max, e.max);
    EXPECT_NEAR(s.sum, e.sum, 1e-9);
    EXPECT_EQ(total.value(), std::uint64_t(kThreads) * kPerThread);
    EXPECT_EQ(g.value(), 0.5 * kThreads * kPerThread);
    EXPECT_EQ(r.counter("lookups_total").value(), std::uint64_t(kThreads) * (kPerThread / 1000));
    const auto j = r.to_json();
    for (int t = 0; t < kThreads; ++t)
        EXPECT_EQ(j["counters"]["per_thread_total"]["thread=" + std::to_string(t)], kPerThread);
}

TEST(Metrics, ConcurrentAnomaliesWithReentrantCallback) {
    // Each thread records 99 × 1.0 then one 1000.0, repeatedly. Whatever the interleaving, the samples before
    // an outlier include at least 99 ones per earlier outlier, so their mean is at most ~11 and every outlier
    // is anomalous, while a 1.0 or 0.0 never is: the count of anomalies is exact.
    constexpr int kThreads = 4, kPerThread = 5000;
    Registry r;
    std::atomic<int> fired{0};
    r.set_anomaly_callback([&](const metrics::Anomaly& a) {
        fired.fetch_add(1);
        r.counter("anomalies_total", "", {{"stage", a.stage}}).add();
        (void)r.to_json();
        (void)r.to_prometheus();
        r.histogram(a.stage).record(0.0);
    });
    auto& h = r.histogram("decode");
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([&] {
            for (int i = 1; i <= kPerThread; ++i) h.record(i % 100 == 0 ? 1000.0 : 1.0);
        });
    std::thread reader([&] {
        for (int i = 0; i < 50; ++i) (void)r.to_prometheus();
    });
    for (auto& t : threads) t.join();
    reader.join();
    constexpr int kOutliers = kThreads * (kPerThread / 100);
    EXPECT_EQ(fired.load(), kOutliers);
    EXPECT_EQ(r.counter("anomalies_total", "", {{"stage", "decode"}}).value(), std::uint64_t(kOutliers));
    EXPECT_EQ(h.count(), std::uint64_t(kThreads) * kPerThread + kOutliers);
}

TEST(Metrics, ResidentSetSize) {
    if (!std::filesystem::exists("/proc/self/status")) GTEST_SKIP() << "no /proc/self/status";
    const double rss = metrics::rss_bytes(), peak = metrics::peak_rss_bytes();
    EXPECT_GT(rss, 0.0);
    EXPECT_GE(peak, rss);
    EXPECT_EQ(std::fmod(rss, 1024.0), 0.0);  // kB → bytes
    // Touch 64 MiB: the current RSS must grow by most of it.
    std::vector<char> big(64 << 20);
    for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = char(i);
    const double after = metrics::rss_bytes();
    EXPECT_GT(after, rss + 32.0 * (1 << 20));
    EXPECT_GE(metrics::peak_rss_bytes(), after);
    EXPECT_EQ(big[4096], char(4096));
}

// attach(): a child registry's series appear with the extra label, families of the same name from
// several registries are merged under one HELP/TYPE, and JSON holds each child under "by_<label>".
TEST(Metrics, AttachedRegistriesRenderWithTheirLabel) {
    Registry parent, a, b;
    parent.counter("switches_total", "Switches").add(2);
    a.counter("requests_total", "Requests by outcome", {{"status", "ok"}}).add(3);
    b.counter("requests_total", "Requests by outcome", {{"status", "ok"}}).add(5);
    b.gauge("queue_length", "Queue").set(7);
    a.histogram("ttft_seconds", "TTFT", {0.1, 1.0}).record(0.5);
    parent.attach("preset", "int8", a);
    parent.attach("preset", "int4", b);
    const std::string p = parent.to_prometheus();
    EXPECT_NE(p.find("fastvlm_switches_total 2\n"), std::string::npos) << p;
    EXPECT_NE(p.find("fastvlm_requests_total{preset=\"int8\",status=\"ok\"} 3\n"), std::string::npos) << p;
    EXPECT_NE(p.find("fastvlm_requests_total{preset=\"int4\",status=\"ok\"} 5\n"), std::string::npos) << p;
    EXPECT_NE(p.find("fastvlm_queue_length{preset=\"int4\"} 7\n"), std::string::npos) << p;
    EXPECT_NE(p.find("fastvlm_ttft_seconds_bucket{preset=\"int8\",le=\"1\"} 1\n"), std::string::npos) << p;
    EXPECT_NE(p.find("fastvlm_ttft_seconds_count{preset=\"int8\"} 1\n"), std::string::npos) << p;
    std::size_t types = 0;
    for (std::size_t at = 0; (at = p.find("# TYPE fastvlm_requests_total counter", at)) != std::string::npos; ++at) ++types;
    EXPECT_EQ(types, 1u) << "one TYPE line per family, whatever registries hold it";
    const auto j = parent.to_json();
    EXPECT_EQ(j["counters"]["switches_total"], 2);
    EXPECT_EQ(j["by_preset"]["int8"]["counters"]["requests_total"]["status=ok"], 3);
    EXPECT_EQ(j["by_preset"]["int4"]["gauges"]["queue_length"], 7.0);
    EXPECT_NE(error_of([&] { parent.attach("le", "x", a); }), "");
    EXPECT_NE(error_of([&] { parent.attach("bad-name", "x", a); }), "");
    EXPECT_NE(error_of([&] { parent.attach("preset", "x", parent); }), "");
}
