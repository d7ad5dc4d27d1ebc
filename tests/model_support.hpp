// tests/model_support.hpp — the tiny text model (support.hpp's make_text_model) loaded once per
// process, for tests that run requests on some model.
#pragma once
#include "fastvlm/model.hpp"
#include "support.hpp"

namespace test_support {

inline const fastvlm::Model<>& tiny_text_model(const char* prefix) {
    static TempDir dir(prefix, "model");
    static const fastvlm::Model<> m = [] {
        make_text_model(dir.path);
        return fastvlm::Model<>::load(dir.path, {.threads = 2});
    }();
    return m;
}

}  // namespace test_support
