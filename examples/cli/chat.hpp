// examples/cli/chat.hpp — `fastvlm-cli chat`: a multi-turn conversation read from stdin, one user
// turn per line; the KV cache is kept between turns. "/reset" starts over, "/quit" ends.
#pragma once
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <optional>
#include <string>

#include "args.hpp"
#include "run.hpp"

namespace fastvlm::cli {

inline int run_chat(const Args& a) {
    GenerateOptions g = generate_options(a);
    std::optional<io::Image> img;
    if (a.has("image")) img = io::load_image(a.require("image"), limits_of(a).image);
    auto model = load_model_cli(a);
    if (!model->tokenizer()) fail(a.require("model"), ": the model folder has no tokenizer files (vocab.json + merges.txt, or tokenizer.json)");
    const bool tty = isatty(STDIN_FILENO);
    const bool quiet = a.flag("quiet");
    g.on_token = [](std::int32_t, std::string_view piece) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
    };
    auto session = model->new_session();
    bool image_pending = img.has_value();
    std::string line;
    const std::size_t max_line = std::size_t(a.get_int("max-line-bytes", 1l << 20, 1, 1l << 30));
    for (;;) {
        if (tty) std::fprintf(stdout, "> "), std::fflush(stdout);
        const io::LineStatus st = io::read_line(std::cin, line, max_line, "stdin");
        if (st == io::LineStatus::eof) break;
        if (st == io::LineStatus::too_long) {
            std::fprintf(stderr, "error: the turn is longer than the %zu-byte limit (--max-line-bytes); skipped\n", max_line);
            continue;
        }
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty()) continue;
        if (line == "/quit" || line == "/exit") break;
        if (line == "/reset") {
            session->reset();
            image_pending = img.has_value();
            continue;
        }
        const Result r = session->chat(line, g, image_pending ? &*img : nullptr);
        image_pending = false;
        std::printf("\n");
        std::fflush(stdout);
        if (!quiet) std::fprintf(stderr, "[%s | context %lld/%lld]\n", timing_line(r.timings).c_str(),
                                 (long long)session->position(), (long long)session->context());
    }
    return 0;
}

inline Command chat_command() {
    auto opts = generation_options();
    opts.insert(opts.begin() + 1, {"image", "FILE", "image for the first turn (optional)"});
    opts.push_back({"quiet", "", "no timing line after each answer"});
    opts.push_back({"max-line-bytes", "N", "longest turn read from stdin; a longer one is skipped with an error (default 1048576)"});
    return {"chat",
            "Multi-turn chat read from stdin (one user turn per line; /reset, /quit). The first turn sees the image.",
            "--model DIR [--image FILE] [options] < turns.txt", opts, run_chat};
}

}  // namespace fastvlm::cli
