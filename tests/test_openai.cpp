// server/openai.hpp: the OpenAI chat-completions request → fastvlm::Request translation and the
// response shapes, without HTTP or a model (the HTTP server itself: tests/server/).
#include <gtest/gtest.h>

#include <fstream>

#include "../server/openai.hpp"
#include "support.hpp"

namespace {
using namespace fastvlm;
using namespace fastvlm::server;

std::string b64(std::string_view s) {
    static const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    std::size_t i = 0;
    for (; i + 2 < s.size(); i += 3) {
        const unsigned v = unsigned(std::uint8_t(s[i])) << 16 | unsigned(std::uint8_t(s[i + 1])) << 8 | std::uint8_t(s[i + 2]);
        for (int k = 3; k >= 0; --k) out += a[(v >> (6 * k)) & 63];
    }
    if (i + 1 == s.size()) {
        const unsigned v = unsigned(std::uint8_t(s[i])) << 16;
        out += a[v >> 18], out += a[(v >> 12) & 63], out += "==";
    } else if (i + 2 == s.size()) {
        const unsigned v = unsigned(std::uint8_t(s[i])) << 16 | unsigned(std::uint8_t(s[i + 1])) << 8;
        out += a[v >> 18], out += a[(v >> 12) & 63], out += a[(v >> 6) & 63], out += "=";
    }
    return out;
}

// The ApiError a body raises (fails the test when none).
ApiError error_for(const std::string& body, const Limits& lim = {}) {
    try {
        parse_chat_request(body, lim);
    } catch (const ApiError& e) {
        return e;
    }
    ADD_FAILURE() << "no error for " << body;
    return ApiError(0, "");
}

json user(json content) { return {{"messages", {{{"role", "user"}, {"content", std::move(content)}}}}}; }

TEST(OpenAI, Base64DecodesEveryLengthAndRejectsGarbage) {
    for (std::string s : {"", "a", "ab", "abc", "abcd", "hello world\x01\xff"}) {
        EXPECT_EQ(base64_decode(b64(s), "x"), s);
        std::string nopad = b64(s);
        while (!nopad.empty() && nopad.back() == '=') nopad.pop_back();
        EXPECT_EQ(base64_decode(nopad, "x"), s);
    }
    EXPECT_EQ(base64_decode("-_8", "x"), base64_decode("+/8", "x"));  // URL-safe alphabet
    for (const char* bad : {"ab$d", "a", "abcde", "ab d"}) {
        try {
            base64_decode(bad, "messages[0].content[1]");
            ADD_FAILURE() << bad;
        } catch (const ApiError& e) {
            EXPECT_EQ(e.status(), 400);
            EXPECT_EQ(e.code(), "invalid_base64");
            EXPECT_NE(std::string(e.what()).find("messages[0].content[1]"), std::string::npos) << e.what();
        }
    }
}

TEST(OpenAI, StringAndPartsContentWithImagesInOrder) {
    const std::string png = "\x89PNG fake bytes";
    json body = {{"model", "m"},
                 {"messages",
                  {{{"role", "system"}, {"content", "Be brief."}},
                   {{"role", "user"},
                    {"content",
                     {{{"type", "image_url"}, {"image_url", {{"url", "data:image/png;base64," + b64(png)}}}},
                      {{"type", "text"}, {"text", "Compare"}},
                      {{"type", "image_url"}, {"image_url", "data:image/jpeg;base64," + b64("jpg")}}}}},
                   {{"role", "assistant"}, {"content", "Two shapes."}},
                   {{"role", "user"}, {"content", "And colours?"}}}},
                 {"max_tokens", 7},
                 {"temperature", 0.5},
                 {"top_p", 0.9},
                 {"top_k", 40},
                 {"seed", 123},
                 {"stop", {"\n\n", "END"}},
                 {"stream", true},
                 {"stream_options", {{"include_usage", true}}}};
    const ChatRequest c = parse_chat_request(body.dump(), {});
    EXPECT_EQ(c.model, "m");
    EXPECT_TRUE(c.stream);
    EXPECT_TRUE(c.include_usage);
    const Request& r = c.req;
    EXPECT_EQ(r.system, "Be brief.");
    ASSERT_EQ(r.messages.size(), 3u);
    EXPECT_EQ(r.messages[0].role, "user");
    EXPECT_EQ(r.messages[0].content, "<image>\nCompare\n<image>");
    EXPECT_EQ(r.messages[1].role, "assistant");
    EXPECT_EQ(r.messages[2].content, "And colours?");
    ASSERT_EQ(r.images.size(), 2u);
    ASSERT_TRUE(r.images[0].bytes);
    EXPECT_EQ(*r.images[0].bytes, png);
    EXPECT_EQ(r.images[0].name, "messages[1].content[0].image_url.url");
    EXPECT_EQ(*r.images[1].bytes, "jpg");
    EXPECT_EQ(r.images[0].limits.max_pixels, Limits{}.max_image_pixels);
    EXPECT_EQ(r.max_new_tokens, 7);
    EXPECT_FLOAT_EQ(r.sampling.temperature, 0.5f);
    EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
    EXPECT_EQ(r.sampling.top_k, 40);
    EXPECT_EQ(r.sampling.seed, 123u);
    EXPECT_EQ(r.stop_strings, (std::vector<std::string>{"\n\n", "END"}));
}

TEST(OpenAI, DefaultsAndAliases) {
    Limits lim;
    lim.default_max_tokens = 33;
    ChatRequest c = parse_chat_request(user("hi").dump(), lim);
    EXPECT_EQ(c.req.max_new_tokens, 33);
    EXPECT_FALSE(c.stream);
    EXPECT_EQ(c.req.system, std::string(text::kDefaultSystem));
    EXPECT_EQ(c.req.sampling.temperature, 0.f);
    json b = user("hi");
    b["max_completion_tokens"] = 5;
    b["messages"].insert(b["messages"].begin(), json{{"role", "developer"}, {"content", "Sys"}});
    b["n"] = 1;
    b["logprobs"] = false;
    b["frequency_penalty"] = 0;  // unknown fields are ignored
    c = parse_chat_request(b.dump(), lim);
    EXPECT_EQ(c.req.max_new_tokens, 5);
    EXPECT_EQ(c.req.system, "Sys");
    b["stop"] = "x";
    EXPECT_EQ(parse_chat_request(b.dump(), lim).req.stop_strings, std::vector<std::string>{"x"});
}

TEST(OpenAI, EveryBadFieldIsA400NamingIt) {
    struct Case {
        std::string body, param, code;
    };
    auto with = [](const char* k, json v) {
        json b = user("hi");
        b[k] = std::move(v);
        return b.dump();
    };
    const std::vector<Case> cases = {
        {"{not json", "", "invalid_json"},
        {"[1,2]", "", ""},
        {"{}", "messages", "missing_field"},
        {R"({"messages": []})", "messages", "invalid_value"},
        {R"({"messages": "hi"})", "messages", "invalid_value"},
        {R"({"messages": [1]})", "messages[0]", "invalid_value"},
        {R"({"messages": [{"role": "robot", "content": "x"}]})", "messages[0].role", "invalid_value"},
        {R"({"messages": [{"content": "x"}]})", "messages[0].role", "invalid_value"},
        {R"({"messages": [{"role": "user"}]})", "messages[0].content", "invalid_value"},
        {R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content", "invalid_value"},
        {R"({"messages": [{"role": "system", "content": "x"}]})", "messages", "invalid_value"},
        {R"({"messages": [{"role": "user", "content": "look <image> here"}]})", "messages[0].content", "invalid_value"},
        {user(json::array({{{"type", "audio"}}})).dump(), "messages[0].content[0].type", "invalid_value"},
        {user(json::array({{{"type", "text"}, {"text", 3}}})).dump(), "messages[0].content[0].text", "invalid_value"},
        {user(json::array({{{"type", "image_url"}, {"image_url", 3}}})).dump(), "messages[0].content[0].image_url", "invalid_value"},
        {user(json::array({{{"type", "image_url"}, {"image_url", {{"url", "data:image/png;base64,@@@@"}}}}})).dump(), "", "invalid_base64"},
        {user(json::array({{{"type", "image_url"}, {"image_url", {{"url", "data:text/plain;base64,aGk="}}}}})).dump(),
         "messages[0].content[0].image_url.url", "invalid_value"},
        {user(json::array({{{"type", "image_url"}, {"image_url", {{"url", "data:image/png,rawbytes"}}}}})).dump(),
         "messages[0].content[0].image_url.url", "invalid_value"},
        {user(json::array({{{"type", "image_url"}, {"image_url", {{"url", "https://example.com/a.png"}}}}})).dump(),
         "messages[0].content[0].image_url.url", "remote_url_not_supported"},
        {user(json::array({{{"type", "image_url"}, {"image_url", {{"url", "file:///etc/passwd"}}}}})).dump(),
         "messages[0].content[0].image_url.url", "file_urls_disabled"},
        {with("max_tokens", "ten"), "max_tokens", "invalid_value"},
        {with("max_tokens", 0), "max_tokens", "invalid_value"},
        {with("max_tokens", 2.5), "max_tokens", "invalid_value"},
        {with("max_completion_tokens", -1), "max_completion_tokens", "invalid_value"},
        {with("temperature", 5), "temperature", "invalid_value"},
        {with("temperature", "hot"), "temperature", "invalid_value"},
        {with("top_p", 0), "top_p", "invalid_value"},
        {with("top_k", -2), "top_k", "invalid_value"},
        {with("seed", "s"), "seed", "invalid_value"},
        {with("n", 2), "n", "invalid_value"},
        {with("stop", 3), "stop", "invalid_value"},
        {with("stop", json::array({"a", 1})), "stop[1]", "invalid_value"},
        {with("stream", "yes"), "stream", "invalid_value"},
        {with("stream_options", json{{"include_usage", 1}}), "stream_options.include_usage", "invalid_value"},
        {with("tools", json::array({1})), "tools", "invalid_value"},
        {with("model", 3), "model", "invalid_value"},
    };
    for (const auto& c : cases) {
        const ApiError e = error_for(c.body);
        EXPECT_EQ(e.status(), 400) << c.body;
        EXPECT_EQ(e.type(), "invalid_request_error") << c.body;
        if (!c.code.empty()) {
            EXPECT_EQ(e.code(), c.code) << c.body << " → " << e.what();
        }
        EXPECT_EQ(e.param(), c.param) << c.body << " → " << e.what();
        if (!c.param.empty()) {
            EXPECT_NE(std::string(e.what()).find(c.param), std::string::npos) << e.what();
        }
        const json j = error_body(e);
        EXPECT_TRUE(j["error"]["message"].is_string());
        EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    }
}

TEST(OpenAI, ImageCountAndStopCountLimits) {
    Limits lim;
    lim.max_images = 2;
    json img = {{"type", "image_url"}, {"image_url", {{"url", "data:image/png;base64," + b64("x")}}}};
    EXPECT_NO_THROW(parse_chat_request(user(json::array({img, img})).dump(), lim));
    const ApiError e = error_for(user(json::array({img, img, img})).dump(), lim);
    EXPECT_EQ(e.code(), "too_many_images");
    EXPECT_EQ(e.param(), "messages[0].content[2]");
    json b = user("hi");
    b["stop"] = std::vector<std::string>(17, "s");
    EXPECT_EQ(error_for(b.dump()).param(), "stop");
    json a = {{"messages", {{{"role", "assistant"}, {"content", json::array({img})}}, {{"role", "user"}, {"content", "q"}}}}};
    EXPECT_EQ(error_for(a.dump()).param(), "messages[0].content[0]");  // images only from the user
}

TEST(OpenAI, FileUrlsOnlyUnderTheAllowedFolder) {
    test_support::TempDir dir("openai_", "files");
    const auto allowed = std::filesystem::canonical(dir.path);
    std::filesystem::create_directory(allowed / "in");
    std::ofstream(allowed / "in" / "a.png") << "x";
    std::ofstream(allowed / "b.png") << "x";
    Limits lim;
    lim.file_root = allowed / "in";
    auto req = [&](const std::string& url) { return user(json::array({{{"type", "image_url"}, {"image_url", {{"url", url}}}}})).dump(); };
    const ChatRequest ok = parse_chat_request(req("file://" + (allowed / "in" / "a.png").string()), lim);
    ASSERT_EQ(ok.req.images.size(), 1u);
    EXPECT_EQ(ok.req.images[0].path, allowed / "in" / "a.png");
    for (const std::string& bad : std::vector<std::string>{"file://" + (allowed / "b.png").string(), "file://" + (allowed / "in" / ".." / "b.png").string(),
                                   "file://" + (allowed / "in" / "missing.png").string(), "file://" + (allowed / "in").string(),
                                   std::string("file://relative/a.png")})
        EXPECT_EQ(error_for(req(bad), lim).code(), "file_not_allowed") << bad;
}

TEST(OpenAI, ResponsesAndErrorMapping) {
    Result r;
    r.text = "Two.";
    r.ids = {1, 2};
    r.prompt_tokens = 300;
    r.stop = StopReason::max_tokens;
    r.timings.ttft_ms = 12;
    const json c = completion_json("chatcmpl-1", 99, "fastvlm", r);
    EXPECT_EQ(c["object"], "chat.completion");
    EXPECT_EQ(c["choices"][0]["message"]["content"], "Two.");
    EXPECT_EQ(c["choices"][0]["message"]["role"], "assistant");
    EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(c["usage"]["prompt_tokens"], 300);
    EXPECT_EQ(c["usage"]["completion_tokens"], 2);
    EXPECT_EQ(c["usage"]["total_tokens"], 302);
    EXPECT_EQ(c["timings"]["ttft_ms"], 12.0);
    r.stop = StopReason::eos;
    const json k = chunk_json("chatcmpl-1", 99, "fastvlm", json::object(), finish_reason(r));
    EXPECT_EQ(k["object"], "chat.completion.chunk");
    EXPECT_EQ(k["choices"][0]["finish_reason"], "stop");
    EXPECT_EQ(sse(k).substr(0, 6), "data: ");
    EXPECT_EQ(sse(k).substr(sse(k).size() - 2), "\n\n");
    EXPECT_EQ(api_error(ErrorKind::invalid_request, "m").status(), 400);
    EXPECT_EQ(api_error(ErrorKind::too_large, "m").code(), "context_length_exceeded");
    EXPECT_EQ(api_error(ErrorKind::queue_full, "m").status(), 429);
    EXPECT_EQ(api_error(ErrorKind::timeout, "m").status(), 504);
    EXPECT_EQ(api_error(ErrorKind::shutdown, "m").status(), 503);
    EXPECT_EQ(api_error(ErrorKind::internal, "m").status(), 500);
}

}  // namespace
