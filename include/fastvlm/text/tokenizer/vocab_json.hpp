// fastvlm/text/tokenizer/vocab_json.hpp — VocabJsonReader, the streaming (SAX) reader of
// vocab.json / tokenizer.json that fills the vocabulary and merges without a DOM of them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastvlm/core/error.hpp"
#include "fastvlm/io/json.hpp"

namespace fastvlm::text::detail {

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

}  // namespace fastvlm::text::detail
