// fastvlm/io/frames.hpp — splits a byte stream of concatenated JPEG and PNG images (what
// `ffmpeg ... -f image2pipe -vcodec mjpeg -` or `-vcodec png -` writes) into single images, incrementally.
//
// JPEG: marker segments are walked by their lengths (so an EXIF thumbnail's own FF D8 … FF D9 inside
// APP1 is skipped), entropy-coded data after each SOS is scanned for the next marker (FF followed by
// anything but 00 or RST0-7), and the image ends at EOI (FF D9). PNG: chunks are walked by their
// lengths up to IEND. Bytes that start neither are garbage: skipped up to the next image start and
// reported. A frame that breaks its own structure, exceeds the size limit, or is cut off by the end
// of the input is returned with an error and the splitter resynchronises on the next image start.
// Every image start found gets the next frame index (0-based), broken ones included.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fastvlm::io {

struct Frame {
    std::int64_t index = -1;  // 0-based position in the input; −1 for garbage between frames
    std::string bytes;        // the encoded image (empty for errors)
    std::string error;        // non-empty: the frame (or the garbage run) was not a complete image
    bool ok() const { return error.empty(); }
};

class FrameSplitter {
public:
    explicit FrameSplitter(std::size_t max_frame_bytes = std::size_t(64) << 20) : max_(max_frame_bytes) {}

