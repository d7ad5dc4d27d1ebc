// fastvlm/engine/image_cache.hpp — the image-feature cache: projected image tokens by a 128-bit hash
// of the preprocessed pixels (Debian libxxhash-dev, XXH3, used header-only), LRU-bounded in bytes.
// A repeated image (a second question about it, a frame equal to an earlier one, the same picture in
// several requests) skips the vision tower and the projector. Thread-safe.
#pragma once
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string_view>
#include <unordered_map>
#include <utility>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "fastvlm/core/tensor.hpp"

namespace fastvlm {

struct ImageKey {
    std::uint64_t lo = 0, hi = 0;
    bool operator==(const ImageKey&) const = default;
};

// Hash of preprocessed pixels [3, S, S] (their float bits: equal keys mean equal inputs to the
// vision tower) salted with `salt` (the formats of the vision tower and projector, detail::vision_formats:
// features differ between presets whose formats differ).
inline ImageKey image_key(TensorView<const float, 3> px, std::string_view salt) {
    const std::uint64_t seed = XXH3_64bits(salt.data(), salt.size()) ^ (std::uint64_t(px.dim(1)) << 32 | std::uint64_t(px.dim(2)));
    const XXH128_hash_t h = XXH3_128bits_withSeed(px.data(), std::size_t(px.size()) * sizeof(float), seed);
    return {h.low64, h.high64};
}

class ImageFeatureCache {
public:
    using Tokens = std::shared_ptr<const Tensor<float, 2>>;
    struct Stats {
        std::uint64_t hits = 0, misses = 0, evictions = 0;
        std::size_t bytes = 0, entries = 0, max_bytes = 0;
    };

    explicit ImageFeatureCache(std::size_t max_bytes) : max_bytes_(max_bytes) {}

    bool enabled() const { return max_bytes_ > 0; }

    // The tokens of `k` (now the most recently used), or nullptr. Not counted: see record().
    Tokens get(const ImageKey& k) {
        std::lock_guard lk(mu_);
        const auto it = map_.find(k);
        if (it == map_.end()) return nullptr;
        lru_.splice(lru_.begin(), lru_, it->second);  // most recently used first
        return it->second->second;
    }
    // Counts one image served from the cache (hit) or encoded (miss). The engine looks an image up
    // at every step until it is encoded, so lookups and outcomes are counted apart.
    void record(bool hit) {
        std::lock_guard lk(mu_);
        ++(hit ? st_.hits : st_.misses);
    }

    // Stores `t` under `k` (a no-op when disabled or when `t` alone exceeds the budget), evicting the
    // least recently used entries beyond the budget. Entries in use elsewhere stay alive (shared).
    void put(const ImageKey& k, Tokens t) {
        const std::size_t b = bytes_of(*t);
        std::lock_guard lk(mu_);
        if (b > max_bytes_ || map_.count(k)) return;
        lru_.emplace_front(k, std::move(t));
        map_.emplace(k, lru_.begin());
        st_.bytes += b;
        while (st_.bytes > max_bytes_) {
            auto& [key, tok] = lru_.back();
            st_.bytes -= bytes_of(*tok);
            map_.erase(key);
            lru_.pop_back();
            ++st_.evictions;
        }
    }

    Stats stats() const {
        std::lock_guard lk(mu_);
        Stats s = st_;
        s.entries = map_.size();
        s.max_bytes = max_bytes_;
        return s;
    }

private:
    static std::size_t bytes_of(const Tensor<float, 2>& t) { return std::size_t(t.size()) * sizeof(float) + 128; }
    struct Hash {
        std::size_t operator()(const ImageKey& k) const { return std::size_t(k.lo ^ (k.hi * 0x9E3779B97F4A7C15ull)); }
    };
    std::size_t max_bytes_;
    mutable std::mutex mu_;
    std::list<std::pair<ImageKey, Tokens>> lru_;
    std::unordered_map<ImageKey, std::list<std::pair<ImageKey, Tokens>>::iterator, Hash> map_;
    Stats st_;
};

}  // namespace fastvlm
