// examples/cli/batch.hpp — `fastvlm-cli batch`: offline batch inference on the Engine (continuous
// batching). One JSON line out per line in, in input order; a line that fails (bad JSON, image or
// prompt) gets an "error" and never stops the run. With --json a summary object on stdout.
#pragma once
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "args.hpp"
#include "eval.hpp"
#include "fastvlm/batch_jsonl.hpp"
#include "fastvlm/fastvlm.hpp"
#include "run.hpp"

namespace fastvlm::cli {

inline nlohmann::json quantiles_ms(std::vector<double> v) {
    if (v.empty()) return {{"p50", nullptr}, {"p95", nullptr}, {"p99", nullptr}};
    std::sort(v.begin(), v.end());
    auto q = [&](double p) { return v[std::min(v.size() - 1, std::size_t(std::ceil(p * double(v.size()))) - 1)]; };
    return {{"p50", q(0.50)}, {"p95", q(0.95)}, {"p99", q(0.99)}};
}

inline int run_batch(const Args& a) {
    namespace fs = std::filesystem;
    const fs::path file = a.require("jsonl");
    const bool json = a.flag("json");
    const int parallel = int(a.get_int("parallel", 8, 1, 1024));
    const int max_tokens = int(a.get_int("max-tokens", 256, 0, 1 << 24));
    const std::size_t max_line = std::size_t(a.get_int("max-line-bytes", long(batch::kMaxLineBytes), 1, 1l << 30));
    std::ifstream in;
    open_input(in, file, "the JSONL file");
    const io::ImageLimits image_limits = limits_of(a).image;
    std::vector<batch::Line> lines;
    {
        std::string s;
        for (std::size_t n = 1;; ++n) {
            const io::LineStatus st = io::read_line(in, s, max_line, file.string());
            if (st == io::LineStatus::eof) break;
            if (st == io::LineStatus::too_long) {
                lines.push_back(batch::too_long_line(n, max_line));
                continue;
            }
            if (n == 1 && s.size() >= 3 && s.compare(0, 3, "\xEF\xBB\xBF") == 0) s.erase(0, 3);
            if (trim_ws(s).empty()) continue;
            lines.push_back(batch::parse_line(s, n, file.parent_path(), max_tokens));
            if (auto& q = lines.back().req)
                for (auto& im : q->images) im.limits = image_limits;
        }
        if (in.bad()) fail(file.string(), ": read error");
    }
    if (lines.empty()) fail(file.string(), ": no requests (expected one {\"image\", \"prompt\"} object per line)");

    std::FILE* out = nullptr;
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> out_file(nullptr, std::fclose);
    if (auto o = a.get("out")) {
        out_file.reset(std::fopen(o->c_str(), "wb"));
        if (!out_file) fail(*o, ": cannot open for writing");
        out = out_file.get();
    } else if (!json) {
        out = stdout;
    }

    auto model = load_model_cli(a);
    if (!model->tokenizer()) fail(a.require("model"), ": the model folder has no tokenizer files (vocab.json + merges.txt, or tokenizer.json)");
    EngineOptions eo;
    eo.max_running = parallel;
    eo.max_queued = parallel + 8;
    eo.prefill_chunk = a.get_int("prefill-chunk", 256, 1, 1 << 16);
    set_engine_options(a, eo, true);
    eo.context = a.get_int("context", 0, 1, 1 << 24);
    auto engine = model->new_engine(eo);

    const bool tty = isatty(STDERR_FILENO);
    Stopwatch wall;
    std::deque<std::pair<std::size_t, RequestHandle>> window;  // in input order
    std::size_t next = 0, done = 0, errors = 0, answered = 0, correct = 0;
    std::vector<double> ttft, queue;
    std::uint64_t generated = 0;
    auto progress = [&] {
        if (!tty) return;
        const int w = 30, n = int(double(w) * double(done) / double(lines.size()) + 0.5);
        std::fprintf(stderr, "\rbatch [%s%s] %zu/%zu  %.1f s  errors %zu", std::string(std::size_t(n), '#').c_str(),
                     std::string(std::size_t(w - n), ' ').c_str(), done, lines.size(), wall.ms() / 1e3, errors);
        std::fflush(stderr);
    };
    auto emit = [&](const batch::Line& b, const Result* r) {
        const nlohmann::json j = batch::output(b, r);
        if (!r || !r->ok()) {
            ++errors;
        } else {
            generated += r->ids.size();
            queue.push_back(r->timings.queue_ms);
            if (r->timings.ttft_ms > 0) ttft.push_back(r->timings.ttft_ms);
        }
        if (b.answer) {
            ++answered;  // a failed line counts as wrong
            if (r && r->ok() && batch::correct(b, *r)) ++correct;
        }
        if (out) {
            std::fprintf(out, "%s\n", batch::dump(j).c_str());
            std::fflush(out);
        }
        ++done;
        progress();
    };
    const std::size_t window_size = std::size_t(parallel) + 4;
    while (done < lines.size()) {
        while (next < lines.size() && window.size() < window_size) {
            auto& b = lines[next];
            if (b.req) window.emplace_back(next, engine->submit(std::move(*b.req)));
            else window.emplace_back(next, RequestHandle());
            ++next;
        }
        auto [i, h] = std::move(window.front());
        window.pop_front();
        if (!h.valid()) {
            emit(lines[i], nullptr);
            continue;
        }
        const Result r = h.wait();
        emit(lines[i], &r);
    }
    if (tty) std::fprintf(stderr, "\n");
    const double wall_s = wall.ms() / 1e3;
    const EngineStats st = engine->stats();
    const double agg = st.aggregate_decode_tok_s();
    if (json) {
        nlohmann::json s = {{"requests", lines.size()},
                            {"parallel", parallel},
                            {"precision", model->precision()},
                            {"wall_s", wall_s},
                            {"aggregate_decode_tok_s", agg},
                            {"decode_only_tok_s", st.decode_only_tok_s()},
                            {"requests_per_s", double(lines.size()) / wall_s},
                            {"generated_tokens", generated},
                            {"ttft_ms", quantiles_ms(ttft)},
                            {"queue_ms", quantiles_ms(queue)},
                            {"errors", errors},
                            {"accuracy", answered ? nlohmann::json(double(correct) / double(answered)) : nlohmann::json(nullptr)},
                            {"metrics", engine->metrics_json()}};
        std::printf("%s\n", s.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
        std::fprintf(stderr, "%zu requests in %.2f s (%.2f req/s), parallel %d, %s | aggregate decode %.1f tok/s | errors %zu",
                     lines.size(), wall_s, double(lines.size()) / wall_s, parallel, model->precision(), agg, errors);
        if (answered) std::fprintf(stderr, " | accuracy %zu/%zu", correct, answered);
        std::fprintf(stderr, "\n");
    }
    return 0;
}

inline Command batch_command() {
    std::vector<Option> opts = {{"model", "DIR", "model folder (config.json, model.safetensors, tokenizer files)"},
             {"jsonl", "FILE", "requests, one JSON object per line"},
             {"max-line-bytes", "N", "longest input line; a longer one gets an error line (default 1048576)"},
             {"parallel", "N", "sequences decoded together (default 8)"},
             {"precision", "NAME", "fp32 (default), bf16, fp16, int8, int8_int4, int4, or auto:P1,P2,... (adaptive: most accurate first)"},
             {"max-tokens", "N", "default maximum new tokens per request (default 256; a line's max_tokens wins)"},
             {"out", "FILE", "write the per-line results there (default: stdout, unless --json)"},
             {"json", "", "print one summary object on stdout (wall time, throughput, TTFT/queue percentiles, accuracy, metrics)"},
             {"threads", "N", "threads (default: all cores)"},
             limit_option(),
             {"context", "N", "most positions of one sequence (default min(8192, max_position_embeddings))"},
             {"kv-cache", "TYPE", "KV cache storage: bf16 (default) or f32"},
             image_size_option(),
             {"prefill-chunk", "N", "most prompt rows per step (default 256)"}};
    for (auto& o : engine_options("image-feature cache in MB: a repeated image skips the vision tower (default 256, 0 = off)", true))
        opts.push_back(o);
    return {"batch",
            "Offline batch inference with continuous batching: one JSON object per input line {\"image\": FILE | [FILES], "
            "\"prompt\", \"id\", \"max_tokens\", \"temperature\", \"top_k\", \"top_p\", \"seed\", \"answer\"} (all optional; "
            "image paths relative to the JSONL). Writes one JSON line per input line, in order: {\"id\", \"text\", \"stop\", "
            "\"prompt_tokens\", \"generated_tokens\", \"queue_ms\", \"ttft_ms\", \"total_ms\"}, or {\"id\", \"error\"} for a "
            "line that failed.",
            "--model DIR --jsonl FILE [--parallel N] [--out FILE] [--json] [options]",
            opts,
            run_batch};
}

}  // namespace fastvlm::cli
