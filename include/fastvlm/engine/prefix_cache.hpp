// fastvlm/engine/prefix_cache.hpp — prefix KV reuse: the KV pages of finished sequences, kept so
// that a later sequence whose positions start the same (system prompt, image tokens, earlier chat
// turns) adopts them instead of computing them again. A second question about an image skips the
// vision tower and the shared part of the prefill.
//
// Positions are named by 64-bit keys: a text token by its id, an image token by a hash of the
// image's pixels (ImageKey, which includes the preset) and its index among the image's tokens, so
// two prompts share a position only when its input is the same and every position before it is too.
//
// The cache is a tree of blocks, one KV page each, found by (parent block, the page's keys) — the KV
// of a position depends on every position before it, so a block is only valid after its own parent
// chain. A block is a whole page, or the last, partly filled page of a sequence (a leaf). A lookup
// walks the tree from the root page by page; the whole pages found are adopted read-only by the new
// sequence (KVPool holders; it writes only after them: append-only sharing). Where the walk stops,
// the child block sharing the most leading positions with the rest of the prompt (a sibling question,
// the last page of the previous chat turn) is copied into a page of the sequence's own, up to there.
// LRU eviction, and a path is touched from its leaf to its root, so a parent is always more recent
// than its children and eviction takes leaves first. Each block holds one page reservation of the
// pool (handed over by the sequence that filled it), so cached pages count against the KV budget;
// the engine evicts when admission needs them. Thread-safe.
#pragma once
#include <algorithm>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <vector>

#include "fastvlm/engine/image_cache.hpp"
#include "fastvlm/text/kv_cache.hpp"

namespace fastvlm {

// The key of a position that holds text token `id`.
inline std::uint64_t token_position_key(std::int32_t id) { return std::uint64_t(std::uint32_t(id)); }
// The key of the j-th token of an image (the top bit set: never a token id).
inline std::uint64_t image_position_key(const ImageKey& k, Index j) {
    const std::uint64_t v[3] = {k.lo, k.hi, std::uint64_t(j)};
    return XXH3_64bits(v, sizeof v) | (std::uint64_t(1) << 63);
}

class PrefixCache {
public:
    struct Stats {
        std::uint64_t hits = 0, misses = 0;  // lookups that found at least one position, and the others
        std::uint64_t hit_positions = 0;     // positions adopted (prefill not run for them)
        std::uint64_t inserted_pages = 0, evictions = 0;
        Index pages = 0, max_pages = 0;  // held now, most held
    };

    // max_pages: most pages kept (0 = off).
    PrefixCache(std::shared_ptr<text::KVPool> pool, Index max_pages) : pool_(std::move(pool)), max_pages_(max_pages) {}
    PrefixCache(const PrefixCache&) = delete;
    PrefixCache& operator=(const PrefixCache&) = delete;
    ~PrefixCache() {
        std::lock_guard lk(mu_);
        while (!lru_.empty()) evict_back();
    }

    bool enabled() const { return max_pages_ > 0; }

    // The longest cached prefix of `keys`, at most `limit` positions (the caller keeps at least one
    // position to compute): whole pages to adopt, then optionally the first `partial_len` positions of
    // page `partial` to copy. The caller holds every page returned (KVPool holders, taken here under
    // the lock, so an eviction on another thread cannot free them first): KVSeq::adopt_prefix takes over
    // those of `pages`, done_with(partial) gives back the partial one, release() all. Counts a hit or a miss.
    struct Match {
        std::vector<void*> pages;
        void* partial = nullptr;
        Index partial_len = 0;
        Index positions(Index page) const { return Index(pages.size()) * page + partial_len; }
    };
    Match match(std::span<const std::uint64_t> keys, Index limit) {
        std::lock_guard lk(mu_);
        Match m;
        if (!enabled()) return m;
        const Index page = pool_->page_positions();
        limit = std::min<Index>(limit, Index(keys.size()));
        std::vector<Lru::iterator> path;
        std::uint64_t parent = 0;
        for (Index i = 0; i < limit / page; ++i) {
            const auto it = find(parent, keys.subspan(std::size_t(i * page), std::size_t(page)));
            if (it == lru_.end()) break;
            path.push_back(it);
            parent = it->id;
        }
        // Where the walk stopped: the child sharing the most leading positions with the rest.
        const Index at = Index(path.size()) * page;
        const auto rest = keys.subspan(std::size_t(at), std::size_t(std::min(limit - at, page)));
        Lru::iterator best = lru_.end();
        const auto [lo, hi] = children_.equal_range(parent);
        for (auto c = lo; c != hi; ++c) {
            const auto& k = c->second->keys;
            const Index n = Index(std::mismatch(rest.begin(), rest.end(), k.begin(), k.end()).first - rest.begin());
            if (n > m.partial_len) m.partial_len = n, best = c->second;
        }
        if (best != lru_.end()) {
            path.push_back(best);
            m.partial = best->page;
            pool_->retain(m.partial);  // held for the caller's copy
        }
        touch(path);
        for (std::size_t i = 0; i < path.size() - (m.partial ? 1 : 0); ++i) {
            m.pages.push_back(path[i]->page);
            pool_->retain(path[i]->page);
        }
        const Index got = m.positions(page);
        ++(got > 0 ? st_.hits : st_.misses);
        st_.hit_positions += std::uint64_t(got);
        return m;
    }
    // The caller has copied what it needed of a Match's partial page.
    void done_with(void* partial) {
        if (partial) pool_->put_page(partial);
    }
    // Gives back every page of a Match that was not adopted.
    void release(const Match& m) {
        for (void* p : m.pages) pool_->put_page(p);
        done_with(m.partial);
    }
    // match() into an empty sequence: it adopts the whole pages and copies the partial one. Returns the
    // positions it now holds (0 on a miss).
    Index adopt_into(text::KVSeq& seq, std::span<const std::uint64_t> keys, Index limit) {
        const Match m = match(keys, limit);
        try {
            seq.adopt_prefix(m.pages);  // takes over the holds of the whole pages
        } catch (...) {
            release(m);
            throw;
        }
        try {
            if (m.partial) seq.adopt_partial(m.partial, m.partial_len);
        } catch (...) {
            done_with(m.partial);
            throw;
        }
        done_with(m.partial);
        return seq.size();
    }

