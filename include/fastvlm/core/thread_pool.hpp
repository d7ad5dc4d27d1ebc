// fastvlm/core/thread_pool.hpp — a small fork/join pool. No global pool: the user owns one and
// passes it (by pointer; nullptr = run on the calling thread) to every kernel and model.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "fastvlm/core/error.hpp"

namespace fastvlm {

class ThreadPool {
public:
    // n = total number of threads taking part, the caller included (n-1 workers are started).
    // 0 means std::thread::hardware_concurrency(). After a parallel region the workers spin for
    // spin_us microseconds (default 2000) waiting for the next one before they sleep: decoding a
    // token runs hundreds of short regions, and waking a sleeping thread costs ~10-20 µs each.
    // spin_us = 0 makes them sleep at once (no busy CPU between calls).
    explicit ThreadPool(unsigned n = 0, unsigned spin_us = 2000) : spin_us_(spin_us) {
        if (n == 0) n = std::max(1u, std::thread::hardware_concurrency());
        size_ = n;
        workers_.reserve(n - 1);
        for (unsigned t = 1; t < n; ++t) workers_.emplace_back([this, t] { worker_loop(t); });
    }
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;
    ~ThreadPool() {
        {
            std::lock_guard lk(mu_);
            stop_.store(true, std::memory_order_release);
        }
        cv_.notify_all();
        for (auto& w : workers_) w.join();
    }

    unsigned size() const { return size_; }

    // Runs fn(task, thread) for task in [0, n_tasks), tasks handed out dynamically; returns when
    // all are done. The first exception thrown by a task is rethrown here. Calls from inside a
    // task (nested parallelism) run serially on that thread. Workers join a region only while it
    // is open: when the caller has taken the last task it closes the region and waits only for
    // the workers inside it, never for one the OS has not scheduled yet (a busy machine).
    void run(std::size_t n_tasks, const std::function<void(std::size_t, unsigned)>& fn) {
        if (n_tasks == 0) return;
        if (size_ == 1 || n_tasks == 1 || in_task()) {
            for (std::size_t i = 0; i < n_tasks; ++i) fn(i, in_task() ? current_thread() : 0);
            return;
        }
        std::unique_lock call_lk(call_mu_);  // one parallel region at a time per pool
        job_ = &fn;
        n_tasks_ = n_tasks;
        next_.store(0, std::memory_order_relaxed);
        error_ = nullptr;
        const std::uint64_t open = state_.load(std::memory_order_relaxed) + 1;  // odd = open
        {
            std::lock_guard lk(mu_);  // pairs with the sleepers' predicate check: no lost wake-up
            state_.store(open, std::memory_order_seq_cst);
        }
        cv_.notify_all();  // no system call when nobody sleeps
        work(0);
        state_.store(open + 1, std::memory_order_seq_cst);  // closed: late workers stay out
        for (unsigned spins = 0; active_.load(std::memory_order_seq_cst) != 0; ++spins) pause(spins);
        job_ = nullptr;
        if (error_) std::rethrow_exception(error_);
    }

    // Splits [0, n) into contiguous ranges of at least `grain` items and calls fn(begin, end).
    template <class F>
    void parallel_for(std::size_t n, std::size_t grain, F&& fn) {
        if (n == 0) return;
        grain = std::max<std::size_t>(grain, 1);
        std::size_t chunks = std::min<std::size_t>((n + grain - 1) / grain, std::size_t(size_) * 4);
        chunks = std::max<std::size_t>(chunks, 1);
        const std::size_t step = (n + chunks - 1) / chunks;
        chunks = (n + step - 1) / step;
        run(chunks, [&](std::size_t c, unsigned) { fn(c * step, std::min(n, (c + 1) * step)); });
    }

private:
    static bool& in_task_flag() { thread_local bool f = false; return f; }
    static unsigned& thread_id() { thread_local unsigned t = 0; return t; }
    static bool in_task() { return in_task_flag(); }
    static unsigned current_thread() { return thread_id(); }

    // Busy-wait step: a CPU pause, and after a while a yield (the machine may be oversubscribed).
    static void pause(unsigned spins) {
        if (spins < 4096) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        } else {
            std::this_thread::yield();
        }
    }

    void work(unsigned t) {
        in_task_flag() = true;
        thread_id() = t;
        for (;;) {
            const std::size_t i = next_.fetch_add(1, std::memory_order_relaxed);
            if (i >= n_tasks_) break;
            try {
                (*job_)(i, t);
            } catch (...) {
                std::lock_guard lk(mu_);
                if (!error_) error_ = std::current_exception();
                next_.store(n_tasks_, std::memory_order_relaxed);
            }
        }
        in_task_flag() = false;
    }

    void worker_loop(unsigned t) {
        std::uint64_t seen = 0;
        for (;;) {
            // Spin first (cheap hand-over between back-to-back regions), then sleep.
            const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us_);
            unsigned spins = 0;
            while (state_.load(std::memory_order_acquire) == seen && !stop_.load(std::memory_order_acquire)) {
                pause(spins);  // yields after a while: an oversubscribed machine still makes progress
                if ((++spins & 255) == 0 && std::chrono::steady_clock::now() >= until) {
                    std::unique_lock lk(mu_);
                    cv_.wait(lk, [&] { return stop_.load(std::memory_order_relaxed) || state_.load(std::memory_order_relaxed) != seen; });
                    break;
                }
            }
            if (stop_.load(std::memory_order_acquire)) return;
            seen = state_.load(std::memory_order_acquire);
            if (seen % 2 == 0) continue;  // a region that closed meanwhile
            active_.fetch_add(1, std::memory_order_seq_cst);
            if (state_.load(std::memory_order_seq_cst) == seen) work(t);  // still the same open region
            active_.fetch_sub(1, std::memory_order_release);
        }
    }

    unsigned size_ = 1;
    unsigned spin_us_ = 2000;
    std::vector<std::thread> workers_;
    std::mutex mu_, call_mu_;
    std::condition_variable cv_;
    const std::function<void(std::size_t, unsigned)>* job_ = nullptr;
    std::size_t n_tasks_ = 0;
    std::atomic<std::size_t> next_{0};
    std::atomic<unsigned> active_{0};        // workers inside the current region
    std::atomic<std::uint64_t> state_{0};    // 2·regions started, +1 while a region is open
    std::atomic<bool> stop_{false};
    std::exception_ptr error_;
};

// Helpers that accept a null pool (serial execution).
template <class F>
void parallel_for(ThreadPool* pool, std::size_t n, std::size_t grain, F&& fn) {
    if (pool) pool->parallel_for(n, grain, std::forward<F>(fn));
    else if (n) fn(std::size_t(0), n);
}
inline unsigned pool_size(const ThreadPool* pool) { return pool ? pool->size() : 1u; }

}  // namespace fastvlm
