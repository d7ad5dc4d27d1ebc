// fastvlm/engine/sliced_runner.hpp — runs one long function (an image through the vision tower) in
// slices between the engine's batched steps, so that running streams pause for one slice, not for a
// whole image.
//
// The function runs on a helper thread and calls `yield()` at its natural break points (the tower's
// stage callback, after every block). `resume(budget)` hands control to the helper and waits until the
// function reaches a break point after `budget` has passed, or returns. The caller and the helper never
// run at the same time (a baton passed under one mutex), so they can share one ThreadPool and the
// function's state needs no locking. `abandon()` makes the function throw at its next break point and
// waits until it has unwound, for a request that is cancelled or ends while its image is half encoded.
#pragma once
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#include "fastvlm/core/error.hpp"

namespace fastvlm {

class SlicedRunner {
public:
    using Clock = std::chrono::steady_clock;
    using Yield = std::function<void()>;
    using Fn = std::function<void(const Yield& yield)>;

    SlicedRunner() = default;
    SlicedRunner(const SlicedRunner&) = delete;
    SlicedRunner& operator=(const SlicedRunner&) = delete;
    ~SlicedRunner() {
        abandon();
        {
            std::lock_guard lk(mu_);
            quit_ = true;
            turn_ = Turn::helper;
        }
        cv_.notify_all();
        if (th_.joinable()) th_.join();
    }

    // True from start() until the function has returned, thrown or been abandoned.
    bool busy() const { return state_ != State::idle; }

    // Sets the function to run; it starts at the next resume(). Requires !busy().
    void start(Fn fn) {
        FASTVLM_CHECK(!busy(), "SlicedRunner::start while a function is running");
        if (!th_.joinable()) th_ = std::thread([this] { loop(); });
        std::lock_guard lk(mu_);
        fn_ = std::move(fn);
        error_ = nullptr;
        abandon_ = false;
        state_ = State::started;
    }

    // Runs the function until its first break point after `budget` (Clock::duration::max(): to its end).
    // Returns true when it has ended; then error() holds what it threw (nullptr: returned).
    bool resume(Clock::duration budget) {
        FASTVLM_CHECK(busy(), "SlicedRunner::resume without a function");
        std::unique_lock lk(mu_);
        const auto now = Clock::now();
        deadline_ = budget >= Clock::time_point::max() - now ? Clock::time_point::max() : now + budget;
        turn_ = Turn::helper;
        cv_.notify_all();
        cv_.wait(lk, [&] { return turn_ == Turn::caller; });
        if (!ended_) return false;
        ended_ = false;
        state_ = State::idle;
        return true;
    }
    std::exception_ptr error() const { return error_; }

    // Ends a started or suspended function: it throws at its break point and unwinds on the helper.
    void abandon() {
        if (!busy()) return;
        std::unique_lock lk(mu_);
        abandon_ = true;
        turn_ = Turn::helper;
        cv_.notify_all();
        cv_.wait(lk, [&] { return turn_ == Turn::caller; });
        ended_ = false;
        state_ = State::idle;
    }

private:
    struct Abandoned {};  // thrown through the function at a break point; not an Error
    enum class Turn { caller, helper };
    enum class State { idle, started };

    void loop() {
        std::unique_lock lk(mu_);
        for (;;) {
            cv_.wait(lk, [&] { return turn_ == Turn::helper; });
            if (quit_) return;
            Fn fn = std::move(fn_);
            fn_ = nullptr;
            if (!abandon_ && fn) {
                lk.unlock();
                std::exception_ptr err;
                try {
                    fn([this] { yield(); });
                } catch (const Abandoned&) {
                } catch (...) {
                    err = std::current_exception();
                }
                lk.lock();
                error_ = err;
            }
            ended_ = true;
            turn_ = Turn::caller;
            cv_.notify_all();
        }
    }
    // On the helper: hands control back once the slice is spent; throws Abandoned when told to stop.
    void yield() {
        std::unique_lock lk(mu_);
        if (!abandon_ && Clock::now() < deadline_) return;
        if (!abandon_) {
            turn_ = Turn::caller;
            cv_.notify_all();
            cv_.wait(lk, [&] { return turn_ == Turn::helper; });
        }
        if (abandon_ || quit_) throw Abandoned{};
    }

    std::mutex mu_;
    std::condition_variable cv_;
    Turn turn_ = Turn::caller;
    State state_ = State::idle;  // caller side only
    bool ended_ = false, abandon_ = false, quit_ = false;
    Clock::time_point deadline_{};
    Fn fn_;
    std::exception_ptr error_;
    std::thread th_;
};

}  // namespace fastvlm
