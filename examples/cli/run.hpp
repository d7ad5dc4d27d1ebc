// examples/cli/run.hpp — `fastvlm-cli run`: describe one image, streaming the answer to stdout, then
// one timing line on stderr. Also the helpers chat.hpp shares (options, progress bar, timings).
#pragma once
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "args.hpp"
#include "fastvlm/fastvlm.hpp"

namespace fastvlm::cli {

// Options shared by run and chat.
inline std::vector<Option> generation_options() {
    return {{"model", "DIR", "model folder (config.json, model.safetensors, tokenizer files)"},
            {"max-tokens", "N", "maximum new tokens (default 256)"},
            {"temp", "T", "sampling temperature; 0 = greedy (default)"},
            {"top-k", "K", "sample from the K most likely tokens (default: off)"},
            {"top-p", "P", "nucleus sampling mass in (0, 1] (default 1 = off)"},
            {"seed", "S", "random seed for sampling (default 0)"},
            {"threads", "N", "threads (default: all cores)"},
            {"precision", "NAME", "fp32 (default), bf16, fp16, int8, int8_int4, int4"},
            {"context", "N", "KV-cache positions (default min(8192, max_position_embeddings))"},
            {"kv-cache", "TYPE", "KV cache storage: bf16 (default; half the bytes) or f32 (exact)"},
            image_size_option(),
            limit_option()};
}

inline double parse_double(const Args& a, const std::string& name, double def, double lo, double hi) {
    const auto v = a.get(name);
    if (!v) return def;
    char* end = nullptr;
    const double x = std::strtod(v->c_str(), &end);
    if (v->empty() || *end != '\0' || !(x >= lo && x <= hi)) fail("option --", name, ": '", *v, "' is not a number in ", lo, "..", hi);
    return x;
}

inline GenerateOptions generate_options(const Args& a) {
    GenerateOptions g;
    g.max_new_tokens = int(a.get_int("max-tokens", 256, 0, 1 << 24));
    g.sampling.temperature = float(parse_double(a, "temp", 0.0, 0.0, 100.0));
    g.sampling.top_k = int(a.get_int("top-k", 0, 0, 1 << 24));
    g.sampling.top_p = float(parse_double(a, "top-p", 1.0, 1e-9, 1.0));
    const auto seed = a.get("seed");
    if (seed) {
        char* end = nullptr;
        g.sampling.seed = std::strtoull(seed->c_str(), &end, 10);
        if (seed->empty() || *end != '\0' || (*seed)[0] == '-') fail("option --seed: '", *seed, "' is not a non-negative integer");
    }
    return g;
}

// Loads the model with a progress bar on stderr when it is a terminal.
inline std::unique_ptr<AnyModel> load_model_cli(const Args& a) {
    LoadOptions o;
    o.threads = unsigned(a.get_int("threads", long(std::max(1u, std::thread::hardware_concurrency())), 1, 1024));
    o.context = a.get_int("context", 0, 1, 1 << 24);
    if (auto k = a.get("kv-cache")) o.kv_type = text::parse_kv_type(*k);
    o.image_size = image_size_of(a);
    const io::Limits lim = limits_of(a);
    o.limits = lim.load;
    o.image_limits = lim.image;
    const bool tty = isatty(STDERR_FILENO);
    if (tty)
        o.progress = [](float f, std::string_view stage) {
            const int w = 30, n = int(f * float(w) + 0.5f);
            std::fprintf(stderr, "\rloading [%s%s] %3d%% %-10.*s", std::string(std::size_t(n), '#').c_str(),
                         std::string(std::size_t(w - n), ' ').c_str(), int(f * 100.f + 0.5f), int(stage.size()), stage.data());
            std::fflush(stderr);
        };
    auto m = load_model(a.require("model"), a.get_or("precision", "fp32"), o);
    if (tty) std::fprintf(stderr, "\r%60s\r", "");
    return m;
}

inline double peak_rss_mb() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return double(u.ru_maxrss) / 1024.0;  // Linux: kilobytes
}