    // Appends `data`; returns what it completed, in input order.
    std::vector<Frame> push(std::string_view data) {
        buf_.append(data.data(), data.size());
        std::vector<Frame> out;
        run(out, false);
        compact();
        return out;
    }
    // End of input: a frame in progress is reported as truncated, trailing garbage as garbage.
    // Afterwards the splitter is empty and may take a new stream.
    std::vector<Frame> finish() {
        std::vector<Frame> out;
        run(out, true);
        while (kind_ != Kind::none) {
            // Cut off (or a length field swallowed what followed): report it, then look for images
            // inside the rest, as after any broken frame.
            out.push_back(broken("truncated: the input ended " + std::to_string(buf_.size() - start_) + " bytes into the " +
                                 name() + " image"));
            kind_ = Kind::none;
            skip_from_ = start_ + 1;
            broken_tail_ = true;
            run(out, true);
        }
        garbage_upto(buf_.size(), out, true);
        buf_.clear();
        start_ = at_ = skip_from_ = 0;
        broken_tail_ = false;
        garbage_run_ = 0;
        return out;
    }
    std::int64_t frames() const { return next_index_; }
    std::uint64_t garbage_bytes() const { return garbage_total_; }

private:
    enum class Kind { none, jpeg, png };
    static constexpr unsigned char kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};

    unsigned char b(std::size_t i) const { return static_cast<unsigned char>(buf_[i]); }
    const char* name() const { return kind_ == Kind::jpeg ? "JPEG" : "PNG"; }

    // Offset of the next JPEG (FF D8 FF) or PNG signature at or after `from`, or npos.
    std::size_t find_start(std::size_t from) const {
        for (std::size_t i = from; i < buf_.size(); ++i) {
            if (b(i) == 0xFF && i + 2 < buf_.size() && b(i + 1) == 0xD8 && b(i + 2) == 0xFF) return i;
            if (b(i) == 0x89 && i + 8 <= buf_.size() && std::string_view(buf_).substr(i, 8) == std::string_view(reinterpret_cast<const char*>(kPng), 8))
                return i;
        }
        return std::string::npos;
    }
    // Skips [skip_from_, end) as garbage; one report per run of garbage (when the next image starts,
    // at the end of the input, or every MiB of a long run).
    void garbage_upto(std::size_t end, std::vector<Frame>& out, bool run_ends = false) {
        if (end > skip_from_ && broken_tail_) {  // the rest of a broken frame, already reported
            skip_from_ = end;
        } else if (end > skip_from_) {
            garbage_total_ += end - skip_from_;
            garbage_run_ += end - skip_from_;
            skip_from_ = end;
        }
        if (garbage_run_ > 0 && (run_ends || garbage_run_ >= (std::size_t(1) << 20))) {
            out.push_back({-1, {}, std::to_string(garbage_run_) + " bytes between images are neither JPEG nor PNG (skipped)"});
            garbage_run_ = 0;
        }
    }
    Frame broken(std::string why) {
        Frame f{index_, {}, std::move(why)};
        return f;
    }

    void run(std::vector<Frame>& out, bool eof) {
        for (;;) {
            if (kind_ == Kind::none) {
                const std::size_t s = find_start(skip_from_);
                if (s == std::string::npos) {
                    // Keep a possible partial signature (up to 7 bytes) for the next push.
                    const std::size_t keep = eof ? 0 : std::min<std::size_t>(7, buf_.size() - skip_from_);
                    garbage_upto(buf_.size() - keep, out);
                    return;
                }
                garbage_upto(s, out, true);
                broken_tail_ = false;
                start_ = s;
                kind_ = b(s) == 0xFF ? Kind::jpeg : Kind::png;
                at_ = s + (kind_ == Kind::jpeg ? 2 : 8);
                in_scan_ = false;
                index_ = next_index_++;
            }
            const int r = kind_ == Kind::jpeg ? step_jpeg() : step_png();
            if (r == 0) {  // needs more bytes
                if (at_ - start_ > max_ || buf_.size() - start_ > max_ + 16) resync(out, "larger than the limit of " + std::to_string(max_) + " bytes");
                else return;
            } else if (r > 0) {  // complete: [start_, at_)
                if (at_ - start_ > max_) {  // whole but too large: skip all of it (not a resync inside it)
                    out.push_back(broken(std::string(name()) + " image of " + std::to_string(at_ - start_) +
                                         " bytes is larger than the limit of " + std::to_string(max_) + " bytes"));
                    kind_ = Kind::none;
                    skip_from_ = at_;
                    continue;
                }
                out.push_back({index_, buf_.substr(start_, at_ - start_), {}});
                kind_ = Kind::none;
                skip_from_ = at_;
            } else {
                resync(out, error_);
            }
        }
    }
    // A broken frame: report it and look for the next start after its first byte.
    void resync(std::vector<Frame>& out, const std::string& why) {
        out.push_back(broken(std::string(name()) + " image broken: " + why));
        kind_ = Kind::none;
        skip_from_ = start_ + 1;
        broken_tail_ = true;  // what lies between this start and the next is part of the broken frame, not garbage
    }

    // 1 complete, 0 need more, −1 broken (error_ says why).
    int step_jpeg() {
        for (;;) {
            if (in_scan_) {  // entropy-coded data: up to the next marker that is not a stuffed 00 or RSTn
                for (;;) {
                    if (at_ + 1 >= buf_.size()) return 0;
                    if (b(at_) == 0xFF) {
                        const unsigned char m = b(at_ + 1);
                        if (m == 0x00 || (m >= 0xD0 && m <= 0xD7) || m == 0xFF) {
                            at_ += m == 0xFF ? 1 : 2;
                            continue;
                        }
                        in_scan_ = false;
                        break;
                    }
                    ++at_;
                }
            }
            if (at_ + 1 >= buf_.size()) return 0;
            if (b(at_) != 0xFF) {
                error_ = "expected a marker at byte " + std::to_string(at_ - start_);
                return -1;
            }
            const unsigned char m = b(at_ + 1);
            if (m == 0xFF) {  // fill byte
                ++at_;
                continue;
            }
            if (m == 0xD9) {
                at_ += 2;
                return 1;
            }
            if (m == 0xD8) {
                error_ = "a new image starts before the end of this one (no EOI)";
                return -1;
            }
            if ((m >= 0xD0 && m <= 0xD7) || m == 0x01) {
                at_ += 2;
                continue;
            }
            if (at_ + 3 >= buf_.size()) return 0;
            const std::size_t len = std::size_t(b(at_ + 2)) << 8 | b(at_ + 3);
            if (len < 2) {
                error_ = "marker segment length " + std::to_string(len) + " < 2";
                return -1;
            }
            at_ += 2 + len;
            if (m == 0xDA) in_scan_ = true;
            if (at_ > buf_.size()) {
                // Not all here yet; step back so the segment is re-read once complete.
                at_ -= 2 + len;
                if (m == 0xDA) in_scan_ = false;
                return 0;
            }
        }
    }
    int step_png() {
        for (;;) {
            if (at_ + 8 > buf_.size()) return 0;
            const std::uint64_t len = std::uint64_t(b(at_)) << 24 | std::uint64_t(b(at_ + 1)) << 16 | std::uint64_t(b(at_ + 2)) << 8 | b(at_ + 3);
            if (len > 0x7FFFFFFFu || len > max_) {
                error_ = "chunk length " + std::to_string(len) + " is too large";
                return -1;
            }
            for (int k = 4; k < 8; ++k) {
                const unsigned char c = b(at_ + std::size_t(k));
                if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'))) {
                    error_ = "chunk type at byte " + std::to_string(at_ - start_ + 4) + " is not 4 letters";
                    return -1;
                }
            }
            const bool iend = std::string_view(buf_).substr(at_ + 4, 4) == "IEND";
            if (at_ + 12 + len > buf_.size()) return 0;
            at_ += 12 + std::size_t(len);
            if (iend) return 1;
        }
    }
    // Drops consumed bytes from the front of the buffer.
    void compact() {
        const std::size_t keep_from = kind_ != Kind::none ? start_ : skip_from_;
        if (keep_from == 0) return;
        buf_.erase(0, keep_from);
        start_ -= std::min(start_, keep_from);
        at_ -= std::min(at_, keep_from);
        skip_from_ -= keep_from;
    }

    std::size_t max_;
    std::string buf_;
    Kind kind_ = Kind::none;
    std::size_t start_ = 0, at_ = 0, skip_from_ = 0;
    bool in_scan_ = false, broken_tail_ = false;
    std::int64_t index_ = -1, next_index_ = 0;
    std::uint64_t garbage_total_ = 0;
    std::size_t garbage_run_ = 0;
    std::string error_;
};

}  // namespace fastvlm::io
