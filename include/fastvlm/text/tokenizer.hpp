// fastvlm/text/tokenizer.hpp — the Qwen2 byte-level BPE tokenizer (docs/tokenizer.md).
//
// encode: split off added tokens (leftmost-longest, on the raw text) -> NFC -> Qwen2 pre-tokenizer
// split (the regex below, run by a hand-written matcher over code points) -> bytes mapped to the
// GPT-2 byte alphabet -> BPE by merge rank. Unicode data (categories, NFC) comes from utf8proc.
// decode: token bytes concatenated, invalid UTF-8 replaced by U+FFFD (maximal subparts).
#pragma once
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <optional>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastvlm/core/error.hpp"
#include "fastvlm/io/files.hpp"
#include "fastvlm/io/json.hpp"

namespace fastvlm::text {

// The Split pattern of Qwen2 tokenizer.json files; other patterns are rejected at load time.
inline constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace detail {

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

// ---------------------------------------------------------------------------------------------
// GPT-2 byte-level alphabet: printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100.. in byte order (so ' ' -> 'Ġ' U+0120, '\n' -> 'Ċ' U+010A).

inline constexpr std::array<char32_t, 256> kByteToUnicode = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
        const bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        t[b] = keep ? static_cast<char32_t>(b) : next++;
    }
    return t;
}();

inline constexpr std::array<std::int16_t, 324> kUnicodeToByte = [] {
    std::array<std::int16_t, 324> t{};
    for (auto& v : t) v = -1;
    for (int b = 0; b < 256; ++b) t[kByteToUnicode[b]] = static_cast<std::int16_t>(b);
    return t;
}();

inline std::string byte_level_encode(std::string_view raw) {
    std::string out;
    for (char ch : raw) append_utf8(out, kByteToUnicode[static_cast<unsigned char>(ch)]);
    return out;
}

