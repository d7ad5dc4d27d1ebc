// Helpers shared by the test executables: scratch folders, the tiny golden model with the small
// test tokenizer, synthetic images, error messages.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <system_error>
#include <vector>

#include <unistd.h>

#include "fastvlm/core/error.hpp"
#include "fastvlm/io/image.hpp"

namespace test_support {
namespace fs = std::filesystem;

// The tiny random model of the original implementation (../shared/golden/tiny-vlm).
inline const fs::path kTinyDir = fs::path(FASTVLM_SHARED_DIR) / "golden" / "tiny-vlm";

// A scratch folder under the build tree, removed at the end of the test. Its name carries the process
// id: ctest runs each test of an executable as its own process, several at once.
struct TempDir {
    fs::path path;
    TempDir(const std::string& prefix, const std::string& name)
        : path(fs::path(FASTVLM_BINARY_DIR) / (prefix + name + "." + std::to_string(::getpid()))) {
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

// tiny-vlm plus the small test tokenizer (276 ids < vocab_size 300): the whole text path.
inline void make_text_model(const fs::path& dir) {
    fs::copy_file(kTinyDir / "config.json", dir / "config.json");
    fs::create_symlink(fs::absolute(kTinyDir / "model.safetensors"), dir / "model.safetensors");
    const fs::path tok = fs::path(FASTVLM_TEST_DATA_DIR) / "tokenizer_tiny";
    for (const char* f : {"vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json"})
        fs::copy_file(tok / f, dir / f);
}

// A deterministic patterned image; `seed` varies the pattern.
inline fastvlm::io::Image test_image(int w, int h, unsigned seed = 0) {
    fastvlm::io::Image img{w, h, std::vector<std::uint8_t>(std::size_t(w) * std::size_t(h) * 3)};
    for (std::size_t i = 0; i < img.rgb.size(); ++i) img.rgb[i] = std::uint8_t((i * (37 + seed * 6) + i / 7 + seed * 11) % 251);
    return img;
}

inline std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const fastvlm::Error& e) {
        return e.what();
    }
    return "(no error)";
}
}  // namespace test_support
