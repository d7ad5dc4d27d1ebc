// describe — the library API in a few lines: load a model folder, describe an image, stream tokens.
//   describe MODEL_DIR IMAGE ["question"]
#include <cstdio>

#include "fastvlm/fastvlm.hpp"

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s MODEL_DIR IMAGE [question]\n", argv[0]);
        return 2;
    }
    try {
        const auto model = fastvlm::Model<fastvlm::policy::fp32>::load(argv[1]);  // or policy::bf16, int8, ...
        fastvlm::Session session(model);  // KV cache + position; one per thread

        fastvlm::GenerateOptions opt;  // greedy, at most 256 new tokens
        opt.on_token = [](std::int32_t, std::string_view text) {
            std::fwrite(text.data(), 1, text.size(), stdout);
            std::fflush(stdout);
        };
        const auto r = session.describe(argv[2], argc > 3 ? argv[3] : "Describe the image.", opt);
        std::printf("\n[%zu tokens, TTFT %.0f ms, %.1f tok/s]\n", r.ids.size(), r.timings.ttft_ms, r.timings.decode_tok_s());

        session.chat("Answer in one word: is it outdoors?", opt);  // the conversation continues on the KV cache
        std::printf("\n");
        return 0;
    } catch (const fastvlm::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