// Raw bytes of a byte-level token string; nullopt if a character is outside the alphabet.
inline std::optional<std::string> byte_level_decode(std::string_view token) {
    std::string out;
    const auto* p = reinterpret_cast<const unsigned char*>(token.data());
    const auto* end = p + token.size();
    while (p < end) {
        const Utf8Step st = utf8_step(p, end);
        if (st.status != Utf8Step::kOk || st.cp >= kUnicodeToByte.size() || kUnicodeToByte[st.cp] < 0)
            return std::nullopt;
        out.push_back(static_cast<char>(kUnicodeToByte[st.cp]));
        p += st.len;
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Merge table: (left id, right id) -> (rank, merged id), open addressing.

class MergeTable {
public:
    struct Entry {
        std::int32_t rank;
        std::int32_t id;
    };

    void reserve(std::size_t n) {
        std::size_t cap = 16;
        while (cap < 2 * n) cap <<= 1;
        slots_.assign(cap, Slot{kEmpty, {0, 0}});
        mask_ = cap - 1;
        count_ = 0;
    }

    // A later duplicate overwrites an earlier one (as HF tokenizers and transformers.js do).
    void insert(std::int32_t a, std::int32_t b, Entry e) {
        if (2 * (count_ + 1) > slots_.size()) grow();
        const std::uint64_t key = make_key(a, b);
        for (std::size_t s = hash(key) & mask_;; s = (s + 1) & mask_) {
            if (slots_[s].key == kEmpty) {
                slots_[s] = {key, e};
                ++count_;
                return;
            }
            if (slots_[s].key == key) {
                slots_[s].e = e;
                return;
            }
        }
    }

    const Entry* find(std::int32_t a, std::int32_t b) const {
        if (slots_.empty()) return nullptr;
        const std::uint64_t key = make_key(a, b);
        for (std::size_t s = hash(key) & mask_;; s = (s + 1) & mask_) {
            if (slots_[s].key == key) return &slots_[s].e;
            if (slots_[s].key == kEmpty) return nullptr;
        }
    }

    std::size_t size() const { return count_; }

private:
    struct Slot {
        std::uint64_t key;
        Entry e;
    };
    static constexpr std::uint64_t kEmpty = ~std::uint64_t{0};
    static std::uint64_t make_key(std::int32_t a, std::int32_t b) {
        return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
    }
    static std::size_t hash(std::uint64_t k) {  // murmur3 finalizer
        k ^= k >> 33, k *= 0xff51afd7ed558ccdULL, k ^= k >> 33, k *= 0xc4ceb9fe1a85ec53ULL, k ^= k >> 33;
        return static_cast<std::size_t>(k);
    }
    void grow() {
        std::vector<Slot> old = std::move(slots_);
        reserve(std::max<std::size_t>(16, old.size()));
        for (const Slot& s : old)
            if (s.key != kEmpty) insert(static_cast<std::int32_t>(s.key >> 32), static_cast<std::int32_t>(s.key), s.e);
    }

    std::vector<Slot> slots_;
    std::size_t mask_ = 0, count_ = 0;
};

inline constexpr std::int32_t kNoRank = std::numeric_limits<std::int32_t>::max();

// BPE over one pre-token given its initial symbol ids: repeatedly merge the adjacent pair with
// the lowest rank, the leftmost one on ties. Two implementations with identical results:
// a rank array scanned per merge (short words) and a heap over a linked list (long words).
inline void bpe_scan(const MergeTable& merges, std::vector<std::int32_t>& sym) {
    const std::size_t n0 = sym.size();
    if (n0 < 2) return;
    std::vector<std::int32_t> rank(n0 - 1), merged(n0 - 1);
    auto set_pair = [&](std::size_t k) {
        const MergeTable::Entry* e = merges.find(sym[k], sym[k + 1]);
        rank[k] = e ? e->rank : kNoRank;
        merged[k] = e ? e->id : -1;
    };
    for (std::size_t k = 0; k + 1 < n0; ++k) set_pair(k);
    std::size_t n = n0;
    while (n > 1) {
        std::size_t best = 0;
        for (std::size_t k = 1; k + 1 < n; ++k)
            if (rank[k] < rank[best]) best = k;
        if (rank[best] == kNoRank) break;
        sym[best] = merged[best];
        sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(best) + 1);
        rank.erase(rank.begin() + static_cast<std::ptrdiff_t>(best));
        merged.erase(merged.begin() + static_cast<std::ptrdiff_t>(best));
        --n;
        if (best + 1 < n) set_pair(best);
        if (best > 0) set_pair(best - 1);
    }
}

inline void bpe_heap(const MergeTable& merges, std::vector<std::int32_t>& sym) {
    const std::size_t n = sym.size();
    if (n < 2) return;
    constexpr std::int32_t kNone = -1;
    std::vector<std::int32_t> prev(n), next(n);
    for (std::size_t k = 0; k < n; ++k) {
        prev[k] = static_cast<std::int32_t>(k) - 1;
        next[k] = k + 1 < n ? static_cast<std::int32_t>(k + 1) : kNone;
    }
    struct Cand {
        std::int32_t rank, pos, left, right;  // pair (sym[pos], sym[next[pos]]) = (left, right)
        bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto push = [&](std::int32_t pos) {
        const std::int32_t nx = next[static_cast<std::size_t>(pos)];
        if (nx == kNone) return;
        const std::int32_t l = sym[static_cast<std::size_t>(pos)], r = sym[static_cast<std::size_t>(nx)];
        if (const MergeTable::Entry* e = merges.find(l, r)) heap.push({e->rank, pos, l, r});
    };
    for (std::size_t k = 0; k + 1 < n; ++k) push(static_cast<std::int32_t>(k));
    // A merged token is longer than both parts, so an entry whose (left, right) ids still match
    // the live pair at pos is current; dead symbols have sym = kNone.
    while (!heap.empty()) {
        const Cand c = heap.top();
        heap.pop();
        const auto pos = static_cast<std::size_t>(c.pos);
        if (sym[pos] != c.left) continue;
        const std::int32_t nx = next[pos];
        if (nx == kNone || sym[static_cast<std::size_t>(nx)] != c.right) continue;
        sym[pos] = merges.find(c.left, c.right)->id;
        sym[static_cast<std::size_t>(nx)] = kNone;
        next[pos] = next[static_cast<std::size_t>(nx)];
        if (next[pos] != kNone) prev[static_cast<std::size_t>(next[pos])] = c.pos;
        if (prev[pos] != kNone) push(prev[pos]);
        push(c.pos);
    }
    std::size_t w = 0;
    for (std::int32_t k = 0; k != kNone; k = next[static_cast<std::size_t>(k)])
        sym[w++] = sym[static_cast<std::size_t>(k)];
    sym.resize(w);
}

inline std::string read_file(const std::filesystem::path& file, std::size_t limit) {
    return io::read_file(file, limit, "tokenizer: " + file.string());
}

inline nlohmann::json read_json(const std::filesystem::path& file, const io::LoadLimits& limits) {
    const std::string data = read_file(file, limits.max_json_file_bytes);
    return io::parse_json(data, "tokenizer: " + file.string(), {.max_depth = limits.max_json_depth, .reject_duplicate_keys = false});
}


// Streaming JSON reader for the big vocabulary / merges: the object at vocab_path goes straight
// into `vocab`, the array at merges_path into `merges` ("a b" strings or ["a", "b"] pairs);
// everything else becomes an ordinary nlohmann::json DOM (`root`). About 4x faster than a DOM
// of the whole 11 MB tokenizer.json.
class VocabJsonReader {
public:
    using json = nlohmann::json;
    VocabJsonReader(std::unordered_map<std::string, std::int32_t>& vocab_,
                    std::vector<std::pair<std::string, std::string>>& merges_, std::vector<std::string> vocab_path_,
                    std::vector<std::string> merges_path_, std::string src_, std::int64_t max_id_,
                    int max_depth_ = io::kMaxJsonDepth)
        : vocab(vocab_), merges(merges_), vocab_path(std::move(vocab_path_)), merges_path(std::move(merges_path_)),
          src(std::move(src_)), max_id(max_id_), max_depth(max_depth_) {}

    std::unordered_map<std::string, std::int32_t>& vocab;
    std::vector<std::pair<std::string, std::string>>& merges;
    std::vector<std::string> vocab_path, merges_path;
    std::string src;
    std::int64_t max_id;
    int max_depth;
    json root;
    bool saw_vocab = false, saw_merges = false;

    bool null() { return value(json()); }
    bool boolean(bool v) { return value(json(v)); }
    bool number_integer(json::number_integer_t v) { return integer(v); }
    bool number_unsigned(json::number_unsigned_t v) {
        return integer(v > static_cast<json::number_unsigned_t>(max_id) ? max_id : static_cast<std::int64_t>(v));
    }
    bool number_float(json::number_float_t v, const std::string&) { return value(json(v)); }
    bool binary(json::binary_t&) { return value(json()); }
    bool string(std::string& v) {
        if (!st_.empty() && st_.back().mode == kMerges) {
            const std::size_t sp = v.find(' ');
            FASTVLM_CHECK(sp != std::string::npos && v.find(' ', sp + 1) == std::string::npos, "tokenizer: ", src,
                          ": merge #", merges.size() + 1, " '", v, "' is not two tokens");
            merges.emplace_back(v.substr(0, sp), v.substr(sp + 1));
            return true;
        }
        if (!st_.empty() && st_.back().mode == kPair) {
            st_.back().parts.push_back(std::move(v));
            return true;
        }
        return value(json(std::move(v)));
    }
    bool key(std::string& k) {
        st_.back().key = std::move(k);
        return true;
    }
    bool start_object(std::size_t) { return open(true); }
    bool start_array(std::size_t) { return open(false); }
    bool end_object() { return close(); }
    bool end_array() { return close(); }
    bool parse_error(std::size_t pos, const std::string&, const json::exception& e) {
        fail("tokenizer: ", src, " is not valid JSON (byte ", pos, "): ", e.what());
    }

private:
    enum Mode { kDom, kVocab, kMerges, kPair };
    struct Frame {
        Mode mode;
        bool object;
        json value;  // kDom
        std::string key;
        std::vector<std::string> parts;  // kPair
    };
    std::vector<Frame> st_;

    bool at(const std::vector<std::string>& path) const {
        if (path.size() != st_.size()) return false;
        for (std::size_t i = 0; i < path.size(); ++i)
            if (!st_[i].object || st_[i].key != path[i]) return false;
        return true;
    }
    bool open(bool object) {
        if (int(st_.size()) >= max_depth) fail("tokenizer: ", src, ": JSON nested deeper than ", max_depth, " levels (limit max_json_depth)");
        Mode mode = kDom;
        if (!st_.empty() && st_.back().mode == kVocab)
            fail("tokenizer: ", src, ": id of token '", st_.back().key, "' is not an integer");
        if (!st_.empty() && st_.back().mode == kMerges) {
            FASTVLM_CHECK(!object, "tokenizer: ", src, ": merge #", merges.size() + 1, " is not a pair of strings");
            mode = kPair;
        } else if (!st_.empty() && st_.back().mode == kPair) {
            fail("tokenizer: ", src, ": merge #", merges.size() + 1, " is not a pair of strings");
        } else if (object && at(vocab_path)) {
            mode = kVocab, saw_vocab = true;
        } else if (!object && at(merges_path)) {
            mode = kMerges, saw_merges = true;
        }
        st_.push_back(Frame{mode, object, mode == kDom ? (object ? json::object() : json::array()) : json(), {}, {}});
        return true;
    }
    bool close() {
        Frame f = std::move(st_.back());
        st_.pop_back();
        if (f.mode == kPair) {
            FASTVLM_CHECK(f.parts.size() == 2, "tokenizer: ", src, ": merge #", merges.size() + 1,
                          " is not a pair of strings");
            merges.emplace_back(std::move(f.parts[0]), std::move(f.parts[1]));
            return true;
        }
        return value(f.mode == kDom ? std::move(f.value) : json());
    }
    bool integer(std::int64_t v) {
        if (!st_.empty() && st_.back().mode == kVocab) {
            const std::string& tok = st_.back().key;
            FASTVLM_CHECK(v >= 0 && v < max_id, "tokenizer: ", src, ": id ", v, " of token '", tok,
                          "' is out of range [0, ", max_id, ")");
            vocab.emplace(tok, static_cast<std::int32_t>(v));
            return true;
        }
        return value(json(v));
    }
    bool value(json&& v) {
        if (st_.empty()) {
            root = std::move(v);
            return true;
        }
        Frame& f = st_.back();
        switch (f.mode) {
            case kDom:
                if (f.object)
                    f.value[f.key] = std::move(v);
                else
                    f.value.push_back(std::move(v));
                return true;
            case kVocab: fail("tokenizer: ", src, ": id of token '", f.key, "' is not an integer");
            case kMerges:
            case kPair: fail("tokenizer: ", src, ": merge #", merges.size() + 1, " is not a pair of strings");
        }
        return true;
    }
};

}  // namespace detail

class Tokenizer {
public:
    // An empty tokenizer (size() == 0); use load() or from_tokenizer_json().
    Tokenizer() { byte_id_.fill(-1); }

    // Loads from a model folder: vocab.json + merges.txt + (added_tokens.json and/or
    // tokenizer_config.json's added_tokens_decoder), what official Qwen2/FastVLM folders ship;
    // tokenizer.json when vocab.json/merges.txt are absent.
    static Tokenizer load(const std::filesystem::path& model_dir, const io::LoadLimits& limits = {}) {
        namespace fs = std::filesystem;
        std::error_code ec;
        if (!fs::is_directory(model_dir, ec)) fail("tokenizer: model folder ", model_dir.string(), " does not exist");
        const fs::path vocab = model_dir / "vocab.json", merges = model_dir / "merges.txt",
                       tj = model_dir / "tokenizer.json";
        const bool have_vocab = io::present(vocab), have_merges = io::present(merges);
        if (have_vocab && have_merges) return from_vocab_merges(model_dir, limits);
        if (io::present(tj)) return from_tokenizer_json(tj, limits);
        if (have_vocab || have_merges)
            fail("tokenizer: ", (have_vocab ? merges : vocab).string(), " is missing (and there is no tokenizer.json)");
        fail("tokenizer: ", model_dir.string(), " has neither vocab.json + merges.txt nor tokenizer.json");
    }

    static Tokenizer from_tokenizer_json(const std::filesystem::path& file, const io::LoadLimits& limits = {}) {
        const std::string src = file.string();
        Builder b;
        b.max_added = limits.max_added_tokens;
        b.vocab_src = b.merges_src = b.added_src = src;
        detail::VocabJsonReader r(b.vocab, b.merges, {"model", "vocab"}, {"model", "merges"}, src, kMaxId, limits.max_json_depth);
        {
            const std::string data = detail::read_file(file, limits.max_tokenizer_file_bytes);
            b.vocab.reserve(160000), b.merges.reserve(160000);
            nlohmann::json::sax_parse(data, &r);
        }
        const nlohmann::json& j = r.root;
        try {
            FASTVLM_CHECK(j.is_object() && j.contains("model") && r.saw_vocab && r.saw_merges, "tokenizer: ", src,
                          ": no model.vocab object / model.merges array");
            check_tokenizer_json_pipeline(j, src, b.nfc);
            if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
                FASTVLM_CHECK(j["added_tokens"].is_array(), "tokenizer: ", src, ": added_tokens is not an array");
                for (const auto& t : j["added_tokens"]) b.added.push_back(parse_added(t, t.at("id"), src));
            }
        } catch (const nlohmann::json::exception& e) {
            fail("tokenizer: ", src, ": unexpected content: ", e.what());
        }
        return build(std::move(b));
    }

    // ids of text. parse_special: special added tokens written in the text become their ids;
    // when false they are tokenized as plain text (non-special added tokens are always matched,
    // like HF `split_special_tokens`). Invalid UTF-8 throws fastvlm::Error naming the byte offset.
    std::vector<std::int32_t> encode(std::string_view text, bool parse_special = true) const {
        detail::check_utf8(text, "the input text");
        std::vector<std::int32_t> ids;
        ids.reserve(text.size() / 3 + 4);
        Work w;
        // sections between added tokens; lstrip/rstrip trim whitespace next to a token
        std::size_t start = 0, i = 0;
        std::size_t rstrip_from = std::string_view::npos;  // start of text after an rstrip token
        auto emit_text = [&](std::size_t b, std::size_t e, bool lstrip_next) {
            std::string_view s = text.substr(b, e - b);
            if (rstrip_from == b) s = trim(s, true, false);
            if (lstrip_next) s = trim(s, false, true);
            encode_section(s, ids, w);
        };
        while (i < text.size()) {
            const bool maybe = first_byte_[static_cast<unsigned char>(text[i])];
            const AddedToken* hit = maybe ? match_added(text, i, parse_special) : nullptr;
            if (!hit) {
                ++i;
                continue;
            }
            emit_text(start, i, hit->lstrip);
            ids.push_back(hit->id);
            i += hit->content.size();
            start = i;
            rstrip_from = hit->rstrip ? i : std::string_view::npos;
        }
        emit_text(start, text.size(), false);
        return ids;
    }

    // Concatenated token bytes as UTF-8; ill-formed sequences become U+FFFD. skip_special drops
    // special added tokens. Unknown ids throw.
    std::string decode(std::span<const std::int32_t> ids, bool skip_special = false) const {
        std::string bytes;
        for (std::int32_t id : ids) {
            check_id(id);
            if (skip_special && kind_[static_cast<std::size_t>(id)] == kSpecial) continue;
            bytes += bytes_[static_cast<std::size_t>(id)];
        }
        return sanitize_utf8(bytes);
    }

    // Raw bytes of one token (after byte-level unmapping; the content for added tokens).
    std::string token_bytes(std::int32_t id) const {
        check_id(id);
        return bytes_[static_cast<std::size_t>(id)];
    }

    // Id of a token given as it is written in vocab.json (byte-level form, e.g. "Ġthe") or as an
    // added token's content (e.g. "<|im_end|>").
    std::optional<std::int32_t> token_id(std::string_view token) const {
        const auto it = token_to_id_.find(std::string(token));
        if (it == token_to_id_.end()) return std::nullopt;
        return it->second;
    }

    bool is_special(std::int32_t id) const {
        const auto k = static_cast<std::size_t>(id);
        return id >= 0 && k < kind_.size() && kind_[k] == kSpecial;
    }

    // len(tokenizer) in HF terms: base vocabulary + added tokens outside it (151646 for Qwen2).
    std::size_t size() const { return size_; }

    // Replaces ill-formed UTF-8 by U+FFFD (maximal subparts, as Python's errors="replace").
    static std::string sanitize_utf8(std::string_view s) {
        std::string out;
        out.reserve(s.size());
        const auto* p = reinterpret_cast<const unsigned char*>(s.data());
        detail::append_lossy(out, p, p + s.size(), true);
        return out;
    }

    // Incremental decode for streaming generation: push() returns only complete UTF-8 characters
    // and holds back a trailing partial sequence; flush() emits what is left (a partial sequence
    // as U+FFFD). The concatenated output equals decode() of all pushed ids. The Tokenizer must
    // outlive the decoder.
    class StreamDecoder {
    public:
        explicit StreamDecoder(const Tokenizer& tok, bool skip_special = true)
            : tok_(&tok), skip_special_(skip_special) {}

        std::string push(std::int32_t id) {
            tok_->check_id(id);
            std::string out;
            if (skip_special_ && tok_->is_special(id)) return out;
            pending_ += tok_->bytes_[static_cast<std::size_t>(id)];
            const auto* p = reinterpret_cast<const unsigned char*>(pending_.data());
            const auto* rest = detail::append_lossy(out, p, p + pending_.size(), false);
            pending_.erase(0, static_cast<std::size_t>(rest - p));
            return out;
        }

        std::string flush() {
            std::string out = sanitize_utf8(pending_);
            pending_.clear();
            return out;
        }

    private:
        const Tokenizer* tok_;
        bool skip_special_;
        std::string pending_;
    };

private:
    enum : std::uint8_t { kUnused = 0, kBase = 1, kAdded = 2, kSpecial = 3 };

    struct AddedToken {
        std::string content;
        std::int32_t id = -1;
        bool special = false, lstrip = false, rstrip = false;
    };

    struct Builder {
        std::unordered_map<std::string, std::int32_t> vocab;  // byte-level form -> id
        std::vector<std::pair<std::string, std::string>> merges;
        std::vector<std::size_t> merge_lines;  // line numbers in merges.txt (empty for tokenizer.json)
        std::vector<AddedToken> added;
        bool nfc = true;
        std::string vocab_src, merges_src, added_src;
        std::size_t max_added = io::LoadLimits{}.max_added_tokens;
    };

    struct Work {
        std::string norm;
        std::vector<char32_t> cp;
        std::vector<std::uint8_t> cls;
        std::vector<std::uint32_t> off;
        std::vector<std::int32_t> sym;
    };

    static constexpr std::int64_t kMaxId = 1 << 24;
    static constexpr std::size_t kHeapThreshold = 48;  // symbols; shorter words use bpe_scan

    void check_id(std::int32_t id) const {
        if (id < 0 || static_cast<std::size_t>(id) >= kind_.size() || kind_[static_cast<std::size_t>(id)] == kUnused)
            fail("tokenizer: token id ", id, " is not in the vocabulary (size ", size_, ")");
    }

    // Whitespace trim used for added tokens' lstrip/rstrip.
    static std::string_view trim(std::string_view s, bool front, bool back) {
        const auto* p = reinterpret_cast<const unsigned char*>(s.data());
        const auto* end = p + s.size();
        if (front) {
            while (p < end) {
                const detail::Utf8Step st = detail::utf8_step(p, end);
                if (!(detail::char_class(st.cp) & detail::kSpace)) break;
                p += st.len;
            }
        }
        if (back) {
            while (end > p) {
                const auto* q = end - 1;
                while (q > p && (*q & 0xC0) == 0x80) --q;
                const detail::Utf8Step st = detail::utf8_step(q, end);
                if (!(detail::char_class(st.cp) & detail::kSpace)) break;
                end = q;
            }
        }
        return {reinterpret_cast<const char*>(p), static_cast<std::size_t>(end - p)};
    }

    // Longest added token starting at byte i (added_ is sorted by length, longest first).
    const AddedToken* match_added(std::string_view text, std::size_t i, bool parse_special) const {
        const std::string_view rest = text.substr(i);
        for (const AddedToken& t : added_)
            if ((parse_special || !t.special) && rest.starts_with(t.content)) return &t;
        return nullptr;
    }

    std::int32_t byte_token(unsigned char b) const {
        const std::int32_t id = byte_id_[b];
        if (id < 0) fail("tokenizer: the vocabulary has no token for byte 0x", "0123456789abcdef"[b >> 4],
                         "0123456789abcdef"[b & 15]);
        return id;
    }

    void encode_section(std::string_view s, std::vector<std::int32_t>& ids, Work& w) const {
        if (s.empty()) return;
        if (nfc_ && detail::maybe_not_nfc(s)) {
            w.norm = detail::nfc(s);
            s = w.norm;
        }
        w.cp.clear(), w.cls.clear(), w.off.clear();
        const auto* p = reinterpret_cast<const unsigned char*>(s.data());
        const auto* end = p + s.size();
        for (const auto* q = p; q < end;) {
            char32_t c;
            std::uint32_t len;
            if (*q < 0x80) {
                c = *q, len = 1;
            } else {
                const detail::Utf8Step st = detail::utf8_step(q, end);  // valid: checked in encode()
                c = st.cp, len = st.len;
            }
            w.cp.push_back(c), w.cls.push_back(detail::char_class(c));
            w.off.push_back(static_cast<std::uint32_t>(q - p));
            q += len;
        }
        w.off.push_back(static_cast<std::uint32_t>(s.size()));
        const std::size_t n = w.cp.size();
        for (std::size_t i = 0; i < n;) {
            const std::size_t e = detail::qwen2_match_end(w.cp.data(), w.cls.data(), i, n);
            const std::size_t b0 = w.off[i], b1 = w.off[e];
            w.sym.clear();
            for (std::size_t b = b0; b < b1; ++b) w.sym.push_back(byte_token(p[b]));
            if (w.sym.size() < kHeapThreshold)
                detail::bpe_scan(merges_, w.sym);
            else
                detail::bpe_heap(merges_, w.sym);
            ids.insert(ids.end(), w.sym.begin(), w.sym.end());
            i = e;
        }
    }

    // ---- loading ----

    static AddedToken parse_added(const nlohmann::json& t, const nlohmann::json& idj, const std::string& src) {
        FASTVLM_CHECK(t.is_object() && t.contains("content") && t["content"].is_string(), "tokenizer: ", src,
                      ": an added token has no string 'content'");
        AddedToken a;
        a.content = t["content"].get<std::string>();
        FASTVLM_CHECK(!a.content.empty(), "tokenizer: ", src, ": an added token has empty content");
        std::int64_t id = -1;
        if (idj.is_number_integer()) {
            id = idj.get<std::int64_t>();
        } else if (idj.is_string()) {  // added_tokens_decoder keys
            const std::string& s = idj.get_ref<const std::string&>();
            char* endp = nullptr;
            id = std::strtoll(s.c_str(), &endp, 10);
            if (s.empty() || *endp != '\0') id = -1;
        }
        FASTVLM_CHECK(id >= 0 && id < kMaxId, "tokenizer: ", src, ": added token '", a.content, "' has a bad id");
        a.id = static_cast<std::int32_t>(id);
        auto flag = [&](const char* key) { return t.contains(key) && t[key].is_boolean() && t[key].get<bool>(); };
        a.special = flag("special"), a.lstrip = flag("lstrip"), a.rstrip = flag("rstrip");
        return a;
    }

    // The tokenizer.json pipeline must be Qwen2's: NFC (or none), Split(Qwen2 regex) + ByteLevel
    // without its own regex, BPE without byte fallback or subword affixes.
    static void check_tokenizer_json_pipeline(const nlohmann::json& j, const std::string& src, bool& nfc) {
        const nlohmann::json& model = j.at("model");
        const std::string type = model.value("type", std::string("BPE"));
        FASTVLM_CHECK(type == "BPE", "tokenizer: ", src, ": model type '", type, "' is not supported (BPE only)");
        FASTVLM_CHECK(!model.value("byte_fallback", false), "tokenizer: ", src, ": byte_fallback BPE is not supported");
        for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
            if (model.contains(key) && model[key].is_string())
                FASTVLM_CHECK(model[key].get<std::string>().empty(), "tokenizer: ", src, ": BPE ", key,
                              " is not supported");
        }
        FASTVLM_CHECK(!model.value("ignore_merges", false), "tokenizer: ", src, ": ignore_merges is not supported");

        nfc = false;
        if (j.contains("normalizer") && !j["normalizer"].is_null()) {
            const std::string nt = j["normalizer"].value("type", std::string());
            FASTVLM_CHECK(nt == "NFC", "tokenizer: ", src, ": normalizer '", nt, "' is not supported (NFC only)");
            nfc = true;
        }
        bool split = false, byte_level = false;
        const nlohmann::json& pre = j.at("pre_tokenizer");
        auto visit = [&](const nlohmann::json& p) {
            const std::string pt = p.value("type", std::string());
            if (pt == "Split" && p.contains("pattern") && p["pattern"].contains("Regex") &&
                p["pattern"]["Regex"].is_string() &&
                p["pattern"]["Regex"].get<std::string>() == kQwen2Pattern &&
                p.value("behavior", std::string()) == "Isolated" &&
                !p.value("invert", false)) {
                split = true;
            } else if (pt == "ByteLevel" && !p.value("use_regex", true) && !p.value("add_prefix_space", false)) {
                byte_level = true;
            } else {
                fail("tokenizer: ", src, ": pre_tokenizer ", p.dump(), " is not supported (expected the Qwen2 Split "
                     "regex followed by ByteLevel with use_regex=false)");
            }
        };
        if (pre.is_object() && pre.value("type", std::string()) == "Sequence") {
            for (const auto& p : pre.at("pretokenizers")) visit(p);
        } else if (pre.is_object()) {
            visit(pre);
        }
        FASTVLM_CHECK(split && byte_level, "tokenizer: ", src,
                      ": pre_tokenizer is not Qwen2's (Split with the Qwen2 regex + ByteLevel)");
    }

    static Tokenizer from_vocab_merges(const std::filesystem::path& dir, const io::LoadLimits& limits = {}) {
        namespace fs = std::filesystem;
        Builder b;
        b.max_added = limits.max_added_tokens;
        const fs::path vocab_file = dir / "vocab.json", merges_file = dir / "merges.txt";
        b.vocab_src = vocab_file.string(), b.merges_src = merges_file.string();
        {
            std::vector<std::pair<std::string, std::string>> no_merges;
            detail::VocabJsonReader r(b.vocab, no_merges, {}, {"-"}, b.vocab_src, kMaxId, limits.max_json_depth);
            const std::string data = detail::read_file(vocab_file, limits.max_tokenizer_file_bytes);
            b.vocab.reserve(160000);
            nlohmann::json::sax_parse(data, &r);
            FASTVLM_CHECK(r.saw_vocab, "tokenizer: ", b.vocab_src, ": the vocabulary is not a JSON object");
        }
        {
            const std::string text = detail::read_file(merges_file, limits.max_tokenizer_file_bytes);
            detail::check_utf8(text, b.merges_src);
            // Qwen2Tokenizer: strip each line, skip blanks and a first-line "#version:" header.
            std::size_t line_no = 0;
            for (std::size_t pos = 0; pos < text.size();) {
                std::size_t eol = text.find('\n', pos);
                if (eol == std::string::npos) eol = text.size();
                std::string_view line(text.data() + pos, eol - pos);
                pos = eol + 1;
                ++line_no;
                auto is_ws = [](char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\v' || ch == '\f'; };
                while (!line.empty() && is_ws(line.front())) line.remove_prefix(1);
                while (!line.empty() && is_ws(line.back())) line.remove_suffix(1);
                if (line.empty() || (line_no == 1 && line.starts_with("#version:"))) continue;
                std::size_t sp = 0;
                while (sp < line.size() && !is_ws(line[sp])) ++sp;
                std::size_t r = sp;
                while (r < line.size() && is_ws(line[r])) ++r;
                const std::string_view right = line.substr(r);
                FASTVLM_CHECK(sp > 0 && !right.empty() && std::none_of(right.begin(), right.end(), is_ws),
                              "tokenizer: ", b.merges_src, ":", line_no, ": expected two tokens separated by a space");
                b.merges.emplace_back(std::string(line.substr(0, sp)), std::string(right));
                b.merge_lines.push_back(line_no);
            }
        }
        read_folder_added_tokens(dir, b, limits);
        return build(std::move(b));
    }

    // added_tokens_decoder (tokenizer_config.json) carries the special flags; tokens only listed in
    // added_tokens.json are special when special_tokens_map.json / tokenizer_config.json name them.
    static void read_folder_added_tokens(const std::filesystem::path& dir, Builder& b, const io::LoadLimits& limits) {
        namespace fs = std::filesystem;
        const fs::path cfg_file = dir / "tokenizer_config.json", at_file = dir / "added_tokens.json",
                       stm_file = dir / "special_tokens_map.json";
        std::unordered_set<std::string> named_special;
        auto collect_named = [&](const nlohmann::json& j) {
            for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token", "additional_special_tokens"}) {
                if (!j.contains(key)) continue;
                const nlohmann::json& v = j[key];
                auto one = [&](const nlohmann::json& x) {
                    if (x.is_string()) named_special.insert(x.get<std::string>());
                    else if (x.is_object() && x.contains("content") && x["content"].is_string())
                        named_special.insert(x["content"].get<std::string>());
                };
                if (v.is_array())
                    for (const auto& x : v) one(x);
                else
                    one(v);
            }
        };
        std::string sources;
        try {
            if (io::present(cfg_file)) {
                const nlohmann::json cfg = detail::read_json(cfg_file, limits);
                const std::string src = cfg_file.string();
                FASTVLM_CHECK(cfg.is_object(), "tokenizer: ", src, " is not a JSON object");
                if (cfg.contains("tokenizer_class") && cfg["tokenizer_class"].is_string()) {
                    const std::string cls = cfg["tokenizer_class"].get<std::string>();
                    FASTVLM_CHECK(cls == "Qwen2Tokenizer" || cls == "Qwen2TokenizerFast", "tokenizer: ", src,
                                  ": tokenizer_class '", cls, "' is not supported (Qwen2Tokenizer)");
                }
                if (cfg.contains("added_tokens_decoder")) {
                    const nlohmann::json& d = cfg["added_tokens_decoder"];
                    FASTVLM_CHECK(d.is_object(), "tokenizer: ", src, ": added_tokens_decoder is not an object");
                    for (const auto& [key, t] : d.items()) b.added.push_back(parse_added(t, nlohmann::json(key), src));
                }
                collect_named(cfg);
                sources = src;
            }
            if (io::present(stm_file)) {
                const nlohmann::json stm = detail::read_json(stm_file, limits);
                FASTVLM_CHECK(stm.is_object(), "tokenizer: ", stm_file.string(), " is not a JSON object");
                collect_named(stm);
            }
            if (io::present(at_file)) {
                const nlohmann::json at = detail::read_json(at_file, limits);
                const std::string src = at_file.string();
                FASTVLM_CHECK(at.is_object(), "tokenizer: ", src, " is not a JSON object {token: id}");
                std::unordered_map<std::string, std::size_t> known;  // content -> index in b.added
                for (std::size_t i = 0; i < b.added.size(); ++i) known.emplace(b.added[i].content, i);
                for (const auto& item : at.items()) {
                    const std::string& content = item.key();  // no structured binding: clang < 16
                    nlohmann::json t = {{"content", content}};
                    AddedToken a = parse_added(t, item.value(), src);
                    a.special = named_special.count(content) > 0;
                    const auto k = known.find(content);
                    if (k != known.end()) {
                        const AddedToken* same = &b.added[k->second];
                        FASTVLM_CHECK(same->id == a.id, "tokenizer: ", src, ": '", content, "' has id ", a.id,
                                      " but ", sources, " gives ", same->id);
                        continue;
                    }
                    known.emplace(content, b.added.size());
                    b.added.push_back(std::move(a));
                }
                sources = sources.empty() ? src : sources + " / " + src;
            }
        } catch (const nlohmann::json::exception& e) {
            fail("tokenizer: unexpected content in the added-token files of ", dir.string(), ": ", e.what());
        }
        b.added_src = sources.empty() ? dir.string() : sources;
    }

    static Tokenizer build(Builder&& b) {
        Tokenizer t;
        t.nfc_ = b.nfc;
        std::int64_t max_id = -1;
        for (const auto& [tok, id] : b.vocab) max_id = std::max<std::int64_t>(max_id, id);
        for (const AddedToken& a : b.added) max_id = std::max<std::int64_t>(max_id, a.id);
        FASTVLM_CHECK(!b.vocab.empty(), "tokenizer: ", b.vocab_src, ": the vocabulary is empty");
        FASTVLM_CHECK(b.added.size() <= b.max_added, "tokenizer: ", b.added_src, ": ", b.added.size(),
                      " added tokens, more than the ", b.max_added, " limit (LoadLimits::max_added_tokens)");
        const auto n_ids = static_cast<std::size_t>(max_id + 1);
        // Tables are indexed by id: a handful of tokens with ids near 2^24 would allocate half a GB.
        const std::size_t n_tokens = b.vocab.size() + b.added.size();
        FASTVLM_CHECK(n_ids <= 2 * n_tokens + 65536, "tokenizer: ", b.vocab_src, ": the largest id ", max_id, " is far above the ",
                      n_tokens, " tokens (ids must be dense: at most 2 x tokens + 65536)");
        t.kind_.assign(n_ids, kUnused);
        t.bytes_.assign(n_ids, std::string());
        std::size_t n_base = 0;
        for (const auto& [tok, id] : b.vocab) {
            const auto k = static_cast<std::size_t>(id);
            FASTVLM_CHECK(t.kind_[k] == kUnused, "tokenizer: ", b.vocab_src, ": id ", id, " is used by two tokens");
            t.kind_[k] = kBase;
            // HF's ByteLevel decoder falls back to the raw string for characters outside the alphabet.
            auto raw = detail::byte_level_decode(tok);
            t.bytes_[k] = raw ? std::move(*raw) : tok;
            ++n_base;
        }
        std::size_t n_extra = 0;
        std::unordered_map<std::string_view, std::int32_t> added_ids;  // content -> id, of t.added_
        for (const AddedToken& a : b.added) {
            const auto k = static_cast<std::size_t>(a.id);
            if (t.kind_[k] == kBase) {
                FASTVLM_CHECK(t.bytes_[k] == a.content, "tokenizer: ", b.added_src, ": added token '", a.content,
                              "' has id ", a.id, ", which the vocabulary gives to another token");
            } else if (t.kind_[k] != kUnused) {
                FASTVLM_CHECK(t.bytes_[k] == a.content, "tokenizer: ", b.added_src, ": id ", a.id,
                              " is given to two added tokens");
                if (a.special) t.kind_[k] = kSpecial;
                continue;
            } else {
                ++n_extra;
            }
            if (const auto x = added_ids.find(a.content); x != added_ids.end())
                fail("tokenizer: ", b.added_src, ": added token '", a.content, "' has two ids (", x->second, " and ", a.id, ")");
            added_ids.emplace(a.content, a.id);  // views into b.added, which outlives this loop
            t.kind_[k] = a.special ? kSpecial : kAdded;
            t.bytes_[k] = a.content;
            t.added_.push_back(a);
        }
        std::stable_sort(t.added_.begin(), t.added_.end(),
                         [](const AddedToken& x, const AddedToken& y) { return x.content.size() > y.content.size(); });
        for (const AddedToken& a : t.added_) t.first_byte_[static_cast<unsigned char>(a.content[0])] = true;
        t.size_ = n_base + n_extra;

        for (int byte = 0; byte < 256; ++byte) {
            std::string key;
            detail::append_utf8(key, detail::kByteToUnicode[static_cast<std::size_t>(byte)]);
            const auto it = b.vocab.find(key);
            t.byte_id_[static_cast<std::size_t>(byte)] = it == b.vocab.end() ? -1 : it->second;
        }

        t.merges_.reserve(b.merges.size());
        std::string joined;
        for (std::size_t r = 0; r < b.merges.size(); ++r) {
            const auto& [left, right] = b.merges[r];
            auto where = [&] {
                return b.merge_lines.empty() ? ::fastvlm::detail::concat(b.merges_src, ": merge #", r + 1)
                                             : ::fastvlm::detail::concat(b.merges_src, ":", b.merge_lines[r]);
            };
            const auto il = b.vocab.find(left), ir = b.vocab.find(right);
            if (il == b.vocab.end() || ir == b.vocab.end())
                fail("tokenizer: ", where(), ": merge '", left, " ", right, "' uses '",
                     il == b.vocab.end() ? left : right, "', which is not in the vocabulary");
            joined.assign(left).append(right);
            const auto im = b.vocab.find(joined);
            if (im == b.vocab.end())
                fail("tokenizer: ", where(), ": the result '", joined, "' of merge '", left, " ", right,
                     "' is not in the vocabulary");
            t.merges_.insert(il->second, ir->second, {static_cast<std::int32_t>(r), im->second});
        }
        t.token_to_id_ = std::move(b.vocab);
        for (const AddedToken& a : t.added_) t.token_to_id_[a.content] = a.id;
        return t;
    }

    std::vector<std::string> bytes_;  // raw bytes per id
    std::vector<std::uint8_t> kind_;  // kUnused / kBase / kAdded / kSpecial per id
    std::unordered_map<std::string, std::int32_t> token_to_id_;
    std::array<std::int32_t, 256> byte_id_{};
    detail::MergeTable merges_;
    std::vector<AddedToken> added_;  // longest content first
    std::array<bool, 256> first_byte_{};
    bool nfc_ = true;
    std::size_t size_ = 0;
};

}  // namespace fastvlm::text
