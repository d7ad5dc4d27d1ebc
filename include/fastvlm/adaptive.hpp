// fastvlm/adaptive.hpp — adaptive precision: an engine over one engine per preset of a folder that
// serves each request with the preset its policy chooses at submit (the production guide's dynamic
// quantization; docs/api.md "Adaptive precision"). The model side (several presets behind one AnyModel,
// loaded by load_model(dir, "auto:...")) is detail::AdaptiveModel in any_model.hpp.
//
//   auto model = fastvlm::load_model(dir, "auto:int8,int4");        // level 0 = int8, level 1 = int4
//   auto engine = model->new_engine({.adaptive = {.ttft_target_ms = 3000}});
//   fastvlm::Result r = engine->run(request);                        // r.preset: "int8" or "int4"
//
// What is shared: the tokenizer (loaded once), the image-feature cache (one byte budget; entries are
// shared between presets whose vision tower and projector use the same formats, e.g. int8 and
// int8_int4). What is not: weights (each preset's are in memory: weight_bytes() is their sum), the
// thread pool, the KV pool and the prefix cache of each preset's engine (an idle preset holds only
// the prefix pages it cached). Direct calls (new_session, encode_image, ...) use the first preset.
#pragma once
#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fastvlm/engine/adaptive_policy.hpp"
#include "fastvlm/engine.hpp"

namespace fastvlm {
namespace detail {

class AdaptiveCore final : public EngineCore {
    struct Level {
        std::string preset;
        std::unique_ptr<Engine> engine;
        metrics::Counter* served = nullptr;
        metrics::Gauge* active = nullptr;
    };

public:
    // engines[i] serves level i; opt.adaptive is the policy.
    AdaptiveCore(std::vector<std::pair<std::string, std::unique_ptr<Engine>>> engines, EngineOptions opt)
        : opt_(std::move(opt)), policy_(int(engines.size()), opt_.adaptive, opt_.max_running) {
        const auto t0 = std::chrono::steady_clock::now();
        clock_ = opt_.adaptive.clock ? opt_.adaptive.clock : std::function<double()>([t0] {
            return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        });
        pressure_fn_ = opt_.adaptive.pressure ? opt_.adaptive.pressure : std::function<Pressure()>([] { return read_system_pressure(); });
        for (auto& [name, e] : engines) {
            Level l{name, std::move(e)};
            l.served = &reg_.counter("preset_requests_total", "Requests submitted to each preset", {{"preset", name}});
            l.active = &reg_.gauge("preset_active", "1 for the preset new requests go to, else 0", {{"preset", name}});
            reg_.attach("preset", name, l.engine->core_->registry());
            levels_.push_back(std::move(l));
        }
        m_down_ = &reg_.counter("preset_switches_total", "Switches to a cheaper (down) or a better (up) preset", {{"direction", "down"}});
        m_up_ = &reg_.counter("preset_switches_total", "Switches to a cheaper (down) or a better (up) preset", {{"direction", "up"}});
        m_level_ = &reg_.gauge("adaptive_level", "Index of the preset new requests go to (0 = the first, most accurate)");
        m_p95_ = &reg_.gauge("adaptive_ttft_p95_seconds", "p95 TTFT of the current preset's recent requests (0 = too few yet)");
        m_mem_ = &reg_.gauge("pressure_memory_some_avg10", "Linux PSI memory 'some' avg10 (%) at the last reading");
        m_cpu_ = &reg_.gauge("pressure_cpu_some_avg10", "Linux PSI CPU 'some' avg10 (%) at the last reading");
        m_cg_ = &reg_.gauge("cgroup_memory_ratio", "Memory use / limit of the cgroup at the last reading (0 = no limit)");
        levels_[0].active->set(1);
    }
    ~AdaptiveCore() override {
        // Each engine ends its own requests; their on_finish (record) still finds this object whole.
        for (auto& l : levels_) l.engine.reset();
    }

    std::shared_ptr<RequestState> submit(Request r) override {
        Index waiting_now = 0;  // read before taking mu_: an engine's lock is never held inside ours
        for (auto& l : levels_) waiting_now += l.engine->core_->waiting();
        int level = 0;
        double now = 0;
        std::optional<PresetSwitch> sw;
        {
            std::lock_guard lk(mu_);
            now = clock_();
            if (!sampled_ || now - last_sample_ >= opt_.adaptive.sample_interval_s) {
                pressure_ = pressure_fn_();
                last_sample_ = now;
                sampled_ = true;
            }
            sw = policy_.update({int(waiting_now), pressure_}, now);
            level = policy_.level();
            if (sw) {
                sw->from_preset = levels_[std::size_t(sw->from)].preset;
                sw->to_preset = levels_[std::size_t(sw->to)].preset;
                (sw->to > sw->from ? m_down_ : m_up_)->add();
                for (std::size_t i = 0; i < levels_.size(); ++i) levels_[i].active->set(int(i) == level ? 1 : 0);
            }
            m_level_->set(level);
            m_mem_->set(pressure_.memory_some_avg10);
            m_cpu_->set(pressure_.cpu_some_avg10);
            m_cg_->set(pressure_.cgroup_memory);
        }
        if (sw && opt_.adaptive.on_switch) {
            try {
                opt_.adaptive.on_switch(*sw);
            } catch (...) {  // a logging hook must not fail the request
            }
        }
        r.on_finish = [this, level, now, user = std::move(r.on_finish)](const Result& res) {
            if (res.ok() && res.timings.ttft_ms > 0) {
                std::lock_guard lk(mu_);
                policy_.record_ttft(level, res.timings.ttft_ms, now);
                m_p95_->set(policy_.p95_ttft_ms().value_or(0) / 1e3);
            }
            if (user) user(res);
        };
        Level& l = levels_[std::size_t(level)];
        auto st = l.engine->core_->submit(std::move(r));
        l.served->add();
        return st;
    }

