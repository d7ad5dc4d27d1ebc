// Fuzz target: a model folder's config.json, read by io::ModelConfig::load (what Model::load calls),
// then the derived sizes the vision tower and decoder are built from. The bytes live in a memfd
// opened as /proc/self/fd/N (ModelConfig::load takes a folder or the config file itself).
#include <cstddef>
#include <cstdint>

#include "fastvlm/io/config.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static fuzz::MemFile file("config.json");
    const std::string& path = file.write(fuzz::as_text(data, size));
    fuzz::accepts([&] {
        const fastvlm::io::ModelConfig c = fastvlm::io::ModelConfig::load(path);
        // An accepted config is valid by contract: validating again must not throw, and the derived
        // sizes must be positive (they size every buffer of the model).
        c.validate();
        const auto& v = c.vision;
        FUZZ_CHECK(v.total_stride() >= 1 && v.out_hw() >= 1 && v.num_tokens() >= 1);
        FUZZ_CHECK(v.out_channels() >= 1 && v.se_channels() >= 1 && c.mm_hidden_size == v.out_channels());
        for (int s = 0; s < fastvlm::io::VisionConfig::kStages; ++s) {
            FUZZ_CHECK(v.mlp_hidden(s) >= 1);
            if (v.is_attention(s)) FUZZ_CHECK(v.num_heads(s) >= 1);
        }
        const auto& t = c.text;
        FUZZ_CHECK(t.kv_dim() >= 1 && t.head_dim % 2 == 0 && t.num_attention_heads % t.num_key_value_heads == 0);
        fuzz::sink(c);
    });
    return 0;
}
