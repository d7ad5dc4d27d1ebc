// fastvlm/io/image.hpp — image files to RGB8 (stb_image, with PIL `convert('RGB')` semantics) and
// the preprocessing of predict.py (spec §6.1): expand2square (black) -> Pillow BICUBIC resize to
// image_size² -> x * (1/255) in float64, cast to float32 -> CHW. Details: docs/preprocessing.md.
#pragma once
#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "fastvlm/core/compiled.hpp"
#include "fastvlm/core/error.hpp"
#include "fastvlm/io/files.hpp"
#include "fastvlm/core/tensor.hpp"

// stb_image. By default its implementation is compiled into each translation unit that includes
// this header, as static functions (STB_IMAGE_STATIC): nothing to link, no ODR clash with another
// copy of stb. Define FASTVLM_STB_IMAGE_EXTERNAL to use an implementation you link yourself
// (Debian: `pkg-config --libs stb`); the same happens when <stb_image.h> was included before this
// header. See docs/preprocessing.md.
#if defined(FASTVLM_STB_IMAGE_EXTERNAL) || defined(STBI_INCLUDE_STB_IMAGE_H)
#include <stb_image.h>
#else
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_PSD
#define STBI_NO_HDR
#define STBI_NO_PIC
#define STBI_NO_LINEAR
#define STBI_NO_STDIO
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Weverything"
#elif defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wtype-limits"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wold-style-cast"
#pragma GCC diagnostic ignored "-Wcast-qual"
#pragma GCC diagnostic ignored "-Wuseless-cast"
#pragma GCC diagnostic ignored "-Wzero-as-null-pointer-constant"
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#endif
#include <stb_image.h>
#if defined(__clang__)
#pragma clang diagnostic pop
#elif defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#undef STB_IMAGE_STATIC
#undef STB_IMAGE_IMPLEMENTATION
#undef STBI_NO_PSD
#undef STBI_NO_HDR
#undef STBI_NO_PIC
#undef STBI_NO_LINEAR
#undef STBI_NO_STDIO
#endif

// Optional: with FASTVLM_USE_LIBJPEG defined (and -ljpeg linked), JPEG files are decoded by libjpeg
// (-turbo) with Pillow's settings, so that they match Pillow bit for bit when both use the same
// libjpeg; stb_image's JPEG decoder differs from it by a few levels (docs/preprocessing.md).
#if defined(FASTVLM_USE_LIBJPEG)
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <jerror.h>
#include <jpeglib.h>
#endif

namespace fastvlm::io {

// RGB8, interleaved, row-major: rgb[(y * width + x) * 3 + c].
struct Image {
    int width = 0, height = 0;
    std::vector<std::uint8_t> rgb;
};

// Decoding refuses images with more pixels than this, checked from the header before decoding.
struct ImageLimits {
    std::int64_t max_pixels = 64ll * 1024 * 1024;
    // Preprocessing pads to a max(W, H)² square before resizing (as the original does): a 1×40,000
    // image would need a 1.6 G-pixel canvas. The canvas may be as large as the largest image accepted
    // (64 Mi pixels, 192 MiB RGB, sides up to 8,192): a thin image then costs what a valid square one does.
    std::int64_t max_padded_pixels = 64ll * 1024 * 1024;
    // Scans of one JPEG. Each scan of a progressive JPEG is a sweep over the whole image (2,000 empty
    // scans took a minute); encoders write 1 (baseline) to ~10 (libjpeg's progressive script), 64 at most.
    std::int64_t max_jpeg_scans = 100;
    // Bytes of an image file read from disk (the decoded pixels are bounded by max_pixels).
    std::size_t max_file_bytes = std::size_t(256) << 20;
};

namespace detail {

// Throws unless `img` is a non-empty image whose buffer matches its size.
inline void check_image(const Image& img, std::string_view what) {
    FASTVLM_CHECK(img.width > 0 && img.height > 0, what, ": image has size ", img.width, "x", img.height);
    const std::size_t need = std::size_t(img.width) * std::size_t(img.height) * 3;
    FASTVLM_CHECK(img.rgb.size() == need, what, ": image ", img.width, "x", img.height, " needs ", need,
                  " RGB bytes, has ", img.rgb.size());
}

// Feeds stb from memory through its callback API so that a read past the end of the data is
// seen: stb itself pads missing bytes with zeros (or leaves them uninitialised) and may "decode"
// a truncated JPEG/BMP/TGA. stb reads either into its 128-byte buffer (a short read is normal at
// the end of the file) or straight into the image (stbi__getn: a short read means truncation).
struct StbReader {
    const std::uint8_t* data = nullptr;
    std::size_t size = 0, pos = 0;
    bool past_end = false;
    const char* stb_buffer = nullptr;  // the first read fills stb's own buffer

