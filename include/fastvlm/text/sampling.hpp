// fastvlm/text/sampling.hpp — next-token choice from a row of logits (spec §5.4, §5.5).
// Greedy (temperature 0) is the deterministic reference. With temperature > 0 the order is the
// Hugging Face one: logits / T → top-k → top-p (nucleus) → sample. The random source is
// std::mt19937_64 seeded by the caller; the uniform draw is (r >> 11)·2⁻⁵³, so a seed gives the
// same tokens on every platform. Ids ≥ `valid` (the tokenizer's length, spec §5.5) are never chosen.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "fastvlm/core/error.hpp"

namespace fastvlm::text {

struct SamplingOptions {
    float temperature = 0.f;  // 0 = greedy
    int top_k = 0;            // 0 = off
    float top_p = 1.f;        // 1 = off
    std::uint64_t seed = 0;
};

// First index of the maximum of logits[0:n) (ties: the lowest id, like torch.argmax).
// NaN is never larger (a NaN at 0 stays the answer). Blocks of one SIMD width are compared with the
// running best at once; the plain rule runs only inside a block that holds a larger value, so the
// result is exactly that of the plain loop (a greedy step over 152k logits was 1 % of batched decode).
inline std::int32_t argmax(const float* logits, std::size_t n) {
    using B = xsimd::batch<float>;
    constexpr std::size_t W = B::size;
    std::size_t best = 0, i = 1;
    auto scan = [&](std::size_t end) {
        for (; i < end; ++i)
            if (logits[i] > logits[best]) best = i;
    };
    while (i + W <= n) {
        if (xsimd::any(B::load_unaligned(logits + i) > B(logits[best]))) scan(i + W);
        else i += W;
    }
    scan(n);
    return std::int32_t(best);
}

class Sampler {
public:
    explicit Sampler(const SamplingOptions& o = {}) : opt_(o), rng_(o.seed) {
        FASTVLM_CHECK(std::isfinite(o.temperature) && o.temperature >= 0.f, "sampling: temperature must be >= 0, got ",
                      o.temperature);
        FASTVLM_CHECK(o.top_k >= 0, "sampling: top_k must be >= 0, got ", o.top_k);
        FASTVLM_CHECK(o.top_p > 0.f && o.top_p <= 1.f, "sampling: top_p must be in (0, 1], got ", o.top_p);
    }
    const SamplingOptions& options() const { return opt_; }
    bool greedy() const { return opt_.temperature == 0.f; }

    // logits: the full row; valid: number of selectable ids (≤ logits.size()).
    std::int32_t sample(std::span<const float> logits, std::size_t valid) {
        valid = std::min(valid, logits.size());
        FASTVLM_CHECK(valid > 0, "sampling: no selectable token ids (vocabulary of size 0)");
        if (greedy()) return argmax(logits.data(), valid);

        // Candidates cut to top-k, sorted by logit (descending) when a filter needs the order.
        idx_.resize(valid);
        std::iota(idx_.begin(), idx_.end(), 0);
        const std::size_t k = opt_.top_k > 0 ? std::min<std::size_t>(std::size_t(opt_.top_k), valid) : valid;
        auto by_logit = [&](std::int32_t a, std::int32_t b) {
            return logits[std::size_t(a)] > logits[std::size_t(b)] || (logits[std::size_t(a)] == logits[std::size_t(b)] && a < b);
        };
        if (k < valid) {
            std::nth_element(idx_.begin(), idx_.begin() + std::ptrdiff_t(k), idx_.end(), by_logit);
            idx_.resize(k);
        }
        if (k < valid || opt_.top_p < 1.f) std::sort(idx_.begin(), idx_.end(), by_logit);

        // Softmax of logit / T over the candidates.
        double m = -std::numeric_limits<double>::infinity();
        for (auto i : idx_) m = std::max(m, double(logits[std::size_t(i)]));
        const double inv_t = 1.0 / double(opt_.temperature);
        prob_.resize(idx_.size());
        double sum = 0;
        for (std::size_t i = 0; i < idx_.size(); ++i)
            sum += (prob_[i] = std::exp((double(logits[std::size_t(idx_[i])]) - m) * inv_t));
        // Nucleus: the smallest prefix whose mass reaches top_p (at least one token).
        std::size_t keep = idx_.size();
        if (opt_.top_p < 1.f) {
            double c = 0;
            for (std::size_t i = 0; i < idx_.size(); ++i) {
                c += prob_[i] / sum;
                if (c >= double(opt_.top_p)) {
                    keep = i + 1;
                    break;
                }
            }
            sum = std::accumulate(prob_.begin(), prob_.begin() + std::ptrdiff_t(keep), 0.0);
        }
        const double u = double(rng_() >> 11) * 0x1.0p-53 * sum;
        double c = 0;
        for (std::size_t i = 0; i < keep; ++i) {
            c += prob_[i];
            if (u < c) return idx_[i];
        }
        return idx_[keep - 1];
    }

private:
    SamplingOptions opt_;
    std::mt19937_64 rng_;
    std::vector<std::int32_t> idx_;
    std::vector<double> prob_;
};

}  // namespace fastvlm::text
