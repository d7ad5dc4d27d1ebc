// fastvlm/stream.hpp — FrameStream: answers a live stream of frames on an Engine, one frame at a time.
// While a frame is being answered, a newer frame replaces the one waiting (latest frame wins; the
// replaced ones are counted as skipped), so answers follow the scene instead of falling behind it. A
// frame whose pixels equal an earlier one hits the engine's image-feature cache (no vision time).
//
//   fastvlm::FrameStream fs(engine, {.prompt = "What is on the table?"}, [](const fastvlm::FrameAnswer& a) {
//       std::printf("frame %lld: %s\n", (long long)a.frame, a.text.c_str());
//   });
//   for (...) fs.push(i, jpeg_bytes);      // from any one thread; never blocks in latest-wins mode
//   fs.finish();                           // answers the frame still waiting, then returns
#pragma once
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "fastvlm/engine.hpp"

namespace fastvlm {

struct StreamOptions {
    std::string prompt = std::string(text::kDefaultQuestion);
    int max_new_tokens = 64;
    SamplingOptions sampling = {};
    double fps_limit = 0;      // most frames answered per second (0 = as fast as answers come)
    bool every_frame = false;  // answer every frame in order (offline input); push() then waits while 8 are queued
    io::ImageLimits image_limits = {};  // each frame's decoding
};

struct FrameAnswer {
    std::int64_t frame = 0;  // the frame's index as given to push()
    double t_ms = 0;         // when it was pushed, from the stream's start
    double latency_ms = 0;   // from push() to its answer
    std::string text;        // the answer (empty on error)
    std::string error;       // why the frame has no answer (undecodable, …)
    std::int64_t skipped = 0;  // frames replaced by newer ones since the previous answer
    bool cached = false;       // its image tokens came from the image-feature cache
    Result result;             // the engine's result (timings, ids)
};

class FrameStream {
public:
    struct Stats {
        std::int64_t frames = 0, answered = 0, skipped = 0, errors = 0, cache_hits = 0;
    };

    FrameStream(Engine& engine, StreamOptions opt, std::function<void(const FrameAnswer&)> on_answer)
        : engine_(engine), opt_(std::move(opt)), on_answer_(std::move(on_answer)) {
        FASTVLM_CHECK(std::isfinite(opt_.fps_limit) && opt_.fps_limit >= 0, "fps_limit must be >= 0, got ", opt_.fps_limit);
        FASTVLM_CHECK(opt_.max_new_tokens >= 0, "max_new_tokens must be >= 0, got ", opt_.max_new_tokens);
        worker_ = std::thread([this] { loop(); });
    }
    FrameStream(const FrameStream&) = delete;
    FrameStream& operator=(const FrameStream&) = delete;
    ~FrameStream() { finish(); }

    // A frame (encoded JPEG/PNG/… bytes). In latest-wins mode it replaces the frame waiting, if any.
    void push(std::int64_t index, std::string encoded) { add({index, std::move(encoded), {}, Clock::now()}); }
    // A frame that could not be read (a broken or truncated image): answered with `error` if its turn comes.
    void push_error(std::int64_t index, std::string error) { add({index, {}, std::move(error), Clock::now()}); }

    // Answers what is still waiting, then stops; returns once the last answer was delivered.
    void finish() {
        {
            std::lock_guard lk(mu_);
            finishing_ = true;
        }
        cv_.notify_all();
        room_cv_.notify_all();
        if (worker_.joinable()) worker_.join();
    }
    Stats stats() const {
        std::lock_guard lk(mu_);
        return st_;
    }

private:
    using Clock = std::chrono::steady_clock;
    struct Item {
        std::int64_t index;
        std::string bytes, error;
        Clock::time_point at;
    };

    void add(Item it) {
        std::unique_lock lk(mu_);
        FASTVLM_CHECK(!finishing_, "FrameStream: push after finish()");
        if (opt_.every_frame) {
            room_cv_.wait(lk, [&] { return waiting_.size() < 8 || finishing_; });
            FASTVLM_CHECK(!finishing_, "FrameStream: push during finish()");
        }
        ++st_.frames;
        if (!opt_.every_frame && !waiting_.empty()) {
            waiting_.clear();  // latest frame wins
            ++st_.skipped;
            ++skipped_since_;
        }
        waiting_.push_back(std::move(it));
        lk.unlock();
        cv_.notify_all();
    }

    void loop() {
        std::optional<Clock::time_point> last_start;
        for (;;) {
            Item it;
            std::int64_t skipped = 0;
            {
                std::unique_lock lk(mu_);
                cv_.wait(lk, [&] { return finishing_ || !waiting_.empty(); });
                if (waiting_.empty()) return;  // finishing, nothing left
                if (opt_.fps_limit > 0 && last_start) {
                    // Keep the rate: newer frames arriving meanwhile replace the waiting one.
                    const auto next = *last_start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / opt_.fps_limit));
                    // The limit holds to the end (it bounds the work); finish() waits for it too.
                    while (Clock::now() < next) cv_.wait_until(lk, next);
                }
                it = std::move(waiting_.front());
                waiting_.pop_front();
                skipped = skipped_since_;
                skipped_since_ = 0;
            }
            room_cv_.notify_all();
            last_start = Clock::now();
            answer(std::move(it), skipped);
        }
    }

    void answer(Item it, std::int64_t skipped) {
        FrameAnswer a;
        a.frame = it.index;
        a.t_ms = ms(it.at - t0_);
        a.skipped = skipped;
        if (!it.error.empty()) {
            a.error = it.error;
        } else {
            Request q;
            q.images.push_back(ImageInput::encoded(std::move(it.bytes), "frame " + std::to_string(it.index)));
            q.images.back().limits = opt_.image_limits;
            q.prompt = opt_.prompt;
            q.max_new_tokens = opt_.max_new_tokens;
            q.sampling = opt_.sampling;
            q.id = "frame " + std::to_string(it.index);
            try {
                a.result = engine_.run(std::move(q));
            } catch (const std::exception& e) {  // queue full / shutdown
                a.result.error_kind = ErrorKind::internal;
                a.result.error = e.what();
            }
            if (a.result.ok()) a.text = a.result.text;
            else a.error = a.result.error;
            // The frame's image was not encoded: its tokens came from the image-feature cache, or the
            // prefix cache held the KV of the whole prompt up to and past it (a frame equal to an earlier one).
            a.cached = a.result.ok() && (a.result.timings.image_cache_hits > 0 || a.result.timings.vision_ms == 0);
        }
        a.latency_ms = ms(Clock::now() - it.at);
        {
            std::lock_guard lk(mu_);
            if (a.error.empty()) ++st_.answered;
            else ++st_.errors;
            if (a.cached) ++st_.cache_hits;
        }
        if (on_answer_) {
            try {
                on_answer_(a);
            } catch (...) {  // a throwing callback must not stop the stream
            }
        }
    }
    static double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

    Engine& engine_;
    StreamOptions opt_;
    std::function<void(const FrameAnswer&)> on_answer_;
    const Clock::time_point t0_ = Clock::now();
    mutable std::mutex mu_;
    std::condition_variable cv_, room_cv_;
    std::deque<Item> waiting_;
    std::int64_t skipped_since_ = 0;
    bool finishing_ = false;
    Stats st_;
    std::thread worker_;
};

}  // namespace fastvlm
