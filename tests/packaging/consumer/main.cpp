// Compiles against the public headers and runs a tiny computation.
#include <fastvlm/fastvlm.hpp>

#include <cmath>
#include <cstdio>

int main() {
    fastvlm::ThreadPool pool(2);
    auto x = fastvlm::Tensor<float, 2>::zeros({2, 8});
    for (fastvlm::Index i = 0; i < 8; ++i) x(1, i) = float(i);
    std::vector<float> w(8, 1.f), b(8, 0.f);
    fastvlm::layer_norm(x.data(), x.data(), 2, 8, w.data(), b.data(), 1e-5f, &pool);
    const float v = x(1, 7);  // (7 − 3.5)/sqrt(5.25) ≈ 1.5275
    if (std::fabs(v - 1.5275f) > 1e-3f) {
        std::printf("unexpected %f\n", v);
        return 1;
    }
    std::printf("consumer ok (%s)\n", fastvlm::policy::int8_int4::name);
    return 0;
}
