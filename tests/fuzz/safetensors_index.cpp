// Fuzz target: a sharded model folder's model.safetensors.index.json. The folder (in /dev/shm) holds
// two small valid shards and a third file that repeats a tensor name; the input is the index, and
// io::TensorStore::open(folder) is called as Model::load does. weight_map may also name the index
// itself as a shard, which feeds the input to the safetensors parser.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fastvlm/io/safetensors.hpp"
#include "fuzz_common.hpp"
#include "tensor_store_checks.hpp"

namespace {

struct Folder {
    fuzz::ScratchDir dir{"safetensors_index"};
    Folder() {
        using fastvlm::io::DType;
        using fastvlm::io::WriteTensor;
        const std::vector<float> f32 = {1.f, -2.f, 0.5f, 3.f, 0.f, -0.f};
        const std::vector<std::uint16_t> half = {0x3f80, 0xbf80, 0x7f80, 0x0001};  // bf16: 1, -1, inf, denormal
        const std::vector<std::int64_t> i64 = {0, -1, 1ll << 40};
        const std::vector<std::uint8_t> u8 = {0, 1, 255, 7};
        const auto p = dir.path();
        fastvlm::io::write_safetensors(p / "model-00001-of-00002.safetensors",
                                       {{"model.embed_tokens.weight", DType::F32, {2, 3}, f32.data()},
                                        {"model.norm.weight", DType::BF16, {4}, half.data()},
                                        {"model.empty", DType::F16, {0, 5}, nullptr}},
                                       {{"format", "pt"}});
        fastvlm::io::write_safetensors(p / "model-00002-of-00002.safetensors",
                                       {{"lm_head.weight", DType::F16, {2, 2}, half.data()},
                                        {"model.position_ids", DType::I64, {1, 3}, i64.data()},
                                        {"model.mask", DType::BOOL, {4}, u8.data()},
                                        {"model.bytes", DType::U8, {2, 2}, u8.data()}});
        fastvlm::io::write_safetensors(p / "extra.safetensors", {{"model.norm.weight", DType::F32, {1}, f32.data()}});
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static Folder folder;
    folder.dir.write("model.safetensors.index.json", fuzz::as_text(data, size));
    fuzz::accepts([&] {
        const fastvlm::io::TensorStore st = fastvlm::io::TensorStore::open(folder.dir.path());
        fuzz::exercise_store(st);
    });
    return 0;
}
