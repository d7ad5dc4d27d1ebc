// fastvlm/text/tokenizer/utf8.hpp — UTF-8 decoding (one code point), validation, encoding and
// lossy repair (ill-formed sequences -> U+FFFD) for the tokenizer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fastvlm/core/error.hpp"

namespace fastvlm::text::detail {

// ---------------------------------------------------------------------------------------------
// UTF-8 (Unicode §3.9, Table 3-7 well-formed byte sequences)

struct Utf8Step {
    enum Status : std::uint8_t { kOk, kInvalid, kTruncated };
    char32_t cp;      // valid only for kOk
    std::uint32_t len;  // kOk: sequence length; kInvalid: maximal subpart (>= 1); kTruncated: bytes left
    Status status;
};

// Reads one code point at p (p < end).
inline Utf8Step utf8_step(const unsigned char* p, const unsigned char* end) {
    const unsigned b0 = p[0];
    if (b0 < 0x80) return {b0, 1, Utf8Step::kOk};
    std::uint32_t need;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    char32_t cp;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 2, cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 3, cp = b0 & 0x0F;
        if (b0 == 0xE0) lo = 0xA0;  // no overlongs
        if (b0 == 0xED) hi = 0x9F;  // no surrogates
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 4, cp = b0 & 0x07;
        if (b0 == 0xF0) lo = 0x90;  // no overlongs
        if (b0 == 0xF4) hi = 0x8F;  // <= U+10FFFF
    } else {
        return {0, 1, Utf8Step::kInvalid};
    }
    for (std::uint32_t k = 1; k < need; ++k) {
        if (p + k >= end) return {0, k, Utf8Step::kTruncated};
        const unsigned b = p[k];
        if (b < (k == 1 ? lo : 0x80u) || b > (k == 1 ? hi : 0xBFu)) return {0, k, Utf8Step::kInvalid};
        cp = (cp << 6) | (b & 0x3F);
    }
    return {cp, need, Utf8Step::kOk};
}

// Throws fastvlm::Error naming the byte offset of the first ill-formed sequence.
inline void check_utf8(std::string_view s, std::string_view what) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const auto* end = p + s.size();
    for (const auto* q = p; q < end;) {
        if (*q < 0x80) {
            ++q;
            continue;
        }
        const Utf8Step st = utf8_step(q, end);
        if (st.status != Utf8Step::kOk) {
            fail("tokenizer: ", what, " is not valid UTF-8: ",
                 st.status == Utf8Step::kTruncated ? "truncated" : "ill-formed", " sequence at byte offset ",
                 q - p);
        }
        q += st.len;
    }
}

inline void append_utf8(std::string& out, char32_t c) {
    if (c < 0x80) {
        out.push_back(static_cast<char>(c));
    } else if (c < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (c >> 6)));
        out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else if (c < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (c >> 12)));
        out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (c >> 18)));
        out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
}

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Appends the valid prefix of bytes [p, end) to out, each ill-formed maximal subpart replaced by
// U+FFFD. A truncated sequence at the end is kept back (returns its start) unless final is set.
inline const unsigned char* append_lossy(std::string& out, const unsigned char* p, const unsigned char* end,
                                         bool final) {
    while (p < end) {
        const unsigned char* q = p;
        while (q < end && *q < 0x80) ++q;  // ASCII run
        out.append(reinterpret_cast<const char*>(p), static_cast<std::size_t>(q - p));
        p = q;
        if (p == end) break;
        const Utf8Step st = utf8_step(p, end);
        if (st.status == Utf8Step::kOk) {
            out.append(reinterpret_cast<const char*>(p), st.len);
        } else if (st.status == Utf8Step::kInvalid || final) {
            out.append(kReplacement);
        } else {
            return p;  // wait for more bytes
        }
        p += st.len;
    }
    return p;
}

}  // namespace fastvlm::text::detail
