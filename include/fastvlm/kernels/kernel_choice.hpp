// fastvlm/kernels/kernel_choice.hpp — which kernel path each (weight, compute) pair runs, chosen by
// measurement (FFTW's "wisdom"). A pair with more than one path on this CPU (BF16 weights: vdpbf16ps
// with bf16 activations, or widening to f32; Q8/Q4: AVX-512 VNNI or AVX2) has each candidate timed on
// the loaded model's own layers, per kernel class (GEMV: m = 1 and decode rows; GEMM: prefill and
// vision), and the fastest is kept for the process. The decision is cached per CPU (brand, features,
// threads) in a small JSON file so the next load skips the timing; FASTVLM_KERNELS or
// LoadOptions::kernels forces paths (docs/kernels.md, "Kernel choice").
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <unistd.h>

#include "fastvlm/core/cpu.hpp"
#include "fastvlm/core/error.hpp"
#include "fastvlm/io/files.hpp"
#include "fastvlm/io/json.hpp"
#include "fastvlm/kernels/matmul.hpp"

namespace fastvlm {

// Where the path of a pair came from.
enum class KernelSource { builtin, measured, cached, forced };
inline const char* to_string(KernelSource s) {
    switch (s) {
        case KernelSource::builtin: return "builtin";
        case KernelSource::measured: return "measured";
        case KernelSource::cached: return "cached";
        case KernelSource::forced: return "forced";
    }
    return "?";
}

// The state of one (weight, compute) pair, as kernel_choices() reports it.
struct KernelChoice {
    std::string pair;                     // "bf16xbf16": weight format x compute format
    std::string gemv, gemm;               // path names (detail::mm::path_name)
    KernelSource source = KernelSource::builtin;
    std::vector<std::string> candidates;  // paths this CPU (and build) can run, scalar excluded
    // When measured in this process: milliseconds per sweep of each candidate, per class.
    std::vector<std::pair<std::string, double>> gemv_ms, gemm_ms;
};

namespace detail::kc {
using mm::Path;

template <class W, class A>
using Pair = KernelPair<W, A>;
template <class F>
void for_each_pair(F&& f) {  // the registry of core/policy.hpp
    std::apply([&](auto... p) { (f(p), ...); }, KernelPairs{});
}
inline std::string pair_names() {
    std::string s;
    for_each_pair([&](auto p) { s += (s.empty() ? "" : ", ") + decltype(p)::name(); });
    return s;
}

// The paths a pair can take here, fastest kind first; scalar only where nothing else is compiled in.
// For one kernel class only, when `cls` is given (GEMM-only paths are no GEMV candidates).
template <class W, class A>
std::vector<Path> candidates(std::optional<KernelClass> cls = std::nullopt) {
    std::vector<Path> out;
    for (Path p : mm::kAllPaths)
        if (p != Path::scalar && Linear<W, A>::supports(p) && !(cls == KernelClass::gemv && mm::gemm_only(p)))
            out.push_back(p);
    if (out.empty()) out.push_back(Path::scalar);
    return out;
}

// Timings of the last measurement per pair (for kernel_choices()).
struct Timings {
    std::mutex m;
    std::vector<std::pair<std::string, std::vector<std::pair<std::string, double>>>> gemv, gemm;
};
inline Timings& timings() {
    static Timings t;
    return t;
}
inline void record(std::vector<std::pair<std::string, std::vector<std::pair<std::string, double>>>>& v,
                   const std::string& pair, std::vector<std::pair<std::string, double>> ms) {
    for (auto& e : v)
        if (e.first == pair) return void(e.second = std::move(ms));
    v.emplace_back(pair, std::move(ms));
}

template <class W, class A>
void set(Path gemv, Path gemm, KernelSource src) {
    auto& c = mm::path_choice<W, A>();
    c.gemv.store(gemv);
    c.gemm.store(gemm);
    c.source.store(int(src));
}
template <class W, class A>
KernelSource source() {
    return KernelSource(mm::path_choice<W, A>().source.load());
}

inline std::optional<Path> path_named(std::string_view s) {
    for (Path p : mm::kAllPaths)
        if (s == mm::path_name(p)) return p;
    return std::nullopt;
}

// ---- measurement ----------------------------------------------------------------------------------------
inline double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Times `sweep(path)` for every candidate, interleaved over rounds; the minimum per candidate. A sweep
// is repeated until it has run ≥ 2 ms, so tiny models are timed above the clock's noise.
template <class Sweep>
std::vector<double> time_candidates(const std::vector<Path>& cands, Sweep&& sweep, int rounds = 5) {
    std::vector<double> best(cands.size(), 1e300);
    for (Path p : cands) sweep(p);  // warm-up (first-touch of scratch, caches)
    for (int r = 0; r < rounds; ++r)
        for (std::size_t i = 0; i < cands.size(); ++i) {
            int reps = 0;
            const double t0 = now_ms();
            double t = 0;
            do {
                sweep(cands[i]);
                ++reps;
                t = now_ms() - t0;
            } while (t < 2.0 && reps < 1000);
            best[i] = std::min(best[i], t / reps);
        }
    return best;
}

// The candidate to keep: the builtin default unless another is faster by more than `margin`
// (a 7 % margin keeps a noisy machine from flipping between two paths of equal speed).
inline std::size_t pick(const std::vector<Path>& cands, const std::vector<double>& ms, Path fallback, double margin = 0.07) {
    std::size_t def = 0, fast = 0;
    for (std::size_t i = 0; i < cands.size(); ++i) {
        if (cands[i] == fallback) def = i;
        if (ms[i] < ms[fast]) fast = i;
    }
    return ms[fast] < (1.0 - margin) * ms[def] ? fast : def;
}

inline std::vector<std::pair<std::string, double>> named(const std::vector<Path>& c, const std::vector<double>& ms) {
    std::vector<std::pair<std::string, double>> out;
    for (std::size_t i = 0; i < c.size(); ++i) out.emplace_back(mm::path_name(c[i]), ms[i]);
    return out;
}

// Measures pair (W, A) on `lins` (a model's layers of that pair) and sets the process-wide choice.
// GEMV: one row through layers in order until ≥ 64 MiB of weights streamed (the decode regime: weights
// from DRAM). GEMM: 128 rows through layers until ≥ 1 GFLOP.
template <class W, class A>
void measure(const std::vector<const Linear<W, A>*>& lins, ThreadPool* pool) {
    const auto cv = candidates<W, A>(KernelClass::gemv), cm = candidates<W, A>(KernelClass::gemm);
    const Path fv = mm::builtin_path<W, A>(true), fm = mm::builtin_path<W, A>(false);
    if (lins.empty() || (cv.size() < 2 && cm.size() < 2)) return set<W, A>(fv, fm, KernelSource::measured);
    constexpr Index kRows = 128;
    Index kmax = 1, nmax = 1;
    for (const auto* l : lins) kmax = std::max(kmax, l->in_features()), nmax = std::max(nmax, l->out_features());
    std::vector<float> x(std::size_t(kRows * kmax)), y(std::size_t(kRows * nmax));
    std::uint32_t s = 12345;
    for (float& v : x) v = float(int((s = s * 1664525u + 1013904223u) >> 9) - (1 << 22)) / float(1 << 22);

    // Layers in order (cycling) until `budget` of cost; at most max(#layers, 256) calls per sweep.
    auto layers_until = [&](auto&& cost, double budget) {
        std::vector<const Linear<W, A>*> out;
        const std::size_t cap = std::max<std::size_t>(lins.size(), 256);
        double c = 0;
        for (std::size_t i = 0; c < budget && out.size() < cap; i = (i + 1) % lins.size()) {
            out.push_back(lins[i]);
            c += cost(*lins[i]);
        }
        return out;
    };
    const auto gv = layers_until([](const Linear<W, A>& l) { return double(l.weight_bytes()); }, double(64 << 20));
    const auto gm = layers_until(
        [](const Linear<W, A>& l) { return 2.0 * kRows * double(l.in_features()) * double(l.out_features()); }, 1e9);
    const Epilogue gemv_ep{.rows = RowKernel::gemv}, gemm_ep{.rows = RowKernel::gemm};
    // A class with one candidate is not timed.
    const auto tv = cv.size() < 2 ? std::vector<double>(cv.size(), 0.0) : time_candidates(cv, [&](Path p) {
        for (const auto* l : gv) l->forward_path(p, x.data(), 1, l->in_features(), y.data(), l->out_features(), pool, gemv_ep);
    });
    const auto tm = cm.size() < 2 ? std::vector<double>(cm.size(), 0.0) : time_candidates(cm, [&](Path p) {
        for (const auto* l : gm)
            l->forward_path(p, x.data(), kRows, l->in_features(), y.data(), l->out_features(), pool, gemm_ep);
    });
    set<W, A>(cv[pick(cv, tv, fv)], cm[pick(cm, tm, fm)], KernelSource::measured);
    std::lock_guard lk(timings().m);
    if (cv.size() > 1) record(timings().gemv, Pair<W, A>::name(), named(cv, tv));
    if (cm.size() > 1) record(timings().gemm, Pair<W, A>::name(), named(cm, tm));
}

// ---- the cache file ---------------------------------------------------------------------------------------
// FASTVLM_KERNEL_CACHE (a file; "off" = none), else $XDG_CACHE_HOME/fastvlm/kernels.json, else
// $HOME/.cache/fastvlm/kernels.json; empty when there is nowhere to keep it.
inline std::filesystem::path cache_path() {
    if (const char* e = std::getenv("FASTVLM_KERNEL_CACHE"); e && *e) return std::string_view(e) == "off" ? "" : e;
    if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::filesystem::path(x) / "fastvlm" / "kernels.json";
    if (const char* h = std::getenv("HOME"); h && *h) return std::filesystem::path(h) / ".cache" / "fastvlm" / "kernels.json";
    return {};
}

// What a decision depends on: the CPU model, what this build and CPU can run, and the thread count.
inline std::string cache_key(unsigned threads) {
    std::string k = cpu_brand().empty() ? "unknown-cpu" : cpu_brand();
    k += " |";
    for_each_pair([&](auto p) {
        using P = decltype(p);
        k += " " + P::name() + ":";
        for (Path c : candidates<typename P::weight, typename P::compute>()) k += std::string(mm::path_name(c)) + "/";
    });
    return k + " | threads " + std::to_string(threads) + " | v1";
}

inline constexpr std::size_t kMaxCacheBytes = 1 << 20;

// The cache as JSON; an unreadable, oversized or malformed file counts as empty (it is rewritten).
inline nlohmann::json read_cache(const std::filesystem::path& file) {
    if (file.empty() || !io::present(file)) return nlohmann::json::object();
    try {
        auto j = io::parse_json(io::read_file(file, kMaxCacheBytes), file.string(), {.max_depth = 8});
        if (j.is_object()) return j;
    } catch (const std::exception&) {
    }
    return nlohmann::json::object();
}

// The cached paths of pair (W, A) under `key`, if present and valid here.
template <class W, class A>
bool load_cached(const nlohmann::json& cache, const std::string& key) {
    const auto e = cache.find(key);
    if (e == cache.end() || !e->is_object()) return false;
    const auto p = e->find(Pair<W, A>::name());
    if (p == e->end() || !p->is_object()) return false;
    std::optional<Path> g, m;
    const auto gi = p->find("gemv"), mi = p->find("gemm");
    if (gi != p->end() && gi->is_string()) g = path_named(gi->template get<std::string>());
    if (mi != p->end() && mi->is_string()) m = path_named(mi->template get<std::string>());
    if (!g || !m || !Linear<W, A>::supports(*g) || !Linear<W, A>::supports(*m) || mm::gemm_only(*g)) return false;
    set<W, A>(*g, *m, KernelSource::cached);
    return true;
}

// Writes `cache` atomically (temporary file + rename). Failures are ignored: the cache is an optimization.
inline void write_cache(const std::filesystem::path& file, const nlohmann::json& cache) {
    if (file.empty()) return;
    std::error_code ec;
    std::filesystem::create_directories(file.parent_path(), ec);
    static std::atomic<unsigned> serial{0};  // two loads in one process must not share a temporary file
    const auto tmp = std::filesystem::path(file.string() + ".tmp." + std::to_string(::getpid()) + "." +
                                           std::to_string(serial.fetch_add(1)));
    {
        std::ofstream out(tmp, std::ios::trunc);
        if (!out) return;
        out << cache.dump(1) << "\n";
        if (!out) return std::filesystem::remove(tmp, ec), void();
    }
    std::filesystem::rename(tmp, file, ec);
    if (ec) std::filesystem::remove(tmp, ec);
}

}  // namespace detail::kc

// The path of every (weight, compute) pair now, where it came from and, if measured, the timings.
inline std::vector<KernelChoice> kernel_choices() {
    using namespace detail::kc;
    std::vector<KernelChoice> out;
    std::lock_guard lk(timings().m);
    for_each_pair([&](auto p) {
        using P = decltype(p);
        using W = typename P::weight;
        using A = typename P::compute;
        KernelChoice c;
        c.pair = P::name();
        const auto& pc = detail::mm::path_choice<W, A>();
        c.gemv = detail::mm::path_name(pc.get(true));
        c.gemm = detail::mm::path_name(pc.get(false));
        c.source = source<W, A>();
        for (Path q : candidates<W, A>()) c.candidates.emplace_back(detail::mm::path_name(q));
        for (const auto& [name, ms] : timings().gemv)
            if (name == c.pair) c.gemv_ms = ms;
        for (const auto& [name, ms] : timings().gemm)
            if (name == c.pair) c.gemm_ms = ms;
        out.push_back(std::move(c));
    });
    return out;
}

// Forces kernel paths for the process. spec: "default" (every pair back to its builtin path), or a
// comma-separated list of PAIR=PATH (both classes) or PAIR.gemv=PATH / PAIR.gemm=PATH, e.g.
// "bf16xbf16=widen_f32,q8xq8.gemv=avx2_int8". `what` names the source in errors
// ("FASTVLM_KERNELS", "LoadOptions::kernels"). Nothing changes unless the whole spec is valid.
inline void force_kernels(std::string_view spec, std::string_view what = "kernels") {
    using namespace detail::kc;
    if (spec == "default") {
        for_each_pair([&](auto p) {
            using P = decltype(p);
            using W = typename P::weight;
            using A = typename P::compute;
            set<W, A>(detail::mm::builtin_path<W, A>(true), detail::mm::builtin_path<W, A>(false), KernelSource::builtin);
        });
        return;
    }
    std::vector<std::function<void()>> apply;
    std::size_t pos = 0;
    while (pos <= spec.size()) {
        std::size_t end = spec.find(',', pos);
        if (end == std::string_view::npos) end = spec.size();
        std::string_view item = spec.substr(pos, end - pos);
        pos = end + 1;
        while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
        while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
        if (item.empty()) {
            if (end == spec.size()) break;
            continue;
        }
        const std::size_t eq = item.find('=');
        if (eq == std::string_view::npos)
            fail(what, ": '", std::string(item.substr(0, 80)), "' is not PAIR=PATH or PAIR.gemv|gemm=PATH (or 'default')");
        std::string_view lhs = item.substr(0, eq), rhs = item.substr(eq + 1);
        int cls = -1;  // -1 both, 0 gemv, 1 gemm
        if (lhs.ends_with(".gemv")) cls = 0, lhs.remove_suffix(5);
        else if (lhs.ends_with(".gemm")) cls = 1, lhs.remove_suffix(5);
        const auto path = path_named(rhs);
        bool found = false;
        for_each_pair([&](auto p) {
            using P = decltype(p);
            using W = typename P::weight;
            using A = typename P::compute;
            if (found || lhs != P::name()) return;
            found = true;
            std::string avail;
            for (Path q : detail::mm::kAllPaths)
                if (Linear<W, A>::supports(q)) avail += (avail.empty() ? "" : ", ") + std::string(detail::mm::path_name(q));
            if (!path || !Linear<W, A>::supports(*path))
                fail(what, ": kernel path '", std::string(rhs.substr(0, 80)), "' is not available for ", P::name(),
                     " on this CPU (available: ", avail, ")");
            if (cls == 0 && detail::mm::gemm_only(*path))
                fail(what, ": kernel path '", std::string(rhs), "' runs only the GEMM class; use ", P::name(), ".gemm=", std::string(rhs));
            apply.push_back([cls, q = *path] {
                auto& c = detail::mm::path_choice<W, A>();
                if (cls != 1 && !detail::mm::gemm_only(q)) c.gemv.store(q);  // PAIR=amx_*: the GEMM class only
                if (cls != 0) c.gemm.store(q);
                c.source.store(int(KernelSource::forced));
            });
        });
        if (!found) fail(what, ": unknown pair '", std::string(lhs.substr(0, 80)), "' (pairs: ", pair_names(), ")");
    }
    for (auto& f : apply) f();
}

// Decides the paths of the pairs a model uses. `visit(fn)` calls fn(const Linear<W, A>&) for each of the
// model's matrix layers. Pairs already forced, measured or cached in this process are kept. `spec`:
// "" or "measure" (measure, through the cache), "default" (builtin paths, no timing) or a force spec.
// FASTVLM_KERNELS, when set, is used where spec is empty.
template <class Visit>
void choose_kernels(Visit&& visit, ThreadPool* pool, std::string_view spec = {}) {
    using namespace detail::kc;
    std::string_view what = "LoadOptions::kernels";
    if (spec.empty())
        if (const char* e = std::getenv("FASTVLM_KERNELS"); e && *e) spec = e, what = "FASTVLM_KERNELS";
    if (spec == "default") return force_kernels(spec, what);
    if (!spec.empty() && spec != "measure") force_kernels(spec, what);

    // The model's layers, per pair.
    using Lists = decltype(std::apply(
        [](auto... p) {
            return std::tuple<std::vector<const Linear<typename decltype(p)::weight, typename decltype(p)::compute>*>...>{};
        },
        KernelPairs{}));
    Lists lists;
    visit([&](const auto& lin) { std::get<std::vector<const std::decay_t<decltype(lin)>*>>(lists).push_back(&lin); });

    const auto file = cache_path();
    const std::string key = cache_key(pool_size(pool));
    nlohmann::json cache;
    bool loaded = false, dirty = false;
    for_each_pair([&](auto p) {
        using P = decltype(p);
        using W = typename P::weight;
        using A = typename P::compute;
        const auto& lins = std::get<std::vector<const Linear<W, A>*>>(lists);
        if (lins.empty() || source<W, A>() != KernelSource::builtin) return;
        if (candidates<W, A>().size() < 2) return;  // nothing to choose
        if (!loaded) cache = read_cache(file), loaded = true;
        if (load_cached<W, A>(cache, key)) return;
        measure<W, A>(lins, pool);
        if (!cache[key].is_object()) cache[key] = nlohmann::json::object();
        const auto& pc = detail::mm::path_choice<W, A>();
        nlohmann::json entry = nlohmann::json::object();
        entry["gemv"] = detail::mm::path_name(pc.get(true));
        entry["gemm"] = detail::mm::path_name(pc.get(false));
        cache[key][P::name()] = std::move(entry);
        dirty = true;
    });
    if (dirty) write_cache(file, cache);
}

}  // namespace fastvlm
