// fastvlm/engine/metrics.hpp — latency histograms, counters and gauges for the inference engine, exported as
// JSON or in the Prometheus text format, plus the process's resident memory.
//
// Design:
//  * A Histogram records durations in seconds. Recording takes one short mutex (per histogram) and never
//    allocates: the ring buffer for quantiles is reserved at construction. It keeps
//      - count, sum, min, max over every sample ever recorded (min/max are all-time, like count and sum);
//      - fixed cumulative buckets in the Prometheus sense (bucket i counts samples <= bounds[i], "le"), whose
//        upper bounds are chosen at construction (+Inf is implicit);
//      - the last `window` samples (default 4096). Quantiles p50/p95/p99 are computed on read from a sorted
//        copy of that window by the nearest-rank method (rank = ceil(q·n), integer arithmetic), so they are
//        exact values that were recorded, and they reflect recent behaviour rather than all of history.
//  * A Registry owns named metrics. histogram()/counter()/gauge() create on first use and return the same
//    object afterwards; references stay valid for the registry's lifetime (each metric lives in its own
//    unique_ptr). A lookup takes the registry mutex and builds a key string, so a hot loop should keep the
//    reference rather than look the metric up for every event.
//  * Counters and gauges are lock-free atomics. A name may carry several label sets (a "family": one help
//    text, one type); labels are sorted by name, so {a,b} and {b,a} are the same series.
//  * Anomalies: a histogram created by a registry compares each new sample with the mean of all samples
//    recorded before it; if at least min_samples (default 8) came before and the new value is strictly
//    greater than factor (default 2) × that mean, the registry's anomaly callback is called on the recording
//    thread, after the histogram's mutex is released and with no registry lock held. The callback may
//    therefore read or update the registry (to_json, snapshot, counters, even set_anomaly_callback) without
//    deadlocking. An exception thrown by the callback propagates out of record(); the sample is recorded.
//  * Lock order is registry mutex → histogram mutex (exporters snapshot histograms while holding the
//    registry mutex); record() never takes the registry mutex, only the small callback mutex when an
//    anomaly fires, so there is no cycle.
//  * Numbers are printed in their shortest round-trip form (std::to_chars, %g style); infinities as +Inf/-Inf.
#pragma once
#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastvlm/core/error.hpp"

namespace fastvlm::metrics {

// Label set of one series, e.g. {{"status", "ok"}}. Order does not matter (sorted by name on creation).
using Labels = std::vector<std::pair<std::string, std::string>>;

// A copy of a histogram's state. Quantiles come from the ring window; everything else is all-time.
// bounds ends with +Inf and has the same size as cumulative; cumulative.back() == count.
struct HistogramSnapshot {
    std::uint64_t count = 0;
    double sum = 0, mean = 0, min = 0, max = 0;  // all 0 when empty
    double p50 = 0, p95 = 0, p99 = 0;            // seconds, nearest rank over the window; 0 when empty
    std::vector<double> bounds;
    std::vector<std::uint64_t> cumulative;
};

// Passed to the anomaly callback: `seconds` exceeded factor × `running_mean`, the mean of the `samples`
// values recorded in histogram `stage` before this one.
struct Anomaly {
    std::string stage;
    double seconds = 0;
    double running_mean = 0;
    std::uint64_t samples = 0;
};

namespace detail {

inline bool valid_metric_name(std::string_view s) {
    if (s.empty()) return false;
    for (std::size_t i = 0; i < s.size(); ++i) {
        const char c = s[i];
        const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
    }
    return true;
}

// Label names: [a-zA-Z_][a-zA-Z0-9_]*, and names starting with "__" are reserved by Prometheus.
inline bool valid_label_name(std::string_view s) {
    if (s.empty() || s.starts_with("__")) return false;
    for (std::size_t i = 0; i < s.size(); ++i) {
        const char c = s[i];
        const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
    }
    return true;
}

// Shortest text that parses back to the same double, %g style ("0.0005", "1e+06"); "+Inf", "-Inf", "NaN".
inline std::string format_number(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general);
    return std::string(buf, r.ptr);
}

// Label value escaping of the text format 0.0.4: backslash, double quote and newline.
inline std::string escape_label_value(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        if (c == '\\') out += "\\\\";
        else if (c == '"') out += "\\\"";
        else if (c == '\n') out += "\\n";
        else out += c;
    }
    return out;
}