    static int read(void* user, char* out, int n) {
        auto& r = *static_cast<StbReader*>(user);
        if (!r.stb_buffer) r.stb_buffer = out;
        if (n <= 0) return 0;
        if (r.pos >= r.size) {
            r.past_end = true;
            return 0;
        }
        const std::size_t k = std::min(std::size_t(n), r.size - r.pos);
        if (k < std::size_t(n) && out != r.stb_buffer) r.past_end = true;
        std::memcpy(out, r.data + r.pos, k);
        r.pos += k;
        return int(k);
    }
    static void skip(void* user, int n) {
        auto& r = *static_cast<StbReader*>(user);
        if (n < 0) {
            r.pos -= std::min(r.pos, std::size_t(-std::int64_t(n)));
        } else if (std::size_t(n) > r.size - r.pos) {
            r.past_end = true;
            r.pos = r.size;
        } else {
            r.pos += std::size_t(n);
        }
    }
    static int eof(void* user) {
        auto& r = *static_cast<StbReader*>(user);
        return r.pos >= r.size ? 1 : 0;
    }
};

struct StbFree {
    void operator()(void* p) const noexcept { stbi_image_free(p); }
};
struct CFree {
    void operator()(void* p) const noexcept { std::free(p); }
};

inline std::string stb_reason() {
    const char* r = stbi_failure_reason();
    return r ? r : "unknown error";
}

inline std::uint32_t be16(std::span<const std::uint8_t> b, std::size_t o) { return std::uint32_t(b[o]) << 8 | b[o + 1]; }
inline std::uint32_t be32(std::span<const std::uint8_t> b, std::size_t o) { return be16(b, o) << 16 | be16(b, o + 2); }

inline bool is_png(std::span<const std::uint8_t> b) {
    static constexpr std::uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    return b.size() >= 8 && std::memcmp(b.data(), png_sig, 8) == 0;
}

// The chunks of a PNG, walked before stb sees the file, for two stb_image weaknesses the image fuzzer
// found: a chunk that declares more bytes than the file holds makes stb grow its IDAT buffer to that
// size (up to 2^32 bytes) before it reads anything: refused here, naming the chunk; and a zero-length
// IDAT that comes before any data makes stb copy into its still unallocated buffer (memcpy to a null
// pointer): an empty IDAT carries no data, so such a file is decoded from a copy without it. Returns
// the bytes to decode: `b` itself, or `copy` filled. Bytes after IEND are ignored, as stb does.
inline std::span<const std::uint8_t> checked_png_chunks(std::span<const std::uint8_t> b, std::vector<std::uint8_t>& copy,
                                                        std::string_view name) {
    if (!is_png(b)) return b;
    std::size_t kept = 0;  // b[0, kept) is already in `copy` (when copying)
    bool copying = false;
    for (std::size_t i = 8; b.size() - i >= 12;) {
        const std::size_t len = be32(b, i);
        const std::uint8_t* type = b.data() + i + 4;
        if (len > b.size() - i - 12) {
            std::string t;
            for (int k = 0; k < 4; ++k) t += (type[k] | 0x20) >= 'a' && (type[k] | 0x20) <= 'z' ? char(type[k]) : '?';
            fail("image '", name, "': the file is truncated or corrupt: PNG chunk '", t, "' at byte ", i, " declares ",
                 len, " bytes, the file has ", b.size() - i - 12, " after its header");
        }
        if (std::memcmp(type, "IEND", 4) == 0) break;
        if (len == 0 && std::memcmp(type, "IDAT", 4) == 0) {
            if (!copying) copy.reserve(b.size());
            copying = true;
            copy.insert(copy.end(), b.begin() + std::ptrdiff_t(kept), b.begin() + std::ptrdiff_t(i));
            kept = i + 12;
        }
        i += 12 + len;
    }
    if (!copying) return b;
    copy.insert(copy.end(), b.begin() + std::ptrdiff_t(kept), b.end());
    return copy;
}

// Width and height from a PNG IHDR or a JPEG SOFn header, read before stb sees the file: the pixel
// limit applies first, and stbi_info reports only "unknown image type" for a header it refuses.
inline bool peek_dimensions(std::span<const std::uint8_t> b, std::uint32_t& w, std::uint32_t& h) {
    if (b.size() >= 24 && is_png(b) && std::memcmp(b.data() + 12, "IHDR", 4) == 0) {
        w = be32(b, 16);
        h = be32(b, 20);
        return true;
    }
    if (b.size() < 4 || b[0] != 0xFF || b[1] != 0xD8) return false;
    for (std::size_t i = 2; i + 4 <= b.size();) {  // marker segments up to the first scan
        if (b[i] != 0xFF) return false;
        const std::uint8_t m = b[i + 1];
        if (m == 0xFF) {
            ++i;
        } else if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) {
            i += 2;
        } else if (m == 0xD9 || m == 0xDA) {
            return false;
        } else if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
            if (i + 9 > b.size()) return false;
            h = be16(b, i + 5);
            w = be16(b, i + 7);
            return true;
        } else {
            i += 2 + be16(b, i + 2);
        }
    }
    return false;
}