    EngineStats stats() const override {
        EngineStats s;
        for (const auto& l : levels_) {
            const EngineStats e = l.engine->stats();
            s.running += e.running;
            s.queued += e.queued;
            s.kv_pages_used += e.kv_pages_used;
            s.kv_pages_reserved += e.kv_pages_reserved;
            s.kv_pages_total += e.kv_pages_total;
            s.kv_page_bytes = e.kv_page_bytes;
            s.kv_bytes_per_position = e.kv_bytes_per_position;
            s.weight_bytes += e.weight_bytes;
            s.peak_rss_bytes = std::max(s.peak_rss_bytes, e.peak_rss_bytes);
            s.requests_ok += e.requests_ok;
            s.requests_failed += e.requests_failed;
            s.prompt_tokens += e.prompt_tokens;
            s.generated_tokens += e.generated_tokens;
            s.images += e.images;
            s.decode_busy_s += e.decode_busy_s;
            s.decode_only_s += e.decode_only_s;
            s.decode_only_tokens += e.decode_only_tokens;
            s.image_cache = e.image_cache;  // one shared cache
            s.prefix_cache.hits += e.prefix_cache.hits;
            s.prefix_cache.misses += e.prefix_cache.misses;
            s.prefix_cache.hit_positions += e.prefix_cache.hit_positions;
            s.prefix_cache.inserted_pages += e.prefix_cache.inserted_pages;
            s.prefix_cache.evictions += e.prefix_cache.evictions;
            s.prefix_cache.pages += e.prefix_cache.pages;
            s.prefix_cache.max_pages += e.prefix_cache.max_pages;
            for (const auto& [name, h] : e.stages) s.stages[l.preset + "/" + name] = h;  // per preset
        }
        return s;
    }
    metrics::Registry& registry() override {
        for (auto& l : levels_) (void)l.engine->core_->registry();  // refreshes their gauges
        return reg_;
    }
    const EngineOptions& options() const override { return opt_; }
    void drain() override {
        for (auto& l : levels_) l.engine->drain();
    }
    Index waiting() const override {
        Index n = 0;
        for (const auto& l : levels_) n += l.engine->core_->waiting();
        return n;
    }

private:
    EngineOptions opt_;
    metrics::Registry reg_;  // declared before levels_: the engines' registries are attached to it
    std::vector<Level> levels_;
    mutable std::mutex mu_;  // policy_, pressure_
    AdaptivePolicy policy_;
    std::function<double()> clock_;
    std::function<Pressure()> pressure_fn_;
    Pressure pressure_;
    double last_sample_ = 0;
    bool sampled_ = false;
    metrics::Counter *m_down_ = nullptr, *m_up_ = nullptr;
    metrics::Gauge *m_level_ = nullptr, *m_p95_ = nullptr, *m_mem_ = nullptr, *m_cpu_ = nullptr, *m_cg_ = nullptr;
};

}  // namespace detail

// "auto:int8,int4" -> {"int8", "int4"}; throws on anything else (fewer than two presets, unknown or repeated ones).
inline std::vector<std::string> parse_adaptive_spec(std::string_view spec) {
    FASTVLM_CHECK(spec.starts_with("auto:"), "adaptive precision '", spec, "' must start with 'auto:' (e.g. auto:int8,int4)");
    std::vector<std::string> names;
    std::string_view rest = spec.substr(5);
    for (;;) {
        const auto comma = rest.find(',');
        const std::string name(rest.substr(0, comma));
        bool known = false;
#define FASTVLM_KNOWN_(p) known = known || name == #p;
        FASTVLM_PRESETS(FASTVLM_KNOWN_)
#undef FASTVLM_KNOWN_
        FASTVLM_CHECK(known, "adaptive precision '", spec, "': unknown preset '", name, "' (known: fp32, bf16, fp16, int8, int8_int4, int4)");
        FASTVLM_CHECK(std::find(names.begin(), names.end(), name) == names.end(), "adaptive precision '", spec, "': preset '", name,
                      "' given twice");
        names.push_back(name);
        if (comma == std::string_view::npos) break;
        rest.remove_prefix(comma + 1);
    }
    FASTVLM_CHECK(names.size() >= 2, "adaptive precision '", spec, "' needs at least two presets, most accurate first (e.g. auto:int8,int4)");
    return names;
}

}  // namespace fastvlm
