// Fuzz target: io::FrameSplitter, the frame splitter of `fastvlm-cli stream` (concatenated JPEG/PNG).
//
// Input: a flag byte, 4 seed bytes for the piece sizes, then the stream. The stream is pushed in pieces
// of varying size (1 byte .. the whole rest, drawn from the seed), then finish(), as the CLI does with its
// read() calls. Flag bit 0 picks a small frame-size limit (1..4 KiB, from the flag byte) instead of the
// default 64 MiB. Checked: every complete frame is a well-formed start..end slice of the input, frames
// are disjoint, indices increase, and (with the default limit, which no input here reaches) the frames
// do not depend on how the stream was cut into pieces; after finish() the same splitter takes the stream
// again and finds the same frames.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fastvlm/io/frames.hpp"
#include "fuzz_common.hpp"

namespace {

using fastvlm::io::Frame;
using fastvlm::io::FrameSplitter;

std::vector<Frame> split(FrameSplitter& sp, std::string_view s, std::uint32_t seed) {
    std::vector<Frame> out;
    auto take = [&](std::vector<Frame>&& v) { for (auto& f : v) out.push_back(std::move(f)); };
    std::uint32_t x = seed | 1u;
    for (std::size_t i = 0; i < s.size();) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;  // xorshift32
        std::size_t n;
        switch (x & 3) {
            case 0: n = 1 + (x >> 8) % 4; break;          // a few bytes: cuts inside markers and lengths
            case 1: n = 1 + (x >> 8) % 64; break;
            case 2: n = 1 + (x >> 8) % 4096; break;
            default: n = s.size() - i; break;              // the rest at once
        }
        n = std::min(n, s.size() - i);
        take(sp.push(s.substr(i, n)));
        i += n;
    }
    take(sp.finish());
    return out;
}

void check_frames(const std::vector<Frame>& fr, std::string_view s, std::size_t max) {
    std::size_t ok_bytes = 0;
    std::int64_t last = -1;
    for (const Frame& f : fr) {
        if (f.index < 0) {  // garbage report
            FUZZ_CHECK(!f.ok() && f.bytes.empty());
            continue;
        }
        FUZZ_CHECK(f.index > last);
        last = f.index;
        if (!f.ok()) {
            FUZZ_CHECK(f.bytes.empty());
            continue;
        }
        const std::string& b = f.bytes;
        FUZZ_CHECK(!b.empty() && b.size() <= max);
        FUZZ_CHECK(s.find(b) != std::string_view::npos);
        const bool jpeg = b.size() >= 4 && b.compare(0, 3, "\xFF\xD8\xFF") == 0 && b.compare(b.size() - 2, 2, "\xFF\xD9") == 0;
        // (the splitter walks chunk lengths: an IEND chunk need not be empty, so it is not checked here)
        const bool png = b.size() >= 20 && b.compare(0, 8, "\x89PNG\r\n\x1A\n") == 0;
        FUZZ_CHECK(jpeg || png);
        ok_bytes += b.size();
    }
    FUZZ_CHECK(ok_bytes <= s.size());  // frames are disjoint pieces of the input
}

bool same(const std::vector<Frame>& a, const std::vector<Frame>& b, std::int64_t index_shift) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const std::int64_t ib = b[i].index < 0 ? b[i].index : b[i].index - index_shift;
        if (a[i].index != ib || a[i].bytes != b[i].bytes || a[i].error != b[i].error) return false;
    }
    return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 5) return 0;
    const std::uint8_t flags = data[0];
    const std::uint32_t seed = std::uint32_t(data[1]) | std::uint32_t(data[2]) << 8 | std::uint32_t(data[3]) << 16 |
                               std::uint32_t(data[4]) << 24;
    const std::string_view s = fuzz::as_text(data + 5, size - 5);
    const bool small = flags & 1;
    const std::size_t max = small ? 1 + std::size_t(flags >> 1) * 32 : std::size_t(64) << 20;

    FrameSplitter pieces(max);
    const std::vector<Frame> a = split(pieces, s, seed);
    check_frames(a, s, max);
    const std::int64_t first_run = pieces.frames();

    FrameSplitter whole(max);
    std::vector<Frame> b = whole.push(s);
    for (auto& f : whole.finish()) b.push_back(std::move(f));
    check_frames(b, s, max);
    if (!small) {
        FUZZ_CHECK(pieces.frames() == whole.frames());
        FUZZ_CHECK(same(a, b, 0));
        FUZZ_CHECK(pieces.garbage_bytes() == whole.garbage_bytes());
    }

    // finish() leaves the splitter ready for a new stream (frame numbers continue).
    const std::vector<Frame> again = split(pieces, s, seed);
    FUZZ_CHECK(same(a, again, first_run));
    return 0;
}