// Walks the marker segments of a JPEG the way stb_image's parser reaches them and refuses a DHT
// segment with more than 256 codes in one table: stb_image 2.27 (Debian 12) writes past its
// 256-entry tables for those (nothings/stb#1289, fixed in 2.28). Other damage is left to stb.
// Also counts the scans (SOS markers): a progressive JPEG of thousands of empty scans makes either
// decoder sweep the whole image once per scan, so more than `max_scans` is refused up front.
inline void check_jpeg_tables(std::span<const std::uint8_t> b, std::string_view name, std::int64_t max_scans) {
    std::size_t i = 2;
    std::int64_t scans = 0;
    bool entropy = false;  // inside scan data: FF 00 and RSTn are data, not markers
    while (i + 1 < b.size()) {
        if (b[i] != 0xFF) {
            ++i;
            continue;
        }
        std::size_t j = i + 1;
        while (j < b.size() && b[j] == 0xFF) ++j;
        if (j >= b.size()) return;
        const std::uint8_t m = b[j];
        if (entropy && (m == 0x00 || (m >= 0xD0 && m <= 0xD7))) {
            i = j + 1;
            continue;
        }
        if (m == 0xD9 || j + 2 >= b.size()) return;  // EOI or truncated: stb stops or fails
        const std::size_t len = be16(b, j + 1);
        if (m == 0xC4) {  // DHT: tables of (class/id, 16 counts, values) until the length is used up
            std::size_t p = j + 3;
            std::int64_t left = std::int64_t(len) - 2;
            while (left > 0 && p + 17 <= b.size()) {
                std::size_t codes = 0;
                for (std::size_t k = 1; k <= 16; ++k) codes += b[p + k];
                FASTVLM_CHECK(codes <= 256, "image '", name, "': corrupt JPEG (Huffman table with ", codes, " codes)");
                p += 17 + codes;
                left -= std::int64_t(17 + codes);
            }
            i = p;
            entropy = false;
        } else {
            i = j + 1 + len;
            entropy = m == 0xDA;  // SOS: scan data follows its header
            if (entropy && ++scans > max_scans)
                fail("image '", name, "': JPEG with more than ", max_scans, " scans (ImageLimits::max_jpeg_scans)");
        }
    }
}

// An uncompressed BMP must hold its declared rows: stb_image decodes (and allocates) the whole declared
// image before it notices the file ended, so a 160-byte file declaring 8,388,615 x 5 pixels cost seconds.
// Called after check_dimensions (w * h within the pixel limit).
inline void check_bmp_size(std::span<const std::uint8_t> b, std::string_view name) {
    if (b.size() < 26 || b[0] != 'B' || b[1] != 'M') return;
    auto le16 = [&](std::size_t i) { return std::uint32_t(b[i]) | std::uint32_t(b[i + 1]) << 8; };
    auto le32 = [&](std::size_t i) { return le16(i) | le16(i + 2) << 16; };
    const std::uint64_t data_off = le32(10), dib = le32(14);
    std::uint64_t w = 0, h = 0, bpp = 0, comp = 0;
    if (dib == 12) {
        w = le16(18), h = le16(20), bpp = le16(24);
    } else if (b.size() >= 34) {
        w = std::uint64_t(std::abs(std::int64_t(std::int32_t(le32(18)))));
        h = std::uint64_t(std::abs(std::int64_t(std::int32_t(le32(22)))));
        bpp = le16(28), comp = le32(30);
    } else {
        return;  // stb reports the short header
    }
    if (comp != 0 && comp != 3 && comp != 6) return;  // RLE: stb refuses it
    const std::uint64_t row = (bpp * w + 31) / 32 * 4, need = data_off + row * h;
    FASTVLM_CHECK(b.size() >= need, "image '", name, "': the BMP is truncated (", w, "x", h, " at ", bpp, " bits per pixel needs ",
                  need, " bytes, the file has ", b.size(), ")");
}

// w, h < 2^32 (from a header), so w * h fits in 64 unsigned bits.
inline void check_dimensions(std::int64_t w, std::int64_t h, std::string_view name, const ImageLimits& limits) {
    FASTVLM_CHECK(w > 0 && h > 0, "image '", name, "': zero-size image (", w, "x", h, ")");
    const std::uint64_t pixels = std::uint64_t(w) * std::uint64_t(h);
    FASTVLM_CHECK(limits.max_pixels >= 0 && pixels <= std::uint64_t(limits.max_pixels), "image '", name, "': ", w, "x",
                  h, " = ", pixels, " pixels exceeds the limit of ", limits.max_pixels, " pixels (ImageLimits::max_pixels)");
}

inline bool is_pnm_space(std::uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }

