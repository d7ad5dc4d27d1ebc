// fastvlm/text/tokenizer/unicode.hpp — the character classes of the pre-tokenizer regex and NFC,
// both from utf8proc's Unicode data.
#pragma once
#include <utf8proc.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "fastvlm/core/error.hpp"

namespace fastvlm::text::detail {

// ---------------------------------------------------------------------------------------------
// Character classes of the pre-tokenizer regex

enum : std::uint8_t {
    kLetter = 1,   // \p{L}: Lu Ll Lt Lm Lo
    kNumber = 2,   // \p{N}: Nd Nl No
    kSpace = 4,    // \s as Oniguruma defines it (HF tokenizers): U+0009-000D, U+0085, Zs, Zl, Zp
    kNewline = 8,  // [\r\n]
};

inline constexpr std::array<std::uint8_t, 128> kAsciiClass = [] {
    std::array<std::uint8_t, 128> t{};
    for (int c = 'a'; c <= 'z'; ++c) t[c] = kLetter;
    for (int c = 'A'; c <= 'Z'; ++c) t[c] = kLetter;
    for (int c = '0'; c <= '9'; ++c) t[c] = kNumber;
    for (int c : {'\t', '\v', '\f', ' '}) t[c] = kSpace;
    t['\n'] = t['\r'] = kSpace | kNewline;
    return t;
}();

inline std::uint8_t char_class(char32_t c) {
    if (c < 0x80) return kAsciiClass[c];
    if (c == 0x85) return kSpace;
    switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
        case UTF8PROC_CATEGORY_LU:
        case UTF8PROC_CATEGORY_LL:
        case UTF8PROC_CATEGORY_LT:
        case UTF8PROC_CATEGORY_LM:
        case UTF8PROC_CATEGORY_LO: return kLetter;
        case UTF8PROC_CATEGORY_ND:
        case UTF8PROC_CATEGORY_NL:
        case UTF8PROC_CATEGORY_NO: return kNumber;
        case UTF8PROC_CATEGORY_ZS:
        case UTF8PROC_CATEGORY_ZL:
        case UTF8PROC_CATEGORY_ZP: return kSpace;
        default: return 0;
    }
}

// ---------------------------------------------------------------------------------------------
// NFC

// Code points below U+0300 are NFC_Quick_Check=Yes and never combine with a neighbour, so text
// whose bytes are all < 0xCC (the lead byte of U+0300) is already NFC.
inline bool maybe_not_nfc(std::string_view s) {
    for (char ch : s)
        if (static_cast<unsigned char>(ch) >= 0xCC) return true;
    return false;
}

// s must be valid UTF-8.
inline std::string nfc(std::string_view s) {
    if (!maybe_not_nfc(s)) return std::string(s);
    utf8proc_uint8_t* dst = nullptr;
    const utf8proc_ssize_t n =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
                     &dst, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (n < 0) fail("tokenizer: NFC normalization failed: ", utf8proc_errmsg(n));
    std::string out(reinterpret_cast<const char*>(dst), static_cast<std::size_t>(n));
    std::free(dst);
    return out;
}

}  // namespace fastvlm::text::detail
