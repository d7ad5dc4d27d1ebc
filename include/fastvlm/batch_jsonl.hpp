// fastvlm/batch_jsonl.hpp — the batch-request line format shared by `fastvlm-cli batch`, the Python
// module (Model.batch_jsonl) and the Dask captioning example, so that all of them read the same
// input lines and write byte-identical output lines.
//
// In:  {"image": "a.png" | ["a.png", "b.jpg"], "prompt": "...", "id": any, "max_tokens", "temperature",
//       "top_k", "top_p", "seed", "answer"}   (all optional; image paths relative to a base folder)
// Out: {"id", "text", "stop", "prompt_tokens", "generated_tokens", "queue_ms", "ttft_ms", "total_ms"}
//      or {"id", "error", "error_kind"} for a line that failed (a malformed line has no "error_kind").
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastvlm/engine.hpp"
#include "fastvlm/io/files.hpp"
#include "fastvlm/io/json.hpp"

namespace fastvlm::batch {

struct Line {
    std::size_t line = 0;        // 1-based line number in the JSONL
    nlohmann::json id;           // the line's "id", else its line number
    std::optional<Request> req;  // empty when the line itself is malformed
    std::string error;           // why the line is malformed
    std::optional<std::string> answer;
};

// Longest input line read (`--max-line-bytes`): a request is a prompt and image paths, not data.
inline constexpr std::size_t kMaxLineBytes = std::size_t(1) << 20;

// The Line of an input line longer than `max_bytes` (its text was not kept).
inline Line too_long_line(std::size_t n, std::size_t max_bytes) {
    Line b;
    b.line = n;
    b.id = n;
    b.error = ::fastvlm::detail::concat("the line is longer than the ", max_bytes, "-byte limit (--max-line-bytes)");
    return b;
}

// Leading/trailing ASCII white space removed.
inline std::string_view trim(std::string_view s) {
    const auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
    while (!s.empty() && ws(s.front())) s.remove_prefix(1);
    while (!s.empty() && ws(s.back())) s.remove_suffix(1);
    return s;
}

// Parses one line (`n` is its 1-based number, `base` the folder image paths are relative to).
// Never throws: a malformed line becomes a Line with `error` set and no request.
inline Line parse_line(std::string_view text, std::size_t n, const std::filesystem::path& base, int default_max_tokens) {
    Line b;
    b.line = n;
    b.id = n;
    try {
        nlohmann::json j;
        try {
            j = io::parse_json(text, "JSON", {.reject_duplicate_keys = false});
        } catch (const Error& e) {
            fail("not a valid JSON object (", e.what(), ")");
        }
        if (!j.is_object()) fail("expected a JSON object {\"image\", \"prompt\", ...}, got ", j.type_name());
        if (auto f = j.find("id"); f != j.end()) b.id = *f;
        Request q;
        q.max_new_tokens = default_max_tokens;
        q.prompt = std::string(text::kDefaultQuestion);
        q.id = b.id.is_string() ? b.id.get<std::string>() : b.id.dump();
        auto str = [&](const char* key) -> std::optional<std::string> {
            const auto f = j.find(key);
            if (f == j.end() || f->is_null()) return std::nullopt;
            if (!f->is_string()) fail("field \"", key, "\" must be a string, got ", f->type_name());
            return f->get<std::string>();
        };
        auto num = [&](const char* key, double lo, double hi) -> std::optional<double> {
            const auto f = j.find(key);
            if (f == j.end() || f->is_null()) return std::nullopt;
            if (!f->is_number()) fail("field \"", key, "\" must be a number, got ", f->type_name());
            const double v = f->get<double>();
            if (!(v >= lo && v <= hi)) fail("field \"", key, "\" = ", v, " is outside ", lo, "..", hi);
            return v;
        };
        if (auto p = str("prompt")) q.prompt = *p;
        if (auto f = j.find("image"); f != j.end() && !f->is_null()) {
            std::vector<std::string> names;
            if (f->is_string()) {
                names.push_back(f->get<std::string>());
            } else if (f->is_array()) {
                for (const auto& e : *f) {
                    if (!e.is_string()) fail("field \"image\" must hold file names (strings), got ", e.type_name());
                    names.push_back(e.get<std::string>());
                }
            } else {
                fail("field \"image\" must be a file name or a list of file names, got ", f->type_name());
            }
            for (const auto& nm : names) {
                const std::filesystem::path p = std::filesystem::path(nm).is_absolute() ? std::filesystem::path(nm) : base / nm;
                q.images.push_back(ImageInput::file(p));
            }
        }
        if (auto v = num("max_tokens", 0, 1 << 24)) q.max_new_tokens = int(*v);
        if (auto v = num("temperature", 0, 100)) q.sampling.temperature = float(*v);
        if (auto v = num("top_k", 0, 1 << 24)) q.sampling.top_k = int(*v);
        if (auto v = num("top_p", 1e-9, 1)) q.sampling.top_p = float(*v);
        if (auto v = num("seed", 0, 18446744073709549568.0)) q.sampling.seed = std::uint64_t(*v);  // the largest double < 2^64
        b.answer = str("answer");
        b.req = std::move(q);
    } catch (const std::exception& e) {
        b.error = e.what();
    }
    return b;
}

// The output object of a line: `r` is its result, nullptr when the line was malformed.
inline nlohmann::json output(const Line& b, const Result* r) {
    nlohmann::json j = {{"id", b.id}};
    if (!r || !r->ok()) {
        j["error"] = r ? r->error : b.error;
        if (r) j["error_kind"] = to_string(r->error_kind);
        return j;
    }
    j["text"] = r->text;
    j["stop"] = to_string(r->stop);
    j["prompt_tokens"] = r->prompt_tokens;
    j["generated_tokens"] = r->ids.size();
    j["queue_ms"] = r->timings.queue_ms;
    j["ttft_ms"] = r->timings.ttft_ms;
    j["total_ms"] = r->timings.total_ms;
    if (!r->preset.empty()) j["preset"] = r->preset;  // the precision preset that served it (adaptive: it varies)
    return j;
}

// One output line (no newline); invalid UTF-8 in a message is replaced, never thrown on.
inline std::string dump(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

// Whether a successful result matches the line's expected "answer" (white space trimmed).
inline bool correct(const Line& b, const Result& r) { return b.answer && trim(r.text) == trim(*b.answer); }

}  // namespace fastvlm::batch