// Binary PNM (P5 gray, P6 RGB), decoded here rather than by stb_image (2.27 returns 16-bit samples
// byte-swapped) with Pillow's value mapping: maxval 255 raw; otherwise round(v / maxval * 255)
// (Python round, half to even), except P5 with maxval > 255, which Pillow opens in mode "I"
// (0..65535; raw when maxval = 65535) and convert('RGB') clips to 255.
inline Image decode_pnm(std::span<const std::uint8_t> b, std::string_view name, const ImageLimits& limits) {
    const bool gray = b[1] == '5';
    std::size_t i = 2;
    std::int64_t field[3] = {};
    for (auto& value : field) {
        for (;;) {  // whitespace and '#' comments
            while (i < b.size() && is_pnm_space(b[i])) ++i;
            if (i >= b.size() || b[i] != '#') break;
            while (i < b.size() && b[i] != '\n' && b[i] != '\r') ++i;
        }
        FASTVLM_CHECK(i < b.size() && b[i] >= '0' && b[i] <= '9', "image '", name, "': malformed PNM header");
        while (i < b.size() && b[i] >= '0' && b[i] <= '9') {
            value = value * 10 + (b[i++] - '0');
            FASTVLM_CHECK(value <= (1 << 24), "image '", name, "': PNM header value too large");
        }
    }
    FASTVLM_CHECK(i < b.size() && is_pnm_space(b[i]), "image '", name, "': malformed PNM header");
    ++i;  // one whitespace byte, then the samples
    const std::int64_t w = field[0], h = field[1], maxval = field[2];
    check_dimensions(w, h, name, limits);
    FASTVLM_CHECK(maxval >= 1 && maxval <= 65535, "image '", name, "': PNM maxval ", maxval, " is not in 1..65535");
    const std::size_t channels = gray ? 1 : 3, bytes_per = maxval > 255 ? 2 : 1;
    const std::size_t n = std::size_t(w) * std::size_t(h), need = n * channels * bytes_per;
    FASTVLM_CHECK(b.size() - i >= need, "image '", name, "': the file is truncated (", need, " bytes of PNM samples, ",
                  b.size() - i, " present)");
    std::vector<std::uint8_t> lut(std::size_t(maxval) + 1 > 256 ? 65536 : 256);
    for (std::size_t v = 0; v < lut.size(); ++v) {
        double s;
        if (maxval == 255) s = double(v);
        else if (gray && maxval > 255) s = maxval == 65535 ? double(v) : std::nearbyint(double(v) / double(maxval) * 65535.0);
        else s = std::nearbyint(double(v) / double(maxval) * 255.0);
        lut[v] = std::uint8_t(std::min(s, 255.0));
    }
    Image img{int(w), int(h), std::vector<std::uint8_t>(n * 3)};
    const std::uint8_t* s = b.data() + i;
    for (std::size_t k = 0; k < n * channels; ++k) {
        const std::uint8_t v = lut[bytes_per == 2 ? be16(b, i + 2 * k) : s[k]];
        if (gray) img.rgb[3 * k] = img.rgb[3 * k + 1] = img.rgb[3 * k + 2] = v;
        else img.rgb[k] = v;
    }
    return img;
}

#if defined(FASTVLM_USE_LIBJPEG)
struct JpegError {
    jpeg_error_mgr mgr;  // first: libjpeg hands out &mgr as cinfo->err
    std::jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
    bool truncated;
};

inline void jpeg_error_exit(j_common_ptr c) {
    auto* e = reinterpret_cast<JpegError*>(c->err);
    (*c->err->format_message)(c, e->message);
    std::longjmp(e->jump, 1);
}

// Pillow ignores libjpeg's warnings except a premature end of data, which it reports as truncation.
inline void jpeg_emit_message(j_common_ptr c, int level) {
    if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF) reinterpret_cast<JpegError*>(c->err)->truncated = true;
}

struct JpegPixels {
    unsigned char* rgb = nullptr;  // malloc'ed, w * h * 3
    int w = 0, h = 0;
    bool over_limit = false;
};

// libjpeg with Pillow's decoder settings (libjpeg defaults: islow IDCT, fancy upsampling; output
// gray / RGB / CMYK). Only trivially destructible locals: errors leave through longjmp.
inline JpegPixels jpeg_decode(const unsigned char* data, std::size_t size, std::int64_t max_pixels, JpegError& err) {
    jpeg_decompress_struct cinfo;
    unsigned char* volatile out = nullptr;
    unsigned char* volatile row = nullptr;
    cinfo.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = jpeg_error_exit;
    err.mgr.emit_message = jpeg_emit_message;
    err.message[0] = '\0';
    err.truncated = false;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        std::free(out);
        std::free(row);
        return {};
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, const_cast<unsigned char*>(data), static_cast<unsigned long>(size));
    jpeg_read_header(&cinfo, TRUE);
    JpegPixels r;
    r.w = int(cinfo.image_width);
    r.h = int(cinfo.image_height);
    if (r.w <= 0 || r.h <= 0 || std::int64_t(r.w) * r.h > max_pixels) {  // before any large allocation
        r.over_limit = true;
        jpeg_destroy_decompress(&cinfo);
        return r;
    }
    const int nc = cinfo.num_components;
    cinfo.out_color_space = nc == 1 ? JCS_GRAYSCALE : nc == 4 ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    const int oc = cinfo.output_components;
    out = static_cast<unsigned char*>(std::malloc(std::size_t(r.w) * std::size_t(r.h) * 3));
    row = static_cast<unsigned char*>(std::malloc(std::size_t(r.w) * std::size_t(oc)));
    if (!out || !row) {
        std::snprintf(err.message, sizeof err.message, "out of memory");
        std::longjmp(err.jump, 1);
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        unsigned char* d = out + std::size_t(cinfo.output_scanline) * std::size_t(r.w) * 3;
        JSAMPROW rows[1] = {row};
        if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) {  // cannot happen with a memory source
            std::snprintf(err.message, sizeof err.message, "decoder stopped before the last row");
            std::longjmp(err.jump, 1);
        }
        for (int x = 0; x < r.w; ++x, d += 3) {
            const unsigned char* s = row + std::size_t(x) * std::size_t(oc);
            if (oc == 1) {
                d[0] = d[1] = d[2] = s[0];
            } else if (oc == 3) {
                std::memcpy(d, s, 3);
            } else {  // Pillow: rawmode "CMYK;I" (Adobe inverted), then cmyk2rgb: nk - nk * c / 255
                const int nk = s[3];
                for (int c = 0; c < 3; ++c) {
                    const int t = (255 - s[c]) * nk + 128;
                    d[c] = static_cast<unsigned char>(std::clamp(nk - (((t >> 8) + t) >> 8), 0, 255));
                }
            }
        }
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    std::free(row);
    r.rgb = out;
    return r;
}
#endif

