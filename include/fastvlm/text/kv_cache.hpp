// fastvlm/text/kv_cache.hpp — the decoder's keys and values as a shared, paged pool.
//
//   KVPool   one per model or engine: a byte budget cut into pages of `page_positions` positions
//            (every layer's K and V of those positions in one allocation), handed out to sequences
//            and taken back when they end. Thread-safe. Pages are allocated on first use and kept
//            for reuse, so memory follows what sequences really hold, never above the budget.
//   KVSeq    one sequence: a page table and a length. Its worst case is reserved from the pool when
//            it is created (admission control: a sequence that was admitted never runs out), the
//            pages themselves are taken as positions are written. Not thread-safe; returns its
//            pages and its reservation to the pool when destroyed.
//
// Sharing (the engine's prefix cache, engine/prefix_cache.hpp): a page may have several holders
// (retain() adds one, put_page() drops one; the page is free when the last one drops it). Only full
// pages are shared and their holders never write into them: a sequence that adopts a shared prefix
// writes from the position after it, into pages of its own (append-only sharing, no copy; a prefix
// that ends inside a page gets a copy of that page: adopt_partial). Every
// holder keeps a reservation for each page it holds, so the pages in use never exceed the budget.
//
// Page layout (E = float or bf16): K[layer][kv_dim][pos in page] (columns: a channel's positions side by
// side, what the decode scores read as vectors), then V[layer][pos in page][kv_dim] (rows). K is stored
// rotated (RoPE applied). bf16 storage halves the bytes per position and the attention
// traffic of decode; fp32 keeps the results bit-identical to an fp32 cache (docs/engine.md states
// the accuracy effect).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "fastvlm/core/dtypes.hpp"
#include "fastvlm/core/error.hpp"
#include "fastvlm/core/tensor.hpp"
#include "fastvlm/kernels/attention_gqa.hpp"

namespace fastvlm::text {

enum class KVType : std::uint8_t { bf16, f32 };

inline const char* to_string(KVType t) { return t == KVType::bf16 ? "bf16" : "f32"; }
inline KVType parse_kv_type(std::string_view s) {
    if (s == "bf16") return KVType::bf16;
    if (s == "f32" || s == "fp32") return KVType::f32;
    fail("unknown KV cache type '", s, "' (expected bf16 or f32)");
}

struct KVShape {
    Index layers = 0, kv_dim = 0;
};

class KVPool {
public:
    // budget_bytes: most bytes the pages may take; at least one page.
    KVPool(KVShape shape, KVType type, std::size_t budget_bytes, Index page_positions = 16)
        : shape_(shape), type_(type), page_(page_positions) {
        FASTVLM_CHECK(shape.layers > 0 && shape.kv_dim > 0, "KV pool: bad shape (", shape.layers, " layers, kv_dim ", shape.kv_dim, ")");
        FASTVLM_CHECK(page_positions >= 1 && page_positions <= 4096, "KV pool: page_positions must be in 1..4096, got ", page_positions);
        total_ = Index(budget_bytes / page_bytes());
        FASTVLM_CHECK(total_ >= 1, "KV budget of ", budget_bytes, " bytes is less than one page (", page_bytes(), " bytes = ",
                      page_positions, " positions × ", bytes_per_position(), " bytes)");
    }
    KVPool(const KVPool&) = delete;
    KVPool& operator=(const KVPool&) = delete;
    ~KVPool() {
        if (arena_) {
#if defined(__linux__)
            ::munmap(arena_map_, arena_map_bytes_);
#endif
        } else {
            for (void* p : free_) std::free(p);
        }
    }

    KVShape shape() const { return shape_; }
    KVType type() const { return type_; }
    Index page_positions() const { return page_; }
    static std::size_t element_bytes(KVType t) { return t == KVType::bf16 ? 2 : 4; }
    std::size_t element_bytes() const { return element_bytes(type_); }
    // Bytes per position over every layer, K and V.
    static std::size_t bytes_per_position(KVShape s, KVType t) { return 2 * std::size_t(s.layers * s.kv_dim) * element_bytes(t); }
    std::size_t bytes_per_position() const { return bytes_per_position(shape_, type_); }
    std::size_t page_bytes() const { return bytes_per_position() * std::size_t(page_); }
    Index pages_for(Index positions) const { return (positions + page_ - 1) / page_; }

