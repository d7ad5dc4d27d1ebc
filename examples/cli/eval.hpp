// examples/cli/eval.hpp — `fastvlm-cli eval`: exact-match accuracy of greedy answers on a JSONL of
// {"image", "prompt", "answer"} lines (tools/make_scenes.py writes such files), with mean TTFT and
// decode tokens/s. One loaded model and one session for all lines; the image tokens (decode,
// preprocess, vision, projector) are computed once per run of consecutive lines on the same image.
#pragma once
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "args.hpp"
#include "fastvlm/batch_jsonl.hpp"
#include "fastvlm/fastvlm.hpp"
#include "run.hpp"

namespace fastvlm::cli {

struct EvalItem {
    std::filesystem::path image;  // resolved against the JSONL's folder
    std::string image_name;       // as written in the file
    std::string prompt, answer;
    std::size_t line = 0;  // 1-based line number in the JSONL
};

inline std::string trim_ws(std::string_view s) {
    const auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
    std::size_t b = 0, e = s.size();
    while (b < e && ws(s[b])) ++b;
    while (e > b && ws(s[e - 1])) --e;
    return std::string(s.substr(b, e - b));
}

// Reads every non-blank line (at most `limit` items; 0 = all). Errors name the file and line.
inline std::vector<EvalItem> read_eval_jsonl(const std::filesystem::path& file, std::size_t limit = 0) {
    std::ifstream in;
    open_input(in, file, "the JSONL file");
    const std::filesystem::path base = file.parent_path();
    std::vector<EvalItem> items;
    std::string line;
    for (std::size_t n = 1;; ++n) {
        const std::string where = file.string() + ":" + std::to_string(n);
        const io::LineStatus st = io::read_line(in, line, batch::kMaxLineBytes, file.string());
        if (st == io::LineStatus::eof) break;
        if (st == io::LineStatus::too_long) fail(where, ": the line is longer than the ", batch::kMaxLineBytes, "-byte limit");
        if (n == 1 && line.size() >= 3 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);  // UTF-8 BOM
        if (trim_ws(line).empty()) continue;
        nlohmann::json j;
        try {
            j = io::parse_json(line, "JSON", {.reject_duplicate_keys = false});
        } catch (const Error& e) {
            fail(where, ": not a valid JSON object (", e.what(), ")");
        }
        if (!j.is_object()) fail(where, ": expected a JSON object {\"image\", \"prompt\", \"answer\"}, got ", j.type_name());
        EvalItem it;
        it.line = n;
        auto field = [&](const char* key) -> std::string {
            const auto f = j.find(key);
            if (f == j.end()) fail(where, ": missing field \"", key, "\"");
            if (!f->is_string()) fail(where, ": field \"", key, "\" must be a string, got ", f->type_name());
            return f->get<std::string>();
        };
        it.image_name = field("image");
        it.prompt = field("prompt");
        it.answer = field("answer");
        if (it.image_name.empty()) fail(where, ": field \"image\" is empty");
        const std::filesystem::path p(it.image_name);
        it.image = p.is_absolute() ? p : base / p;
        std::error_code ec;
        if (!std::filesystem::is_regular_file(it.image, ec))
            fail(where, ": image '", it.image_name, "' not found (", it.image.string(), ")");
        items.push_back(std::move(it));
        if (limit && items.size() >= limit) break;
    }
    if (in.bad()) fail(file.string(), ": read error");
    if (items.empty()) fail(file.string(), ": no prompts (expected one {\"image\", \"prompt\", \"answer\"} object per line)");
    return items;
}

inline int run_eval(const Args& a) {
    const std::filesystem::path jsonl = a.require("jsonl");
    const bool json = a.flag("json"), verbose = a.flag("verbose");
    const auto items = read_eval_jsonl(jsonl, std::size_t(a.get_int("limit", 0, 0, 1L << 40)));
    GenerateOptions g;  // greedy
    g.max_new_tokens = int(a.get_int("max-tokens", 256, 1, 1 << 24));
    Stopwatch wall;
    auto model = load_model_cli(a);
    if (!model->tokenizer()) fail(a.require("model"), ": the model folder has no tokenizer files (vocab.json + merges.txt, or tokenizer.json)");
    const auto& tok = *model->tokenizer();
    auto session = model->new_session();

    struct Group {
        std::size_t correct = 0, count = 0;
    };
    std::map<std::string, Group> by_prompt;
    std::size_t correct = 0, shown = 0;
    constexpr std::size_t kMaxShown = 20;  // mismatches printed without --verbose
    double sum_ttft = 0, sum_pre = 0, sum_vision = 0, sum_proj = 0, sum_prefill = 0, sum_decode_ms = 0;
    Index sum_prefill_tok = 0, sum_decode_tok = 0;

    // Image tokens of the current image and what they cost (charged to every prompt on the image,
    // so ttft_ms is what `fastvlm-cli run` would measure for that prompt alone).
    std::filesystem::path cur_image;
    std::optional<Tensor<float, 2>> tokens;
    double img_load_pre_ms = 0, img_vision_ms = 0, img_proj_ms = 0;

    for (const auto& it : items) {
        const std::string where = jsonl.string() + ":" + std::to_string(it.line);
        if (!tokens || it.image != cur_image) {
            Stopwatch sw;
            Tensor<float, 3> px;
            try {
                px = model->preprocess(io::load_image(it.image, limits_of(a).image));
            } catch (const Error& e) {
                fail(where, ": ", e.what());
            }
            img_load_pre_ms = sw.ms();
            sw.reset();
            const Tensor<float, 2> feats = model->encode_image(px);
            img_vision_ms = sw.ms();
            sw.reset();
            tokens = model->project(feats);
            img_proj_ms = sw.ms();
            cur_image = it.image;
        }
        // Same prompt and ids as Session::describe (predict.py prompt, spec §5.2).
        const auto ids = text::tokenize_with_image(text::image_prompt(it.prompt), [&](const std::string& s) { return tok.encode(s); });
        session->reset();
        Result r;
        try {
            r = session->generate(ids, tokens->view(), g);
        } catch (const Error& e) {
            fail(where, ": ", e.what());
        }
        const Timings& t = r.timings;
        const double img_ms = img_load_pre_ms + img_vision_ms + img_proj_ms;
        sum_ttft += t.ttft_ms + img_ms;
        sum_pre += img_load_pre_ms;
        sum_vision += img_vision_ms;
        sum_proj += img_proj_ms;
        sum_prefill += t.prefill_ms;
        sum_prefill_tok += t.prefill_tokens;
        sum_decode_ms += t.decode_ms;
        sum_decode_tok += t.decode_tokens;

        const std::string got = trim_ws(r.text), want = trim_ws(it.answer);
        const bool ok = got == want;
        correct += ok;
        auto& grp = by_prompt[it.prompt];
        grp.count += 1;
        grp.correct += ok;
        if (verbose || (!ok && shown < kMaxShown)) {
            if (!ok) ++shown;
            const nlohmann::json jg = got, jw = want, jp = it.prompt;
            const auto dump = [](const nlohmann::json& x) { return x.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); };
            std::fprintf(stderr, "%s %s: %s %s -> %s%s%s\n", ok ? "ok  " : "MISS", where.c_str(), it.image_name.c_str(),
                         dump(jp).c_str(), dump(jg).c_str(), ok ? "" : " expected ", ok ? "" : dump(jw).c_str());
        }
    }
    const std::size_t n = items.size(), missed = n - correct;
    if (!verbose && missed > shown)
        std::fprintf(stderr, "... %zu more mismatches (--verbose prints every line)\n", missed - shown);

