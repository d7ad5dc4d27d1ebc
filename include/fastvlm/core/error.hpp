// fastvlm/core/error.hpp — the one exception type and a message builder.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace fastvlm {

// Every error the library reports is a fastvlm::Error. The message names the file, tensor or
// limit involved, so that a user can act on it without a debugger.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
std::string concat(Args&&... args) {
    std::ostringstream os;
    (os << ... << std::forward<Args>(args));
    return os.str();
}

// Error messages quote names and values from the input; a hostile input could make them megabytes.
// Longer messages keep their head and tail (cut at UTF-8 character boundaries).
inline constexpr std::size_t kMaxErrorMessageBytes = 4096;

inline std::string cap_message(std::string s) {
    if (s.size() <= kMaxErrorMessageBytes) return s;
    auto boundary = [&](std::size_t i) {
        while (i > 0 && i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
        return i;
    };
    const std::size_t head = boundary(kMaxErrorMessageBytes * 3 / 4);
    const std::size_t tail = boundary(s.size() - kMaxErrorMessageBytes / 4);
    return s.substr(0, head) + " ...[" + std::to_string(tail - head) + " bytes left out]... " + s.substr(tail);
}
}  // namespace detail

// throw Error(concat(args...)); kept out of line of the caller's hot path.
template <class... Args>
[[noreturn]] void fail(Args&&... args) {
    throw Error(detail::cap_message(detail::concat(std::forward<Args>(args)...)));
}

// Checks an invariant that depends on user input (files, shapes, options).
#define FASTVLM_CHECK(cond, ...)                       \
    do {                                               \
        if (!(cond)) [[unlikely]] ::fastvlm::fail(__VA_ARGS__); \
    } while (0)

}  // namespace fastvlm
