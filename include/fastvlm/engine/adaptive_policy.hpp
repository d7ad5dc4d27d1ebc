// fastvlm/engine/adaptive_policy.hpp — when to serve with a cheaper precision preset (docs/api.md,
// "Adaptive precision"). The decision logic only: no model, no threads. The engine that applies it
// lives in fastvlm/adaptive.hpp (load_model(dir, "auto:int8,int4")).
//
// Levels 0..n-1 are the presets in the order given: 0 the most accurate, n-1 the cheapest. A request
// is served at the level current when it is submitted. The level moves one step at a time:
//   down (cheaper)  when the system is overloaded:   recent p95 TTFT at this level > ttft_target_ms, or
//                   more requests waiting than queue_high, or memory/CPU pressure (Linux PSI, "some"
//                   avg10) or the cgroup's memory use above its high mark;
//   up (better)     when it has been relaxed for up_hold_s without a break: p95 TTFT below
//                   up_fraction × target (or no target), nothing waiting, every pressure below its low
//                   mark.
// Hysteresis: high and low marks differ, a switch waits min_dwell_s after the previous one, going up
// needs a sustained calm, and the TTFT window restarts at every switch (it only holds requests served
// at the current level).
#pragma once
#include <algorithm>
#include <charconv>
#include <cmath>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "fastvlm/core/error.hpp"

