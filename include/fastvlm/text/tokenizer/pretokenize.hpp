// fastvlm/text/tokenizer/pretokenize.hpp — the Qwen2 pre-tokenizer: its Split regex and a
// hand-written matcher over code points that splits text exactly as the regex does.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fastvlm/core/error.hpp"
#include "fastvlm/text/tokenizer/unicode.hpp"
#include "fastvlm/text/tokenizer/utf8.hpp"

namespace fastvlm::text {

// The Split pattern of Qwen2 tokenizer.json files; other patterns are rejected at load time.
inline constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace detail {

// ---------------------------------------------------------------------------------------------
// Qwen2 pre-tokenizer

// End (exclusive) of the regex match that starts at i (i < n). Alternatives are tried in order,
// each with the backtracking result a regex engine would give:
//   (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N} | ?[^\s\p{L}\p{N}]+[\r\n]*
//   | \s*[\r\n]+ | \s+(?!\S) | \s+
// Every code point is covered by one alternative, so the matches tile the text.
inline std::size_t qwen2_match_end(const char32_t* c, const std::uint8_t* k, std::size_t i, std::size_t n) {
    // (?i:'s|'t|'re|'ve|'m|'ll|'d): ASCII case folding plus U+017F (long s folds to s).
    if (c[i] == U'\'' && i + 1 < n) {
        const char32_t a = c[i + 1] == 0x17F ? U's' : (c[i + 1] | 0x20);
        const char32_t b = i + 2 < n ? (c[i + 2] | 0x20) : 0;
        if (a == U's' || a == U't' || a == U'm' || a == U'd') return i + 2;
        if ((a == U'r' || a == U'v') && b == U'e') return i + 3;
        if (a == U'l' && b == U'l') return i + 3;
    }
    const std::uint8_t ki = k[i];
    // [^\r\n\p{L}\p{N}]?\p{L}+
    std::size_t j = i;
    if (!(ki & (kLetter | kNumber | kNewline)) && i + 1 < n && (k[i + 1] & kLetter)) j = i + 1;
    if (k[j] & kLetter) {
        while (j < n && (k[j] & kLetter)) ++j;
        return j;
    }
    // \p{N}
    if (ki & kNumber) return i + 1;
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    constexpr std::uint8_t kSLN = kSpace | kLetter | kNumber;
    j = (c[i] == U' ' && i + 1 < n && !(k[i + 1] & kSLN)) ? i + 1 : i;
    if (!(k[j] & kSLN)) {
        while (j < n && !(k[j] & kSLN)) ++j;
        while (j < n && (k[j] & kNewline)) ++j;
        return j;
    }
    // here c[i] is whitespace; j = end of the whitespace run
    j = i;
    std::size_t last_nl = n;
    while (j < n && (k[j] & kSpace)) {
        if (k[j] & kNewline) last_nl = j;
        ++j;
    }
    if (last_nl != n) return last_nl + 1;  // \s*[\r\n]+ backtracks to the last newline of the run
    if (j == n) return n;                  // \s+(?!\S) at the end of the text
    if (j - i >= 2) return j - 1;          // \s+(?!\S) leaves one space for the next word
    return j;                              // \s+
}

// Splits valid UTF-8 text into pre-tokens (no NFC); for tests and tools.
inline std::vector<std::string> pretokenize(std::string_view text) {
    std::vector<char32_t> cp;
    std::vector<std::uint32_t> off;
    std::vector<std::uint8_t> cls;
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    const auto* end = p + text.size();
    for (const auto* q = p; q < end;) {
        const Utf8Step st = utf8_step(q, end);
        FASTVLM_CHECK(st.status == Utf8Step::kOk, "pretokenize: invalid UTF-8 at byte offset ", q - p);
        cp.push_back(st.cp), cls.push_back(char_class(st.cp)), off.push_back(static_cast<std::uint32_t>(q - p));
        q += st.len;
    }
    off.push_back(static_cast<std::uint32_t>(text.size()));
    std::vector<std::string> out;
    for (std::size_t i = 0; i < cp.size();) {
        const std::size_t e = qwen2_match_end(cp.data(), cls.data(), i, cp.size());
        out.emplace_back(text.substr(off[i], off[e] - off[i]));
        i = e;
    }
    return out;
}

}  // namespace detail
}  // namespace fastvlm::text
