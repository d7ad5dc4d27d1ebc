// examples/cli/tokenize.hpp — `fastvlm-cli tokenize`: text → token ids with the model folder's
// tokenizer (no weights are loaded). --jsonl: one JSON string per input line → one JSON array per line.
#pragma once
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "args.hpp"
#include "fastvlm/batch_jsonl.hpp"
#include "fastvlm/text/chat.hpp"
#include "fastvlm/text/tokenizer.hpp"

namespace fastvlm::cli {

inline std::string ids_json(const std::vector<std::int32_t>& ids) {
    std::string s = "[";
    for (std::size_t i = 0; i < ids.size(); ++i) {
        if (i) s += ',';
        s += std::to_string(ids[i]);
    }
    return s + "]";
}

inline int run_tokenize(const Args& a) {
    if (a.has("text") == a.has("jsonl")) fail("give exactly one of --text T or --jsonl FILE");
    const auto tok = text::Tokenizer::load(a.require("model"), limits_of(a).load);
    const bool chat = a.flag("chat"), plain = a.flag("no-special");
    auto encode = [&](const std::string& t) {
        if (chat)  // the predict.py prompt around the question, <image> → −200 (spec §5.2)
            return text::tokenize_with_image(text::image_prompt(t), [&](const std::string& s) { return tok.encode(s, true); });
        return tok.encode(t, !plain);
    };
    if (a.has("text")) {
        std::printf("%s\n", ids_json(encode(a.require("text"))).c_str());
        return 0;
    }
    const std::string path = a.require("jsonl");
    std::ifstream in;
    open_input(in, path, "the JSONL file");
    std::string line, out;
    for (std::size_t n = 1;; ++n) {
        const io::LineStatus st = io::read_line(in, line, batch::kMaxLineBytes, path);
        if (st == io::LineStatus::eof) break;
        if (st == io::LineStatus::too_long) fail(path, ":", n, ": the line is longer than the ", batch::kMaxLineBytes, "-byte limit");
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty()) continue;
        nlohmann::json j;
        try {
            j = io::parse_json(line, "JSON", {.reject_duplicate_keys = false});
        } catch (const Error& e) {
            fail(path, ":", n, ": not valid JSON: ", e.what());
        }
        if (!j.is_string()) fail(path, ":", n, ": expected a JSON string, got ", j.type_name());
        try {
            out += ids_json(encode(j.get<std::string>())) + "\n";
        } catch (const Error& e) {
            fail(path, ":", n, ": ", e.what());
        }
        if (out.size() > (1u << 20)) std::fputs(out.c_str(), stdout), out.clear();
    }
    std::fputs(out.c_str(), stdout);
    return 0;
}

inline Command tokenize_command() {
    return {"tokenize",
            "Print the token ids of a text as a JSON array (--jsonl: one JSON string per line in, one array per line out).",
            "--model DIR (--text T | --jsonl FILE) [--chat] [--no-special]",
            {{"model", "DIR", "model folder with vocab.json + merges.txt (+ added tokens) or tokenizer.json"},
             {"text", "T", "the text"},
             {"jsonl", "FILE", "file with one JSON string per line"},
             {"chat", "", "wrap the text as the question of the image prompt (ChatML; <image> becomes -200)"},
             {"no-special", "", "tokenize special tokens written in the text as plain text"},
             limit_option()},
            run_tokenize};
}

}  // namespace fastvlm::cli
