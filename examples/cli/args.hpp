// examples/cli/args.hpp — the subcommand table and option parsing shared by every fastvlm-cli command.
//
// A command declares its options; `--name value` and `--name=value` take a value, flags do not.
// Adding a command: write examples/cli/<cmd>.hpp (include "args.hpp") with a `Command <cmd>_command()`, list it in
// examples/fastvlm-cli.cpp.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fastvlm/core/error.hpp"
#include "fastvlm/io/files.hpp"
#include "fastvlm/io/limits.hpp"

namespace fastvlm::cli {

// Opens a line-oriented input file (JSONL, a list of texts) for io::read_line. A FIFO is fine (a
// pipe from another program); a directory or a symlink loop is refused with a clear error.
inline void open_input(std::ifstream& in, const std::filesystem::path& file, std::string_view what) {
    std::error_code ec;
    const auto st = std::filesystem::status(file, ec);
    if (ec == std::errc::too_many_symbolic_link_levels) fail(file.string(), ": cannot open ", what, ": a symlink loop");
    if (ec || !std::filesystem::exists(st)) fail(file.string(), ": cannot open ", what, ": no such file");
    if (std::filesystem::is_directory(st)) fail(file.string(), ": is a directory, expected ", what);
    in.open(file, std::ios::binary);
    if (!in) fail(file.string(), ": cannot open ", what);
}

struct Option {
    std::string name;        // without the leading "--"
    std::string value_name;  // "" = a flag
    std::string help;
    bool repeatable = false;  // given again, the values are joined with ','
};

class Args {
public:
    bool flag(const std::string& name) const { return flags_.count(name) > 0; }
    bool has(const std::string& name) const { return values_.count(name) > 0; }
    std::optional<std::string> get(const std::string& name) const {
        auto it = values_.find(name);
        return it == values_.end() ? std::nullopt : std::optional<std::string>(it->second);
    }
    std::string get_or(const std::string& name, const std::string& def) const { return get(name).value_or(def); }
    std::string require(const std::string& name) const {
        auto v = get(name);
        if (!v) fail("missing option --", name);
        return *v;
    }
    long get_int(const std::string& name, long def, long lo, long hi) const {
        auto v = get(name);
        if (!v) return def;
        char* end = nullptr;
        const long x = std::strtol(v->c_str(), &end, 10);
        if (v->empty() || *end != '\0' || x < lo || x > hi)
            fail("option --", name, ": '", *v, "' is not an integer in ", lo, "..", hi);
        return x;
    }
    const std::vector<std::string>& positional() const { return positional_; }