    Index total_pages() const { return total_; }
    Index used_pages() const {
        std::lock_guard lk(mu_);
        return used_;
    }
    Index reserved_pages() const {
        std::lock_guard lk(mu_);
        return reserved_;
    }
    std::size_t allocated_bytes() const {
        std::lock_guard lk(mu_);
        return std::size_t(allocated_) * page_bytes();
    }

    // Reserves `pages` for a sequence; false when they do not fit what is left of the budget.
    bool try_reserve(Index pages) {
        std::lock_guard lk(mu_);
        if (pages < 0 || reserved_ + pages > total_) return false;
        reserved_ += pages;
        return true;
    }
    void unreserve(Index pages) {
        std::lock_guard lk(mu_);
        reserved_ -= pages;
    }
    // A page for a sequence that holds a reservation (64-byte aligned, contents undefined).
    void* take_page() {
        std::lock_guard lk(mu_);
        FASTVLM_CHECK(used_ < total_, "KV pool: no page left (", total_, " pages in the budget)");
        ++used_;
        if (!free_.empty()) {
            void* p = free_.back();
            free_.pop_back();
            return p;
        }
        const std::size_t bytes = slot_bytes();
        if (allocated_ == 0) map_arena();
        void* p = arena_ ? static_cast<void*>(arena_ + std::size_t(allocated_) * bytes) : std::aligned_alloc(kAlignment, bytes);
        if (!p) {
            --used_;
            throw std::bad_alloc();
        }
        ++allocated_;
        return p;
    }
    // Drops one holder of `p`; the page is free when it was the last.
    void put_page(void* p) {
        std::lock_guard lk(mu_);
        if (const auto it = extra_.find(p); it != extra_.end()) {
            if (--it->second == 0) extra_.erase(it);
            return;
        }
        free_.push_back(p);
        --used_;
    }
    // Adds a holder to a page in use (see Sharing above).
    void retain(void* p) {
        std::lock_guard lk(mu_);
        ++extra_[p];
    }
    // Holders of `p` beyond the first (0: held once).
    int sharers(void* p) const {
        std::lock_guard lk(mu_);
        const auto it = extra_.find(p);
        return it == extra_.end() ? 0 : it->second;
    }

    // True when the pages come from one address range backed by transparent huge pages (Linux).
    bool huge_page_arena() const { return arena_ != nullptr; }

private:
    std::size_t slot_bytes() const { return (page_bytes() + kAlignment - 1) / kAlignment * kAlignment; }
    // The budget's address range, reserved once (no memory is committed until a page is written) and
    // backed by 2 MiB pages where the kernel allows it. A page holds every layer, so one layer's keys
    // of a page are a few KiB, and a decode step reads one such run per page and layer; with 4 KiB pages
    // each run may be a TLB miss. Measured alone (Zen 4, 0.5B int4, 600 tokens) it moved decode from
    // 133 to 141 tok/s, within the noise; the large gain of the same change came from the attention
    // kernel (kernels/attention_gqa.hpp). Falls back to one allocation per page when mapping fails or
    // the budget is under 2 MiB.
    void map_arena() {
#if defined(__linux__)
        constexpr std::size_t kHuge = std::size_t(2) << 20;
        const std::size_t want = slot_bytes() * std::size_t(total_);
        if (want < kHuge || want > (std::size_t(1) << 46)) return;
        const std::size_t map_bytes = want + kHuge;
        void* m = ::mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) return;
        auto* base = reinterpret_cast<std::byte*>((reinterpret_cast<std::uintptr_t>(m) + kHuge - 1) / kHuge * kHuge);
        ::madvise(base, want, MADV_HUGEPAGE);  // advice only: without THP the range still works with 4 KiB pages
        arena_map_ = m, arena_map_bytes_ = map_bytes, arena_ = base;
#endif
    }

    KVShape shape_;
    KVType type_;
    std::byte* arena_ = nullptr;  // huge-page range of total_ slots, or null (one allocation per page)
    void* arena_map_ = nullptr;
    std::size_t arena_map_bytes_ = 0;
    Index page_ = 16, total_ = 0;
    mutable std::mutex mu_;
    Index used_ = 0, reserved_ = 0, allocated_ = 0;
    std::vector<void*> free_;
    std::unordered_map<void*, int> extra_;  // holders beyond the first, of shared pages
};

