// io/frames.hpp (splitting concatenated JPEG/PNG streams) and stream.hpp (FrameStream: latest frame
// wins, every-frame mode, broken frames reported, unchanged frames hit the image-feature cache).
#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <random>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb_image_write.h>

#include "fastvlm/fastvlm.hpp"
#include "fastvlm/io/frames.hpp"
#include "fastvlm/stream.hpp"
#include "model_support.hpp"
#include "support.hpp"

using namespace fastvlm;
using namespace test_support;

namespace {

void append(void* ctx, void* data, int n) { static_cast<std::string*>(ctx)->append(static_cast<const char*>(data), std::size_t(n)); }

std::string png(const io::Image& im) {
    std::string s;
    stbi_write_png_to_func(append, &s, im.width, im.height, 3, im.rgb.data(), im.width * 3);
    return s;
}
std::string jpeg(const io::Image& im, int quality = 90) {
    std::string s;
    stbi_write_jpg_to_func(append, &s, im.width, im.height, 3, im.rgb.data(), quality);
    return s;
}
// A JPEG with an APP1 segment holding a whole JPEG thumbnail (its own FF D8 … FF D9) after SOI.
std::string jpeg_with_thumbnail(const io::Image& im) {
    const std::string main = jpeg(im), thumb = jpeg(test_image(8, 8, 9));
    std::string app1 = "Exif";
    app1.append(2, '\0');
    app1 += thumb;
    const std::size_t len = app1.size() + 2;
    std::string seg = "\xFF\xE1";
    seg += char(len >> 8);
    seg += char(len & 0xFF);
    return main.substr(0, 2) + seg + app1 + main.substr(2);
}

std::vector<io::Frame> split_all(const std::string& s, std::size_t piece, std::size_t max = std::size_t(64) << 20) {
    io::FrameSplitter sp(max);
    std::vector<io::Frame> out;
    for (std::size_t i = 0; i < s.size(); i += piece) {
        auto f = sp.push(std::string_view(s).substr(i, piece));
        out.insert(out.end(), f.begin(), f.end());
    }
    auto f = sp.finish();
    out.insert(out.end(), f.begin(), f.end());
    return out;
}

io::Image decode(const std::string& b) {
    return io::load_image_from_memory(std::span(reinterpret_cast<const std::uint8_t*>(b.data()), b.size()), "frame");
}

}  // namespace

TEST(FrameSplitter, SplitsMixedStreamsInAnyPieceSize) {
    const std::vector<std::string> imgs = {png(test_image(20, 14, 1)), jpeg(test_image(33, 21, 2)), jpeg_with_thumbnail(test_image(16, 16, 3)),
                                           png(test_image(5, 40, 4)), jpeg(test_image(64, 48, 5), 30)};
    std::string all;
    for (const auto& s : imgs) all += s;
    for (std::size_t piece : {std::size_t(1), std::size_t(7), std::size_t(4096), all.size()}) {
        const auto fr = split_all(all, piece);
        ASSERT_EQ(fr.size(), imgs.size()) << piece;
        for (std::size_t i = 0; i < imgs.size(); ++i) {
            EXPECT_TRUE(fr[i].ok()) << fr[i].error;
            EXPECT_EQ(fr[i].index, std::int64_t(i));
            EXPECT_EQ(fr[i].bytes, imgs[i]) << "frame " << i << " piece " << piece;
        }
    }
    const auto im = test_image(20, 14, 1);
    EXPECT_EQ(decode(split_all(all, 5)[0].bytes).rgb, im.rgb);  // PNG: lossless round trip
    EXPECT_EQ(decode(split_all(all, 5)[2].bytes).width, 16);     // the thumbnail did not end the frame
}