// PNG gray at 16 bits: Pillow opens it in mode "I" and convert('RGB') clips the value to 255
// (stb's 8-bit output is v >> 8).
inline bool is_png_gray16(std::span<const std::uint8_t> b) {
    return b.size() >= 26 && b[0] == 0x89 && std::memcmp(b.data() + 12, "IHDR", 4) == 0 && b[24] == 16 && b[25] == 0;
}

}  // namespace detail

// Decodes a JPEG/PNG/BMP/TGA/GIF (first frame)/binary PNM image held in memory to RGB8, like
// PIL `Image.open(...).convert('RGB')`: alpha dropped (not composited), gray replicated, palette
// expanded. `name` appears in every error message.
FASTVLM_INLINE Image load_image_from_memory(std::span<const std::uint8_t> bytes, std::string_view name, const ImageLimits& limits = {});
// Reads and decodes an image file (see load_image_from_memory).
FASTVLM_INLINE Image load_image(const std::filesystem::path& file, const ImageLimits& limits = {});
// spec §6.1 (predict.py): expand_to_square (black) -> resize_bicubic to image_size² -> to_chw_float.
FASTVLM_INLINE Tensor<float, 3> preprocess_image(const Image& img, int image_size, const ImageLimits& limits = {});

#if FASTVLM_DEFINE_INLINES  // core/compiled.hpp
FASTVLM_INLINE Image load_image_from_memory(std::span<const std::uint8_t> bytes, std::string_view name, const ImageLimits& limits) {
    FASTVLM_CHECK(!bytes.empty(), "image '", name, "': the file is empty");
    FASTVLM_CHECK(bytes.size() <= std::size_t(INT_MAX), "image '", name, "': ", bytes.size(),
                  " bytes is more than stb_image reads (2 GiB)");
    if (bytes.size() >= 2 && bytes[0] == 'P' && (bytes[1] == '5' || bytes[1] == '6'))
        return detail::decode_pnm(bytes, name, limits);

    // A JPEG may start with fill bytes (FF FF … D8), which stb_image accepts and libjpeg does not:
    // decode from the last FF before D8, so both decoders and the table check see a plain SOI.
    {
        std::size_t k = 0;
        while (k + 1 < bytes.size() && bytes[k] == 0xFF && bytes[k + 1] == 0xFF) ++k;
        if (k > 0 && k + 1 < bytes.size() && bytes[k + 1] == 0xD8) bytes = bytes.subspan(k);
    }
    const bool jpeg = bytes.size() >= 2 && bytes[0] == 0xFF && bytes[1] == 0xD8;
    if (jpeg) detail::check_jpeg_tables(bytes, name, limits.max_jpeg_scans);
    std::uint32_t pw = 0, ph = 0;
    const bool peeked = detail::peek_dimensions(bytes, pw, ph);
    if (peeked && ph != 0) detail::check_dimensions(pw, ph, name, limits);  // JPEG height 0: set by a DNL marker
#if defined(FASTVLM_USE_LIBJPEG)
    if (jpeg) {
        detail::JpegError err;
        const detail::JpegPixels px = detail::jpeg_decode(bytes.data(), bytes.size(), limits.max_pixels, err);
        std::unique_ptr<unsigned char, detail::CFree> owned(px.rgb);
        FASTVLM_CHECK(!px.over_limit, "image '", name, "': ", px.w, "x", px.h, " pixels is zero or exceeds the limit of ",
                      limits.max_pixels, " pixels (ImageLimits::max_pixels)");
        FASTVLM_CHECK(px.rgb, "image '", name, "': cannot decode (libjpeg: ", err.message, ")");
        FASTVLM_CHECK(!err.truncated, "image '", name, "': the file is truncated (libjpeg: premature end of JPEG data)");
        const std::size_t n = std::size_t(px.w) * std::size_t(px.h) * 3;
        return Image{px.w, px.h, std::vector<std::uint8_t>(px.rgb, px.rgb + n)};
    }
#endif
    std::vector<std::uint8_t> png_copy;
    bytes = detail::checked_png_chunks(bytes, png_copy, name);
    int w = 0, h = 0, comp = 0;
    if (!stbi_info_from_memory(bytes.data(), int(bytes.size()), &w, &h, &comp)) {
        if (peeked)
            fail("image '", name, "': cannot decode its ", pw, "x", ph, " header (stb_image: ", detail::stb_reason(),
                 "; stb decodes at most 2^24 pixels per side and 2^30 bytes)");
        fail("image '", name, "': cannot decode as JPEG/PNG/BMP/TGA/GIF/PNM (stb_image: ", detail::stb_reason(), ")");
    }
    detail::check_dimensions(w, h, name, limits);
    detail::check_bmp_size(bytes, name);

    const bool gray16 = detail::is_png_gray16(bytes);
    detail::StbReader reader{bytes.data(), bytes.size()};
    stbi_io_callbacks cb{&detail::StbReader::read, &detail::StbReader::skip, &detail::StbReader::eof};
    int dw = 0, dh = 0, dcomp = 0;
    std::unique_ptr<void, detail::StbFree> data(
        gray16 ? static_cast<void*>(stbi_load_16_from_callbacks(&cb, &reader, &dw, &dh, &dcomp, 1))
               : static_cast<void*>(stbi_load_from_callbacks(&cb, &reader, &dw, &dh, &dcomp, 3)));
    if (!data)
        fail("image '", name, "': cannot decode", reader.past_end ? " (the file is truncated)" : "", " (stb_image: ",
             detail::stb_reason(), ")");
    FASTVLM_CHECK(!reader.past_end, "image '", name, "': the file is truncated (the decoder needed data past its ",
                  bytes.size(), " bytes)");
    FASTVLM_CHECK(dw == w && dh == h, "image '", name, "': header says ", w, "x", h, " but decoded ", dw, "x", dh);

    const std::size_t n = std::size_t(w) * std::size_t(h);
    Image img{w, h, std::vector<std::uint8_t>(n * 3)};
    if (gray16) {
        const auto* s = static_cast<const std::uint16_t*>(data.get());
        for (std::size_t i = 0; i < n; ++i)
            img.rgb[3 * i] = img.rgb[3 * i + 1] = img.rgb[3 * i + 2] = std::uint8_t(std::min<std::uint16_t>(s[i], 255));
    } else {
        std::memcpy(img.rgb.data(), data.get(), n * 3);
    }
    return img;
}