// HELP text escaping: backslash and newline only.
inline std::string escape_help(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        if (c == '\\') out += "\\\\";
        else if (c == '\n') out += "\\n";
        else out += c;
    }
    return out;
}

// Nearest-rank quantile of a sorted, non-empty vector; q_permille in (0, 1000]. rank = ceil(q·n) ≥ 1.
inline double nearest_rank(const std::vector<double>& sorted, std::uint64_t q_permille) {
    const std::uint64_t n = sorted.size();
    const std::uint64_t rank = std::max<std::uint64_t>(1, (q_permille * n + 999) / 1000);
    return sorted[std::min(rank, n) - 1];
}

// Shared by a registry and the histograms it owns: the anomaly rule and the callback.
struct AnomalyHook {
    std::atomic<double> factor{2.0};
    std::atomic<std::uint64_t> min_samples{8};
    std::mutex mu;  // guards callback (the pointer, not the call)
    std::shared_ptr<const std::function<void(const Anomaly&)>> callback;

    void fire(const Anomaly& a) {
        std::shared_ptr<const std::function<void(const Anomaly&)>> cb;
        {
            std::lock_guard lk(mu);
            cb = callback;
        }
        if (cb && *cb) (*cb)(a);  // no lock held: the callback may re-enter the registry
    }
};

}  // namespace detail

class Histogram {
public:
    using Snapshot = HistogramSnapshot;

    // 21 bounds from 0.5 ms to 120 s, roughly log-spaced (1-2.5-5-7.5 steps); a superset of the Prometheus
    // client default buckets, with extra resolution at the ms end (per-token latency) and up to 2 minutes
    // (whole requests).
    static std::vector<double> default_bounds() {
        return {0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
                0.5,    0.75,  1.0,    2.5,   5.0,    7.5,  10.0, 30.0, 60.0,  120.0};
    }

    // bounds: finite, strictly increasing upper bounds in seconds (a trailing +Inf is accepted and ignored;
    // +Inf is always implied). window: how many recent samples the quantiles are computed from (≥ 1).
    explicit Histogram(std::vector<double> bounds = default_bounds(), std::size_t window = 4096)
        : bounds_(std::move(bounds)), window_(window) {
        if (!bounds_.empty() && bounds_.back() == std::numeric_limits<double>::infinity()) bounds_.pop_back();
        for (std::size_t i = 0; i < bounds_.size(); ++i) {
            FASTVLM_CHECK(std::isfinite(bounds_[i]), "metrics: histogram bound ", i, " is not finite (",
                          bounds_[i], "); +Inf is implicit and may only come last");
            FASTVLM_CHECK(i == 0 || bounds_[i] > bounds_[i - 1], "metrics: histogram bounds must be strictly "
                          "increasing, but bound ", i, " (", bounds_[i], ") <= bound ", i - 1, " (",
                          bounds_[i - 1], ")");
        }
        FASTVLM_CHECK(window_ >= 1, "metrics: histogram window must be at least 1 sample");
        buckets_.assign(bounds_.size() + 1, 0);
        ring_.reserve(window_);
    }
    Histogram(const Histogram&) = delete;
    Histogram& operator=(const Histogram&) = delete;

    // Records one value in seconds; must be finite (a NaN or infinity would poison sum and mean forever).
    // No allocation. May call the owning registry's anomaly callback (see the top of this file).
    void record(double seconds) {
        FASTVLM_CHECK(std::isfinite(seconds), "metrics: histogram '", name_, "' got a non-finite value (",
                      seconds, ")");
        const std::size_t b = static_cast<std::size_t>(
            std::lower_bound(bounds_.begin(), bounds_.end(), seconds) - bounds_.begin());  // first bound >= v
        bool anomalous = false;
        double prev_mean = 0;
        std::uint64_t prev_count = 0;
        {
            std::lock_guard lk(mu_);
            prev_count = count_;
            if (hook_ && prev_count > 0) {
                prev_mean = sum_ / static_cast<double>(prev_count);
                anomalous = prev_count >= hook_->min_samples.load(std::memory_order_relaxed) &&
                            seconds > hook_->factor.load(std::memory_order_relaxed) * prev_mean;
            }
            if (count_ == 0 || seconds < min_) min_ = seconds;
            if (count_ == 0 || seconds > max_) max_ = seconds;
            ++count_;
            sum_ += seconds;
            ++buckets_[b];
            if (ring_.size() < window_) {
                ring_.push_back(seconds);  // within the reserved capacity
            } else {
                ring_[head_] = seconds;
                head_ = head_ + 1 == window_ ? 0 : head_ + 1;
            }
        }
        if (anomalous) hook_->fire(Anomaly{name_, seconds, prev_mean, prev_count});
    }

