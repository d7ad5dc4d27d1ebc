// Fuzz target: one .safetensors file (u64 header length | JSON header | data), opened the way the
// model loader opens a weights file (io::TensorStore::open on a file path), then read with the
// typed loaders. The bytes live in a memfd opened as /proc/self/fd/N.
#include <cstddef>
#include <cstdint>

#include "fastvlm/io/safetensors.hpp"
#include "fuzz_common.hpp"
#include "tensor_store_checks.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static fuzz::MemFile file("fuzz.safetensors");
    const std::string& path = file.write(fuzz::as_text(data, size));
    fuzz::accepts([&] {
        const fastvlm::io::TensorStore st = fastvlm::io::TensorStore::open(path);
        FUZZ_CHECK(st.shards().size() == 1);
        fuzz::exercise_store(st);
    });
    return 0;
}
