// fastvlm/io/files.hpp — reading files and lines that come from outside, within named limits.
//
// Every file fastvlm reads whole (config.json, tokenizer files, index.json, images) goes through
// read_file(): it refuses directories, FIFOs, devices and sockets and symlink loops with an error
// naming the file, checks the size against a limit before reading, and never blocks on a FIFO.
// read_line() reads one line of a JSONL or chat input with a length limit, in bounded memory.
// docs/reliability.md lists every limit with the reason for its default.
#pragma once
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <istream>
#include <string>
#include <string_view>

#include "fastvlm/core/error.hpp"

namespace fastvlm::io {

// Limits on the model folder's files (LoadOptions::limits, fastvlm-cli --max-* flags).
struct LoadLimits {
    // config.json, model.safetensors.index.json, tokenizer_config.json, added_tokens.json,
    // special_tokens_map.json: real ones are a few KB.
    std::size_t max_json_file_bytes = std::size_t(16) << 20;
    // tokenizer.json / vocab.json / merges.txt: Qwen2's tokenizer.json is 11 MB.
    std::size_t max_tokenizer_file_bytes = std::size_t(128) << 20;
    // One safetensors file's JSON header: FastVLM-7B's is ~100 KB.
    std::size_t max_header_bytes = std::size_t(16) << 20;
    // Tensors per safetensors file and in a whole folder: FastVLM-7B has ~700.
    std::size_t max_tensors = 65536;
    // Added (special) tokens: Qwen2 has 22; each is tried at every position of a prompt.
    std::size_t max_added_tokens = 4096;
    // Nesting of any JSON file: the deepest real one (tokenizer.json) has 6 levels.
    int max_json_depth = 64;
    // config.json image_size (FastViTHD's work grows with its square; the official models use 1024).
    int max_image_size = 2048;
    // Bytes the packed weights may take; 0 = the memory available at load time (MemAvailable +
    // SwapFree, cgroup memory.max). Checked from the tensor shapes before any weight is read.
    std::uint64_t max_weight_bytes = 0;
};

namespace detail {

// What kind of file system object `st` is, for error messages.
inline const char* file_kind(const struct stat& st) {
    if (S_ISDIR(st.st_mode)) return "a directory";
    if (S_ISFIFO(st.st_mode)) return "a FIFO (named pipe)";
    if (S_ISCHR(st.st_mode)) return "a character device";
    if (S_ISBLK(st.st_mode)) return "a block device";
    if (S_ISSOCK(st.st_mode)) return "a socket";
    return "not a regular file";
}

inline std::string open_error(int e) {
    if (e == ELOOP) return "a symlink loop (too many levels of symbolic links)";
    if (e == ENOENT) return "no such file";
    return std::strerror(e);
}

// An open file descriptor that closes itself.
class Fd {
public:
    explicit Fd(int fd) : fd_(fd) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() {
        if (fd_ >= 0) ::close(fd_);
    }
    int get() const { return fd_; }

private:
    int fd_;
};

}  // namespace detail

// True when something (a file, directory, FIFO, even a dangling or looping symlink) is at `path`:
// the caller then opens it and gets the precise error. Never throws.
inline bool present(const std::filesystem::path& path) noexcept {
    std::error_code ec;
    return std::filesystem::exists(std::filesystem::symlink_status(path, ec));
}

// Opens `path` read-only for a whole-file read or a mapping: the returned descriptor is a regular
// file of st.st_size bytes. Never blocks (O_NONBLOCK: a FIFO is refused, not waited on). `what`
// prefixes every error ("config.json", "image 'x.png'"); it defaults to the path.
inline int open_regular_file(const std::filesystem::path& path, struct stat& st, std::string_view what = {}) {
    const std::string p = path.string();
    const std::string_view w = what.empty() ? std::string_view(p) : what;
    const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        const int e = errno;
        if (e == EISDIR) fail(w, ": is a directory, expected a file");
        fail(w, ": cannot open: ", detail::open_error(e));
    }
    if (::fstat(fd, &st) != 0) {
        const int e = errno;
        ::close(fd);
        fail(w, ": cannot stat: ", std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        fail(w, ": is ", detail::file_kind(st), ", expected a regular file");
    }
    return fd;
}

// The whole of a regular file, at most `limit` bytes (else an error naming the file and the limit).
inline std::string read_file(const std::filesystem::path& path, std::size_t limit, std::string_view what = {}) {
    const std::string p = path.string();
    const std::string_view w = what.empty() ? std::string_view(p) : what;
    struct stat st {};
    detail::Fd fd(open_regular_file(path, st, w));
    if (std::uint64_t(st.st_size) > limit)
        fail(w, ": ", std::uint64_t(st.st_size), " bytes is larger than the ", limit, "-byte limit for this file");
    std::string out(std::size_t(st.st_size), '\0');
    std::size_t got = 0;
    for (;;) {  // the file may change size under us: read until EOF, never past the limit
        if (got == out.size()) {
            if (out.size() >= limit + 1) break;
            out.resize(std::min(limit + 1, std::max<std::size_t>(4096, out.size() * 2)));
        }
        const ssize_t n = ::read(fd.get(), out.data() + got, out.size() - got);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail(w, ": read error: ", std::strerror(errno));
        }
        if (n == 0) break;
        got += std::size_t(n);
    }
    if (got > limit) fail(w, ": grew past the ", limit, "-byte limit for this file while it was read");
    out.resize(got);
    return out;
}

enum class LineStatus { ok, eof, too_long };

// Reads one line (without its '\n'; a trailing '\r' is kept) into `line`. A line longer than
// `max_bytes` is not stored: the rest of it is skipped in bounded memory and too_long is returned.
// An input that never ends its line (a pipe from /dev/zero) is skipped for at most
// `max_skip_bytes`; past that, reading throws, naming `what` and the limit.
inline LineStatus read_line(std::istream& in, std::string& line, std::size_t max_bytes, std::string_view what,
                            std::size_t max_skip_bytes = std::size_t(256) << 20) {
    line.clear();
    std::streambuf* sb = in.rdbuf();
    bool any = false;
    for (;;) {
        const int c = sb->sbumpc();
        if (c == std::char_traits<char>::eof()) {
            in.setstate(std::ios::eofbit);
            return any ? LineStatus::ok : LineStatus::eof;
        }
        any = true;
        if (c == '\n') return LineStatus::ok;
        if (line.size() == max_bytes) break;
        line.push_back(char(c));
    }
    line.clear();
    for (std::size_t skipped = 0;; ++skipped) {
        const int c = sb->sbumpc();
        if (c == std::char_traits<char>::eof()) {
            in.setstate(std::ios::eofbit);
            break;
        }
        if (c == '\n') break;
        if (skipped >= max_skip_bytes)
            fail(what, ": a line runs on for more than ", max_skip_bytes, " bytes without a newline; the input is not read further");
    }
    return LineStatus::too_long;
}

}  // namespace fastvlm::io