    Snapshot snapshot() const {
        Snapshot s;
        std::vector<double> window;
        std::vector<std::uint64_t> buckets;
        {
            std::lock_guard lk(mu_);
            s.count = count_;
            s.sum = sum_;
            s.min = min_;
            s.max = max_;
            window = ring_;
            buckets = buckets_;
        }
        s.mean = s.count ? s.sum / static_cast<double>(s.count) : 0.0;
        if (!window.empty()) {
            std::sort(window.begin(), window.end());
            s.p50 = detail::nearest_rank(window, 500);
            s.p95 = detail::nearest_rank(window, 950);
            s.p99 = detail::nearest_rank(window, 990);
        }
        s.bounds = bounds_;
        s.bounds.push_back(std::numeric_limits<double>::infinity());
        s.cumulative.resize(buckets.size());
        std::uint64_t acc = 0;
        for (std::size_t i = 0; i < buckets.size(); ++i) s.cumulative[i] = acc += buckets[i];
        return s;
    }

    // Mean of every sample recorded so far (0 when empty): the reference for anomaly detection.
    double mean() const {
        std::lock_guard lk(mu_);
        return count_ ? sum_ / static_cast<double>(count_) : 0.0;
    }
    std::uint64_t count() const {
        std::lock_guard lk(mu_);
        return count_;
    }
    const std::vector<double>& bounds() const { return bounds_; }  // finite bounds, without +Inf
    std::size_t window() const { return window_; }
    const std::string& name() const { return name_; }  // empty unless owned by a registry

private:
    friend class Registry;

    std::vector<double> bounds_;
    std::size_t window_;
    std::string name_;                        // set once by the registry before the histogram is shared
    detail::AnomalyHook* hook_ = nullptr;     // the registry's, or null for a standalone histogram

    mutable std::mutex mu_;
    std::uint64_t count_ = 0;
    double sum_ = 0, min_ = 0, max_ = 0;
    std::vector<std::uint64_t> buckets_;      // per bucket (not cumulative); last = (bounds_.back(), +Inf)
    std::vector<double> ring_;                // the last window_ samples
    std::size_t head_ = 0;                    // oldest sample (next to overwrite) once ring_ is full
};

// Monotonic event count.
class Counter {
public:
    void add(std::uint64_t n = 1) { v_.fetch_add(n, std::memory_order_relaxed); }
    std::uint64_t value() const { return v_.load(std::memory_order_relaxed); }

private:
    std::atomic<std::uint64_t> v_{0};
};

// A value that goes up and down (queue depth, KV-cache bytes, ...).
class Gauge {
public:
    void set(double v) { v_.store(v, std::memory_order_relaxed); }
    void add(double d) {
        double cur = v_.load(std::memory_order_relaxed);
        while (!v_.compare_exchange_weak(cur, cur + d, std::memory_order_relaxed)) {
        }
    }
    double value() const { return v_.load(std::memory_order_relaxed); }

private:
    std::atomic<double> v_{0.0};
};

class Registry {
public:
    Registry() = default;
    Registry(const Registry&) = delete;
    Registry& operator=(const Registry&) = delete;

    // The histogram called `name`, created with the default bounds and a 4096-sample window on first use.
    Histogram& histogram(std::string name, std::string help = "") {
        return histogram_impl(std::move(name), std::move(help), nullptr, 0);
    }
    // Same, with explicit bounds and window for the first creation; a later call with different bounds
    // or window for the same name is an error (calls without them return the existing histogram).
    Histogram& histogram(std::string name, std::string help, std::vector<double> bounds, std::size_t window = 4096) {
        return histogram_impl(std::move(name), std::move(help), &bounds, window);
    }

