// tests/fuzz/tensor_store_checks.hpp — what the model loaders do with an opened TensorStore, plus the
// documented guarantees of io/safetensors.hpp checked on every accepted file: each tensor's bytes lie
// inside its file's data section, tensors do not overlap, and the typed loaders agree with the header.
#pragma once
#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "fastvlm/io/safetensors.hpp"
#include "fuzz_common.hpp"

namespace fuzz {

inline void check_layout(const fastvlm::io::SafeTensorsFile& f) {
    const std::byte* begin = f.bytes().data() + f.data_offset();
    const std::byte* end = f.bytes().data() + f.bytes().size();
    FUZZ_CHECK(f.data_offset() >= 8 && f.data_offset() <= f.bytes().size());
    std::vector<std::pair<const std::byte*, std::size_t>> spans;
    for (const auto& [name, t] : f.tensors()) {
        FUZZ_CHECK(t.name == name);
        FUZZ_CHECK(t.nbytes == std::size_t(t.numel()) * fastvlm::io::dtype_size(t.dtype));
        if (t.nbytes == 0) continue;
        FUZZ_CHECK(t.data >= begin && t.data <= end && std::size_t(end - t.data) >= t.nbytes);
        spans.emplace_back(t.data, t.nbytes);
    }
    std::sort(spans.begin(), spans.end());
    for (std::size_t i = 1; i < spans.size(); ++i) FUZZ_CHECK(spans[i - 1].first + spans[i - 1].second <= spans[i].first);
}

inline void exercise_store(const fastvlm::io::TensorStore& st) {
    using namespace fastvlm;
    using io::DType;
    for (const auto& shard : st.shards()) check_layout(shard);
    const std::vector<std::string> names = st.names();
    FUZZ_CHECK(names.size() == st.size());
    for (const std::string& name : names) {
        const io::TensorRef& t = st.at(name);
        FUZZ_CHECK(st.contains(name));
        sink(t.where());
        sink(t.shape_str());
        const std::span<const fastvlm::Index> shape(t.shape);
        const std::size_t n = std::size_t(t.numel());
        accepts([&] {  // what FastViTHD / Qwen2 / the projector call on a tensor of the expected shape
            if (io::is_float_dtype(t.dtype)) {
                const std::vector<float> v = st.load_f32(name, shape);
                FUZZ_CHECK(v.size() == n);
                sink(v);
            } else {
                const std::vector<std::int64_t> v = st.load_i64(name, shape);
                FUZZ_CHECK(v.size() == n);
                sink(v);
            }
        });
        accepts([&] {
            if (auto v = st.bf16_data(name, shape)) {
                FUZZ_CHECK(t.dtype == DType::BF16 && v->size() == n);
                if (n) sink((*v)[n - 1]);
            }
        });
        accepts([&] {
            if (auto v = st.data_as<float>(name, shape)) {
                FUZZ_CHECK(t.dtype == DType::F32 && v->size() == n);
                if (n) sink((*v)[n - 1]);
            }
        });
        accepts([&] {  // the wrong dtype family and a wrong shape are refused with an Error
            if (io::is_float_dtype(t.dtype)) st.load_i64(name);
            else st.load_f32(name, shape);
        });
        accepts([&] {
            std::vector<fastvlm::Index> wrong(t.shape);
            wrong.push_back(1);
            st.checked(name, wrong);
        });
        st.release(name);
    }
    accepts([&] { st.at("model.layers.0.self_attn.q_proj.weight.missing"); });
}

}  // namespace fuzz
