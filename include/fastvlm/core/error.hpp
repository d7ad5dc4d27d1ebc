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
}  // namespace detail

// throw Error(concat(args...)); kept out of line of the caller's hot path.
template <class... Args>
[[noreturn]] void fail(Args&&... args) {
    throw Error(detail::concat(std::forward<Args>(args)...));
}

// Checks an invariant that depends on user input (files, shapes, options).
#define FASTVLM_CHECK(cond, ...)                       \
    do {                                               \
        if (!(cond)) [[unlikely]] ::fastvlm::fail(__VA_ARGS__); \
    } while (0)

}  // namespace fastvlm