    const double dn = double(n);
    const double accuracy = double(correct) / dn, ttft = sum_ttft / dn;
    const double decode_tok_s = sum_decode_ms > 0 ? 1e3 * double(sum_decode_tok) / sum_decode_ms : 0;
    const double prefill_tok_s = sum_prefill > 0 ? 1e3 * double(sum_prefill_tok) / sum_prefill : 0;
    if (json) {
        std::size_t images = 0;  // runs of consecutive lines on one image
        for (std::size_t i = 0; i < n; ++i) images += (i == 0 || items[i].image != items[i - 1].image);
        nlohmann::ordered_json groups = nlohmann::ordered_json::object();
        for (const auto& [p, grp] : by_prompt)
            groups[p] = {{"correct", grp.correct}, {"count", grp.count}, {"accuracy", double(grp.correct) / double(grp.count)}};
        nlohmann::ordered_json j = {{"accuracy", accuracy},
                            {"count", n},
                            {"correct", correct},
                            {"ttft_ms", ttft},
                            {"decode_tok_s", decode_tok_s},
                            {"precision", model->precision()},
                            {"model", a.require("model")},
                            {"jsonl", jsonl.string()},
                            {"images", images},
                            {"mean_ms", {{"preprocess", sum_pre / dn}, {"vision", sum_vision / dn}, {"projector", sum_proj / dn},
                                         {"prefill", sum_prefill / dn}}},
                            {"prefill_tok_s", prefill_tok_s},
                            {"decode_tokens", sum_decode_tok},
                            {"load_ms", model->load_ms()},
                            {"wall_s", wall.ms() / 1e3},
                            {"peak_rss_mb", peak_rss_mb()},
                            {"by_prompt", groups}};
        std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
        std::printf("accuracy %.2f %% (%zu / %zu exact) | precision %s | mean TTFT %.2f ms | decode %.1f tok/s | prefill %.1f tok/s | "
                    "%.1f s\n",
                    100.0 * accuracy, correct, n, model->precision(), ttft, decode_tok_s, prefill_tok_s, wall.ms() / 1e3);
        if (by_prompt.size() <= 32)
            for (const auto& [p, grp] : by_prompt)
                std::printf("  %6zu / %-6zu %6.2f %%  %s\n", grp.correct, grp.count, 100.0 * double(grp.correct) / double(grp.count),
                            p.c_str());
    }
    return 0;
}

inline Command eval_command() {
    return {"eval",
            "Exact-match accuracy of greedy answers on a JSONL file of {\"image\", \"prompt\", \"answer\"} lines (image "
            "paths relative to the file; tools/make_scenes.py writes answers.jsonl), with mean TTFT and decode tok/s. "
            "Mismatches are listed on stderr.",
            "--model DIR --jsonl FILE [--precision NAME] [--threads N] [--max-tokens N] [--limit N] [--json] [--verbose]",
            {{"model", "DIR", "model folder (config.json, model.safetensors, tokenizer files)"},
             {"jsonl", "FILE", "one {\"image\", \"prompt\", \"answer\"} object per line"},
             {"precision", "NAME", "fp32 (default), bf16, fp16, int8, int8_int4, int4"},
             {"threads", "N", "threads (default: all cores)"},
             limit_option(),
             {"max-tokens", "N", "maximum new tokens per answer (default 256)"},
             image_size_option(),
             {"context", "N", "KV-cache positions (default min(8192, max_position_embeddings))"},
             {"limit", "N", "only the first N prompts"},
             {"json", "", "print one JSON summary on stdout: accuracy, count, correct, ttft_ms, decode_tok_s, precision, by_prompt …"},
             {"verbose", "", "print every line's answer on stderr (default: the first 20 mismatches)"}},
            run_eval};
}

}  // namespace fastvlm::cli