namespace fastvlm {

// What the system reports. A value that cannot be read is 0 (no pressure).
struct Pressure {
    double memory_some_avg10 = 0;  // % of the last 10 s some task stalled on memory (/proc/pressure/memory)
    double cpu_some_avg10 = 0;     // % of the last 10 s some runnable task waited for a CPU (/proc/pressure/cpu)
    double cgroup_memory = 0;      // memory use / limit of this process's cgroup, in [0, 1]; 0 when unlimited
};

namespace detail {
// "some avg10=1.23 avg60=..." -> 1.23; nullopt when the line is missing or malformed.
inline std::optional<double> psi_some_avg10(const std::filesystem::path& file) {
    std::ifstream f(file);
    std::string line;
    while (f && std::getline(f, line)) {
        if (!line.starts_with("some ")) continue;
        const auto at = line.find("avg10=");
        if (at == std::string::npos) return std::nullopt;
        double v = 0;
        const char* b = line.data() + at + 6;
        const auto r = std::from_chars(b, line.data() + line.size(), v);
        if (r.ec != std::errc() || !std::isfinite(v) || v < 0) return std::nullopt;
        return std::min(v, 100.0);
    }
    return std::nullopt;
}
// A cgroup file holding one number ("max" = unlimited -> nullopt).
inline std::optional<double> cgroup_number(const std::filesystem::path& file) {
    std::ifstream f(file);
    std::string s;
    if (!(f >> s) || s == "max") return std::nullopt;
    double v = 0;
    const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    if (r.ec != std::errc() || !std::isfinite(v) || v < 0) return std::nullopt;
    return v;
}
// use / limit, or 0 when there is no limit (v1 reports "no limit" as a number near 2^63).
inline double cgroup_ratio(const std::filesystem::path& use, const std::filesystem::path& limit) {
    const auto u = cgroup_number(use), l = cgroup_number(limit);
    if (!u || !l || *l <= 0 || *l >= 0x1p62) return 0;
    return std::clamp(*u / *l, 0.0, 1.0);
}
}  // namespace detail

// Reads Linux PSI (`proc`/pressure/{memory,cpu}) and the memory use of this process's cgroup (v2
// memory.current / memory.max, else v1 memory.usage_in_bytes / memory.limit_in_bytes), under
// `cgroup_root`. Missing files (other kernels, no PSI) read as no pressure. The roots are parameters
// for tests.
inline Pressure read_system_pressure(const std::filesystem::path& proc = "/proc",
                                     const std::filesystem::path& cgroup_root = "/sys/fs/cgroup") {
    Pressure p;
    p.memory_some_avg10 = detail::psi_some_avg10(proc / "pressure" / "memory").value_or(0);
    p.cpu_some_avg10 = detail::psi_some_avg10(proc / "pressure" / "cpu").value_or(0);
    // /proc/self/cgroup: "0::/path" (v2) and "N:memory:/path" (v1).
    std::ifstream f(proc / "self" / "cgroup");
    std::string line, v2, v1;
    while (f && std::getline(f, line)) {
        if (line.starts_with("0::")) v2 = line.substr(3);
        else if (const auto c = line.find(":memory:"); c != std::string::npos) v1 = line.substr(c + 8);
    }
    auto rel = [](const std::string& s) { return std::filesystem::path(s).relative_path(); };
    std::vector<std::pair<std::filesystem::path, std::filesystem::path>> tries;  // (use, limit), first readable wins
    if (f.is_open() || !v2.empty()) {
        tries.push_back({cgroup_root / rel(v2) / "memory.current", cgroup_root / rel(v2) / "memory.max"});
        tries.push_back({cgroup_root / "memory.current", cgroup_root / "memory.max"});
    }
    tries.push_back({cgroup_root / "memory" / rel(v1) / "memory.usage_in_bytes", cgroup_root / "memory" / rel(v1) / "memory.limit_in_bytes"});
    tries.push_back({cgroup_root / "memory" / "memory.usage_in_bytes", cgroup_root / "memory" / "memory.limit_in_bytes"});
    for (const auto& [use, limit] : tries) {
        if (!detail::cgroup_number(use)) continue;
        p.cgroup_memory = detail::cgroup_ratio(use, limit);
        break;
    }
    return p;
}

// A switch of the serving level, for logs and metrics.
struct PresetSwitch {
    int from = 0, to = 0;              // levels
    std::string from_preset, to_preset;  // their names (filled in by the adaptive engine)
    double at_s = 0;     // the policy clock
    std::string reason;  // e.g. "p95 TTFT 5210 ms > target 3000 ms"
};

struct AdaptiveOptions {
    double ttft_target_ms = 0;   // p95 time to first token to stay under; 0 = TTFT does not count
    double up_fraction = 0.5;    // going back up needs p95 TTFT < up_fraction × target
    int queue_high = -1;         // more requests waiting than this = overloaded; −1 = EngineOptions::max_running
    double memory_psi_high = 10, memory_psi_low = 2;    // % (PSI "some" avg10)
    double cpu_psi_high = 60, cpu_psi_low = 20;         // % (the engine's own threads cause some: keep it high)
    double cgroup_memory_high = 0.90, cgroup_memory_low = 0.80;  // use / limit
    double min_dwell_s = 5;      // no switch sooner than this after the previous one
    double up_hold_s = 15;       // relaxed this long, without a break, before going up a level
    int ttft_window = 16;        // requests of the current level whose TTFT counts (most recent)
    int ttft_min_samples = 4;    // fewer than this: TTFT neither overloads nor relaxes
    double sample_interval_s = 0.25;  // pressure read at most this often
    // Test hooks: the pressure source (default read_system_pressure()) and the clock in seconds
    // (default steady_clock).
    std::function<Pressure()> pressure = {};
    std::function<double()> clock = {};
    // Called on every switch (on the submitting thread; keep it short), e.g. to log it.
    std::function<void(const PresetSwitch&)> on_switch = {};
};

// What the policy sees at a decision.
struct AdaptiveSignals {
    int waiting = 0;  // requests submitted and not yet running (all levels)
    Pressure pressure;
};

class AdaptivePolicy {
public:
    AdaptivePolicy(int levels, AdaptiveOptions opt, int max_running) : n_(levels), opt_(std::move(opt)) {
        FASTVLM_CHECK(levels >= 1, "adaptive precision: needs at least one preset");
        auto finite_ge0 = [](double v) { return std::isfinite(v) && v >= 0; };
        FASTVLM_CHECK(finite_ge0(opt_.ttft_target_ms), "AdaptiveOptions::ttft_target_ms must be >= 0, got ", opt_.ttft_target_ms);
        FASTVLM_CHECK(opt_.up_fraction > 0 && opt_.up_fraction <= 1, "AdaptiveOptions::up_fraction must be in (0, 1], got ",
                      opt_.up_fraction);
        FASTVLM_CHECK(finite_ge0(opt_.min_dwell_s) && finite_ge0(opt_.up_hold_s) && finite_ge0(opt_.sample_interval_s),
                      "AdaptiveOptions: min_dwell_s, up_hold_s and sample_interval_s must be >= 0");
        FASTVLM_CHECK(opt_.memory_psi_low <= opt_.memory_psi_high && opt_.cpu_psi_low <= opt_.cpu_psi_high &&
                          opt_.cgroup_memory_low <= opt_.cgroup_memory_high,
                      "AdaptiveOptions: each low mark must be <= its high mark");
        FASTVLM_CHECK(opt_.ttft_window >= 1 && opt_.ttft_min_samples >= 1 && opt_.ttft_min_samples <= opt_.ttft_window,
                      "AdaptiveOptions: need 1 <= ttft_min_samples <= ttft_window");
        queue_high_ = opt_.queue_high >= 0 ? opt_.queue_high : max_running;
    }

