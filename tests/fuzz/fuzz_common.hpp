// tests/fuzz/fuzz_common.hpp — helpers shared by the libFuzzer harnesses (tests/fuzz/README.md).
//
// Rules every harness follows: the library's documented errors (fastvlm::Error, the server's ApiError)
// are a normal outcome and are caught where the front end catches them; anything else (std::bad_alloc,
// another exception, a crash, a sanitizer report, a violated invariant) escapes or aborts, so libFuzzer
// reports it.
#pragma once
#include <dirent.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fastvlm/core/error.hpp"

namespace fuzz {

// A broken invariant of the code under test (not of the harness): report it and abort, which
// libFuzzer records as a crash with this message above the stack.
[[noreturn]] inline void invariant_failed(const char* what, const char* file, int line) {
    std::fprintf(stderr, "\n==FUZZ INVARIANT== %s:%d: %s\n", file, line, what);
    std::fflush(stderr);
    std::abort();
}
#define FUZZ_CHECK(cond) \
    do { \
        if (!(cond)) ::fuzz::invariant_failed(#cond, __FILE__, __LINE__); \
    } while (0)

// A failure of the harness itself (cannot create its scratch files): not a finding.
[[noreturn]] inline void harness_failed(const std::string& what) {
    std::fprintf(stderr, "fuzz harness setup failed: %s (errno %d: %s)\n", what.c_str(), errno, std::strerror(errno));
    std::exit(2);
}

// Runs f; a fastvlm::Error is the documented way to reject input and is swallowed. Returns whether
// f completed.
template <class F>
bool accepts(F&& f) {
    try {
        std::forward<F>(f)();
        return true;
    } catch (const fastvlm::Error&) {
        return false;
    }
}

inline std::string_view as_text(const std::uint8_t* data, std::size_t size) {
    return {reinterpret_cast<const char*>(data), size};
}

// Splits at the first `sep`: {before, after}; without it {s, s} when `dup_if_missing`, else {s, ""}.
inline std::pair<std::string_view, std::string_view> split_once(std::string_view s, std::string_view sep,
                                                                bool dup_if_missing = false) {
    const std::size_t at = s.find(sep);
    if (at == std::string_view::npos) return {s, dup_if_missing ? s : std::string_view()};
    return {s.substr(0, at), s.substr(at + sep.size())};
}

// All pieces between occurrences of `sep` (at most `max_parts`; the last one keeps the rest).
inline std::vector<std::string_view> split_all(std::string_view s, std::string_view sep, std::size_t max_parts) {
    std::vector<std::string_view> out;
    while (out.size() + 1 < max_parts) {
        const std::size_t at = s.find(sep);
        if (at == std::string_view::npos) break;
        out.push_back(s.substr(0, at));
        s.remove_prefix(at + sep.size());
    }
    out.push_back(s);
    return out;
}

// An anonymous in-memory file (memfd), opened by path as /proc/self/fd/N: the library's path-taking
// loaders read it like any regular file, and nothing is left on disk.
class MemFile {
public:
    explicit MemFile(const char* name) {
        fd_ = ::memfd_create(name, MFD_CLOEXEC);
        if (fd_ < 0) harness_failed("memfd_create");
        path_ = "/proc/self/fd/" + std::to_string(fd_);
    }
    MemFile(const MemFile&) = delete;
    MemFile& operator=(const MemFile&) = delete;
    ~MemFile() { ::close(fd_); }

    // Replaces the content; returns the path to open.
    const std::string& write(std::string_view bytes) {
        if (::ftruncate(fd_, 0) != 0) harness_failed("ftruncate memfd");
        std::size_t done = 0;
        while (done < bytes.size()) {
            const ssize_t n = ::pwrite(fd_, bytes.data() + done, bytes.size() - done, off_t(done));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) harness_failed("pwrite memfd");
            done += std::size_t(n);
        }
        return path_;
    }
    const std::string& path() const { return path_; }

private:
    int fd_ = -1;
    std::string path_;
};

// A scratch folder in /dev/shm (RAM; /tmp when there is none) for loaders that take a folder:
// fastvlm-fuzz-<tag>.<pid>.XXXXXX, removed at exit. A run that dies (crash, timeout) cannot remove
// it: run.sh removes its run's folders, and each harness removes folders of dead processes at start.
class ScratchDir {
public:
    explicit ScratchDir(const std::string& tag) {
        namespace fs = std::filesystem;
        const fs::path root = fs::is_directory("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
        remove_stale(root);
        std::string tmpl = (root / ("fastvlm-fuzz-" + tag + "." + std::to_string(::getpid()) + ".XXXXXX")).string();
        if (!::mkdtemp(tmpl.data())) harness_failed("mkdtemp " + tmpl);
        path_ = tmpl;
    }
    ScratchDir(const ScratchDir&) = delete;
    ScratchDir& operator=(const ScratchDir&) = delete;
    ~ScratchDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }

    const std::filesystem::path& path() const { return path_; }

    void write(const std::string& name, std::string_view bytes) const {
        const std::string p = (path_ / name).string();
        std::FILE* f = std::fopen(p.c_str(), "wb");
        if (!f) harness_failed("fopen " + p);
        if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) harness_failed("fwrite " + p);
        if (std::fclose(f) != 0) harness_failed("fclose " + p);
    }
    void remove(const std::string& name) const {
        std::error_code ec;
        std::filesystem::remove(path_ / name, ec);
    }

private:
    // fastvlm-fuzz-<tag>.<pid>.<random> whose process is gone.
    static void remove_stale(const std::filesystem::path& root) {
        std::error_code ec;
        for (const auto& e : std::filesystem::directory_iterator(root, ec)) {
            const std::string n = e.path().filename().string();
            if (n.rfind("fastvlm-fuzz-", 0) != 0) continue;
            const std::size_t a = n.find('.'), b = a == std::string::npos ? a : n.find('.', a + 1);
            if (b == std::string::npos) continue;
            const std::string pid = n.substr(a + 1, b - a - 1);
            if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
            if (::kill(::pid_t(std::stol(pid)), 0) == 0 || errno != ESRCH) continue;
            std::error_code ec2;
            std::filesystem::remove_all(e.path(), ec2);
        }
    }

    std::filesystem::path path_;
};

// Reads a whole file of the source tree (fixtures such as the tiny tokenizer); aborts when missing.
inline std::string read_fixture(const std::filesystem::path& p) {
    std::FILE* f = std::fopen(p.string().c_str(), "rb");
    if (!f) harness_failed("cannot open fixture " + p.string());
    std::string s;
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) s.append(buf, n);
    std::fclose(f);
    return s;
}

// Keeps a computed value alive so the optimiser cannot drop the work that produced it.
template <class T>
inline void sink(const T& v) {
    asm volatile("" : : "r"(&v) : "memory");
}

}  // namespace fuzz
