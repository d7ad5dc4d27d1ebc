// fastvlm/text/chat.hpp — the ChatML prompt of FastVLM's conv mode `qwen_2` (spec §5.2) and its
// tokenization with the image placeholder (`tokenizer_image_token`).
//
//   <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n
//   <|im_start|>user\n<image>\n{question}<|im_end|>\n
//   <|im_start|>assistant\n
//
// The literal "<image>" is never given to the tokenizer: the prompt is split on it, each chunk is
// tokenized on its own (no BOS for Qwen2), and the chunks are joined by the id −200.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "fastvlm/core/error.hpp"

namespace fastvlm::text {

inline constexpr std::int32_t kImageTokenIndex = -200;  // spec §5.1 IMAGE_TOKEN_INDEX
inline constexpr std::string_view kImageToken = "<image>";
inline constexpr std::string_view kDefaultSystem = "You are a helpful assistant.";
inline constexpr std::string_view kDefaultQuestion = "Describe the image.";

struct ChatMessage {
    std::string role;     // "user" or "assistant"
    std::string content;  // may contain "<image>"
};

// conv_qwen_2 rendering: system + sep, then role + message + sep per message; with
// add_generation_prompt the final empty assistant turn emits only its role header.
inline std::string chat_prompt(std::span<const ChatMessage> messages, std::string_view system = kDefaultSystem,
                               bool add_generation_prompt = true) {
    std::string s = "<|im_start|>system\n";
    s += system;
    s += "<|im_end|>\n";
    for (const auto& m : messages) {
        FASTVLM_CHECK(m.role == "user" || m.role == "assistant", "chat prompt: unknown role '", m.role,
                      "' (expected user or assistant)");
        s += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    }
    if (add_generation_prompt) s += "<|im_start|>assistant\n";
    return s;
}

// The single-turn prompt of predict.py: the user message is "<image>\n" + question.
inline std::string image_prompt(std::string_view question = kDefaultQuestion, std::string_view system = kDefaultSystem) {
    const ChatMessage m{"user", std::string(kImageToken) + "\n" + std::string(question)};
    return chat_prompt(std::span<const ChatMessage>(&m, 1), system);
}

// Text that continues a conversation after an assistant answer whose tokens are already in the
// KV cache: closes the assistant turn, adds the next user turn and the assistant header.
inline std::string continuation_prompt(std::string_view user_content) {
    return "<|im_end|>\n<|im_start|>user\n" + std::string(user_content) + "<|im_end|>\n<|im_start|>assistant\n";
}

// tokenizer_image_token: `encode(chunk)` must return the ids of one chunk (special tokens parsed).
template <class Encode>
std::vector<std::int32_t> tokenize_with_image(std::string_view prompt, Encode&& encode,
                                              std::int32_t image_id = kImageTokenIndex) {
    std::vector<std::int32_t> ids;
    std::size_t start = 0;
    for (;;) {
        const std::size_t at = prompt.find(kImageToken, start);
        const std::string_view chunk = prompt.substr(start, at == std::string_view::npos ? std::string_view::npos : at - start);
        if (!chunk.empty()) {
            const auto part = encode(std::string(chunk));
            ids.insert(ids.end(), part.begin(), part.end());
        }
        if (at == std::string_view::npos) break;
        ids.push_back(image_id);
        start = at + kImageToken.size();
    }
    return ids;
}

// Parses "1,2,-200,3" (spaces allowed) into ids.
inline std::vector<std::int32_t> parse_id_list(std::string_view s) {
    std::vector<std::int32_t> ids;
    std::size_t i = 0;
    while (i < s.size()) {
        while (i < s.size() && (s[i] == ' ' || s[i] == ',')) ++i;
        if (i >= s.size()) break;
        std::size_t j = i;
        if (s[j] == '-' || s[j] == '+') ++j;
        const std::size_t digits = j;
        while (j < s.size() && s[j] >= '0' && s[j] <= '9') ++j;
        FASTVLM_CHECK(j > digits && (j == s.size() || s[j] == ',' || s[j] == ' '), "token id list: cannot parse '",
                      std::string(s.substr(i)), "' (expected integers separated by commas)");
        long long v = 0;
        for (std::size_t p = digits; p < j; ++p) {
            v = v * 10 + (s[p] - '0');
            FASTVLM_CHECK(v <= 2147483647LL, "token id list: '", std::string(s.substr(i, j - i)), "' is out of range");
        }
        ids.push_back(std::int32_t(s[i] == '-' ? -v : v));
        i = j;
    }
    return ids;
}

}  // namespace fastvlm::text
