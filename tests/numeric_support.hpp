// Random inputs and error measures shared by the kernel and decoder tests.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace test_support {

// n draws of N(0, scale²), a fixed stream per seed.
inline std::vector<float> random_vec(std::size_t n, std::uint64_t seed, float scale = 1.f) {
    std::mt19937_64 g(seed);
    std::normal_distribution<float> d(0.f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(g);
    return v;
}

inline float max_abs(const float* a, std::size_t n) {
    float m = 0;
    for (std::size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i]));
    return m;
}

inline float max_diff(const float* a, const float* b, std::size_t n) {
    float m = 0;
    for (std::size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
    return m;
}

}  // namespace test_support