inline std::string timing_line(const Timings& t) {
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "load %.0f ms | preprocess %.1f ms | vision %.1f ms | projector %.1f ms | prefill %lld tok %.1f ms "
                  "(%.1f tok/s) | TTFT %.1f ms | decode %lld tok %.1f ms (%.2f tok/s) | peak RSS %.0f MB",
                  t.load_ms, t.preprocess_ms, t.vision_ms, t.projector_ms, (long long)t.prefill_tokens, t.prefill_ms,
                  t.prefill_tok_s(), t.ttft_ms, (long long)t.decode_tokens, t.decode_ms, t.decode_tok_s(), peak_rss_mb());
    return buf;
}

inline nlohmann::json timings_json(const Timings& t) {
    return {{"load_ms", t.load_ms},           {"preprocess_ms", t.preprocess_ms},   {"vision_ms", t.vision_ms},
            {"projector_ms", t.projector_ms}, {"prefill_ms", t.prefill_ms},         {"prefill_tokens", t.prefill_tokens},
            {"prefill_tok_s", t.prefill_tok_s()}, {"ttft_ms", t.ttft_ms},          {"decode_ms", t.decode_ms},
            {"decode_tokens", t.decode_tokens}, {"decode_tok_s", t.decode_tok_s()}, {"peak_rss_mb", peak_rss_mb()}};
}

// The kernel path of every (weight, compute) pair, where it came from, and its measured times (ms per sweep).
inline nlohmann::json kernels_json() {
    nlohmann::json out = nlohmann::json::object();
    for (const KernelChoice& c : kernel_choices()) {
        nlohmann::json e = {{"gemv", c.gemv}, {"gemm", c.gemm}, {"source", to_string(c.source)}, {"candidates", c.candidates}};
        for (auto [key, ms] : {std::pair{"gemv_ms", &c.gemv_ms}, std::pair{"gemm_ms", &c.gemm_ms}})
            if (!ms->empty()) {
                nlohmann::json t = nlohmann::json::object();
                for (const auto& [path, v] : *ms) t[path] = v;
                e[key] = std::move(t);
            }
        out[c.pair] = std::move(e);
    }
    return out;
}

inline int run_run(const Args& a) {
    const std::string image_path = a.require("image");
    const std::string prompt = a.get_or("prompt", std::string(text::kDefaultQuestion));
    const bool json = a.flag("json");
    GenerateOptions g = generate_options(a);
    Stopwatch sw;
    const io::Image img = io::load_image(image_path, limits_of(a).image);  // before the (long) model load: fail fast
    const double load_image_ms = sw.ms();
    auto model = load_model_cli(a);
    if (!model->tokenizer()) fail(a.require("model"), ": the model folder has no tokenizer files (vocab.json + merges.txt, or tokenizer.json)");
    if (!json)
        g.on_token = [](std::int32_t, std::string_view piece) {
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
        };
    auto session = model->new_session();
    Result r = session->describe(img, prompt, g);
    r.timings.preprocess_ms += load_image_ms;  // file decoding counts as preprocessing
    r.timings.ttft_ms += load_image_ms;
    if (json) {
        nlohmann::json j = {{"text", r.text},
                            {"ids", r.ids},
                            {"stop", to_string(r.stop)},
                            {"precision", model->precision()},
                            {"weight_mb", double(model->weight_bytes()) / double(1 << 20)},
                            {"decode_weight_mb", double(model->decode_weight_bytes()) / double(1 << 20)},
                            {"timings", timings_json(r.timings)},
                            {"kernels", kernels_json()}};
        std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
        std::printf("\n");
        std::fflush(stdout);
        std::fprintf(stderr, "%s | weights %.0f MB\n", timing_line(r.timings).c_str(), double(model->weight_bytes()) / double(1 << 20));
    }
    return 0;
}

inline Command run_command() {
    auto opts = generation_options();
    opts.insert(opts.begin() + 1, {{"image", "FILE", "image (JPEG/PNG/BMP/TGA/GIF/PNM)"},
                                   {"prompt", "TEXT", "question about the image (default \"Describe the image.\")"}});
    opts.push_back({"json", "", "print one JSON object (text, ids, stop, timings) instead of streaming"});
    return {"run",
            "Describe an image: streams the answer to stdout, then a timing line (load, preprocess, vision, projector, "
            "prefill tok/s, TTFT, decode tok/s, peak RSS, weight memory) on stderr.",
            "--model DIR --image FILE [--prompt TEXT] [options]", opts, run_run};
}

}  // namespace fastvlm::cli
