// fastvlm/io/limits.hpp — every limit on outside input by name, for command lines and bindings:
//
//   io::Limits lim;                                   // the defaults of LoadLimits and ImageLimits
//   io::set_limits(lim, "max_image_size=4096,max_pixels=256M");
//   LoadOptions{.limits = lim.load};  io::load_image(file, lim.image);
//
// Names are the field names (a '-' may stand for '_'); values are integers with an optional binary
// suffix K, M, G or T (×1024ⁿ). Each limit has a range: a value outside it, an unknown name or a
// malformed pair is an error naming it. docs/reliability.md gives the reason for each default.
#pragma once
#include <array>
#include <cstdio>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>

#include "fastvlm/core/error.hpp"
#include "fastvlm/io/files.hpp"
#include "fastvlm/io/image.hpp"

namespace fastvlm::io {

struct Limits {
    LoadLimits load = {};
    ImageLimits image = {};
};

struct LimitInfo {
    const char* name;
    const char* what;
    std::uint64_t lo, hi;
    std::uint64_t (*get)(const Limits&);
    void (*set)(Limits&, std::uint64_t);
};

namespace detail {
template <auto Part, auto Field>
constexpr LimitInfo limit(const char* name, const char* what, std::uint64_t lo, std::uint64_t hi) {
    return {name, what, lo, hi, [](const Limits& l) { return std::uint64_t((l.*Part).*Field); },
            [](Limits& l, std::uint64_t v) {
                using T = std::remove_cvref_t<decltype((l.*Part).*Field)>;
                (l.*Part).*Field = T(v);
            }};
}
inline constexpr std::uint64_t kTiB = std::uint64_t(1) << 40;
// A name or value from the command line, shortened for an error message.
inline std::string shown(std::string_view s) { return s.size() <= 80 ? std::string(s) : std::string(s.substr(0, 80)) + "..."; }
}  // namespace detail

// The table: name, meaning, allowed range. The upper bounds keep every limit within what the code can
// represent (and, for the JSON depth, within what the stack of a recursive consumer of the DOM holds).
inline constexpr std::array<LimitInfo, 12> kLimits = {
    detail::limit<&Limits::load, &LoadLimits::max_json_file_bytes>(
        "max_json_file_bytes", "bytes of config.json and the other small JSON files", 1, detail::kTiB),
    detail::limit<&Limits::load, &LoadLimits::max_tokenizer_file_bytes>(
        "max_tokenizer_file_bytes", "bytes of tokenizer.json / vocab.json / merges.txt", 1, detail::kTiB),
    detail::limit<&Limits::load, &LoadLimits::max_header_bytes>("max_header_bytes", "bytes of a safetensors JSON header",
                                                                 2, detail::kTiB),
    detail::limit<&Limits::load, &LoadLimits::max_tensors>("max_tensors", "tensors in a file and in a model folder", 1,
                                                            std::uint64_t(1) << 32),
    detail::limit<&Limits::load, &LoadLimits::max_added_tokens>("max_added_tokens", "added (special) tokens", 0,
                                                                 std::uint64_t(1) << 24),
    detail::limit<&Limits::load, &LoadLimits::max_json_depth>("max_json_depth", "nesting of any JSON input", 1, 1000),
    detail::limit<&Limits::load, &LoadLimits::max_image_size>("max_image_size", "config.json image_size (pixels a side)",
                                                               64, 16384),
    detail::limit<&Limits::load, &LoadLimits::max_weight_bytes>(
        "max_weight_bytes", "bytes of the packed weights of a model (0 = the memory available at load)", 0, std::uint64_t(1) << 50),
    detail::limit<&Limits::image, &ImageLimits::max_pixels>("max_pixels", "pixels of a decoded image", 1,
                                                             std::uint64_t(1) << 34),
    detail::limit<&Limits::image, &ImageLimits::max_padded_pixels>(
        "max_padded_pixels", "pixels of the square an image is padded to before resizing", 1, std::uint64_t(1) << 34),
    detail::limit<&Limits::image, &ImageLimits::max_jpeg_scans>("max_jpeg_scans", "scans of one JPEG", 1, 1u << 20),
    detail::limit<&Limits::image, &ImageLimits::max_file_bytes>("max_file_bytes", "bytes of an image file", 1,
                                                                 detail::kTiB),
};

// The entry named `name` ('-' may stand for '_'); throws for an unknown name, listing the known ones.
inline const LimitInfo& limit_info(std::string_view name) {
    std::string n(name);
    for (auto& c : n)
        if (c == '-') c = '_';
    for (const auto& l : kLimits)
        if (n == l.name) return l;
    std::string known;
    for (const auto& l : kLimits) known += std::string(known.empty() ? "" : ", ") + l.name;
    fail("unknown limit '", detail::shown(name), "' (known: ", known, ")");
}

// "123", "64K", "16M", "2G", "1T" (binary multiples); throws naming `what` otherwise or on overflow.
inline std::uint64_t parse_size(std::string_view s, std::string_view what) {
    auto bad = [&]() -> std::uint64_t {
        fail(what, ": '", detail::shown(s), "' is not a non-negative integer (optionally with K, M, G or T)");
    };
    if (s.empty()) return bad();
    std::uint64_t v = 0;
    std::size_t i = 0;
    for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) {
        if (v > (std::numeric_limits<std::uint64_t>::max() - 9) / 10) return bad();
        v = v * 10 + std::uint64_t(s[i] - '0');
    }
    if (i == 0) return bad();
    if (i < s.size()) {
        int shift = 0;
        switch (s[i]) {
            case 'K': case 'k': shift = 10; break;
            case 'M': case 'm': shift = 20; break;
            case 'G': case 'g': shift = 30; break;
            case 'T': case 't': shift = 40; break;
            default: return bad();
        }
        ++i;
        if (i < s.size() && (s[i] == 'i' || s[i] == 'B')) ++i;  // "16Mi", "16MB": still binary
        if (i != s.size() || v > (std::numeric_limits<std::uint64_t>::max() >> shift)) return bad();
        v <<= shift;
    }
    return v;
}

// Sets one limit: `name` to `value` (a parse_size string).
inline void set_limit(Limits& lim, std::string_view name, std::string_view value) {
    const LimitInfo& l = limit_info(name);
    const std::string what = std::string("limit ") + l.name;
    const std::uint64_t v = parse_size(value, what);
    if (v < l.lo || v > l.hi) fail(what, ": ", v, " is outside ", l.lo, "..", l.hi);
    l.set(lim, v);
}

// Sets the limits of a comma-separated list of NAME=VALUE pairs.
inline void set_limits(Limits& lim, std::string_view spec) {
    while (!spec.empty()) {
        const auto comma = spec.find(',');
        const std::string_view pair = spec.substr(0, comma);
        spec = comma == std::string_view::npos ? std::string_view{} : spec.substr(comma + 1);
        if (pair.empty()) continue;
        const auto eq = pair.find('=');
        if (eq == std::string_view::npos) fail("limit '", detail::shown(pair), "': expected NAME=VALUE");
        set_limit(lim, pair.substr(0, eq), pair.substr(eq + 1));
    }
}

// One line per limit: name, current value, range, meaning (for --limit help).
inline std::string describe_limits(const Limits& lim = {}) {
    std::string out;
    for (const auto& l : kLimits) {
        char line[256];
        std::snprintf(line, sizeof line, "  %-26s %14llu  (%llu..%llu) %s\n", l.name, (unsigned long long)l.get(lim),
                      (unsigned long long)l.lo, (unsigned long long)l.hi, l.what);
        out += line;
    }
    return out;
}

}  // namespace fastvlm::io