class KVSeq {
public:
    KVSeq() = default;
    // Reserves room for `max_positions` (the sequence's worst case) or throws an Error that says
    // how much is missing. try_create returns null instead.
    KVSeq(std::shared_ptr<KVPool> pool, Index max_positions) : pool_(std::move(pool)) {
        FASTVLM_CHECK(pool_ != nullptr, "KVSeq: no pool");
        FASTVLM_CHECK(max_positions >= 1, "KVSeq: max_positions must be >= 1, got ", max_positions);
        const Index need = pool_->pages_for(max_positions);
        if (!pool_->try_reserve(need))
            fail("the KV cache budget cannot hold ", max_positions, " more positions (", need, " pages of ", pool_->page_positions(),
                 " positions needed, ", pool_->total_pages() - pool_->reserved_pages(), " of ", pool_->total_pages(),
                 " free; ", pool_->bytes_per_position(), " bytes per position)");
        reserved_ = need;
        cap_ = max_positions;
    }
    static std::unique_ptr<KVSeq> try_create(const std::shared_ptr<KVPool>& pool, Index max_positions) {
        if (!pool->try_reserve(pool->pages_for(max_positions))) return nullptr;
        auto s = std::unique_ptr<KVSeq>(new KVSeq());
        s->pool_ = pool;
        s->reserved_ = pool->pages_for(max_positions);
        s->cap_ = max_positions;
        return s;
    }
    KVSeq(const KVSeq&) = delete;
    KVSeq& operator=(const KVSeq&) = delete;
    KVSeq(KVSeq&& o) noexcept { *this = std::move(o); }
    KVSeq& operator=(KVSeq&& o) noexcept {
        if (this != &o) {
            release();
            pool_ = std::move(o.pool_);
            pages_ = std::move(o.pages_);
            reserved_ = o.reserved_, cap_ = o.cap_, size_ = o.size_;
            o.reserved_ = o.cap_ = o.size_ = 0;
            o.pages_.clear();
        }
        return *this;
    }
    ~KVSeq() { release(); }

    bool valid() const { return pool_ != nullptr; }
    const KVPool& pool() const { return *pool_; }
    Index size() const { return size_; }
    Index capacity() const { return cap_; }
    Index pages() const { return Index(pages_.size()); }
    // Bytes reserved for this sequence.
    std::size_t bytes() const { return pool_ ? std::size_t(reserved_) * pool_->page_bytes() : 0; }

    // Makes room for positions [0, n): takes the pages they need (within the reservation).
    void ensure(Index n) {
        FASTVLM_CHECK(n <= cap_, "context overflow: ", n, " positions exceed the context of ", cap_, " tokens");
        const Index need = pool_->pages_for(n);
        while (Index(pages_.size()) < need) pages_.push_back(pool_->take_page());
    }
    void advance(Index n) {
        FASTVLM_CHECK(size_ + n <= cap_ && pool_->pages_for(size_ + n) <= Index(pages_.size()), "KVSeq::advance past its pages");
        size_ += n;
    }
    void clear() { truncate(0); }

