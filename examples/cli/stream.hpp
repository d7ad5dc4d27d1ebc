// examples/cli/stream.hpp — `fastvlm-cli stream`: answers a live stream of concatenated JPEG/PNG
// images (e.g. `ffmpeg -i video.mp4 -f image2pipe -vcodec mjpeg -`) one frame at a time; while a frame
// is answered newer frames replace the waiting one (latest frame wins). One line per answered frame.
#pragma once
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "args.hpp"
#include "fastvlm/fastvlm.hpp"
#include "fastvlm/io/frames.hpp"
#include "fastvlm/stream.hpp"
#include "run.hpp"

namespace fastvlm::cli {

inline int run_stream(const Args& a) {
    const bool json = a.flag("json");
    const std::string input = a.get_or("input", "-");
    StreamOptions so;
    so.prompt = a.get_or("prompt", std::string(text::kDefaultQuestion));
    const GenerateOptions g = generate_options(a);
    so.max_new_tokens = int(a.get_int("max-tokens", 64, 0, 1 << 24));
    so.sampling = g.sampling;
    so.fps_limit = parse_double(a, "fps-limit", 0.0, 0.0, 1e6);
    so.every_frame = a.flag("every-frame");
    so.image_limits = limits_of(a).image;
    const std::size_t max_frame = std::size_t(a.get_int("max-frame-mb", 64, 1, 4096)) << 20;

    int fd = 0;
    if (input != "-") {
        fd = ::open(input.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) fail(input, ": cannot open (", std::strerror(errno), ")");
    }
    auto model = load_model_cli(a);
    if (!model->tokenizer()) fail(a.require("model"), ": the model folder has no tokenizer files (vocab.json + merges.txt, or tokenizer.json)");
    EngineOptions eo;
    eo.max_running = 1;  // one frame at a time: the newest frame is what matters
    set_engine_options(a, eo, false);
    auto engine = model->new_engine(eo);

    std::mutex out_mu;
    auto emit = [&](const FrameAnswer& f) {
        std::lock_guard lk(out_mu);
        if (json) {
            nlohmann::json j = {{"frame", f.frame}, {"t_ms", f.t_ms}, {"latency_ms", f.latency_ms}, {"skipped", f.skipped}};
            if (f.error.empty()) {
                j["text"] = f.text;
                j["cached"] = f.cached;
                j["preset"] = f.result.preset;
            } else {
                j["error"] = f.error;
            }
            std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
        } else if (f.error.empty()) {
            std::printf("frame %lld (%.0f ms, latency %.0f ms%s): %s\n", (long long)f.frame, f.t_ms, f.latency_ms,
                        f.cached ? ", cached" : "", f.text.c_str());
        } else {
            std::fprintf(stderr, "frame %lld: skipped: %s\n", (long long)f.frame, f.error.c_str());
        }
        std::fflush(stdout);
    };
    io::FrameSplitter split(max_frame);
    FrameStream fs(*engine, so, emit);
    auto feed = [&](std::vector<io::Frame> frames) {
        for (auto& f : frames) {
            if (f.index < 0) {
                std::lock_guard lk(out_mu);
                std::fprintf(stderr, "stream: %s\n", f.error.c_str());
            } else if (f.ok()) {
                fs.push(f.index, std::move(f.bytes));
            } else {
                fs.push_error(f.index, "frame " + std::to_string(f.index) + ": " + f.error);
            }
        }
    };
    std::string buf(1 << 16, '\0');
    for (;;) {
        const ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            std::fprintf(stderr, "stream: read error on %s: %s (stopping)\n", input.c_str(), std::strerror(errno));
            break;
        }
        if (n == 0) break;
        feed(split.push(std::string_view(buf.data(), std::size_t(n))));
    }
    feed(split.finish());
    if (fd > 0) ::close(fd);
    fs.finish();
    const auto st = fs.stats();
    std::fprintf(stderr, "stream: %lld frames, %lld answered, %lld skipped (newer frame), %lld errors, %lld cached (vision skipped)\n",
                 (long long)st.frames, (long long)st.answered, (long long)st.skipped, (long long)st.errors, (long long)st.cache_hits);
    return 0;
}

inline Command stream_command() {
    auto opts = generation_options();
    for (auto& o : opts)
        if (o.name == "max-tokens") o.help = "maximum new tokens per frame (default 64)";
        else if (o.name == "precision") o.help += ", or auto:P1,P2,... (adaptive: most accurate first)";
    opts.insert(opts.end(), {{"prompt", "TEXT", "question asked about every frame (default \"Describe the image.\")"},
                             {"input", "FILE", "concatenated JPEG/PNG images; - = stdin (default)"},
                             {"fps-limit", "X", "answer at most X frames per second (default: as fast as answers come)"},
                             {"every-frame", "", "answer every frame in order instead of the latest one (offline input)"},
                             {"json", "", "one JSON object per answered frame: {\"frame\", \"t_ms\", \"text\", \"latency_ms\", "
                                          "\"skipped\", \"cached\", \"preset\"} (or \"error\")"},
                             {"max-frame-mb", "N", "largest accepted frame (default 64)"}});
    for (auto& o : engine_options("image-feature cache in MB: an unchanged frame skips the vision tower (default 256, 0 = off)", false))
        opts.push_back(o);
    return {"stream",
            "Answer a live stream of concatenated JPEG or PNG images (ffmpeg -f image2pipe) frame by frame; while a frame is "
            "answered, newer frames replace the waiting one (latest frame wins, skipped frames counted). Frame numbers are "
            "positions in the input (skipped and broken frames counted); broken frames and garbage are reported and skipped.",
            "--model DIR [--prompt TEXT] [--input FILE|-] [--fps-limit X] [--json] [options]",
            opts,
            run_stream};
}

}  // namespace fastvlm::cli
