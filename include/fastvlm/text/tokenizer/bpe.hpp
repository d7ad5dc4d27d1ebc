// fastvlm/text/tokenizer/bpe.hpp — byte-level BPE: the GPT-2 byte alphabet, the merge table and
// the two merge loops (rank scan for short words, heap for long ones).
#pragma once
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fastvlm/text/tokenizer/utf8.hpp"

namespace fastvlm::text::detail {

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

}  // namespace fastvlm::text::detail