TEST(FrameSplitter, GarbageBrokenTruncatedAndOversizedFramesAreReported) {
    const std::string a = png(test_image(10, 10, 1)), b = jpeg(test_image(24, 24, 2)), c = png(test_image(12, 9, 3));
    {  // garbage between frames: reported (index −1), frames keep their numbers
        const auto fr = split_all(a + "hello, not an image" + b, 3);
        ASSERT_EQ(fr.size(), 3u);
        EXPECT_TRUE(fr[0].ok());
        EXPECT_EQ(fr[1].index, -1);
        EXPECT_NE(fr[1].error.find("19 bytes"), std::string::npos) << fr[1].error;
        EXPECT_EQ(fr[2].index, 1);
        EXPECT_EQ(fr[2].bytes, b);
    }
    {  // a JPEG whose segment structure breaks: that frame fails, the next one is found
        std::string bad = b;
        ASSERT_EQ(std::uint8_t(bad[3]), 0xE0);  // stb writes APP0 (JFIF, 16 bytes) first
        bad[20] = 0x00;                          // where the next marker must be
        const auto fr = split_all(a + bad + c, 64);
        ASSERT_EQ(fr.size(), 3u);
        EXPECT_EQ(fr[1].index, 1);
        EXPECT_NE(fr[1].error.find("JPEG image broken"), std::string::npos) << fr[1].error;
        EXPECT_EQ(fr[2].index, 2);
        EXPECT_EQ(fr[2].bytes, c);
    }
    {  // a PNG with a non-letter chunk type
        std::string bad = c;
        bad[12] = '!';
        const auto fr = split_all(a + bad + b, 5);
        ASSERT_EQ(fr.size(), 3u);
        EXPECT_NE(fr[1].error.find("PNG image broken"), std::string::npos) << fr[1].error;
        EXPECT_EQ(fr[2].bytes, b);
    }
    {  // the input ends inside a frame
        const auto fr = split_all(a + b.substr(0, b.size() - 10), 11);
        ASSERT_EQ(fr.size(), 2u);
        EXPECT_EQ(fr[1].index, 1);
        EXPECT_NE(fr[1].error.find("truncated"), std::string::npos) << fr[1].error;
    }
    {  // a JPEG that never reaches EOI before the next image starts
        const std::string cut = b.substr(0, b.size() / 2);
        const auto fr = split_all(cut + b, 100);
        ASSERT_GE(fr.size(), 2u);
        EXPECT_FALSE(fr[0].ok());
        EXPECT_EQ(fr.back().bytes, b);
    }
    {  // over the size limit
        const std::size_t lim = std::max(a.size(), c.size()) + 1;
        const std::string big = jpeg(test_image(64, 64, 7));
        ASSERT_GT(big.size(), lim);
        const auto fr = split_all(a + big + c, 9, lim);
        ASSERT_EQ(fr.size(), 3u);
        EXPECT_TRUE(fr[0].ok());
        EXPECT_NE(fr[1].error.find("limit"), std::string::npos) << fr[1].error;
        EXPECT_EQ(fr[2].bytes, c);
    }
}

// After finish() the splitter takes a new stream; a truncated frame whose length field swallowed the
// frames after it does not take them along.
TEST(FrameSplitter, FinishResetsAndRecoversSwallowedFrames) {
    const std::string a = png(test_image(10, 10, 1)), b = jpeg(test_image(24, 24, 2));
    io::FrameSplitter sp;
    auto f1 = sp.push(a + a.substr(0, 20));
    auto f2 = sp.finish();
    ASSERT_EQ(f1.size(), 1u);
    ASSERT_EQ(f2.size(), 1u);
    EXPECT_NE(f2[0].error.find("truncated"), std::string::npos);
    auto f3 = sp.push(b);
    auto f4 = sp.finish();
    ASSERT_EQ(f3.size(), 1u);
    EXPECT_EQ(f3[0].bytes, b);
    EXPECT_TRUE(f4.empty());
    // A PNG chunk that claims 1 MB: the frames after it are found when the input ends.
    std::string lying = a.substr(0, 33) + std::string("\x00\x10\x00\x00IDAT", 8);
    const auto fr = split_all(lying + b + a, 7);
    ASSERT_EQ(fr.size(), 3u);
    EXPECT_NE(fr[0].error.find("truncated"), std::string::npos);
    EXPECT_EQ(fr[1].bytes, b);
    EXPECT_EQ(fr[2].bytes, a);
}

TEST(FrameSplitter, RandomBytesNeverCrashAndStayBounded) {
    std::mt19937 rng(5);
    const std::string good = png(test_image(8, 8, 1)) + jpeg(test_image(9, 9, 2));
    for (int round = 0; round < 200; ++round) {
        std::string s = good;
        const int edits = 1 + int(rng() % 20);
        for (int e = 0; e < edits; ++e) s[rng() % s.size()] = char(rng());
        if (round % 3 == 0) s = s.substr(0, rng() % s.size());
        if (round % 5 == 0) s += std::string("\xFF\xD8\xFF", 3) + std::string(rng() % 50, char(0xFF));
        io::FrameSplitter sp(4096);
        std::size_t bytes = 0;
        for (std::size_t i = 0, n = 0; i < s.size(); i += n) {
            n = 1 + rng() % 64;
            for (auto& f : sp.push(std::string_view(s).substr(i, n))) bytes += f.bytes.size();
        }
        for (auto& f : sp.finish()) bytes += f.bytes.size();
        EXPECT_LE(bytes, s.size());  // frames are disjoint pieces of the input
    }
}

