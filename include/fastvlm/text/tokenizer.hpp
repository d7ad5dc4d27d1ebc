// fastvlm/text/tokenizer.hpp — the Qwen2 byte-level BPE tokenizer (docs/tokenizer.md).
//
// encode: split off added tokens (leftmost-longest, on the raw text) -> NFC -> Qwen2 pre-tokenizer
// split (the regex kQwen2Pattern, run by a hand-written matcher over code points) -> bytes mapped to the
// GPT-2 byte alphabet -> BPE by merge rank. Unicode data (categories, NFC) comes from utf8proc.
// decode: token bytes concatenated, invalid UTF-8 replaced by U+FFFD (maximal subparts).
//
// The parts, under text/tokenizer/: utf8.hpp (UTF-8), unicode.hpp (character classes, NFC),
// pretokenize.hpp (the Qwen2 split), bpe.hpp (byte-level BPE), vocab_json.hpp (the streaming
// vocab / tokenizer.json reader), load.hpp (the file loaders). This header: the Tokenizer class.
#pragma once
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fastvlm/core/error.hpp"
#include "fastvlm/io/files.hpp"
#include "fastvlm/text/tokenizer/bpe.hpp"
#include "fastvlm/text/tokenizer/load.hpp"
#include "fastvlm/text/tokenizer/pretokenize.hpp"
#include "fastvlm/text/tokenizer/unicode.hpp"
#include "fastvlm/text/tokenizer/utf8.hpp"
#include "fastvlm/text/tokenizer/vocab_json.hpp"

namespace fastvlm::text {

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
        return build(detail::read_tokenizer_json(file, limits));
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

    using AddedToken = detail::AddedToken;  // the loaders' types (text/tokenizer/load.hpp)
    using Builder = detail::Builder;

    struct Work {
        std::string norm;
        std::vector<char32_t> cp;
        std::vector<std::uint8_t> cls;
        std::vector<std::uint32_t> off;
        std::vector<std::int32_t> sym;
    };

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

    // vocab.json + merges.txt (+ added tokens) of a folder.
    static Tokenizer from_vocab_merges(const std::filesystem::path& dir, const io::LoadLimits& limits = {}) {
        return build(detail::read_vocab_merges(dir, limits));
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
