// Fuzz target: the chat template and the "<image>" splice (text/chat.hpp), as Session and the engine
// build a prompt: text::chat_prompt(messages, system) → text::tokenize_with_image(prompt, encode) with
// the tiny test tokenizer; also image_prompt (predict.py's single turn), continuation_prompt (chat
// turns after the first) and parse_id_list (fastvlm-cli dump --input-ids).
//
// Input: fields separated by "\n~~~\n": the system prompt, then messages "role:content" (role is
// everything before the first ':'; "user" and "assistant" are valid).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fastvlm/text/chat.hpp"
#include "fastvlm/text/tokenizer.hpp"
#include "fuzz_common.hpp"

namespace {

using fastvlm::text::Tokenizer;

const Tokenizer& tiny() {
    static const Tokenizer t = Tokenizer::load(FASTVLM_FUZZ_TOKENIZER_DIR);
    return t;
}

std::size_t count_tags(std::string_view s) {
    std::size_t n = 0;
    for (std::size_t at = s.find(fastvlm::text::kImageToken); at != std::string_view::npos;
         at = s.find(fastvlm::text::kImageToken, at + fastvlm::text::kImageToken.size()))
        ++n;
    return n;
}

// Splices and checks: one image id per "<image>", every other id a real token.
void splice(const std::string& prompt) {
    const Tokenizer& tok = tiny();
    fuzz::accepts([&] {  // invalid UTF-8 in a chunk is an Error from encode
        const std::vector<std::int32_t> ids =
            fastvlm::text::tokenize_with_image(prompt, [&](const std::string& c) { return tok.encode(c); });
        std::size_t images = 0;
        for (std::int32_t id : ids) {
            if (id == fastvlm::text::kImageTokenIndex) ++images;
            else FUZZ_CHECK(id >= 0 && fuzz::accepts([&] { fuzz::sink(tok.token_bytes(id)); }));
        }
        FUZZ_CHECK(images == count_tags(prompt));
    });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::vector<std::string_view> fields = fuzz::split_all(fuzz::as_text(data, size), "\n~~~\n", 64);
    const std::string system(fields[0]);
    std::vector<fastvlm::text::ChatMessage> msgs;
    for (std::size_t i = 1; i < fields.size(); ++i) {
        const auto [role, content] = fuzz::split_once(fields[i], ":");
        msgs.push_back({std::string(role), std::string(content)});
    }
    std::string prompt;
    if (fuzz::accepts([&] { prompt = fastvlm::text::chat_prompt(msgs, system); })) {
        for (const auto& m : msgs) FUZZ_CHECK(m.role == "user" || m.role == "assistant");
        splice(prompt);
    }
    const std::string_view last = msgs.empty() ? std::string_view(system) : std::string_view(msgs.back().content);
    splice(fastvlm::text::image_prompt(last, system));
    splice(fastvlm::text::continuation_prompt(last));
    for (const auto f : fields) fuzz::accepts([&] { fuzz::sink(fastvlm::text::parse_id_list(f)); });
    return 0;
}
