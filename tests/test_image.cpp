// Image decoding and preprocessing (fastvlm/io/image.hpp) against Pillow: committed goldens from
// tests/reference/pil_resize.py, the same script run live when Debian's python3 has Pillow, a scalar
// reference of the resampler, and bad files that must give a fastvlm::Error.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastvlm/io/image.hpp"

using namespace fastvlm;
using namespace fastvlm::io;
namespace fs = std::filesystem;

#ifndef FASTVLM_IMAGE_LIVE_DIR
#define FASTVLM_IMAGE_LIVE_DIR "image_live"
#endif

namespace {

const fs::path kData = fs::path(FASTVLM_TEST_DATA_DIR) / "images";
const fs::path kScratch = fs::path(FASTVLM_BINARY_DIR) / FASTVLM_IMAGE_LIVE_DIR;
#if defined(FASTVLM_USE_LIBJPEG)
constexpr int kJpegTolerance = 0;  // libjpeg here and in Pillow: same decoder, same settings
constexpr const char* kJpegDecoder = "libjpeg";
#else
constexpr const char* kJpegDecoder = "stb_image";
// stb_image's JPEG IDCT and chroma upsampling are not libjpeg-turbo's: a few levels (measured
// 2/255 on the tiny decode files, 3-4/255 on the live 640x480 and 500x700 ones).
constexpr int kJpegTolerance = 6;
#endif

std::vector<std::uint8_t> read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

nlohmann::json read_json(const fs::path& p) {
    std::ifstream in(p);
    return nlohmann::json::parse(in);
}

Image synthetic(int w, int h, unsigned seed) {
    std::mt19937 g(seed);
    Image img{w, h, std::vector<std::uint8_t>(std::size_t(w) * h * 3)};
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
            for (int c = 0; c < 3; ++c) {
                const std::size_t i = (std::size_t(y) * w + x) * 3 + c;
                // edges and saturated blocks (overshoot) mixed with noise
                img.rgb[i] = ((x / 3 + y / 2 + c) % 4 == 0) ? 255 : ((x * 7 + y * 13) % 5 == 0 ? 0 : std::uint8_t(g()));
            }
    return img;
}

struct DiffStats {
    int max_diff = 0;
    std::size_t differing = 0, total = 0;
    void add(const Image& got, const Image& want) {
        ASSERT_EQ(got.width, want.width);
        ASSERT_EQ(got.height, want.height);
        ASSERT_EQ(got.rgb.size(), want.rgb.size());
        for (std::size_t i = 0; i < got.rgb.size(); ++i) {
            const int d = std::abs(int(got.rgb[i]) - int(want.rgb[i]));
            max_diff = std::max(max_diff, d);
            differing += d != 0;
        }
        total += got.rgb.size();
    }
};

// Compares resize_bicubic and preprocess_image with every case of a manifest written by pil_resize.py.
void check_manifest(const fs::path& dir, const char* label) {
    const auto m = read_json(dir / "manifest.json");
    DiffStats resize, pre;
    int cases = 0;
    for (const auto& c : m.at("resize")) {
        const Image in = load_image(dir / c.at("input").get<std::string>());
        for (const auto& o : c.at("outputs")) {
            const Image want = load_image(dir / o.at("file").get<std::string>());
            SCOPED_TRACE(o.at("file").get<std::string>());
            resize.add(resize_bicubic(in, o.at("width"), o.at("height")), want);
            ++cases;
        }
    }
    for (const auto& c : m.at("preprocess")) {
        SCOPED_TRACE(c.at("expected").get<std::string>());
        const Image in = load_image(dir / c.at("input").get<std::string>());
        const int size = c.at("image_size");
        const Tensor<float, 3> got = preprocess_image(in, size);
        const Tensor<float, 3> want = to_chw_float(load_image(dir / c.at("expected").get<std::string>()));
        ASSERT_EQ(got.shape(), (Shape<3>{3, size, size}));
        for (Index i = 0; i < got.size(); ++i) {
            const int d = int(std::lround(std::fabs(got.data()[i] - want.data()[i]) * 255.0));
            pre.max_diff = std::max(pre.max_diff, d);
            pre.differing += d != 0;
        }
        pre.total += std::size_t(got.size());
        ++cases;
    }
    std::printf("[%s] %d cases vs Pillow: resize max |diff| %d/255, %zu of %zu values differ; "
                "preprocess max |diff| %d/255, %zu of %zu differ\n",
                label, cases, resize.max_diff, resize.differing, resize.total, pre.max_diff, pre.differing, pre.total);
    // Bit-exact is the design target (the requirement is 1/255 per value).
    EXPECT_EQ(resize.max_diff, 0);
    EXPECT_EQ(pre.max_diff, 0);

    const auto bits = m.at("rescale_f32_bits").get<std::vector<std::uint32_t>>();
    ASSERT_EQ(bits.size(), 256u);
    Image ramp{256, 1, {}};
    for (int v = 0; v < 256; ++v) ramp.rgb.insert(ramp.rgb.end(), {std::uint8_t(v), std::uint8_t(v), std::uint8_t(v)});
    const Tensor<float, 3> f = to_chw_float(ramp);
    for (int v = 0; v < 256; ++v) {
        std::uint32_t b;
        std::memcpy(&b, &f.data()[v], 4);
        EXPECT_EQ(b, bits[std::size_t(v)]) << "value " << v;  // exact: float32(float64(v) * (1/255))
    }
}

// The resampler written plainly from Pillow's description (one output value at a time).
Image reference_resize(const Image& in, int ow, int oh) {
    if (ow == in.width && oh == in.height) return in;
    auto pass = [](const Image& src, int out_size, bool horizontal) {
        const int in_size = horizontal ? src.width : src.height;
        if (out_size == in_size) return src;
        const auto t = io::detail::bicubic_taps(in_size, out_size);
        Image dst{horizontal ? out_size : src.width, horizontal ? src.height : out_size, {}};
        dst.rgb.resize(std::size_t(dst.width) * dst.height * 3);
        for (int y = 0; y < dst.height; ++y)
            for (int x = 0; x < dst.width; ++x)
                for (int c = 0; c < 3; ++c) {
                    const int o = horizontal ? x : y;
                    std::int32_t acc = 1 << 21;
                    for (int i = 0; i < t.count[o]; ++i) {
                        const int sx = horizontal ? t.first[o] + i : x, sy = horizontal ? y : t.first[o] + i;
                        acc += src.rgb[(std::size_t(sy) * src.width + sx) * 3 + c] * t.weight[std::size_t(o) * t.ksize + i];
                    }
                    dst.rgb[(std::size_t(y) * dst.width + x) * 3 + c] = io::detail::clip8(acc);
                }
        return dst;
    };
    return pass(pass(in, ow, true), oh, false);
}

bool python_has_pil() {
    const std::string cmd = std::string(FASTVLM_PYTHON) + " -c \"import PIL, numpy\" > /dev/null 2>&1";
    return std::string(FASTVLM_PYTHON).size() > 0 && std::system(cmd.c_str()) == 0;
}

// Runs `fn` and returns the fastvlm::Error message ("" when nothing was thrown).
template <class F>
std::string error_of(F&& fn) {
    try {
        fn();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

#define EXPECT_ERROR_WITH(expr, ...)                                                     \
    do {                                                                                 \
        const std::string msg_ = error_of([&] { (void)(expr); });                        \
        EXPECT_FALSE(msg_.empty()) << #expr " did not throw fastvlm::Error";            \
        for (const char* part_ : {__VA_ARGS__})                                          \
            EXPECT_NE(msg_.find(part_), std::string::npos) << "'" << part_ << "' not in: " << msg_; \
    } while (0)

std::vector<std::uint8_t> be32(std::uint32_t v) {
    return {std::uint8_t(v >> 24), std::uint8_t(v >> 16), std::uint8_t(v >> 8), std::uint8_t(v)};
}

}  // namespace

// ---- resize / preprocess vs Pillow ------------------------------------------------------------

TEST(ImageResize, MatchesCommittedPillowGoldens) { check_manifest(kData, "golden"); }

TEST(ImageResize, MatchesPillowLive) {
    if (!python_has_pil()) GTEST_SKIP() << FASTVLM_PYTHON << " has no Pillow/numpy";
    const fs::path dir = kScratch;
    const std::string cmd = std::string(FASTVLM_PYTHON) + " " + FASTVLM_SOURCE_DIR +
                            "/tests/reference/pil_resize.py --live " + dir.string();
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    check_manifest(dir, "live");
    const auto m = read_json(dir / "manifest.json");

    // Random sizes: ratios near 1, extreme up- and downscaling, 1-pixel sides.
    const auto& sweep = m.at("sweep");
    const auto blob = read_bytes(dir / sweep.at("file").get<std::string>());
    DiffStats sw;
    for (const auto& c : sweep.at("cases")) {
        const int iw = c.at("in_w"), ih = c.at("in_h"), ow = c.at("out_w"), oh = c.at("out_h");
        const std::size_t in_off = c.at("input_offset"), out_off = c.at("output_offset");
        ASSERT_LE(out_off + std::size_t(ow) * oh * 3, blob.size());
        const auto at = blob.begin();
        const Image in{iw, ih, {at + std::ptrdiff_t(in_off), at + std::ptrdiff_t(in_off + std::size_t(iw) * ih * 3)}};
        const Image want{ow, oh, {at + std::ptrdiff_t(out_off), at + std::ptrdiff_t(out_off + std::size_t(ow) * oh * 3)}};
        SCOPED_TRACE(testing::Message() << iw << "x" << ih << " -> " << ow << "x" << oh);
        sw.add(resize_bicubic(in, ow, oh), want);
    }
    std::printf("[live] sweep: %zu random sizes vs Pillow: max |diff| %d/255, %zu of %zu values differ\n",
                sweep.at("cases").size(), sw.max_diff, sw.differing, sw.total);
    EXPECT_EQ(sw.max_diff, 0);

    // JPEG: the decoder decides (kJpegTolerance); the resize after it is exact.
    for (const auto& c : m.at("jpeg")) {
        const Image ours = load_image(dir / c.at("file").get<std::string>());
        DiffStats dec, pre;
        dec.add(ours, load_image(dir / c.at("decoded").get<std::string>()));
        const int size = c.at("image_size");
        pre.add(resize_bicubic(expand_to_square(ours), size, size), load_image(dir / c.at("preprocessed").get<std::string>()));
        std::printf("[live] %s: %s vs Pillow decode max |diff| %d/255 (%.2f%% of values differ), "
                    "after preprocessing max %d/255 (%.2f%%)\n",
                    c.at("file").get<std::string>().c_str(), kJpegDecoder, dec.max_diff, 100.0 * double(dec.differing) / double(dec.total),
                    pre.max_diff, 100.0 * double(pre.differing) / double(pre.total));
        EXPECT_LE(dec.max_diff, kJpegTolerance);
        EXPECT_LE(pre.max_diff, kJpegTolerance);
    }
}

TEST(ImageResize, BlockedPassesEqualScalarReference) {
    std::mt19937 g(7);
    const int sizes[] = {1, 2, 3, 5, 15, 16, 17, 31, 33, 64, 100};
    int n = 0;
    for (int iw : sizes)
        for (int ih : {1, 4, 17, 40}) {
            const Image in = synthetic(iw, ih, g());
            for (int k = 0; k < 3; ++k) {
                const int ow = 1 + int(g() % 70), oh = 1 + int(g() % 70);
                SCOPED_TRACE(testing::Message() << iw << "x" << ih << " -> " << ow << "x" << oh);
                const Image got = resize_bicubic(in, ow, oh), want = reference_resize(in, ow, oh);
                ASSERT_EQ(got.rgb, want.rgb);
                ++n;
            }
        }
    EXPECT_EQ(n, 132);
}

TEST(ImageResize, SizesAndArguments) {
    const Image in = synthetic(13, 7, 1);
    EXPECT_EQ(resize_bicubic(in, 13, 7).rgb, in.rgb);  // Pillow returns a copy
    const Image up = resize_bicubic(in, 40, 7);         // horizontal pass only
    EXPECT_EQ(up.width, 40);
    EXPECT_EQ(up.height, 7);
    // A 1x1 image stays its colour at every size (normalised taps).
    const Image px{1, 1, {10, 200, 255}};
    const Image big = resize_bicubic(px, 33, 17);
    for (std::size_t i = 0; i < big.rgb.size(); ++i) ASSERT_EQ(big.rgb[i], px.rgb[i % 3]);
    EXPECT_ERROR_WITH(resize_bicubic(in, 0, 5), "resize_bicubic", "0x5");
    EXPECT_ERROR_WITH(resize_bicubic(in, -3, 5), "resize_bicubic");
    EXPECT_ERROR_WITH(resize_bicubic(in, 1 << 25, 1), "out of range");
    EXPECT_ERROR_WITH(resize_bicubic(Image{}, 4, 4), "resize_bicubic", "0x0");
    EXPECT_ERROR_WITH(resize_bicubic(Image{2, 2, {1, 2, 3}}, 4, 4), "needs 12 RGB bytes, has 3");
    EXPECT_ERROR_WITH(preprocess_image(in, 0), "image_size");
    EXPECT_ERROR_WITH(to_chw_float(Image{1, 1, {}}), "to_chw_float");
}

TEST(ImageResize, TimingLargeDownscale) {
    const Image in = synthetic(4000, 3000, 3);
#if defined(__SANITIZE_ADDRESS__)
    constexpr int reps = 1;  // timing means nothing under ASan
#else
    constexpr int reps = 3;
#endif
    double best = 1e9;
    Image out;
    for (int rep = 0; rep < reps; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        out = resize_bicubic(in, 1024, 1024);
        best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    EXPECT_EQ(out.width, 1024);
    std::printf("resize_bicubic 4000x3000 -> 1024x1024: %.1f ms (best of %d, 1 thread)\n", best, reps);
    const Image photo = synthetic(1536, 1024, 5);
    const auto t0 = std::chrono::steady_clock::now();
    const auto px = preprocess_image(photo, 1024);
    std::printf("preprocess_image 1536x1024 -> [3,1024,1024]: %.1f ms\n",
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    EXPECT_EQ(px.dim(0), 3);
}

// ---- expand_to_square ---------------------------------------------------------------------------

TEST(ImageExpandToSquare, OffsetsFollowExpand2square) {
    struct Case {
        int w, h, x0, y0;
    };
    for (const Case c : {Case{7, 4, 0, 1}, Case{8, 3, 0, 2}, Case{4, 7, 1, 0}, Case{3, 8, 2, 0}, Case{1, 2, 0, 0},
                         Case{5, 5, 0, 0}, Case{10, 1, 0, 4}}) {
        SCOPED_TRACE(testing::Message() << c.w << "x" << c.h);
        const Image in = synthetic(c.w, c.h, unsigned(c.w * 31 + c.h));
        const std::array<std::uint8_t, 3> bg{1, 2, 3};
        const Image sq = expand_to_square(in, bg);
        const int s = std::max(c.w, c.h);
        ASSERT_EQ(sq.width, s);
        ASSERT_EQ(sq.height, s);
        for (int y = 0; y < s; ++y)
            for (int x = 0; x < s; ++x)
                for (int ch = 0; ch < 3; ++ch) {
                    const bool inside = x >= c.x0 && x < c.x0 + c.w && y >= c.y0 && y < c.y0 + c.h;
                    const std::uint8_t want =
                        inside ? in.rgb[(std::size_t(y - c.y0) * c.w + (x - c.x0)) * 3 + ch] : bg[std::size_t(ch)];
                    ASSERT_EQ(sq.rgb[(std::size_t(y) * s + x) * 3 + ch], want) << x << "," << y;
                }
    }
    const Image in = synthetic(6, 2, 9);
    const Image black = expand_to_square(in);
    EXPECT_EQ(black.rgb[0], 0);  // default background (0, 0, 0), spec §6.1
    EXPECT_ERROR_WITH(expand_to_square(Image{}), "expand_to_square");
}

// ---- decoding -----------------------------------------------------------------------------------

TEST(ImageDecode, FormatsMatchPilConvertRGB) {
    const auto m = read_json(kData / "manifest.json");
    int jpeg_max = 0, n = 0;
    for (const auto& c : m.at("decode")) {
        const std::string file = c.at("file");
        SCOPED_TRACE(file);
        const Image img = load_image(kData / file);
        ASSERT_EQ(img.width, c.at("width").get<int>());
        ASSERT_EQ(img.height, c.at("height").get<int>());
        const std::string hex = c.at("rgb_hex");
        ASSERT_EQ(hex.size(), img.rgb.size() * 2);
        int max_diff = 0;
        for (std::size_t i = 0; i < img.rgb.size(); ++i) {
            const int want = std::stoi(hex.substr(2 * i, 2), nullptr, 16);
            max_diff = std::max(max_diff, std::abs(int(img.rgb[i]) - want));
        }
        if (c.at("exact")) {
            EXPECT_EQ(max_diff, 0);
        } else {
            EXPECT_LE(max_diff, kJpegTolerance);
            jpeg_max = std::max(jpeg_max, max_diff);
        }
        ++n;
    }
    std::printf("decoded %d files; JPEG (%s) max |diff| vs Pillow = %d/255\n", n, kJpegDecoder, jpeg_max);
    EXPECT_EQ(n, 28);
}

TEST(ImageDecode, EmptyMissingAndGarbage) {
    EXPECT_ERROR_WITH(load_image_from_memory({}, "empty.png"), "empty.png", "empty");
    const fs::path tmp = kScratch / "tmp";
    fs::create_directories(tmp);
    { std::ofstream(tmp / "empty.jpg"); }
    EXPECT_ERROR_WITH(load_image(tmp / "empty.jpg"), "empty.jpg", "empty");
    EXPECT_ERROR_WITH(load_image(tmp / "does_not_exist.png"), "does_not_exist.png", "no such file");
    EXPECT_ERROR_WITH(load_image(tmp), "tmp", "is a directory");

    std::mt19937 g(42);
    for (std::size_t len : {1u, 2u, 7u, 100u, 4096u}) {
        std::vector<std::uint8_t> junk(len);
        for (auto& b : junk) b = std::uint8_t(g());
        EXPECT_ERROR_WITH(load_image_from_memory(junk, "random.bin"), "random.bin", "cannot decode");
    }
    const std::string text = "this is not an image";
    EXPECT_ERROR_WITH(load_image_from_memory({reinterpret_cast<const std::uint8_t*>(text.data()), text.size()}, "a.txt"),
                      "a.txt", "cannot decode");
}

TEST(ImageDecode, TruncatedFilesAreErrors) {
    int checked = 0;
    for (const char* name : {"rgb.jpg", "progressive.jpg", "gray.jpg", "rgb.png", "palette.png", "rgb.bmp",
                             "palette.bmp", "rgb.tga", "rgb_rle.tga", "palette.gif", "rgb.ppm", "gray16.png"}) {
        const auto full = read_bytes(kData / "formats" / name);
        ASSERT_FALSE(full.empty()) << name;
        EXPECT_NO_THROW(load_image_from_memory(full, name));
        // Cuts into the pixel data, down to the first bytes. Pillow's TGA files end in a 26-byte
        // footer and GIFs in a 1-byte trailer that no decoder needs.
        const std::string n = name;
        const std::size_t tail = n.ends_with(".tga") ? 26 : n.ends_with(".gif") ? 1 : 0;
        for (std::size_t keep = full.size() - 1 - tail; keep >= 1; keep -= (keep > 64 ? 7 : 1)) {
            std::vector<std::uint8_t> cut(full.begin(), full.begin() + std::ptrdiff_t(keep));
            SCOPED_TRACE(testing::Message() << name << " cut to " << keep << " of " << full.size());
            EXPECT_ERROR_WITH(load_image_from_memory(cut, name), name);
            ++checked;
            if (keep < 8) break;
        }
    }
    EXPECT_GT(checked, 100);
}

TEST(ImageDecode, TruncationInsideTheLastRowOfALargeTga) {
    // Uncompressed 40x30 BGR TGA (> stb's 128-byte read buffer): stb reads rows straight into the
    // image, so a short read there must still be caught (stb 2.27 leaves the bytes uninitialised).
    const int w = 40, h = 30;
    std::vector<std::uint8_t> tga = {0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, w, 0, h, 0, 24, 0};
    for (int i = 0; i < w * h * 3; ++i) tga.push_back(std::uint8_t(i * 7));
    const Image full = load_image_from_memory(tga, "big.tga");
    EXPECT_EQ(full.width, w);
    for (std::size_t cut : {1u, 2u, 50u, 119u, 121u, 500u}) {
        const std::vector<std::uint8_t> part(tga.begin(), tga.end() - std::ptrdiff_t(cut));
        EXPECT_ERROR_WITH(load_image_from_memory(part, "big.tga"), "big.tga", "truncated");
    }
}

TEST(ImageDecode, OversizedJpegHuffmanTableIsRefused) {
    // A DHT table whose 16 code counts sum past 256: stb_image 2.27 would write past its tables
    // (nothings/stb#1289); the check in front of stb refuses it.
    auto jpg = read_bytes(kData / "formats" / "rgb.jpg");
    std::size_t dht = 0;
    for (std::size_t i = 2; i + 1 < jpg.size(); ++i)
        if (jpg[i] == 0xFF && jpg[i + 1] == 0xC4) {
            dht = i;
            break;
        }
    ASSERT_GT(dht, 0u);
    for (std::size_t k = 0; k < 16; ++k) jpg[dht + 5 + k] = 0x20;  // 16 x 32 = 512 codes
    EXPECT_ERROR_WITH(load_image_from_memory(jpg, "bad_dht.jpg"), "bad_dht.jpg", "Huffman table with 512 codes");
}

// Fill bytes before SOI (FF FF … D8): stb_image accepts them, libjpeg does not; both decoders get a
// plain SOI, so the file decodes as without them and the Huffman-table guard still applies.
TEST(ImageDecode, JpegFillBytesBeforeSoi) {
    const auto jpg = read_bytes(kData / "formats" / "rgb.jpg");
    std::vector<std::uint8_t> filled = {0xFF, 0xFF, 0xFF};
    filled.insert(filled.end(), jpg.begin() + 1, jpg.end());  // FF FF FF + D8 …
    const Image ref = load_image_from_memory(jpg, "rgb.jpg");
    const Image got = load_image_from_memory(filled, "filled.jpg");
    EXPECT_EQ(got.width, ref.width);
    EXPECT_EQ(got.rgb, ref.rgb);
    std::size_t dht = 0;
    for (std::size_t i = 2; i + 1 < filled.size(); ++i)
        if (filled[i] == 0xFF && filled[i + 1] == 0xC4) {
            dht = i;
            break;
        }
    ASSERT_GT(dht, 0u);
    for (std::size_t k = 0; k < 16; ++k) filled[dht + 5 + k] = 0x20;
    EXPECT_ERROR_WITH(load_image_from_memory(filled, "filled_dht.jpg"), "filled_dht.jpg", "Huffman table with 512 codes");
    // One or two bytes that look like the start of a JPEG: a clear error, nothing read past them.
    for (std::vector<std::uint8_t> tiny : {std::vector<std::uint8_t>{0xFF}, {0xFF, 0xD8}, {0xFF, 0xFF}, {0xD8}}) {
        EXPECT_ERROR_WITH(load_image_from_memory(tiny, "tiny.jpg"), "tiny.jpg", "decode");
    }
}

// Two stb_image weaknesses found by fuzz_image: it copies a zero-length IDAT that comes before the image
// data into a null buffer (UB) — empty IDAT chunks carry nothing, the image decodes as if they were
// absent; and it allocates what a chunk length declares before reading — refused, naming the chunk.
TEST(ImageDecode, EmptyPngIdatChunksAndLyingLengths) {
    for (const char* name : {"rgb.png", "palette.png", "palette_trns.png", "gray16.png"}) {
        SCOPED_TRACE(name);
        const auto png = read_bytes(kData / "formats" / name);
        std::vector<std::size_t> idat;  // offsets of the IDAT chunks
        for (std::size_t i = 8; i + 12 <= png.size();) {
            const std::size_t len = std::size_t(png[i]) << 24 | std::size_t(png[i + 1]) << 16 | std::size_t(png[i + 2]) << 8 | png[i + 3];
            if (std::memcmp(png.data() + i + 4, "IDAT", 4) == 0) idat.push_back(i);
            i += 12 + len;
        }
        ASSERT_FALSE(idat.empty());
        const std::uint8_t empty[12] = {0, 0, 0, 0, 'I', 'D', 'A', 'T', 0x35, 0xAF, 0x06, 0x1E};
        std::vector<std::uint8_t> with(png.begin(), png.begin() + std::ptrdiff_t(idat[0]));
        with.insert(with.end(), empty, empty + 12);  // before the data
        with.insert(with.end(), png.begin() + std::ptrdiff_t(idat[0]), png.end());
        with.insert(with.end() - 12, empty, empty + 12);  // after it, before IEND
        const Image ref = load_image_from_memory(png, name);
        const Image got = load_image_from_memory(with, "with_empty_idat.png");
        EXPECT_EQ(got.width, ref.width);
        EXPECT_EQ(got.height, ref.height);
        EXPECT_EQ(got.rgb, ref.rgb);
        // Only empty IDAT chunks, no data: a clear error.
        std::vector<std::uint8_t> no_data(png.begin(), png.begin() + std::ptrdiff_t(idat[0]));
        no_data.insert(no_data.end(), empty, empty + 12);
        no_data.insert(no_data.end(), png.end() - 12, png.end());
        EXPECT_ERROR_WITH(load_image_from_memory(no_data, "no_data.png"), "no_data.png", "decode");
    }
    // A chunk that declares more bytes than the file has (stb grew its buffer to that size first).
    {
        const auto png = read_bytes(kData / "formats" / "rgb.png");
        std::vector<std::uint8_t> lying(png);
        const std::size_t at = 8 + 12 + 13;  // the chunk after IHDR
        for (std::uint32_t len : {0x40000F59u, 0xFFFFFFFFu, std::uint32_t(png.size())}) {
            for (int k = 0; k < 4; ++k) lying[at + k] = std::uint8_t(len >> (24 - 8 * k));
            const std::string declared = "declares " + std::to_string(len) + " bytes";
            EXPECT_ERROR_WITH(load_image_from_memory(lying, "lying.png"), "lying.png", "truncated or corrupt",
                              declared.c_str());
        }
    }
    // The fuzzer's input: a palette PNG whose only IDAT is empty, followed by garbage.
    const std::vector<std::uint8_t> found = {
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d, 0x49, 0x48, 0x44, 0x52, 0, 0, 0, 7, 0, 0, 0, 5,
        4, 3, 0, 0, 0, 0x7b, 0xb4, 0xeb, 0xeb, 0, 0, 0, 0x12, 0x50, 0x4c, 0x54, 0x45, 0xff, 0xfc, 0xdf, 0xb5, 0xcf,
        0xcf, 0x58, 0x60, 0x6c, 0x3b, 0x2e, 0x26, 0x1e, 0x19, 0x5b, 0x05, 0x04, 0x1c, 0, 0, 0, 0, 0, 0, 0, 0, 0x49,
        0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x08, 0x0d, 0x36, 0x60, 0x60, 0x08, 0x75, 0x06, 0x12, 0x21, 0xc6, 0x8a,
        0x0c, 0x0c, 0x2e, 0x4e, 0x40, 0x22, 0x54, 0x50, 0x48, 0x01, 0, 0x31, 0xbc, 0x03, 0x88, 0x69, 0x21, 0xdb,
        0xf7, 0, 0, 0, 0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82};
    EXPECT_ERROR_WITH(load_image_from_memory(found, "fuzz_empty_idat.png"), "fuzz_empty_idat.png");
}

// A thin image pads to a huge square before resizing: refused before the canvas is allocated.
TEST(ImagePreprocess, PaddedCanvasIsBounded) {
    const Image thin{1, 40000, std::vector<std::uint8_t>(40000 * 3, 128)};
    EXPECT_ERROR_WITH(preprocess_image(thin, 64), "1x40000", "max_padded_pixels");
    const Image wide{30000, 2, std::vector<std::uint8_t>(60000 * 3, 9)};
    EXPECT_ERROR_WITH(expand_to_square(wide), "30000x30000", "max_padded_pixels");
    ImageLimits lim;
    lim.max_padded_pixels = 40000ll * 40000;
    const Image small{2, 300, std::vector<std::uint8_t>(600 * 3, 7)};
    EXPECT_EQ(preprocess_image(small, 64, lim).dim(1), 64);
}

TEST(ImageDecode, HugeAndZeroDimensionsAreRefusedBeforeDecoding) {
    // PNG header claiming 100000x100000 RGB (no pixel data follows).
    std::vector<std::uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'};
    auto append = [](std::vector<std::uint8_t>& v, const std::vector<std::uint8_t>& x) { v.insert(v.end(), x.begin(), x.end()); };
    append(png, be32(100000));
    append(png, be32(100000));
    append(png, {8, 2, 0, 0, 0, 0, 0, 0, 0});
    EXPECT_ERROR_WITH(load_image_from_memory(png, "huge.png"), "huge.png", "100000x100000", "exceeds the limit");
    // Above stb's own caps (2^30 bytes) a raised limit still gets a clear error.
    EXPECT_ERROR_WITH(load_image_from_memory(png, "huge.png", ImageLimits{std::int64_t(1) << 40}), "huge.png",
                      "100000x100000", "cannot decode");
    // JPEG SOF0 claiming 65535x65535, PNM claiming 100000x100000.
    const std::vector<std::uint8_t> jpg = {0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0, 0xFF, 0xC0, 0, 11, 8, 0xFF, 0xFF,
                                           0xFF, 0xFF, 1, 1, 0x11, 0, 0xFF, 0xD9};
    EXPECT_ERROR_WITH(load_image_from_memory(jpg, "huge.jpg"), "huge.jpg", "65535x65535", "exceeds the limit");
    const std::string ppm = "P6\n100000 100000\n255\n\x01\x02\x03";
    EXPECT_ERROR_WITH(load_image_from_memory({reinterpret_cast<const std::uint8_t*>(ppm.data()), ppm.size()}, "huge.ppm"),
                      "huge.ppm", "100000x100000", "exceeds the limit");

    // BMP (BITMAPINFOHEADER, 24 bpp) claiming 100000x100000: passes stb's header check, so our limit speaks.
    auto le32 = [](std::uint32_t v) {
        return std::vector<std::uint8_t>{std::uint8_t(v), std::uint8_t(v >> 8), std::uint8_t(v >> 16), std::uint8_t(v >> 24)};
    };
    auto bmp = [&](std::uint32_t w, std::uint32_t h) {
        std::vector<std::uint8_t> b = {'B', 'M'};
        append(b, le32(54 + 16));
        append(b, le32(0));
        append(b, le32(54));
        append(b, le32(40));
        append(b, le32(w));
        append(b, le32(h));
        append(b, {1, 0, 24, 0});
        append(b, le32(0));
        append(b, le32(16));
        append(b, le32(2835));
        append(b, le32(2835));
        append(b, le32(0));
        append(b, le32(0));
        b.resize(b.size() + 16, 0x7f);
        return b;
    };
    EXPECT_ERROR_WITH(load_image_from_memory(bmp(100000, 100000), "huge.bmp"), "huge.bmp", "100000x100000",
                      "10000000000 pixels", "ImageLimits::max_pixels");
    EXPECT_ERROR_WITH(load_image_from_memory(bmp(0, 4), "zero.bmp"), "zero.bmp");
    EXPECT_ERROR_WITH(load_image_from_memory(bmp(4, 0), "zero.bmp"), "zero.bmp");
    // A valid 2x2 BMP decodes; a limit below its size refuses it.
    const auto small = bmp(2, 2);
    EXPECT_NO_THROW(load_image_from_memory(small, "small.bmp"));
    EXPECT_ERROR_WITH(load_image_from_memory(small, "small.bmp", ImageLimits{3}), "small.bmp", "2x2 = 4 pixels",
                      "limit of 3");
    // PNG with a zero width.
    std::vector<std::uint8_t> zero_png(png.begin(), png.begin() + 16);
    append(zero_png, be32(0));
    append(zero_png, be32(5));
    append(zero_png, {8, 2, 0, 0, 0, 0, 0, 0, 0});
    EXPECT_ERROR_WITH(load_image_from_memory(zero_png, "zero.png"), "zero.png");
    // The limit applies to files on disk too.
    EXPECT_ERROR_WITH(load_image(kData / "a61x47.png", ImageLimits{61 * 47 - 1}), "a61x47.png", "61x47");
    EXPECT_NO_THROW(load_image(kData / "a61x47.png", ImageLimits{61 * 47}));
}

TEST(ImageDecode, CorruptedBytesNeverCrash) {
    // Random byte flips in valid files: each must decode or throw fastvlm::Error (run under ASan/UBSan).
    std::mt19937 g(1234);
    int errors = 0, decoded = 0;
    for (const char* name : {"rgb.jpg", "progressive.jpg", "rgb.png", "palette_trns.png", "gray16.png", "rgb.bmp",
                             "palette.bmp", "rgb_rle.tga", "rgba.tga", "palette.gif", "rgb_maxval1000.ppm"}) {
        const auto full = read_bytes(kData / "formats" / name);
        for (int it = 0; it < 150; ++it) {
            auto bytes = full;
            const int flips = 1 + int(g() % 4);
            for (int f = 0; f < flips; ++f) bytes[g() % bytes.size()] = std::uint8_t(g());
            try {
                const Image img = load_image_from_memory(bytes, name);
                ASSERT_EQ(img.rgb.size(), std::size_t(img.width) * img.height * 3);
                ++decoded;
            } catch (const Error&) {
                ++errors;
            }
        }
    }
    std::printf("corrupted files: %d decoded, %d refused with fastvlm::Error\n", decoded, errors);
    EXPECT_EQ(decoded + errors, 11 * 150);
}