    // Keeps the pages of a sequence that ended: `keys` name its positions [0, seq.size()); its last
    // page may be partly filled. Pages already cached are only touched; each new block takes one page
    // reservation from `seq` (which must be ending), then the least recently used blocks beyond
    // max_pages are evicted.
    void insert(std::span<const std::uint64_t> keys, text::KVSeq& seq) {
        std::lock_guard lk(mu_);
        if (!enabled() || !seq.valid()) return;
        const Index page = pool_->page_positions();
        const Index len = std::min<Index>(Index(keys.size()), seq.size());
        const Index n = (len + page - 1) / page;
        std::vector<Lru::iterator> path;
        std::uint64_t parent = 0;
        for (Index i = 0; i < n; ++i) {
            const auto k = keys.subspan(std::size_t(i * page), std::size_t(std::min(page, len - i * page)));
            auto it = find(parent, k);
            if (it == lru_.end()) {
                if (!seq.give_reservation()) break;
                void* p = seq.page(i);
                pool_->retain(p);
                lru_.push_front(Block{next_id_++, parent, std::vector<std::uint64_t>(k.begin(), k.end()), p});
                it = lru_.begin();
                map_.emplace(hash(parent, k), it);
                children_.emplace(parent, it);
                ++st_.inserted_pages;
            }
            path.push_back(it);
            parent = it->id;
        }
        touch(path);
        while (Index(lru_.size()) > max_pages_) evict_back();
    }

    // Drops the least recently used block (its page and reservation go back to the pool); false when
    // the cache is empty.
    bool evict_one() {
        std::lock_guard lk(mu_);
        if (lru_.empty()) return false;
        evict_back();
        return true;
    }

    Stats stats() const {
        std::lock_guard lk(mu_);
        Stats s = st_;
        s.pages = Index(lru_.size());
        s.max_pages = max_pages_;
        return s;
    }

private:
    struct Block {
        std::uint64_t id, parent;
        std::vector<std::uint64_t> keys;  // the page's position keys
        void* page;
    };
    using Lru = std::list<Block>;  // most recently used first

    static std::uint64_t hash(std::uint64_t parent, std::span<const std::uint64_t> keys) {
        return XXH3_64bits_withSeed(keys.data(), keys.size_bytes(), parent);
    }
    Lru::iterator find(std::uint64_t parent, std::span<const std::uint64_t> keys) {
        const auto [b, e] = map_.equal_range(hash(parent, keys));
        for (auto it = b; it != e; ++it)
            if (it->second->parent == parent && std::equal(keys.begin(), keys.end(), it->second->keys.begin(), it->second->keys.end()))
                return it->second;
        return lru_.end();
    }
    // Leaf first, root last: the root ends up most recent.
    void touch(const std::vector<Lru::iterator>& path) {
        for (auto it = path.rbegin(); it != path.rend(); ++it) lru_.splice(lru_.begin(), lru_, *it);
    }
    static void erase_entry(std::unordered_multimap<std::uint64_t, Lru::iterator>& m, std::uint64_t key, const Block& b) {
        const auto [lo, hi] = m.equal_range(key);
        for (auto it = lo; it != hi; ++it)
            if (&*it->second == &b) {
                m.erase(it);
                return;
            }
    }
    void evict_back() {
        const Block& b = lru_.back();
        erase_entry(map_, hash(b.parent, b.keys), b);
        erase_entry(children_, b.parent, b);
        pool_->put_page(b.page);
        pool_->unreserve(1);
        lru_.pop_back();
        ++st_.evictions;
    }

    std::shared_ptr<text::KVPool> pool_;
    Index max_pages_;
    mutable std::mutex mu_;
    Lru lru_;
    std::unordered_multimap<std::uint64_t, Lru::iterator> map_;       // by hash(parent, keys)
    std::unordered_multimap<std::uint64_t, Lru::iterator> children_;  // by parent id
    std::uint64_t next_id_ = 1;  // 0 is the root
    Stats st_;
};

}  // namespace fastvlm