    // argv[first..argc) against the declared options; unknown options are errors.
    static Args parse(int argc, char** argv, int first, const std::vector<Option>& options) {
        Args a;
        for (int i = first; i < argc; ++i) {
            std::string s = argv[i];
            if (s.size() < 3 || s.compare(0, 2, "--") != 0) {
                a.positional_.push_back(s);
                continue;
            }
            std::string name = s.substr(2), value;
            bool inline_value = false;
            if (auto eq = name.find('='); eq != std::string::npos) {
                value = name.substr(eq + 1);
                name = name.substr(0, eq);
                inline_value = true;
            }
            auto it = std::find_if(options.begin(), options.end(), [&](const Option& o) { return o.name == name; });
            if (it == options.end()) fail("unknown option --", name);
            if (it->value_name.empty()) {
                if (inline_value) fail("option --", name, " takes no value");
                a.flags_[name] = true;
            } else {
                if (!inline_value) {
                    if (i + 1 >= argc) fail("option --", name, " needs a value (", it->value_name, ")");
                    value = argv[++i];
                }
                auto [v, fresh] = a.values_.try_emplace(name, value);
                if (!fresh) v->second = it->repeatable ? v->second + "," + value : value;  // else the last one counts
            }
        }
        return a;
    }

private:
    std::map<std::string, std::string> values_;
    std::map<std::string, bool> flags_;
    std::vector<std::string> positional_;
};

// --limit NAME=VALUE[,...]: the LoadLimits / ImageLimits fields by name (io/limits.hpp, docs/reliability.md).
inline Option limit_option() {
    return {"limit", "NAME=N[,...]", "input limits, e.g. max_image_size=4096,max_pixels=256M (repeatable; '--limit help' lists them)",
            true};
}

// --image-size N: the vision tower's input side (LoadOptions::image_size).
inline Option image_size_option() {
    return {"image-size", "N", "vision input side in pixels, a multiple of 64: (N/64)^2 image tokens (default: config.json's, "
                               "1024); smaller is faster and less accurate"};
}
inline int image_size_of(const Args& a) { return int(a.get_int("image-size", 0, 1, 1 << 20)); }

// The limits given with --limit, on top of the defaults.
inline io::Limits limits_of(const Args& a) {
    io::Limits lim;
    if (auto s = a.get("limit")) io::set_limits(lim, *s);
    return lim;
}

// `--limit help`: the table of limits with their defaults.
inline void print_limits() {
    std::printf("limits (--limit NAME=VALUE[,NAME=VALUE...]; values take K, M, G, T = x1024^n; docs/reliability.md):\n"
                "  %-26s %14s  %s\n%s",
                "name", "default", "(range) meaning", io::describe_limits().c_str());
}

// The engine's options: --image-cache-mb and --prefix-cache-mb (docs/api.md: image-feature cache, prefix KV
// reuse), --ttft-target-ms (adaptive precision, --precision auto:...), --vision-slice-ms and --prefill-first
// (scheduling). batch_work: their defaults for offline work (whole images between steps, prefill first: the
// most throughput) instead of those for clients that stream (50 ms slices, decode rows in every step).
inline int default_slice_ms(bool batch_work) { return batch_work ? 0 : 50; }
inline std::vector<Option> engine_options(const char* image_help, bool batch_work) {
    return {{"ttft-target-ms", "MS",
             "with --precision auto:P1,P2,...: switch to the next cheaper preset while the p95 time to first token is above MS "
             "(back when it is below half of it; memory and CPU pressure also count; default 0: pressure and queue only)"},
            {"adaptive-pressure", "on|off",
             "with --precision auto:...: on (default) = memory and CPU pressure of the machine (Linux PSI, the cgroup's memory) "
             "also move to a cheaper preset; off = only the p95 TTFT and the queue do (a machine shared with other work)"},
            {"image-cache-mb", "N", image_help},
            {"prefix-cache-mb", "N",
             "prefix KV reuse: KV pages of ended requests kept for later ones that start the same (a second question about an "
             "image, the next chat turn) in MB (default: up to the whole KV budget, given back when requests need it; 0 = off)"},
            {"vision-slice-ms", "MS",
             "while other requests decode, a new image goes through the vision tower in slices of about MS milliseconds, one "
             "between two decode steps, so running streams pause for one slice, not a whole image (default " +
                 std::to_string(default_slice_ms(batch_work)) + "; 0 = off: each image whole, the most throughput)"},
            {"prefill-first", "0|1",
             std::string("1: while a running request is still in vision or prefill, no decode step runs, so the requests "
                         "admitted together decode as one batch (throughput; streams pause for newcomers); 0: decode rows "
                         "in every step (default ") +
                 (batch_work ? "1" : "0") + ")"}};
}
template <class EngineOptions>
void set_engine_options(const Args& a, EngineOptions& eo, bool batch_work) {
    eo.image_cache_bytes = std::size_t(a.get_int("image-cache-mb", 256, 0, 1l << 24)) << 20;
    if (a.has("prefix-cache-mb")) eo.prefix_cache_bytes = std::size_t(a.get_int("prefix-cache-mb", 0, 0, 1l << 24)) << 20;
    eo.vision_slice_ms = double(a.get_int("vision-slice-ms", default_slice_ms(batch_work), 0, 1l << 20));
    eo.prefill_first = a.get_int("prefill-first", batch_work ? 1 : 0, 0, 1) == 1;
    eo.adaptive.ttft_target_ms = double(a.get_int("ttft-target-ms", 0, 0, 1l << 30));
    const std::string pressure = a.get_or("adaptive-pressure", "on");
    if (pressure != "on" && pressure != "off") fail("--adaptive-pressure: expected on or off, got '", pressure, "'");
    if (pressure == "off") {
        using Pressure = decltype(eo.adaptive.pressure());
        eo.adaptive.pressure = [] { return Pressure{}; };  // reads as no pressure
    }
    eo.adaptive.on_switch = [](const auto& sw) {
        std::fprintf(stderr, "fastvlm: precision %s -> %s: %s\n", sw.from_preset.c_str(), sw.to_preset.c_str(), sw.reason.c_str());
    };
}

struct Command {
    std::string name;
    std::string summary;
    std::string usage;  // the synopsis after "fastvlm-cli <name>"
    std::vector<Option> options;
    std::function<int(const Args&)> run;
};

inline void print_command_help(const Command& c, std::FILE* out) {
    std::fprintf(out, "usage: fastvlm-cli %s %s\n\n%s\n\noptions:\n", c.name.c_str(), c.usage.c_str(), c.summary.c_str());
    for (const auto& o : c.options) {
        const std::string lhs = "--" + o.name + (o.value_name.empty() ? "" : " " + o.value_name);
        std::fprintf(out, "  %-28s %s\n", lhs.c_str(), o.help.c_str());
    }
    std::fprintf(out, "  %-28s %s\n", "--help", "show this help");
}

inline void print_help(const std::vector<Command>& cmds, std::FILE* out) {
    std::fprintf(out, "usage: fastvlm-cli <command> [options]\n\ncommands:\n");
    for (const auto& c : cmds) std::fprintf(out, "  %-12s %s\n", c.name.c_str(), c.summary.c_str());
    std::fprintf(out, "\n`fastvlm-cli <command> --help` describes a command's options.\n");
}

// Exit codes: 0 success, 1 runtime error (bad file, bad model …), 2 usage error.
inline int dispatch(int argc, char** argv, const std::vector<Command>& cmds) {
    if (argc < 2) {
        print_help(cmds, stderr);
        return 2;
    }
    const std::string name = argv[1];
    if (name == "--help" || name == "-h" || name == "help") {
        if (name == "help" && argc > 2)
            for (const auto& c : cmds)
                if (c.name == argv[2]) return print_command_help(c, stdout), 0;
        print_help(cmds, stdout);
        return 0;
    }
    auto it = std::find_if(cmds.begin(), cmds.end(), [&](const Command& c) { return c.name == name; });
    if (it == cmds.end()) {
        std::fprintf(stderr, "fastvlm-cli: unknown command '%s'\n\n", name.c_str());
        print_help(cmds, stderr);
        return 2;
    }
    for (int i = 2; i < argc; ++i)
        if (std::string_view(argv[i]) == "--help" || std::string_view(argv[i]) == "-h") return print_command_help(*it, stdout), 0;
    Args args;
    try {
        args = Args::parse(argc, argv, 2, it->options);
        if (args.get("limit") == "help") return print_limits(), 0;
        (void)limits_of(args);  // a bad --limit is a usage error, before anything is loaded
    } catch (const Error& e) {
        std::fprintf(stderr, "fastvlm-cli %s: %s\n\n", name.c_str(), e.what());
        print_command_help(*it, stderr);
        return 2;
    }
    try {
        return it->run(args);
    } catch (const Error& e) {
        std::fprintf(stderr, "fastvlm-cli %s: error: %s\n", name.c_str(), e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fastvlm-cli %s: unexpected error: %s\n", name.c_str(), e.what());
        return 1;
    }
}

// Wall-clock milliseconds since construction.
class Stopwatch {
public:
    double ms() const { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count(); }
    void reset() { t0_ = std::chrono::steady_clock::now(); }

private:
    std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

}  // namespace fastvlm::cli