    int level() const { return level_; }
    int levels() const { return n_; }
    const AdaptiveOptions& options() const { return opt_; }

    // A request served at `level` had this TTFT (ms). Only the current level's count.
    void record_ttft(int level, double ttft_ms, double submitted_at_s) {
        if (level != level_ || submitted_at_s < since_) return;  // before the switch, or another level
        ttft_.push_back(ttft_ms);
        while (int(ttft_.size()) > opt_.ttft_window) ttft_.pop_front();
    }
    // p95 of the current window; nullopt with too few samples.
    std::optional<double> p95_ttft_ms() const {
        if (int(ttft_.size()) < opt_.ttft_min_samples) return std::nullopt;
        std::vector<double> v(ttft_.begin(), ttft_.end());
        std::sort(v.begin(), v.end());
        const double r = 0.95 * double(v.size() - 1);  // linear interpolation between order statistics
        const std::size_t lo = std::size_t(r);
        const double f = r - double(lo);
        return lo + 1 < v.size() ? v[lo] * (1 - f) + v[lo + 1] * f : v[lo];
    }

    // Looks at the signals at time `now` (seconds); returns the switch it made, if any.
    std::optional<PresetSwitch> update(const AdaptiveSignals& s, double now) {
        last_reason_.clear();
        const auto p95 = p95_ttft_ms();
        std::string over;
        auto note = [&](std::string r) {
            if (over.empty()) over = std::move(r);
        };
        const double target = opt_.ttft_target_ms;
        if (target > 0 && p95 && *p95 > target) note("p95 TTFT " + fmt(*p95) + " ms > target " + fmt(target) + " ms");
        if (s.waiting > queue_high_) note(std::to_string(s.waiting) + " requests waiting > " + std::to_string(queue_high_));
        if (s.pressure.memory_some_avg10 > opt_.memory_psi_high)
            note("memory pressure " + fmt(s.pressure.memory_some_avg10) + " % > " + fmt(opt_.memory_psi_high) + " %");
        if (s.pressure.cgroup_memory > opt_.cgroup_memory_high)
            note("cgroup memory " + fmt(100 * s.pressure.cgroup_memory) + " % of its limit > " + fmt(100 * opt_.cgroup_memory_high) + " %");
        if (s.pressure.cpu_some_avg10 > opt_.cpu_psi_high)
            note("CPU pressure " + fmt(s.pressure.cpu_some_avg10) + " % > " + fmt(opt_.cpu_psi_high) + " %");
        const bool relaxed = (target <= 0 || (p95 && *p95 < opt_.up_fraction * target)) && s.waiting == 0 &&
                             s.pressure.memory_some_avg10 <= opt_.memory_psi_low && s.pressure.cgroup_memory <= opt_.cgroup_memory_low &&
                             s.pressure.cpu_some_avg10 <= opt_.cpu_psi_low;
        if (!relaxed) relaxed_since_.reset();
        else if (!relaxed_since_) relaxed_since_ = now;
        last_reason_ = over;
        const bool dwelt = !switched_ || now - since_ >= opt_.min_dwell_s;
        if (!over.empty() && level_ + 1 < n_ && dwelt) return move(level_ + 1, now, over);
        if (over.empty() && relaxed && level_ > 0 && dwelt && now - *relaxed_since_ >= opt_.up_hold_s)
            return move(level_ - 1, now, "relaxed for " + fmt(now - *relaxed_since_) + " s" +
                                             (p95 ? " (p95 TTFT " + fmt(*p95) + " ms)" : std::string()));
        return std::nullopt;
    }
    // Why the last update() saw overload ("" = it did not).
    const std::string& overload_reason() const { return last_reason_; }

private:
    static std::string fmt(double v) {
        std::ostringstream o;
        o.precision(v < 10 ? 2 : 0);
        o << std::fixed << v;
        return o.str();
    }
    PresetSwitch move(int to, double now, std::string why) {
        PresetSwitch sw;
        sw.from = level_;
        sw.to = to;
        sw.at_s = now;
        sw.reason = std::move(why);
        level_ = to;
        since_ = now;
        switched_ = true;
        ttft_.clear();
        relaxed_since_.reset();
        return sw;
    }

    int n_;
    AdaptiveOptions opt_;
    int queue_high_ = 0;
    int level_ = 0;
    double since_ = -std::numeric_limits<double>::infinity();  // time of the last switch
    bool switched_ = false;
    std::deque<double> ttft_;
    std::optional<double> relaxed_since_;
    std::string last_reason_;
};

}  // namespace fastvlm
