// Fuzz target: image bytes → io::load_image_from_memory (JPEG via libjpeg, PNG/BMP/TGA/GIF via stb_image,
// binary PNM) with the default ImageLimits → io::preprocess_image, what the model runs before the
// vision tower (expand to square, Pillow-exact bicubic resize, /255, CHW) — at 64² to keep runs fast.
#include <cstddef>
#include <cstdint>
#include <span>

#include "fastvlm/io/image.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    constexpr int kSize = 64;
    // Tighter pixel limits than the defaults (64 Mi): a valid 8K x 8K image takes seconds to decode and
    // resize under ASan, which would read as a timeout; the limit checks themselves are the same code.
    fastvlm::io::ImageLimits lim;
    lim.max_pixels = lim.max_padded_pixels = std::int64_t(1) << 22;
    fuzz::accepts([&] {
        const fastvlm::io::Image img =
            fastvlm::io::load_image_from_memory(std::span<const std::uint8_t>(data, size), "fuzz", lim);
        FUZZ_CHECK(img.width > 0 && img.height > 0);
        FUZZ_CHECK(img.rgb.size() == std::size_t(img.width) * std::size_t(img.height) * 3);
        FUZZ_CHECK(std::int64_t(img.width) * img.height <= lim.max_pixels);
        const auto px = fastvlm::io::preprocess_image(img, kSize, lim);
        FUZZ_CHECK(px.dim(0) == 3 && px.dim(1) == kSize && px.dim(2) == kSize);
        for (const float v : px.span()) FUZZ_CHECK(v >= 0.f && v <= 1.f);
    });
    return 0;
}
