// server/openai.hpp — the OpenAI chat-completions protocol over fastvlm::Engine, without HTTP:
// request JSON → fastvlm::Request (every field checked, errors naming the field), Result →
// response JSON, streaming chunks, and the OpenAI error shape. server/http.hpp puts it on the wire.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastvlm/engine.hpp"
#include "fastvlm/io/json.hpp"

namespace fastvlm::server {

using json = nlohmann::json;

// An error for the client: HTTP status, OpenAI `type` and `code`, and the field it is about.
class ApiError : public std::runtime_error {
public:
    ApiError(int status, std::string message, std::string type = "invalid_request_error", std::string code = "",
             std::string param = "")
        : std::runtime_error(std::move(message)), status_(status), type_(std::move(type)), code_(std::move(code)),
          param_(std::move(param)) {}
    int status() const { return status_; }
    const std::string& type() const { return type_; }
    const std::string& code() const { return code_; }
    const std::string& param() const { return param_; }

private:
    int status_;
    std::string type_, code_, param_;
};

inline json error_body(int status, std::string_view message, std::string_view type, std::string_view code = {},
                       std::string_view param = {}) {
    (void)status;
    return {{"error",
             {{"message", std::string(message)},
              {"type", std::string(type)},
              {"code", code.empty() ? json(nullptr) : json(std::string(code))},
              {"param", param.empty() ? json(nullptr) : json(std::string(param))}}}};
}
inline json error_body(const ApiError& e) { return error_body(e.status(), e.what(), e.type(), e.code(), e.param()); }

// The HTTP status and OpenAI error type of an engine failure.
inline ApiError api_error(ErrorKind kind, const std::string& message) {
    switch (kind) {
        case ErrorKind::invalid_request: return {400, message, "invalid_request_error", "invalid_request"};
        case ErrorKind::too_large: return {400, message, "invalid_request_error", "context_length_exceeded"};
        case ErrorKind::queue_full: return {429, message, "rate_limit_error", "queue_full"};
        case ErrorKind::timeout: return {504, message, "timeout_error", "timeout"};
        case ErrorKind::cancelled: return {499, message, "cancelled", "cancelled"};
        case ErrorKind::shutdown: return {503, message, "server_error", "shutting_down"};
        default: return {500, message, "server_error", "internal_error"};
    }
}

struct Limits {
    std::int64_t max_image_pixels = 16ll * 1024 * 1024;  // per image, from its header, before decoding
    int max_images = 8;                                  // per request
    int default_max_tokens = 512;                        // when the request sets none
    int max_tokens = 1 << 20;                            // the most a request may ask for
    int max_stop = 16;                                   // stop strings per request
    std::optional<std::filesystem::path> file_root;      // file:// URLs allowed under this folder (canonical)
    io::ImageLimits image = {};  // decoding (--limit); its max_pixels counts only when below max_image_pixels
};

struct ChatRequest {
    Request req;
    bool stream = false, include_usage = false;
    std::string model;  // as the client sent it (echoed only if nothing else is configured)
};

// ---- base64 (RFC 4648, padding optional, no whitespace inside) ---------------------------------------------
inline std::string base64_decode(std::string_view in, std::string_view what) {
    static constexpr std::array<std::int8_t, 256> table = [] {
        std::array<std::int8_t, 256> t{};
        t.fill(-1);
        const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for (int i = 0; i < 64; ++i) t[std::size_t(std::uint8_t(a[i]))] = std::int8_t(i);
        t[std::size_t('-')] = 62;  // URL-safe alphabet too
        t[std::size_t('_')] = 63;
        return t;
    }();
    while (!in.empty() && in.back() == '=') in.remove_suffix(1);
    if (in.size() % 4 == 1) throw ApiError(400, std::string(what) + ": invalid base64 (length)", "invalid_request_error", "invalid_base64");
    std::string out;
    out.reserve(in.size() / 4 * 3 + 3);
    std::uint32_t acc = 0;
    int bits = 0;
    for (std::size_t i = 0; i < in.size(); ++i) {
        const std::int8_t v = table[std::uint8_t(in[i])];
        if (v < 0)
            throw ApiError(400, std::string(what) + ": invalid base64 character at offset " + std::to_string(i),
                           "invalid_request_error", "invalid_base64");
        acc = (acc << 6) | std::uint32_t(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(char((acc >> bits) & 0xFF));
        }
    }
    return out;
}

namespace detail {

inline ApiError bad_field(const std::string& param, const std::string& msg) {
    return ApiError(400, "'" + param + "': " + msg, "invalid_request_error", "invalid_value", param);
}
inline const char* type_name(const json& j) { return j.type_name(); }

inline double get_number(const json& body, const char* key, double lo, double hi) {
    const json& v = body.at(key);
    if (!v.is_number()) throw bad_field(key, std::string("expected a number, got ") + type_name(v));
    const double x = v.get<double>();
    if (!std::isfinite(x) || x < lo || x > hi)
        throw bad_field(key, "must be in [" + json(lo).dump() + ", " + json(hi).dump() + "], got " + v.dump());
    return x;
}
inline std::int64_t get_int(const json& body, const char* key, std::int64_t lo, std::int64_t hi) {
    const json& v = body.at(key);
    if (!v.is_number_integer() && !(v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()))
        throw bad_field(key, std::string("expected an integer, got ") + (v.is_number() ? v.dump() : type_name(v)));
    const double d = v.get<double>();
    if (d < double(lo) || d > double(hi))
        throw bad_field(key, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v.dump());
    return v.is_number_unsigned() ? std::int64_t(v.get<std::uint64_t>()) : v.is_number_integer() ? v.get<std::int64_t>() : std::int64_t(d);
}

// An image_url part: data:image/...;base64,... or (when allowed) file:///abs/path.
inline ImageInput image_input(const std::string& url, const std::string& param, const Limits& lim) {
    ImageInput in;
    if (url.rfind("data:", 0) == 0) {
        const auto comma = url.find(',');
        if (comma == std::string::npos) throw bad_field(param, "a data URL needs a ',' before its data");
        const std::string_view meta(url.data() + 5, comma - 5);
        if (meta.size() < 7 || meta.substr(meta.size() - 7) != ";base64")
            throw bad_field(param, "only base64 data URLs are supported (data:image/png;base64,...)");
        if (meta.rfind("image/", 0) != 0) throw bad_field(param, "the data URL's media type must be image/*, got '" + std::string(meta.substr(0, meta.size() - 7)) + "'");
        in = ImageInput::encoded(base64_decode(std::string_view(url).substr(comma + 1), param), param);
    } else if (url.rfind("file://", 0) == 0) {
        if (!lim.file_root)
            throw ApiError(400, "'" + param + "': file:// URLs are disabled (start the server with --allow-file-urls DIR)",
                           "invalid_request_error", "file_urls_disabled", param);
        const std::filesystem::path p(url.substr(7));
        std::error_code ec;
        const auto canon = std::filesystem::weakly_canonical(p, ec);
        const auto rel = ec ? std::filesystem::path() : canon.lexically_relative(*lim.file_root);
        if (!p.is_absolute() || ec || rel.empty() || *rel.begin() == ".." || !std::filesystem::is_regular_file(canon, ec))
            throw ApiError(400, "'" + param + "': " + p.string() + " is not a file under the allowed folder " + lim.file_root->string(),
                           "invalid_request_error", "file_not_allowed", param);
        in = ImageInput::file(canon);
        in.name = param + " (" + canon.string() + ")";
    } else if (url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0) {
        throw ApiError(400, "'" + param + "': remote image URLs are not fetched; send the image as a data:image/...;base64 URL",
                       "invalid_request_error", "remote_url_not_supported", param);
    } else {
        throw bad_field(param, "expected a data:image/...;base64 URL");
    }
    in.limits = lim.image;
    in.limits.max_pixels = std::min(lim.image.max_pixels, lim.max_image_pixels);
    return in;
}

}  // namespace detail

// The body of POST /v1/chat/completions → an engine request. Throws ApiError (400) naming the field.
inline ChatRequest parse_chat_request(std::string_view body_text, const Limits& lim) {
    using detail::bad_field;
    json body;
    try {
        body = io::parse_json(body_text, "the request body", {.reject_duplicate_keys = false});  // depth-limited
    } catch (const Error& e) {
        throw ApiError(400, e.what(), "invalid_request_error", "invalid_json");
    }
    if (!body.is_object()) throw ApiError(400, std::string("the request body must be a JSON object, got ") + body.type_name());
    ChatRequest out;
    Request& r = out.req;
    if (body.contains("model") && !body["model"].is_null()) {
        if (!body["model"].is_string()) throw bad_field("model", std::string("expected a string, got ") + body["model"].type_name());
        out.model = body["model"].get<std::string>();
    }
    if (!body.contains("messages")) throw ApiError(400, "'messages' is required", "invalid_request_error", "missing_field", "messages");
    const json& msgs = body["messages"];
    if (!msgs.is_array() || msgs.empty()) throw bad_field("messages", "expected a non-empty array of messages");
    std::string system;
    bool has_system = false;
    for (std::size_t i = 0; i < msgs.size(); ++i) {
        const std::string p = "messages[" + std::to_string(i) + "]";
        const json& m = msgs[i];
        if (!m.is_object()) throw bad_field(p, std::string("expected an object, got ") + m.type_name());
        if (!m.contains("role") || !m["role"].is_string()) throw bad_field(p + ".role", "expected \"system\", \"user\" or \"assistant\"");
        std::string role = m["role"].get<std::string>();
        if (role == "developer") role = "system";
        if (role != "system" && role != "user" && role != "assistant")
            throw bad_field(p + ".role", "unsupported role '" + role + "' (system, developer, user or assistant)");
        std::string content;
        if (!m.contains("content") || m["content"].is_null()) {
            if (role != "assistant") throw bad_field(p + ".content", "missing");
        } else if (m["content"].is_string()) {
            content = m["content"].get<std::string>();
            if (content.find(text::kImageToken) != std::string::npos)
                throw bad_field(p + ".content", "contains the reserved placeholder \"<image>\"; send images as image_url parts");
        } else if (m["content"].is_array()) {
            const json& parts = m["content"];
            for (std::size_t j = 0; j < parts.size(); ++j) {
                const std::string pp = p + ".content[" + std::to_string(j) + "]";
                const json& part = parts[j];
                if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
                    throw bad_field(pp, "expected {\"type\": \"text\" | \"image_url\", ...}");
                const std::string type = part["type"].get<std::string>();
                if (!content.empty()) content += "\n";
                if (type == "text") {
                    if (!part.contains("text") || !part["text"].is_string()) throw bad_field(pp + ".text", "expected a string");
                    const std::string t = part["text"].get<std::string>();
                    if (t.find(text::kImageToken) != std::string::npos)
                        throw bad_field(pp + ".text", "contains the reserved placeholder \"<image>\"; send images as image_url parts");
                    content += t;
                } else if (type == "image_url") {
                    if (role != "user") throw bad_field(pp, "images are only accepted in user messages");
                    const json* u = part.contains("image_url") ? &part["image_url"] : nullptr;
                    std::string url;
                    if (u && u->is_string()) url = u->get<std::string>();
                    else if (u && u->is_object() && u->contains("url") && (*u)["url"].is_string()) url = (*u)["url"].get<std::string>();
                    else throw bad_field(pp + ".image_url", "expected {\"url\": \"data:image/...;base64,...\"}");
                    if (int(r.images.size()) >= lim.max_images)
                        throw ApiError(400, "'" + pp + "': more than " + std::to_string(lim.max_images) + " images in one request (--max-images)",
                                       "invalid_request_error", "too_many_images", pp);
                    r.images.push_back(detail::image_input(url, pp + ".image_url.url", lim));
                    content += std::string(text::kImageToken);
                } else {
                    throw bad_field(pp + ".type", "unsupported content part type '" + type + "' (text or image_url)");
                }
            }
        } else {
            throw bad_field(p + ".content", std::string("expected a string or an array of content parts, got ") + m["content"].type_name());
        }
        if (role == "system") {
            if (has_system) system += "\n";
            system += content;
            has_system = true;
        } else {
            r.messages.push_back({role, std::move(content)});
        }
    }
    if (r.messages.empty()) throw bad_field("messages", "needs at least one user message");
    if (has_system) r.system = system;

    r.max_new_tokens = lim.default_max_tokens;
    for (const char* k : {"max_tokens", "max_completion_tokens"})
        if (body.contains(k) && !body[k].is_null()) r.max_new_tokens = int(detail::get_int(body, k, 1, lim.max_tokens));
    if (body.contains("n") && !body["n"].is_null() && detail::get_int(body, "n", 1, 1 << 30) != 1)
        throw bad_field("n", "only n = 1 is supported");
    if (body.contains("temperature") && !body["temperature"].is_null())
        r.sampling.temperature = float(detail::get_number(body, "temperature", 0.0, 2.0));
    if (body.contains("top_p") && !body["top_p"].is_null()) {
        r.sampling.top_p = float(detail::get_number(body, "top_p", 0.0, 1.0));
        if (r.sampling.top_p <= 0.f) throw bad_field("top_p", "must be > 0");
    }
    if (body.contains("top_k") && !body["top_k"].is_null()) r.sampling.top_k = int(detail::get_int(body, "top_k", 0, 1 << 30));
    if (body.contains("seed") && !body["seed"].is_null())
        r.sampling.seed = std::uint64_t(detail::get_int(body, "seed", std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()));
    if (body.contains("stop") && !body["stop"].is_null()) {
        const json& s = body["stop"];
        if (s.is_string()) r.stop_strings.push_back(s.get<std::string>());
        else if (s.is_array()) {
            for (std::size_t i = 0; i < s.size(); ++i) {
                if (!s[i].is_string()) throw bad_field("stop[" + std::to_string(i) + "]", std::string("expected a string, got ") + s[i].type_name());
                r.stop_strings.push_back(s[i].get<std::string>());
            }
        } else {
            throw bad_field("stop", std::string("expected a string or an array of strings, got ") + s.type_name());
        }
        if (int(r.stop_strings.size()) > lim.max_stop) throw bad_field("stop", "at most " + std::to_string(lim.max_stop) + " stop strings");
    }
    if (body.contains("stream") && !body["stream"].is_null()) {
        if (!body["stream"].is_boolean()) throw bad_field("stream", std::string("expected a boolean, got ") + body["stream"].type_name());
        out.stream = body["stream"].get<bool>();
    }
    if (body.contains("stream_options") && !body["stream_options"].is_null()) {
        const json& so = body["stream_options"];
        if (!so.is_object()) throw bad_field("stream_options", "expected an object");
        if (so.contains("include_usage")) {
            if (!so["include_usage"].is_boolean()) throw bad_field("stream_options.include_usage", "expected a boolean");
            out.include_usage = so["include_usage"].get<bool>();
        }
    }
    if (body.contains("ignore_eos") && !body["ignore_eos"].is_null()) {  // extension (llama.cpp, vLLM): generate max_tokens
        if (!body["ignore_eos"].is_boolean()) throw bad_field("ignore_eos", std::string("expected a boolean, got ") + body["ignore_eos"].type_name());
        if (body["ignore_eos"].get<bool>()) r.stop_ids = {-1};  // no id is −1: nothing stops it but max_tokens and stop strings
    }
    for (const char* k : {"logprobs", "tools", "functions", "response_format"})
        if (body.contains(k) && !body[k].is_null() && body[k] != json(false))
            throw bad_field(k, "not supported by this server");
    return out;
}

inline const char* finish_reason(const Result& r) { return r.stop == StopReason::max_tokens ? "length" : "stop"; }

inline json usage_json(const Result& r) {
    const auto completion = std::int64_t(r.ids.size());
    return {{"prompt_tokens", r.prompt_tokens},
            {"completion_tokens", completion},
            {"total_tokens", r.prompt_tokens + completion},
            {"prompt_tokens_details", {{"cached_tokens", r.timings.cached_tokens}}}};  // positions adopted from the prefix cache
}
inline json timings_json(const Result& r) {
    const Timings& t = r.timings;
    return {{"queue_ms", t.queue_ms},   {"preprocess_ms", t.preprocess_ms}, {"vision_ms", t.vision_ms},
            {"projector_ms", t.projector_ms}, {"prefill_ms", t.prefill_ms}, {"prefill_tokens", t.prefill_tokens},
            {"cached_tokens", t.cached_tokens}, {"ttft_ms", t.ttft_ms},
            {"decode_tok_s", t.decode_tok_s()}, {"total_ms", t.total_ms}, {"preset", r.preset}};
}

inline json completion_json(const std::string& id, std::int64_t created, const std::string& model, const Result& r) {
    return {{"id", id},
            {"object", "chat.completion"},
            {"created", created},
            {"model", model},
            {"choices", json::array({{{"index", 0},
                                      {"message", {{"role", "assistant"}, {"content", r.text}}},
                                      {"logprobs", nullptr},
                                      {"finish_reason", finish_reason(r)}}})},
            {"usage", usage_json(r)},
            {"timings", timings_json(r)}};
}

// One streaming chunk: a delta (role and/or content), or the finish reason, or (choices empty) usage.
inline json chunk_json(const std::string& id, std::int64_t created, const std::string& model, const json& delta,
                       const char* finish = nullptr) {
    return {{"id", id},
            {"object", "chat.completion.chunk"},
            {"created", created},
            {"model", model},
            {"choices", json::array({{{"index", 0},
                                      {"delta", delta},
                                      {"logprobs", nullptr},
                                      {"finish_reason", finish ? json(finish) : json(nullptr)}}})}};
}

inline std::string sse(const json& j) {
    return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace fastvlm::server
