// fastvlm-server — an OpenAI-compatible HTTP server on fastvlm::Engine (docs/serving.md).
//
//   fastvlm-server --model DIR [--precision P] [--host 127.0.0.1] [--port 8080] [--parallel N] ...
//
// Listens at once (GET /health answers 503 "loading" until the model is in memory), then serves
// POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics. SIGINT/SIGTERM stop it:
// no new connections; the requests being served finish, then the engine shuts down.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <pthread.h>
#include <thread>

#include "cli/args.hpp"
#include "server.hpp"

namespace {
using namespace fastvlm;
using cli::Option;

const std::vector<Option> kOptions = [] {
    std::vector<Option> v = {
    {"model", "DIR", "model folder (required)"},
    {"precision", "P", "fp32, bf16, fp16, int8, int8_int4 or int4 (default int8), or auto:P1,P2,... (adaptive: most accurate first)"},
    {"host", "ADDR", "address to bind (default 127.0.0.1; 0.0.0.0 exposes the server to the network)"},
    {"port", "N", "port (default 8080; 0 = any free port, printed on stderr)"},
    {"parallel", "N", "sequences decoding at once (default 8)"},
    {"threads", "N", "compute threads (default: all hardware threads)"},
    {"max-queue", "N", "requests waiting beyond the running ones; more get 429 (default 64)"},
    {"kv-budget-mb", "N", "KV cache budget in MB (default: parallel x min(context, 4096) positions)"},
    {"image-cache-mb", "N", "image-feature cache in MB: a repeated image skips the vision tower (default 256, 0 = off)"},
    {"kv-cache", "T", "KV cache storage: bf16 (default) or f32"},
    cli::image_size_option(),
    {"context", "N", "most positions of one request (default: the model's)"},
    {"api-key", "KEY", "require 'Authorization: Bearer KEY' on /v1/* (default: env FASTVLM_API_KEY, else none)"},
    {"max-body-mb", "N", "largest request body in MB; larger gets 413 (default 32)"},
    {"max-image-pixels", "N", "largest image (width x height, from its header); larger gets 400 (default 16777216)"},
    {"max-images", "N", "most images per request (default 8)"},
    {"max-tokens", "N", "max_tokens when a request sets none (default 512)"},
    {"timeout-s", "S", "per-request timeout in seconds (fractions allowed); 0 = none (default 600)"},
    {"model-name", "NAME", "model id in responses and /v1/models (default: the folder's name)"},
    {"allow-file-urls", "DIR", "accept file:// image URLs of files under DIR (default: refused)"},
    {"http-threads", "N", "HTTP connections served at once (default 64)"},
    {"quiet", "", "no log line per request"},
    cli::limit_option(),
    };
    for (auto& o : cli::engine_options("image-feature cache in MB: a repeated image skips the vision tower (default 256, 0 = off)", false))
        v.push_back(o);
    return v;
}();

void print_usage(std::FILE* out) {
    std::fprintf(out, "usage: fastvlm-server --model DIR [options]\n\nAn OpenAI-compatible chat-completions server (docs/serving.md).\n\noptions:\n");
    for (const auto& o : kOptions) {
        const std::string lhs = "--" + o.name + (o.value_name.empty() ? "" : " " + o.value_name);
        std::fprintf(out, "  %-26s %s\n", lhs.c_str(), o.help.c_str());
    }
}

int run(const cli::Args& a) {
    server::ServerOptions so;
    const std::filesystem::path dir = a.require("model");
    so.host = a.get_or("host", "127.0.0.1");
    so.port = int(a.get_int("port", 8080, 0, 65535));
    so.api_key = a.get_or("api-key", std::getenv("FASTVLM_API_KEY") ? std::getenv("FASTVLM_API_KEY") : "");
    so.max_body_bytes = std::size_t(a.get_int("max-body-mb", 32, 1, 4096)) << 20;
    so.http_threads = int(a.get_int("http-threads", 64, 4, 4096));
    so.limits.max_image_pixels = a.get_int("max-image-pixels", 16l << 20, 1, 1l << 40);
    so.limits.max_images = int(a.get_int("max-images", 8, 0, 1024));
    so.limits.default_max_tokens = int(a.get_int("max-tokens", 512, 1, 1 << 20));
    so.quiet = a.flag("quiet");
    if (auto root = a.get("allow-file-urls")) {
        std::error_code ec;
        const auto canon = std::filesystem::canonical(*root, ec);
        if (ec || !std::filesystem::is_directory(canon)) fail("--allow-file-urls: '", *root, "' is not a folder");
        so.limits.file_root = canon;
    }
    so.model_name = a.get_or("model-name", std::filesystem::absolute(dir).lexically_normal().filename().string());
    if (so.model_name.empty()) so.model_name = std::filesystem::absolute(dir).lexically_normal().parent_path().filename().string();

    EngineOptions eo;
    eo.max_running = int(a.get_int("parallel", 8, 1, 1024));
    eo.max_queued = int(a.get_int("max-queue", 64, 0, 1 << 20));
    eo.kv_budget_bytes = std::size_t(a.get_int("kv-budget-mb", 0, 0, 1l << 24)) << 20;
    cli::set_engine_options(a, eo, false);
    if (auto t = a.get("timeout-s")) {
        char* end = nullptr;
        eo.timeout_s = std::strtod(t->c_str(), &end);
        if (t->empty() || *end != '\0' || !(eo.timeout_s >= 0 && eo.timeout_s < 1e9))
            fail("option --timeout-s: '", *t, "' is not a number of seconds >= 0");
    } else {
        eo.timeout_s = 600;
    }
    eo.context = Index(a.get_int("context", 0, 0, 1l << 24));
    LoadOptions lo;
    lo.threads = unsigned(a.get_int("threads", 0, 0, 4096));
    if (auto kv = a.get("kv-cache")) lo.kv_type = text::parse_kv_type(*kv);
    lo.image_size = cli::image_size_of(a);
    const io::Limits lim = cli::limits_of(a);
    lo.limits = lim.load;
    lo.image_limits = lim.image;
    so.limits.image = lim.image;
    const std::string precision = a.get_or("precision", "int8");

    // SIGINT/SIGTERM go to one thread (blocked everywhere else, before any thread starts).
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    server::Server srv(so);
    const int port = srv.bind();
    std::fprintf(stderr, "fastvlm-server: listening on http://%s:%d (loading %s, %s)\n", so.host.c_str(), port, dir.c_str(),
                 precision.c_str());
    std::thread loader([&] {
        try {
            auto model = load_model(dir, precision, lo);
            auto engine = model->new_engine(eo);
            std::fprintf(stderr, "fastvlm-server: ready — model '%s', %s, %.1f s to load, %d parallel, queue %d\n",
                         so.model_name.c_str(), model->precision(), model->load_ms() / 1e3, eo.max_running, eo.max_queued);
            srv.set_engine(std::move(model), std::move(engine));
        } catch (const std::exception& e) {
            std::fprintf(stderr, "fastvlm-server: cannot load the model: %s\n", e.what());
            srv.set_load_error(e.what());
            srv.stop();
        }
    });
    std::thread signals([&] {
        int sig = 0;
        sigwait(&sigs, &sig);
        if (sig == SIGINT || sig == SIGTERM) std::fprintf(stderr, "fastvlm-server: signal %d, stopping\n", sig);
        srv.stop();
    });
    srv.serve();
    loader.join();
    pthread_kill(signals.native_handle(), SIGTERM);  // wakes the sigwait if the server stopped by itself
    signals.join();
    return srv.ready() ? 0 : 1;
}
}  // namespace

int main(int argc, char** argv) {
    for (int i = 1; i < argc; ++i)
        if (std::string_view(argv[i]) == "--help" || std::string_view(argv[i]) == "-h") return print_usage(stdout), 0;
    cli::Args args;
    try {
        args = cli::Args::parse(argc, argv, 1, kOptions);
        if (!args.positional().empty()) fail("unexpected argument '", args.positional()[0], "'");
        if (args.get("limit") == "help") return cli::print_limits(), 0;
        (void)cli::limits_of(args);  // a bad --limit is a usage error
    } catch (const Error& e) {
        std::fprintf(stderr, "fastvlm-server: %s\n\n", e.what());
        print_usage(stderr);
        return 2;
    }
    try {
        return run(args);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fastvlm-server: error: %s\n", e.what());
        return 1;
    }
}