    Counter& counter(std::string name, std::string help = "", Labels labels = {}) {
        return series<Counter>(Kind::counter, std::move(name), std::move(help), std::move(labels));
    }
    Gauge& gauge(std::string name, std::string help = "", Labels labels = {}) {
        return series<Gauge>(Kind::gauge, std::move(name), std::move(help), std::move(labels));
    }

    // Called (on the recording thread, with no lock held) for every anomalous sample; empty = none.
    void set_anomaly_callback(std::function<void(const Anomaly&)> cb) {
        auto p = cb ? std::make_shared<const std::function<void(const Anomaly&)>>(std::move(cb)) : nullptr;
        std::lock_guard lk(hook_.mu);
        hook_.callback = std::move(p);
    }
    // A sample is anomalous when at least min_samples came before it and it exceeds factor × their mean.
    void set_anomaly_threshold(double factor, std::uint64_t min_samples) {
        FASTVLM_CHECK(std::isfinite(factor) && factor > 0, "metrics: anomaly factor must be finite and > 0, got ",
                      factor);
        FASTVLM_CHECK(min_samples >= 1, "metrics: anomaly min_samples must be at least 1");
        hook_.factor.store(factor, std::memory_order_relaxed);
        hook_.min_samples.store(min_samples, std::memory_order_relaxed);
    }

    // Shows `child` inside this registry: to_prometheus() renders its series with `label`="value" added
    // (families of the same name from several children and this registry are merged), to_json() puts
    // child.to_json() under "by_<label>": {value: ...}. The adaptive engine attaches one engine's registry
    // per preset. The child must outlive this registry; a child is never attached to its own descendant.
    void attach(const std::string& label, std::string value, const Registry& child) {
        FASTVLM_CHECK(detail::valid_label_name(label) && label != "le", "metrics: invalid label name '", label, "' to attach a registry");
        FASTVLM_CHECK(&child != this, "metrics: a registry cannot be attached to itself");
        std::lock_guard lk(mu_);
        children_.push_back({label, std::move(value), &child});
    }

    // {"histograms": {name: {count, sum, mean, min, max, p50, p95, p99, p50_ms, p95_ms, p99_ms, mean_ms}},
    //  "counters": {name: value | {"k=v,k2=v2": value, ...}}, "gauges": likewise}. A family whose only series
    // is unlabelled is a plain number; otherwise an object (the unlabelled series, if any, under key "").
    // Attached registries follow under "by_<label>".
    nlohmann::json to_json() const {
        nlohmann::json out = {{"histograms", nlohmann::json::object()},
                              {"counters", nlohmann::json::object()},
                              {"gauges", nlohmann::json::object()}};
        std::lock_guard lk(mu_);
        for (const auto& [name, fam] : families_) {
            if (fam.kind == Kind::histogram) {
                const HistogramSnapshot s = fam.series.begin()->second->histogram->snapshot();
                out["histograms"][name] = {{"count", s.count},      {"sum", s.sum},        {"mean", s.mean},
                                           {"min", s.min},          {"max", s.max},        {"p50", s.p50},
                                           {"p95", s.p95},          {"p99", s.p99},        {"p50_ms", s.p50 * 1e3},
                                           {"p95_ms", s.p95 * 1e3}, {"p99_ms", s.p99 * 1e3}, {"mean_ms", s.mean * 1e3}};
                continue;
            }
            auto& group = out[fam.kind == Kind::counter ? "counters" : "gauges"];
            auto value = [&](const Series& se) -> nlohmann::json {
                if (se.counter) return se.counter->value();
                return se.gauge->value();
            };
            if (fam.series.size() == 1 && fam.series.begin()->first.empty()) {
                group[name] = value(*fam.series.begin()->second);
            } else {
                nlohmann::json obj = nlohmann::json::object();
                for (const auto& [key, se] : fam.series) obj[key] = value(*se);
                group[name] = std::move(obj);
            }
        }
        for (const auto& c : children_) out["by_" + c.label][c.value] = c.reg->to_json();
        return out;
    }