FASTVLM_INLINE Image load_image(const std::filesystem::path& file, const ImageLimits& limits) {
    const std::string name = file.string();
    const std::string bytes = read_file(file, std::min<std::size_t>(limits.max_file_bytes, INT_MAX), "image '" + name + "'");
    return load_image_from_memory(std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()), name, limits);
}
#endif  // FASTVLM_DEFINE_INLINES

// spec §6.1 expand2square: a max(W,H)² canvas filled with `background`, the image pasted at
// ((S-W)//2, (S-H)//2). A square image is returned unchanged.
inline Image expand_to_square(const Image& img, std::array<std::uint8_t, 3> background = {0, 0, 0},
                              const ImageLimits& limits = {}) {
    detail::check_image(img, "expand_to_square");
    if (img.width == img.height) return img;
    const int side = std::max(img.width, img.height);
    const std::int64_t padded = std::int64_t(side) * side;
    FASTVLM_CHECK(padded <= limits.max_padded_pixels, "image ", img.width, "x", img.height, " pads to a ", side, "x", side,
                  " square (", padded, " pixels) before resizing, more than the limit of ", limits.max_padded_pixels,
                  " pixels (ImageLimits::max_padded_pixels)");
    const std::size_t s = std::size_t(side), w = std::size_t(img.width), h = std::size_t(img.height);
    const std::size_t x0 = (s - w) / 2, y0 = (s - h) / 2;
    Image out{side, side, std::vector<std::uint8_t>(s * s * 3)};
    for (std::size_t i = 0; i < s * s; ++i) std::memcpy(&out.rgb[3 * i], background.data(), 3);
    for (std::size_t y = 0; y < h; ++y) std::memcpy(&out.rgb[((y0 + y) * s + x0) * 3], &img.rgb[y * w * 3], w * 3);
    return out;
}

