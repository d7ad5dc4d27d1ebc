// Fuzz target: the body of POST /v1/chat/completions → server::parse_chat_request with the server's
// default Limits (JSON, messages and content parts, data:image/...;base64 URLs decoded, sampling fields),
// as server/server.hpp calls it. A refused body is an ApiError, turned into the OpenAI error JSON the
// server replies with. An accepted body's images are then decoded as the engine does (ImageInput::load,
// with the per-image pixel limit the parser set), and its prompt is rendered and spliced with the tiny
// tokenizer to check that it has exactly one "<image>" slot per image.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "fastvlm/text/chat.hpp"
#include "fastvlm/text/tokenizer.hpp"
#include "fuzz_common.hpp"
#include "openai.hpp"

namespace {

const fastvlm::text::Tokenizer& tiny() {
    static const auto t = fastvlm::text::Tokenizer::load(FASTVLM_FUZZ_TOKENIZER_DIR);
    return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace fastvlm;
    static const server::Limits limits{};
    server::ChatRequest cr;
    try {
        cr = server::parse_chat_request(fuzz::as_text(data, size), limits);
    } catch (const server::ApiError& e) {
        FUZZ_CHECK(e.status() == 400);
        fuzz::sink(server::error_body(e).dump(-1, ' ', false, server::json::error_handler_t::replace));
        return 0;
    } catch (const Error& e) {  // server.hpp catches only ApiError here: anything else would be a 500
        const bool parse_chat_request_throws_only_ApiError = false;
        std::fprintf(stderr, "fastvlm::Error escaped parse_chat_request: %s\n", e.what());
        FUZZ_CHECK(parse_chat_request_throws_only_ApiError);
    }
    const Request& r = cr.req;
    FUZZ_CHECK(!r.messages.empty() && int(r.images.size()) <= limits.max_images);
    FUZZ_CHECK(r.max_new_tokens >= 1 && r.max_new_tokens <= limits.max_tokens);
    FUZZ_CHECK(int(r.stop_strings.size()) <= limits.max_stop);
    for (const auto& img : r.images) {
        FUZZ_CHECK(img.limits.max_pixels == std::min(limits.image.max_pixels, limits.max_image_pixels));
        fuzz::accepts([&] {
            const io::Image im = img.load();
            FUZZ_CHECK(std::int64_t(im.width) * im.height <= limits.max_image_pixels);
        });
    }
    // The engine requires one "<image>" per image (engine.hpp prepare()).
    std::size_t slots = 0;
    fuzz::accepts([&] {
        const std::string prompt = text::chat_prompt(r.messages, r.system);
        const auto ids = text::tokenize_with_image(prompt, [&](const std::string& c) { return tiny().encode(c); });
        for (auto id : ids) slots += id == text::kImageTokenIndex;
        FUZZ_CHECK(slots == r.images.size());
    });
    return 0;
}