    // Prometheus text exposition format 0.0.4, families in name order, each name prefixed by `prefix`.
    std::string to_prometheus(std::string_view prefix = "fastvlm_") const {
        FASTVLM_CHECK(prefix.empty() || detail::valid_metric_name(prefix), "metrics: invalid Prometheus prefix '",
                      prefix, "' (must match [a-zA-Z_:][a-zA-Z0-9_:]*)");
        std::string out;
        std::lock_guard lk(mu_);
        // Every family name of this registry and the attached ones; the first to have it gives help and type.
        std::map<std::string, const Family*> names;
        for (const auto& [name, fam] : families_) names.emplace(name, &fam);
        std::vector<std::unique_lock<std::mutex>> child_locks;
        for (const auto& c : children_) {
            child_locks.emplace_back(c.reg->mu_);
            for (const auto& [name, fam] : c.reg->families_) names.emplace(name, &fam);
        }
        for (const auto& [name, first] : names) {
            const std::string full = std::string(prefix) + name;
            if (!first->help.empty()) out += "# HELP " + full + " " + detail::escape_help(first->help) + "\n";
            out += "# TYPE " + full + " " + kind_name(first->kind) + "\n";
            if (auto it = families_.find(name); it != families_.end()) render(out, full, it->second, {});
            for (const auto& c : children_)
                if (auto it = c.reg->families_.find(name); it != c.reg->families_.end() && it->second.kind == first->kind)
                    render(out, full, it->second, {{c.label, c.value}});
        }
        return out;
    }

private:
    enum class Kind { histogram, counter, gauge };
    static const char* kind_name(Kind k) {
        return k == Kind::histogram ? "histogram" : k == Kind::counter ? "counter" : "gauge";
    }

    struct Series {
        Labels labels;  // sorted by name
        std::unique_ptr<Histogram> histogram;
        std::unique_ptr<Counter> counter;
        std::unique_ptr<Gauge> gauge;
    };
    struct Family {
        Kind kind;
        std::string help;
        std::map<std::string, std::unique_ptr<Series>> series;  // key: "k=v,k2=v2" ("" = no labels)
    };

    // The series of one family, each with `extra` labels in front of its own.
    static void render(std::string& out, const std::string& full, const Family& fam, const Labels& extra) {
        if (fam.kind == Kind::histogram) {
            const HistogramSnapshot s = fam.series.begin()->second->histogram->snapshot();
            for (std::size_t i = 0; i < s.bounds.size(); ++i) {
                Labels l = extra;
                l.emplace_back("le", detail::format_number(s.bounds[i]));
                out += full + "_bucket" + label_text(l) + " " + std::to_string(s.cumulative[i]) + "\n";
            }
            out += full + "_sum" + label_text(extra) + " " + detail::format_number(s.sum) + "\n";
            out += full + "_count" + label_text(extra) + " " + std::to_string(s.count) + "\n";
            return;
        }
        for (const auto& [key, se] : fam.series) {
            Labels l = extra;
            l.insert(l.end(), se->labels.begin(), se->labels.end());
            out += full + label_text(l) + " ";
            out += se->counter ? std::to_string(se->counter->value()) : detail::format_number(se->gauge->value());
            out += "\n";
        }
    }
    static std::string label_text(const Labels& labels) {
        if (labels.empty()) return "";
        std::string s = "{";
        for (std::size_t i = 0; i < labels.size(); ++i) {
            if (i) s += ",";
            s += labels[i].first + "=\"" + detail::escape_label_value(labels[i].second) + "\"";
        }
        return s + "}";
    }

    // Validates the name, finds or creates the family (checking its type) and fills in a missing help.
    // Caller holds mu_.
    Family& family(Kind kind, const std::string& name, std::string& help) {
        FASTVLM_CHECK(detail::valid_metric_name(name), "metrics: invalid metric name '", name,
                      "' (must match [a-zA-Z_:][a-zA-Z0-9_:]*)");
        auto [it, inserted] = families_.try_emplace(name, Family{kind, {}, {}});
        Family& fam = it->second;
        FASTVLM_CHECK(fam.kind == kind, "metrics: '", name, "' is already registered as a ", kind_name(fam.kind),
                      ", cannot use it as a ", kind_name(kind));
        if (fam.help.empty() && !help.empty()) fam.help = std::move(help);
        return fam;
    }