namespace detail {

// Pillow Resample.c: PRECISION_BITS = 32 - 8 - 2 fractional bits of the fixed-point weights.
inline constexpr int kResampleBits = 22;

// a * b rounded to double. Blocks FMA contraction (-ffp-contract=fast is GCC's default in GNU
// mode): the weights must round exactly as in Pillow's plain-SSE2 build.
inline double mul_rounded(double a, double b) {
    volatile double p = a * b;
    return p;
}

// Pillow bicubic_filter, a = -0.5: ((a+2)|x| - (a+3))x² + 1 for |x| < 1, a(|x|³ - 5x² + 8|x| - 4) for |x| < 2.
inline double bicubic_kernel(double x) {
    if (x < 0.0) x = -x;
    if (x < 1.0) return mul_rounded(mul_rounded(mul_rounded(1.5, x) - 2.5, x), x) + 1.0;
    if (x < 2.0) return mul_rounded(mul_rounded(mul_rounded(x - 5.0, x) + 8.0, x) - 4.0, -0.5);
    return 0.0;
}

// Filter taps of one axis (Pillow precompute_coeffs + normalize_coeffs_8bpc, box = [0, in_size)).
// Output o reads inputs first[o] .. first[o] + count[o] - 1 with weights weight[o * ksize + i].
struct ResampleTaps {
    int ksize = 0;
    std::vector<int> first, count;
    std::vector<std::int32_t> weight;
};

inline ResampleTaps bicubic_taps(int in_size, int out_size) {
    const double scale = double(in_size) / out_size;
    const double filterscale = std::max(scale, 1.0);  // antialias: widen the filter when downscaling
    const double support = 2.0 * filterscale;
    const double inv = 1.0 / filterscale;
    ResampleTaps t;
    t.ksize = int(std::ceil(support)) * 2 + 1;
    t.first.resize(std::size_t(out_size));
    t.count.resize(std::size_t(out_size));
    t.weight.assign(std::size_t(out_size) * std::size_t(t.ksize), 0);
    std::vector<double> w(std::size_t(t.ksize));
    for (int o = 0; o < out_size; ++o) {
        const double center = mul_rounded(o + 0.5, scale);
        const int lo = std::max(int(center - support + 0.5), 0);  // int(): truncation, as in Pillow
        const int hi = std::min(int(center + support + 0.5), in_size);
        const int n = hi - lo;
        double sum = 0.0;
        for (int i = 0; i < n; ++i) {
            w[std::size_t(i)] = bicubic_kernel(mul_rounded(double(i + lo) - center + 0.5, inv));
            sum += w[std::size_t(i)];
        }
        std::int32_t* k = &t.weight[std::size_t(o) * std::size_t(t.ksize)];
        for (int i = 0; i < n; ++i) {
            const double v = sum != 0.0 ? w[std::size_t(i)] / sum : w[std::size_t(i)];
            const double f = mul_rounded(v, double(1 << kResampleBits));
            k[i] = std::int32_t(v < 0.0 ? -0.5 + f : 0.5 + f);  // round half away from zero
        }
        t.first[std::size_t(o)] = lo;
        t.count[std::size_t(o)] = n;
    }
    return t;
}

// Fixed-point sum (with its +0.5 offset) to a clamped byte.
inline std::uint8_t clip8(std::int32_t acc) {
    const std::int32_t v = acc >> kResampleBits;
    return std::uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Horizontal pass over rows [y0, y1) of `in` (in_w wide) into `out` (t.first.size() wide,
// y1 - y0 rows). Rows go in blocks of R, transposed to [x][row][channel] so that the taps of R
// rows are one contiguous run of 3R bytes and the inner loop vectorises.
inline void resample_horizontal(const std::uint8_t* in, int in_w, int y0, int y1, const ResampleTaps& t,
                                std::uint8_t* out) {
    constexpr int R = 16, L = 3 * R;
    const int out_w = int(t.first.size());
    const std::size_t in_row = std::size_t(in_w) * 3, out_row = std::size_t(out_w) * 3;
    std::vector<std::uint8_t> block(std::size_t(in_w) * L + 1);  // +1: 4-byte copies of 3-byte pixels
    alignas(64) std::int32_t acc[L];
    const std::uint8_t* src[R];
    for (int yb = y0; yb < y1; yb += R) {
        const int nr = std::min(R, y1 - yb);
        for (int r = 0; r < R; ++r)  // rows past y1 repeat the last row; their results are dropped
            src[r] = in + std::size_t(yb + std::min(r, nr - 1)) * in_row;
        std::uint8_t* dst = block.data();
        for (int x = 0; x + 1 < in_w; ++x, dst += L)  // 4 bytes from each row (the 4th is overwritten)
            for (int r = 0; r < R; ++r) std::memcpy(dst + 3 * r, src[r] + 3 * std::size_t(x), 4);
        for (int r = 0; r < R; ++r) std::memcpy(dst + 3 * r, src[r] + 3 * std::size_t(in_w - 1), 3);
        for (int o = 0; o < out_w; ++o) {
            const std::int32_t* k = &t.weight[std::size_t(o) * std::size_t(t.ksize)];
            const std::uint8_t* s = block.data() + std::size_t(t.first[std::size_t(o)]) * L;
            for (int j = 0; j < L; ++j) acc[j] = 1 << (kResampleBits - 1);
            for (int i = 0, n = t.count[std::size_t(o)]; i < n; ++i, s += L) {
                const std::int32_t ki = k[i];
                for (int j = 0; j < L; ++j) acc[j] += std::int32_t(s[j]) * ki;
            }
            std::uint8_t* d = out + std::size_t(yb - y0) * out_row + std::size_t(o) * 3;
            for (int r = 0; r < nr; ++r, d += out_row) {
                d[0] = clip8(acc[3 * r]);
                d[1] = clip8(acc[3 * r + 1]);
                d[2] = clip8(acc[3 * r + 2]);
            }
        }
    }
}

// Vertical pass: out row o = sum_i weight[o][i] * in row (first[o] - row0 + i); rows are `width` pixels.
inline void resample_vertical(const std::uint8_t* in, int width, int row0, const ResampleTaps& t, std::uint8_t* out) {
    constexpr std::size_t C = 64;  // columns per chunk: the accumulators stay in registers
    const std::size_t row = std::size_t(width) * 3;
    for (std::size_t o = 0; o < t.first.size(); ++o) {
        const std::int32_t* k = &t.weight[o * std::size_t(t.ksize)];
        const std::uint8_t* s0 = in + std::size_t(t.first[o] - row0) * row;
        const int n = t.count[o];
        std::uint8_t* d = out + o * row;
        std::size_t j0 = 0;
        for (; j0 + C <= row; j0 += C) {
            alignas(64) std::int32_t acc[C];
            for (std::size_t j = 0; j < C; ++j) acc[j] = 1 << (kResampleBits - 1);
            const std::uint8_t* s = s0 + j0;
            for (int i = 0; i < n; ++i, s += row)
                for (std::size_t j = 0; j < C; ++j) acc[j] += std::int32_t(s[j]) * k[i];
            for (std::size_t j = 0; j < C; ++j) d[j0 + j] = clip8(acc[j]);
        }
        for (std::size_t j = j0; j < row; ++j) {
            std::int32_t acc = 1 << (kResampleBits - 1);
            const std::uint8_t* s = s0 + j;
            for (int i = 0; i < n; ++i, s += row) acc += std::int32_t(*s) * k[i];
            d[j] = clip8(acc);
        }
    }
}

}  // namespace detail

// Pillow `Image.resize((out_width, out_height), Image.BICUBIC)` on an RGB image, bit for bit:
// separable a = -0.5 cubic, filter widened by the scale when downscaling, 22-bit fixed-point
// weights, horizontal pass first into 8 bits, then vertical; a pass whose size is unchanged is skipped.
inline Image resize_bicubic(const Image& img, int out_width, int out_height) {
    detail::check_image(img, "resize_bicubic");
    constexpr int kMaxSide = 1 << 24;
    FASTVLM_CHECK(out_width > 0 && out_height > 0 && out_width <= kMaxSide && out_height <= kMaxSide &&
                      std::int64_t(out_width) * out_height <= (std::int64_t(1) << 30),
                  "resize_bicubic: output size ", out_width, "x", out_height, " is out of range (1..2^24 per side, at most 2^30 pixels)");
    if (out_width == img.width && out_height == img.height) return img;

    Image out;
    out.width = out_width;
    out.height = out_height;
    out.rgb.resize(std::size_t(out_width) * std::size_t(out_height) * 3);
    const bool need_h = out_width != img.width, need_v = out_height != img.height;
    if (!need_v) {
        detail::resample_horizontal(img.rgb.data(), img.width, 0, img.height, detail::bicubic_taps(img.width, out_width),
                                    out.rgb.data());
        return out;
    }
    const detail::ResampleTaps tv = detail::bicubic_taps(img.height, out_height);
    if (!need_h) {
        detail::resample_vertical(img.rgb.data(), img.width, 0, tv, out.rgb.data());
        return out;
    }
    // Only rows that the vertical pass reads go through the horizontal pass.
    const int y0 = tv.first.front(), y1 = tv.first.back() + tv.count.back();
    std::vector<std::uint8_t> mid(std::size_t(y1 - y0) * std::size_t(out_width) * 3);
    detail::resample_horizontal(img.rgb.data(), img.width, y0, y1, detail::bicubic_taps(img.width, out_width), mid.data());
    detail::resample_vertical(mid.data(), out_width, y0, tv, out.rgb.data());
    return out;
}

// [3, H, W] float32, value * (1/255) computed in float64 and cast (transformers `rescale`).
inline Tensor<float, 3> to_chw_float(const Image& img) {
    detail::check_image(img, "to_chw_float");
    std::array<float, 256> lut;
    for (int v = 0; v < 256; ++v) lut[std::size_t(v)] = float(double(v) * (1.0 / 255.0));
    const std::size_t plane = std::size_t(img.width) * std::size_t(img.height);
    Tensor<float, 3> t(Shape<3>{3, img.height, img.width});
    float* d = t.data();
    const std::uint8_t* s = img.rgb.data();
    for (std::size_t i = 0; i < plane; ++i) {
        d[i] = lut[s[3 * i]];
        d[plane + i] = lut[s[3 * i + 1]];
        d[2 * plane + i] = lut[s[3 * i + 2]];
    }
    return t;
}

#if FASTVLM_DEFINE_INLINES
FASTVLM_INLINE Tensor<float, 3> preprocess_image(const Image& img, int image_size, const ImageLimits& limits) {
    detail::check_image(img, "preprocess_image");
    FASTVLM_CHECK(image_size > 0, "preprocess_image: image_size must be positive, got ", image_size);
    if (img.width == img.height) return to_chw_float(resize_bicubic(img, image_size, image_size));
    return to_chw_float(resize_bicubic(expand_to_square(img, {0, 0, 0}, limits), image_size, image_size));
}
#endif  // FASTVLM_DEFINE_INLINES

}  // namespace fastvlm::io
