// fastvlm/io/json.hpp — the one JSON parser for input from outside: bounded depth, no duplicate keys,
// linear time, messages that never echo unbounded input.
//
// nlohmann::json::parse alone accepts any nesting (and code that walks the result recursively, or
// dumps it into an error message, can then overflow the stack) and keeps the last of duplicate keys
// silently. parse_json() builds the same DOM from nlohmann's SAX events with an explicit stack: a
// value nested deeper than `max_depth` and a repeated key are errors naming the source and the byte.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastvlm/core/error.hpp"

namespace fastvlm::io {

inline constexpr int kMaxJsonDepth = 64;  // LoadLimits::max_json_depth, the server's and JSONL's default

struct JsonOptions {
    int max_depth = kMaxJsonDepth;
    bool reject_duplicate_keys = true;
};

namespace detail {

// "integer" / "float" / nlohmann's type name, for "expected X, got Y" messages.
inline std::string json_type(const nlohmann::json& j) {
    if (j.is_number_integer()) return "integer";
    if (j.is_number_float()) return "float";
    return j.type_name();
}

class JsonDomBuilder {
public:
    using json = nlohmann::json;
    JsonDomBuilder(std::string_view what, JsonOptions opt) : what_(what), opt_(opt) {}

    bool null() { return put(json()); }
    bool boolean(bool v) { return put(json(v)); }
    bool number_integer(json::number_integer_t v) { return put(json(v)); }
    bool number_unsigned(json::number_unsigned_t v) { return put(json(v)); }
    bool number_float(json::number_float_t v, const std::string&) { return put(json(v)); }
    bool string(std::string& v) { return put(json(std::move(v))); }
    bool binary(json::binary_t& v) { return put(json::binary(std::move(v))); }
    bool start_object(std::size_t) { return open(json::object()); }
    bool start_array(std::size_t) { return open(json::array()); }
    bool end_object() { return close(); }
    bool end_array() { return close(); }
    bool key(std::string& k) {
        if (opt_.reject_duplicate_keys && stack_.back()->contains(k))
            fail(what_, ": duplicate JSON key '", brief(k), "'");
        key_ = std::move(k);
        return true;
    }
    bool parse_error(std::size_t pos, const std::string&, const json::exception& e) {
        // e.what() quotes the offending token, which a hostile input can make long: it is capped by fail().
        fail(what_, " is not valid JSON (byte ", pos, "): ", e.what());
    }

    json take() { return std::move(root_); }

    // `s` shortened to `max` bytes (at a UTF-8 boundary) with the count of the bytes left out.
    static std::string brief(std::string_view s, std::size_t max = 80) {
        if (s.size() <= max) return std::string(s);
        std::size_t n = max;
        while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
        return std::string(s.substr(0, n)) + "...(" + std::to_string(s.size() - n) + " more bytes)";
    }

private:
    json* slot(json&& v) {
        if (stack_.empty()) {
            root_ = std::move(v);
            return &root_;
        }
        json& top = *stack_.back();
        if (top.is_object()) return &(top[key_] = std::move(v));
        top.push_back(std::move(v));
        return &top.back();
    }
    bool put(json&& v) {
        slot(std::move(v));
        return true;
    }
    bool open(json&& v) {
        if (int(stack_.size()) >= opt_.max_depth)
            fail(what_, ": JSON nested deeper than ", opt_.max_depth, " levels (limit max_json_depth)");
        stack_.push_back(slot(std::move(v)));  // the parents of the open value never move while it is open
        return true;
    }
    bool close() {
        stack_.pop_back();
        return true;
    }

    std::string what_;
    JsonOptions opt_;
    json root_;
    std::vector<json*> stack_;
    std::string key_;
};

}  // namespace detail

// Parses `text` (a whole JSON document); `what` (a file name, "request body", "line 3") prefixes errors.
inline nlohmann::json parse_json(std::string_view text, std::string_view what, JsonOptions opt = {}) {
    detail::JsonDomBuilder b(what, opt);
    nlohmann::json::sax_parse(text.begin(), text.end(), &b);
    return b.take();
}

// A JSON value for an error message: scalars as JSON (long strings shortened), arrays and objects
// of more than a few elements as "an array of N elements".
inline std::string brief_json(const nlohmann::json& j, std::size_t max = 80) {
    if ((j.is_array() || j.is_object()) && j.size() > 8)
        return std::string(j.is_array() ? "an array of " : "an object of ") + std::to_string(j.size()) + " elements";
    std::string s;
    try {
        s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    } catch (const nlohmann::json::exception&) {
        s = "?";
    }
    return detail::JsonDomBuilder::brief(s, max);
}

}  // namespace fastvlm::io