    Histogram& histogram_impl(std::string name, std::string help, const std::vector<double>* bounds,
                              std::size_t window) {
        std::lock_guard lk(mu_);
        Family& fam = family(Kind::histogram, name, help);
        auto it = fam.series.find("");
        if (it != fam.series.end()) {
            Histogram& h = *it->second->histogram;
            if (bounds) {
                std::vector<double> b = *bounds;
                if (!b.empty() && b.back() == std::numeric_limits<double>::infinity()) b.pop_back();
                FASTVLM_CHECK(b == h.bounds() && window == h.window(), "metrics: histogram '", name,
                              "' already exists with different bounds or window");
            }
            return h;
        }
        // Construct before inserting, so invalid bounds leave the registry unchanged (except for the family,
        // which we drop again if it is empty).
        std::unique_ptr<Histogram> h;
        try {
            h = bounds ? std::make_unique<Histogram>(*bounds, window) : std::make_unique<Histogram>();
        } catch (...) {
            if (fam.series.empty()) families_.erase(name);
            throw;
        }
        h->name_ = name;
        h->hook_ = &hook_;
        auto se = std::make_unique<Series>();
        se->histogram = std::move(h);
        Histogram& ref = *se->histogram;
        fam.series.emplace("", std::move(se));
        return ref;
    }

    template <class T>
    T& series(Kind kind, std::string name, std::string help, Labels labels) {
        std::sort(labels.begin(), labels.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
        std::string key;
        for (std::size_t i = 0; i < labels.size(); ++i) {
            FASTVLM_CHECK(detail::valid_label_name(labels[i].first), "metrics: invalid label name '",
                          labels[i].first, "' on metric '", name,
                          "' (must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __)");
            FASTVLM_CHECK(i == 0 || labels[i].first != labels[i - 1].first, "metrics: label '", labels[i].first,
                          "' given twice on metric '", name, "'");
            if (i) key += ",";
            key += labels[i].first + "=" + labels[i].second;
        }
        std::lock_guard lk(mu_);
        Family& fam = family(kind, name, help);
        auto it = fam.series.find(key);
        if (it == fam.series.end()) {
            auto se = std::make_unique<Series>();
            se->labels = std::move(labels);
            if constexpr (std::is_same_v<T, Counter>) se->counter = std::make_unique<Counter>();
            else se->gauge = std::make_unique<Gauge>();
            it = fam.series.emplace(std::move(key), std::move(se)).first;
        }
        if constexpr (std::is_same_v<T, Counter>) return *it->second->counter;
        else return *it->second->gauge;
    }

    struct Child {
        std::string label, value;
        const Registry* reg;
    };
    mutable std::mutex mu_;                 // guards families_ and children_ (the maps and help texts, not the values)
    std::map<std::string, Family> families_;
    std::vector<Child> children_;
    detail::AnomalyHook hook_;
};

namespace detail {
// Value of a "Key:   123 kB" line of /proc/self/status, in bytes; 0 if the file or the line is missing.
inline double proc_status_bytes(std::string_view key) {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (f && std::getline(f, line)) {
        if (line.size() <= key.size() || line.compare(0, key.size(), key) != 0 || line[key.size()] != ':') continue;
        std::size_t i = key.size() + 1;
        while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
        double kb = 0;
        const auto r = std::from_chars(line.data() + i, line.data() + line.size(), kb);
        if (r.ec != std::errc()) return 0;
        return kb * 1024.0;
    }
    return 0;
}
}  // namespace detail

// Peak resident set size of this process (VmHWM), in bytes; 0 where /proc is unavailable.
inline double peak_rss_bytes() { return detail::proc_status_bytes("VmHWM"); }
// Current resident set size (VmRSS), in bytes; 0 where /proc is unavailable.
inline double rss_bytes() { return detail::proc_status_bytes("VmRSS"); }

}  // namespace fastvlm::metrics