namespace {
const Model<>& tiny() { return tiny_text_model("test_frames_"); }
}  // namespace

TEST(FrameStream, EveryFrameModeAnswersInOrderAndHitsTheCache) {
    Engine e(tiny(), {.max_running = 1});
    const std::string a = png(test_image(30, 20, 1)), b = png(test_image(25, 25, 2));
    std::vector<FrameAnswer> got;
    {
        FrameStream fs(e, {.prompt = "What is it?", .max_new_tokens = 6, .every_frame = true},
                       [&](const FrameAnswer& f) { got.push_back(f); });
        fs.push(0, a);
        fs.push(1, b);
        fs.push_error(2, "frame 2: JPEG image broken");
        fs.push(3, a);  // same pixels as frame 0
        fs.push(4, "not an image");
        fs.finish();
        const auto st = fs.stats();
        EXPECT_EQ(st.frames, 5);
        EXPECT_EQ(st.answered, 3);
        EXPECT_EQ(st.errors, 2);
        EXPECT_EQ(st.skipped, 0);
        EXPECT_EQ(st.cache_hits, 1);
    }
    ASSERT_EQ(got.size(), 5u);
    for (std::size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i].frame, std::int64_t(i));
    Request q;
    q.images.push_back(ImageInput::encoded(a));
    q.prompt = "What is it?";
    q.max_new_tokens = 6;
    const Result ref = e.run(q);
    EXPECT_EQ(got[0].result.ids, ref.ids);
    EXPECT_EQ(got[3].result.ids, ref.ids);
    EXPECT_FALSE(got[0].cached);
    EXPECT_TRUE(got[3].cached);
    EXPECT_EQ(got[2].error, "frame 2: JPEG image broken");
    EXPECT_NE(got[4].error.find("cannot decode"), std::string::npos) << got[4].error;
    EXPECT_GE(got[1].latency_ms, 0);
}

// Frame 0 is answered; frames 1..39 are pushed while it is (microseconds each, an answer takes
// milliseconds): newer frames replace the waiting one, so most are skipped and 39 is answered last.
TEST(FrameStream, LatestFrameWins) {
    Engine e(tiny(), {.max_running = 1});
    std::vector<std::string> frames;
    for (unsigned i = 0; i < 40; ++i) frames.push_back(png(test_image(48, 48, i)));
    std::mutex mu;
    std::condition_variable cv;
    std::vector<FrameAnswer> got;
    FrameStream fs(e, {.max_new_tokens = 12}, [&](const FrameAnswer& f) {
        std::lock_guard lk(mu);
        got.push_back(f);
        cv.notify_all();
    });
    fs.push(0, frames[0]);
    {
        std::unique_lock lk(mu);
        ASSERT_TRUE(cv.wait_for(lk, std::chrono::seconds(60), [&] { return !got.empty(); }));
    }
    for (std::size_t i = 1; i < frames.size(); ++i) fs.push(std::int64_t(i), frames[i]);
    fs.finish();
    const auto st = fs.stats();
    EXPECT_EQ(st.frames, 40);
    EXPECT_EQ(st.answered + st.skipped + st.errors, 40);
    EXPECT_GT(st.skipped, 0);
    EXPECT_EQ(got.front().frame, 0);
    EXPECT_EQ(got.back().frame, 39);  // the last frame is always answered
    std::int64_t skipped = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        if (i) {
            EXPECT_GT(got[i].frame, got[i - 1].frame);
        }
        skipped += got[i].skipped;
        EXPECT_TRUE(got[i].error.empty()) << got[i].error;
    }
    EXPECT_EQ(skipped, st.skipped);
}

// Six frames queued at once in every-frame mode at 20 frames/s: their answers start 50 ms apart, so the
// stream cannot end in less than 5 × 50 ms (tiny-model answers take a few ms: without the limit it would).
TEST(FrameStream, FpsLimitSpacesAnswers) {
    Engine e(tiny(), {.max_running = 1});
    const std::string a = png(test_image(16, 16, 1));
    std::vector<FrameAnswer> got;
    const auto t0 = std::chrono::steady_clock::now();
    {
        FrameStream fs(e, {.max_new_tokens = 2, .fps_limit = 20, .every_frame = true}, [&](const FrameAnswer& f) { got.push_back(f); });
        for (int i = 0; i < 6; ++i) fs.push(i, a);
    }
    EXPECT_GE(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 0.25);
    ASSERT_EQ(got.size(), 6u);
    EXPECT_THROW(FrameStream(e, {.fps_limit = -1}, nullptr), Error);
}
