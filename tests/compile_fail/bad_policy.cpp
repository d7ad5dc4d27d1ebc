// Must NOT compile: Q4 weights with f32 compute have no kernel (see tests/core.cmake).
#include "fastvlm/core/policy.hpp"
struct BadPolicy : fastvlm::policy::fp32 {
    using decoder_mlp = fastvlm::Layer<fastvlm::fmt::Q4, fastvlm::fmt::F32>;
};
static_assert(fastvlm::PrecisionPolicy<BadPolicy>);
int main() { return 0; }