    // Starts an empty sequence with `pages`, full pages shared with another holder (the prefix cache):
    // it takes over one holder of each (the caller's, from KVPool::retain), and its length becomes
    // pages × page_positions. It writes only after them.
    void adopt_prefix(std::span<void* const> pages) {
        FASTVLM_CHECK(size_ == 0 && pages_.empty(), "KVSeq::adopt_prefix on a sequence that holds positions");
        FASTVLM_CHECK(Index(pages.size()) * pool_->page_positions() <= cap_, "KVSeq::adopt_prefix: ", pages.size(),
                      " pages exceed the capacity of ", cap_, " positions");
        pages_.insert(pages_.end(), pages.begin(), pages.end());
        size_ = Index(pages.size()) * pool_->page_positions();
    }
    // Then continues with the first `n` positions of another holder's page `src`, copied into a page of
    // its own (it will write after them): a prefix that ends inside a page.
    void adopt_partial(const void* src, Index n) {
        FASTVLM_CHECK(n > 0 && n < pool_->page_positions() && size_ % pool_->page_positions() == 0 && size_ + n <= cap_,
                      "KVSeq::adopt_partial: ", n, " positions after ", size_, " do not fit a page of ", pool_->page_positions());
        ensure(size_ + n);
        std::memcpy(pages_.back(), src, pool_->page_bytes());
        size_ += n;
    }
    // The i-th page of the sequence (for the prefix cache).
    void* page(Index i) const { return pages_.at(std::size_t(i)); }
    // Hands one page's reservation to another holder (the prefix cache, which keeps one of this
    // sequence's pages after it ends). Only for a sequence that is ending: it must take no page after.
    bool give_reservation() {
        if (reserved_ <= 0) return false;
        --reserved_;
        cap_ = 0;  // ensure() refuses from now on
        return true;
    }
    // Drops positions >= n (e.g. to rewind a conversation); pages past them go back to the pool.
    void truncate(Index n) {
        FASTVLM_CHECK(n >= 0 && n <= size_, "KV cache: cannot truncate to ", n, " (holds ", size_, ")");
        size_ = n;
        const Index keep = pool_->pages_for(n);
        while (Index(pages_.size()) > keep) {
            pool_->put_page(pages_.back());
            pages_.pop_back();
        }
    }

    // Element pointers (E must match the pool's type). Key channel c of `pos` is k(layer, pos)[c · k_stride()];
    // value channel c is v(layer, pos)[c].
    template <class E>
    E* k(Index layer, Index pos) {
        const Index P = pool_->page_positions();
        return page_ptr<E>(pos) + layer * pool_->shape().kv_dim * P + pos % P;
    }
    Index k_stride() const { return pool_->page_positions(); }
    template <class E>
    E* v(Index layer, Index pos) {
        const auto& s = pool_->shape();
        return page_ptr<E>(pos) + ((s.layers + layer) * pool_->page_positions() + pos % pool_->page_positions()) * s.kv_dim;
    }
    template <class E>
    KVRows<E> k_rows(Index layer) const {
        const Index P = pool_->page_positions();
        return {reinterpret_cast<const E* const*>(pages_.data()), P, 1, layer * P * pool_->shape().kv_dim, P};
    }
    template <class E>
    KVRows<E> v_rows(Index layer) const {
        const auto& s = pool_->shape();
        return {reinterpret_cast<const E* const*>(pages_.data()), pool_->page_positions(), s.kv_dim,
                (s.layers + layer) * pool_->page_positions() * s.kv_dim};
    }

private:
    template <class E>
    E* page_ptr(Index pos) {
        FASTVLM_CHECK(pos >= 0 && pos / pool_->page_positions() < Index(pages_.size()), "KV cache: position ", pos,
                      " has no page (", pages_.size(), " pages)");
        return static_cast<E*>(pages_[std::size_t(pos / pool_->page_positions())]);
    }
    void release() {
        if (!pool_) return;
        for (void* p : pages_) pool_->put_page(p);
        pages_.clear();
        pool_->unreserve(reserved_);
        reserved_ = 0;
        pool_.reset();
    }

    std::shared_ptr<KVPool> pool_;
    std::vector<void*> pages_;
    Index reserved_ = 0, cap_ = 0, size_ = 0;
};

// A sequence with a pool of its own, sized for exactly `capacity` positions (a Session's cache,
// or a test's). fp32 unless told otherwise.
class KVCache : public KVSeq {
public:
    KVCache() = default;
    KVCache(KVShape shape, Index capacity, KVType type = KVType::f32, Index page_positions = 16)
        : KVSeq(std::make_shared<KVPool>(shape, type, budget(shape, capacity, type, page_positions), page_positions), capacity) {}

private:
    static std::size_t budget(KVShape s, Index capacity, KVType type, Index page) {
        FASTVLM_CHECK(capacity >= 1, "KV cache: capacity must be >= 1, got ", capacity);
        const Index pages = (capacity + page - 1) / page;
        return std::size_t(pages * page) * 2 * std::size_t(s.layers * s.kv_dim) * (type == KVType::bf16 ? 2 : 4);
    }
};

}  // namespace fastvlm::text
